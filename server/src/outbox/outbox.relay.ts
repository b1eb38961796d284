import { signWebhook } from '#shared/webhooks.js';
import type { Logger } from '../platform/logger.js';
import type { Metrics } from '../platform/metrics.js';
import type { ClaimedEvent, OutboxStore } from './outbox.store.js';

export interface OutboxRelayConfig {
  /** VENDURE_WEBHOOK_URL; unset: events stay in the outbox and the relay idles. */
  url?: string;
  /** VENDURE_WEBHOOK_SECRET (`whsec_...`). */
  secret?: string;
  pollMs: number;
  requestTimeoutMs: number;
  /** Past this age a failed event is given up on (DEAD) instead of retried. */
  maxAgeSeconds: number;
  /** Sends in flight at once; each is a different delivery (claimDue hands out one head per delivery). */
  concurrency?: number;
  /** How long a claimed event is hidden from other relays; must outlast a send. */
  leaseMs?: number;
  backoffBaseMs?: number;
  backoffCapMs?: number;
}

export interface OutboxRelayDeps {
  store: Pick<OutboxStore, 'claimDue' | 'markSent' | 'markFailed' | 'markDead'>;
  logger: Logger;
  metrics: Pick<Metrics, 'outboxSent' | 'outboxFailures' | 'outboxDead'>;
  config: OutboxRelayConfig;
  fetch?: typeof fetch;
  now?: () => number;
  /** In [0, 1); injectable so tests can pin the jitter. */
  random?: () => number;
  /** The customer's tracking link for a delivery's token; every event of a delivery that has one carries it as `data.trackingUrl`. */
  trackingUrl?: (token: string) => string;
}

export interface OutboxRelay {
  start(): void;
  stop(): Promise<void>;
  runOnce(): Promise<number>;
}

/** The JSON body Vendure receives; `id` equals the `webhook-id` header. */
export interface OutboxWebhookBody {
  id: string;
  type: string;
  deliveryId: string;
  /** Grows with every event the hub writes: a receiver can drop an event older than one it already applied. */
  sequence: number;
  occurredAt: string;
  data: unknown;
}

const DEFAULT_CONCURRENCY = 8;
const DEFAULT_BACKOFF_BASE_MS = 1000;
const DEFAULT_BACKOFF_CAP_MS = 5 * 60_000;
/** A receiver asking for more than this is probably misconfigured; the event would only age out. */
const MAX_RETRY_AFTER_MS = 60 * 60_000;

/** Exponential backoff with full jitter: uniform in [0, min(cap, base * 2^(attempt-1))). */
export function backoffDelayMs(attempt: number, baseMs: number, capMs: number, random: () => number = Math.random): number {
  const ceiling = Math.min(capMs, baseMs * 2 ** Math.min(Math.max(attempt - 1, 0), 30));
  return Math.floor(random() * ceiling);
}

/** `Retry-After` as milliseconds from `nowMs`: delta-seconds or an HTTP date; null when absent or unreadable. */
export function retryAfterMs(header: string | null | undefined, nowMs: number): number | null {
  if (!header) return null;
  const value = header.trim();
  if (/^\d+$/.test(value)) return Math.min(Number(value) * 1000, MAX_RETRY_AFTER_MS);
  const at = Date.parse(value);
  if (Number.isNaN(at)) return null;
  return Math.min(Math.max(at - nowMs, 0), MAX_RETRY_AFTER_MS);
}

type Outcome =
  | { ok: true; status: number }
  | { ok: false; error: string; retryAfterMs: number | null };

export function createOutboxRelay(deps: OutboxRelayDeps): OutboxRelay {
  const { store, metrics, config } = deps;
  const log = deps.logger.child({ component: 'outbox' });
  const doFetch = deps.fetch ?? fetch;
  const now = deps.now ?? Date.now;
  const random = deps.random ?? Math.random;
  const concurrency = Math.max(1, config.concurrency ?? DEFAULT_CONCURRENCY);
  // Twice the request timeout plus slack, so a slow but live send never has its lease taken over.
  const leaseMs = Math.max(config.leaseMs ?? config.requestTimeoutMs * 2 + 5000, config.requestTimeoutMs + 100);
  const baseMs = config.backoffBaseMs ?? DEFAULT_BACKOFF_BASE_MS;
  const capMs = config.backoffCapMs ?? DEFAULT_BACKOFF_CAP_MS;
  const enabled = Boolean(config.url && config.secret);

  const inFlight = new Set<Promise<void>>();
  let timer: NodeJS.Timeout | null = null;
  let started = false;
  let stopped = false;
  let pumping: Promise<void> | null = null;
  let pumpAgain = false;
  /** The receiver said "not before" (429/503 + Retry-After): nothing goes out until then, from this process. */
  let pausedUntil = 0;
  let pollFailing = false;

  function withTrackingUrl(event: ClaimedEvent): unknown {
    const { payload, trackingToken } = event;
    if (!trackingToken || !deps.trackingUrl || payload === null || typeof payload !== 'object' || Array.isArray(payload)) return payload;
    return { ...payload, trackingUrl: deps.trackingUrl(trackingToken) };
  }

  async function send(event: ClaimedEvent): Promise<Outcome> {
    const body: OutboxWebhookBody = {
      id: event.id,
      type: event.type,
      deliveryId: event.deliveryId,
      sequence: event.seq,
      occurredAt: event.createdAt.toISOString(),
      data: withTrackingUrl(event),
    };
    try {
      const raw = JSON.stringify(body);
      // Signed per attempt: the id stays, the timestamp is fresh so receivers' tolerance window holds on late retries.
      const headers = signWebhook(config.secret as string, event.id, now() / 1000, raw);
      const res = await doFetch(config.url as string, {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...headers },
        body: raw,
        redirect: 'manual',
        signal: AbortSignal.timeout(config.requestTimeoutMs),
      });
      const text = await res.text().catch(() => '');
      if (res.status >= 200 && res.status < 300) return { ok: true, status: res.status };
      const retryAfter = res.status === 429 || res.status === 503 ? retryAfterMs(res.headers.get('retry-after'), now()) : null;
      const detail = text.trim().slice(0, 200);
      return { ok: false, error: `HTTP ${res.status}${detail ? `: ${detail}` : ''}`, retryAfterMs: retryAfter };
    } catch (err) {
      return { ok: false, error: describeFetchError(err, config.requestTimeoutMs), retryAfterMs: null };
    }
  }

  async function deliver(event: ClaimedEvent): Promise<void> {
    const outcome = await send(event);
    const ctx = { eventId: event.id, deliveryId: event.deliveryId, type: event.type, attempt: event.attempts };
    try {
      if (outcome.ok) {
        await store.markSent(event.id);
        metrics.outboxSent.inc();
        log.debug({ ...ctx, status: outcome.status }, 'status event delivered');
        return;
      }
      metrics.outboxFailures.inc();
      const at = now();
      const ageSeconds = (at - event.createdAt.getTime()) / 1000;
      if (ageSeconds >= config.maxAgeSeconds) {
        if (await store.markDead(event.id, outcome.error, event.attempts)) {
          metrics.outboxDead.inc();
          log.error({ ...ctx, error: outcome.error, ageSeconds: Math.round(ageSeconds) }, 'status event given up on (dead); replay it from the admin API');
        }
        return;
      }
      if (outcome.retryAfterMs !== null) pausedUntil = Math.max(pausedUntil, at + outcome.retryAfterMs);
      const delay = outcome.retryAfterMs ?? backoffDelayMs(event.attempts, baseMs, capMs, random);
      const nextAttemptAt = new Date(at + delay);
      await store.markFailed(event.id, outcome.error, nextAttemptAt, event.attempts);
      log.warn({ ...ctx, error: outcome.error, nextAttemptAt: nextAttemptAt.toISOString() }, 'status event not delivered; will retry');
    } catch (err) {
      // The row keeps its lease and comes due again after it: at least once still holds.
      log.warn({ ...ctx, err }, 'could not record the outcome of a status event');
    }
  }

  async function claim(limit: number): Promise<ClaimedEvent[]> {
    if (!enabled || now() < pausedUntil || limit <= 0) return [];
    try {
      const rows = await store.claimDue(limit, leaseMs);
      if (pollFailing) log.info('outbox polling recovered');
      pollFailing = false;
      return rows;
    } catch (err) {
      // Logged once per outage, not once per poll.
      if (!pollFailing) log.warn({ err }, 'outbox poll failed; retrying');
      pollFailing = true;
      return [];
    }
  }

  async function runOnce(): Promise<number> {
    const events = await claim(concurrency);
    await Promise.all(events.map(deliver));
    return events.length;
  }

  /** Fills free send slots; called on every tick and whenever a send finishes, so a successor goes out at once. */
  function pump(): void {
    if (stopped) return;
    if (pumping) {
      pumpAgain = true;
      return;
    }
    pumping = (async () => {
      do {
        pumpAgain = false;
        while (!stopped && inFlight.size < concurrency) {
          const events = await claim(concurrency - inFlight.size);
          if (events.length === 0) break;
          for (const event of events) {
            const task: Promise<void> = deliver(event).finally(() => {
              inFlight.delete(task);
              pump();
            });
            inFlight.add(task);
          }
        }
      } while (pumpAgain && !stopped);
    })()
      .catch((err) => log.error({ err }, 'outbox pump failed'))
      .finally(() => {
        pumping = null;
      });
  }

  return {
    start() {
      if (started) return;
      started = true;
      if (!config.url) {
        log.info('VENDURE_WEBHOOK_URL is not set: delivery status events are kept in the outbox and not sent');
        return;
      }
      if (!config.secret) {
        log.error('VENDURE_WEBHOOK_SECRET is not set: status events are kept in the outbox and not sent, since Vendure could not verify them');
        return;
      }
      log.info({ url: redactUrl(config.url), pollMs: config.pollMs, concurrency, maxAgeSeconds: config.maxAgeSeconds }, 'outbox relay started');
      timer = setInterval(pump, config.pollMs);
      timer.unref();
      pump();
    },

    async stop() {
      if (stopped) return;
      stopped = true;
      if (timer) clearInterval(timer);
      timer = null;
      // Sends end by their own timeout; the bound only guards against a store call that hangs.
      const bound = config.requestTimeoutMs + 2000;
      let boundTimer: NodeJS.Timeout | undefined;
      const waited = Promise.allSettled([pumping, ...inFlight]).then(() => true);
      const gaveUp = new Promise<boolean>((resolve) => {
        boundTimer = setTimeout(() => resolve(false), bound);
      });
      const drained = await Promise.race([waited, gaveUp]);
      clearTimeout(boundTimer);
      if (!drained) log.warn({ inFlight: inFlight.size }, 'outbox relay stopped with sends in flight; their leases will expire and they will be retried');
    },

    runOnce,
  };
}

function describeFetchError(err: unknown, timeoutMs: number): string {
  const e = err as { name?: string; message?: string; cause?: { code?: string; message?: string } };
  if (e?.name === 'TimeoutError' || e?.name === 'AbortError') return `timed out after ${timeoutMs} ms`;
  const cause = e?.cause?.code ?? e?.cause?.message;
  return cause ? `${e?.message ?? 'fetch failed'} (${cause})` : (e?.message ?? String(err));
}

/** Credentials in the URL must not reach the logs. */
function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.username || u.password) {
      u.username = '***';
      u.password = '';
    }
    u.search = u.search ? '?…' : '';
    return u.toString();
  } catch {
    return '(unparseable url)';
  }
}
