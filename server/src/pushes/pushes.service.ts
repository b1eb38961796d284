import { pushAckReply } from '#shared/schemas.js';
import type { HubEvents } from '../platform/hub-events.js';
import type { Logger } from '../platform/logger.js';
import { BUSY_WINDOW_MS, createBatchWindow, HANDSHAKES_PER_BATCH } from '../platform/batch-window.js';
import type { Metrics } from '../platform/metrics.js';
import { createLogThrottle } from '../platform/log-throttle.js';
import type { PushKind } from '../platform/schema.js';
import type { OpenPush, PushesStore, PushKey } from './pushes.store.js';
import { slicesOf } from '../platform/slices.js';

/**
 * How pushes reach a driver's app, provided by the `/drivers` socket edge. Each answers the app's
 * acknowledgement, or null when no socket answered within the timeout.
 */
export interface PushTransport {
  /** To the driver wherever its socket lives: the adapter carries it to the node that holds it. */
  broadcast(driverId: string, kind: PushKind, payload: unknown, timeoutMs: number): Promise<unknown>;
  /** To the driver's socket on this node only (null at once when none is here). */
  sendLocal(driverId: string, kind: PushKind, payload: unknown, timeoutMs: number): Promise<unknown>;
  /** Drivers whose socket lives on this node. */
  localDrivers(): Iterable<string>;
  isLocal(driverId: string): boolean;
  /** This push was sent to every socket of the driver on this node and the app has not answered yet. */
  awaitingAnswer(driverId: string, kind: PushKind, deliveryId: string): boolean;
}

export interface PushStore {
  acknowledgeMany: PushesStore['acknowledgeMany'];
  due: PushesStore['due'];
  openFor: PushesStore['openFor'];
  openForMany: PushesStore['openForMany'];
  markResent: PushesStore['markResent'];
}

export interface PushDeps {
  store: PushStore;
  events: HubEvents;
  logger: Logger;
  metrics: Pick<Metrics, 'pushesSent' | 'pushesAcknowledged' | 'pushesUnacknowledged' | 'inputRejected'>;
  config: {
    /** Re-send interval for an unacknowledged push (PUSH_RETRY_MS). */
    retryMs: number;
    /** Re-sends before a push is flagged unacknowledged (PUSH_MAX_RESENDS). */
    maxResends: number;
    /** How many due pushes one pass reads; the rest wait for the next pass. */
    batch?: number;
  };
}

/** Reconnects gather this long to share one read of their open pushes. */
const RECONNECT_WINDOW_MS = 2;

/**
 * Acknowledgements gather this long to share one write: every assignment is answered, and nobody
 * waits on the record (the app has its answer; dispatchers see it within about a window).
 */
export const ACK_WINDOW_MS = 50;

/** The app's acknowledgement: `{ ok: true }` by the contract's own schema, nothing else. */
export function isAcknowledgement(reply: unknown): boolean {
  const parsed = pushAckReply.safeParse(reply);
  return parsed.success && parsed.data.ok;
}

/**
 * Pushes that are delivered, not just sent (invariant 8). The first send goes out at once through
 * the adapter; the app's acknowledgement is recorded in PostgreSQL. Until it arrives, the node
 * that holds the driver's socket finds the push in PostgreSQL and sends it again every `retryMs`
 * (checked three times per interval, so a lost first send is repeated within about `retryMs`),
 * at once when the driver reconnects and when Redis returns, up to `maxResends` times; then the
 * push is flagged for dispatchers. Nothing here depends on Redis or the adapter.
 */
export function createPushService(deps: PushDeps) {
  const { store, events, metrics } = deps;
  const log = deps.logger.child({ component: 'pushes' });
  const refusalLog = createLogThrottle();
  const batch = deps.config.batch ?? 1000;
  let transport: PushTransport | null = null;
  let timer: NodeJS.Timeout | undefined;
  let passing: Promise<void> | null = null;
  const inflight = new Set<Promise<unknown>>();
  const acknowledgements = createBatchWindow({ windowMs: ACK_WINDOW_MS, maxBatch: 500, run: (keys: PushKey[]) => store.acknowledgeMany(keys) });
  /**
   * Answers this node took, by push, with when their write finished (null while it is pending). A
   * read of open pushes that started before the write may still list the push: what it lists is
   * not sent again, or the app would get a push it has already answered. An answer is kept exactly
   * as long as such a read is running, so at a thousand acknowledgements a second the map holds
   * those of one read's duration, not of a fixed minute.
   */
  const answered = new Map<string, { writtenAt: number | null }>();
  const answerKey = (key: PushKey) => `${key.kind}|${key.deliveryId}|${key.driverId}`;
  /** Reads of open pushes in progress whose listings are checked against `answered`, by start. */
  const reads = new Set<{ at: number }>();
  function answeredSince(key: PushKey, readAt: number): boolean {
    const answer = answered.get(answerKey(key));
    return answer !== undefined && (answer.writtenAt === null || answer.writtenAt >= readAt);
  }
  /** Forgets the written answers no running read can have listed as open: written before it began. */
  function forgetAnswersNoReadNeeds(): void {
    let oldest = Number.POSITIVE_INFINITY;
    for (const read of reads) oldest = Math.min(oldest, read.at);
    for (const [key, { writtenAt }] of answered) if (writtenAt !== null && writtenAt < oldest) answered.delete(key);
  }
  /** Runs `read` (a read of open pushes and their re-send) with the answers written meanwhile kept. */
  async function whileReading<T>(read: (readAt: number) => Promise<T>): Promise<T> {
    const started = { at: Date.now() };
    reads.add(started);
    try {
      return await read(started.at);
    } finally {
      reads.delete(started);
      forgetAnswersNoReadNeeds();
    }
  }

  function track<T>(work: Promise<T>): Promise<T> {
    inflight.add(work);
    void work.finally(() => inflight.delete(work)).catch(() => {});
    return work;
  }

  async function settle(key: PushKey, reply: unknown): Promise<void> {
    if (reply === null || reply === undefined) return;
    if (!isAcknowledgement(reply)) {
      metrics.inputRejected.inc({ event: `${key.kind} ack`, code: 'VALIDATION_FAILED' });
      const skipped = refusalLog.take(key.driverId, 60_000);
      if (skipped !== null) log.info({ driver: key.driverId, delivery: key.deliveryId, kind: key.kind, refusedSinceLastLine: skipped }, 'push answered without { ok: true }; it will be sent again');
      return;
    }
    const answer = { writtenAt: null as number | null };
    const answerAt = answerKey(key);
    answered.set(answerAt, answer);
    let recorded: Awaited<ReturnType<typeof acknowledgements.add>>;
    try {
      recorded = await acknowledgements.add(key);
    } finally {
      answer.writtenAt = Date.now();
      // Every read running now began before this write ended; with none, no read needs it.
      if (reads.size === 0 && answered.get(answerAt) === answer) answered.delete(answerAt);
    }
    if (!recorded) return;
    metrics.pushesAcknowledged.inc({ kind: key.kind });
    events.emit('push:acknowledged', { ...key, at: recorded.acknowledgedAt.toISOString() });
  }

  /** One send and, when the app answers, its acknowledgement recorded. Never throws. */
  function deliver(key: PushKey, payload: unknown, how: 'broadcast' | 'local'): Promise<void> {
    if (!transport) return Promise.resolve();
    const t = transport;
    metrics.pushesSent.inc({ kind: key.kind, how: how === 'broadcast' ? 'first' : 'again' });
    const send = how === 'broadcast' ? t.broadcast(key.driverId, key.kind, payload, deps.config.retryMs) : t.sendLocal(key.driverId, key.kind, payload, deps.config.retryMs);
    return track(
      send
        .then((reply) => settle(key, reply))
        .catch((err) => log.warn({ driver: key.driverId, delivery: key.deliveryId, kind: key.kind, err: (err as Error).message }, 'push acknowledgement not recorded')),
    );
  }

  /**
   * Sends the given open pushes to this node's drivers again, counting the re-sends. `readAt`: when
   * a pass read them; null for a reconnect, whose new connection gets everything still open.
   */
  async function resend(open: readonly OpenPush[], readAt: number | null): Promise<number> {
    if (!transport) return 0;
    // A send still waiting for the app's answer (a pass crossing a reconnect's re-send), or, for a
    // pass, answered since its read, is neither repeated nor counted: the app would get the push
    // twice, and its re-sends run out early.
    const here = open.filter(
      (p) =>
        transport!.isLocal(p.driverId) &&
        !transport!.awaitingAnswer(p.driverId, p.kind, p.deliveryId) &&
        (readAt === null || !answeredSince(p, readAt)),
    );
    if (here.length === 0) return 0;
    const flagged = await store.markResent(here, deps.config.maxResends);
    for (const push of here) void deliver(push, push.payload, 'local');
    for (const key of flagged) {
      metrics.pushesUnacknowledged.inc({ kind: key.kind });
      log.warn({ driver: key.driverId, delivery: key.deliveryId, kind: key.kind, resends: deps.config.maxResends }, 'push never acknowledged; flagged for dispatchers');
      events.emit('push:unacknowledged', { ...key, at: new Date().toISOString() });
    }
    return here.length;
  }

  /** One pass: due pushes of this node's drivers go out again. */
  async function pass(): Promise<number> {
    if (!transport) return 0;
    return whileReading(async (readAt) => resend(await store.due(deps.config.retryMs, batch), readAt));
  }

  function passSoon(): void {
    if (passing) return;
    passing = pass()
      .then(() => undefined)
      .catch((err) => log.warn({ err: (err as Error).message }, 'push re-send pass failed'))
      .finally(() => {
        passing = null;
      });
  }

  events.on('delivery:assigned', ({ driverId, assignment }) => {
    void deliver({ deliveryId: assignment.deliveryId, driverId, kind: 'assignment' }, assignment, 'broadcast');
  });
  events.on('delivery:offered', ({ driverId, offer }) => {
    void deliver({ deliveryId: offer.deliveryId, driverId, kind: 'offer' }, offer, 'broadcast');
  });
  events.on('delivery:cancelled', ({ driverId, deliveryId, reason }) => {
    void deliver({ deliveryId, driverId, kind: 'delivery:cancelled' }, { deliveryId, reason }, 'broadcast');
  });
  // Whatever the adapter dropped while Redis was away is sent again now, not at the next pass:
  // a statement per thousand of this node's drivers, not one per driver.
  events.on('redis:restored', () => {
    if (!transport) return;
    const drivers = [...transport.localDrivers()];
    void (async () => {
      for (const slice of slicesOf(drivers, 1000)) {
        await whileReading(async (readAt) => resend(await store.openForMany(slice), readAt));
      }
    })().catch((err) => log.warn({ err: (err as Error).message }, 'push re-send after redis returned failed'));
  });

  /** Every open push of one driver of this node, at once (a reconnect, Redis back). */
  async function resendOpenTo(driverId: string): Promise<number> {
    return resend(await store.openFor(driverId), null);
  }

  /**
   * Drivers whose socket connected here: each one's active job goes out again even when
   * acknowledged before (the app may have lost it with its process), then everything still open
   * about it. One read of the open pushes and one re-send count for the whole batch.
   */
  async function connectedBatch(items: readonly { driverId: string; activeDelivery: { deliveryId: string } | null }[]): Promise<number[]> {
    const open = await store.openForMany([...new Set(items.map((i) => i.driverId))]);
    for (const { driverId, activeDelivery } of items) {
      if (activeDelivery && !open.some((p) => p.driverId === driverId && p.kind === 'assignment' && p.deliveryId === activeDelivery.deliveryId)) {
        void deliver({ deliveryId: activeDelivery.deliveryId, driverId, kind: 'assignment' }, activeDelivery, 'local');
      }
    }
    await resend(open, null);
    return items.map(({ driverId }) => open.filter((p) => p.driverId === driverId).length);
  }

  const reconnects = createBatchWindow({ windowMs: RECONNECT_WINDOW_MS, maxWindowMs: BUSY_WINDOW_MS, maxBatch: HANDSHAKES_PER_BATCH, concurrency: 2, run: connectedBatch });

  /** A driver's socket connected here (see connectedBatch); answers how many open pushes it had. */
  function connected(driverId: string, activeDelivery: { deliveryId: string } | null): Promise<number> {
    return reconnects.add({ driverId, activeDelivery });
  }

  return {
    useTransport(t: PushTransport): void {
      transport = t;
    },

    connected,
    resendOpenTo,

    /** One re-send pass now (tests, and what the timer runs). */
    pass,

    /** Answers kept for reads of open pushes still running (bounded by those reads, not by time). */
    get answersRemembered(): number {
      return answered.size;
    },

    start(): void {
      timer = setInterval(passSoon, Math.max(50, Math.floor(deps.config.retryMs / 3)));
      timer.unref();
    },

    async stop(): Promise<void> {
      clearInterval(timer);
      await reconnects.settle();
      await acknowledgements.settle();
      await passing;
      await Promise.allSettled([...inflight]);
    },
  };
}

export type PushService = ReturnType<typeof createPushService>;
