import type { Namespace, Socket } from 'socket.io';
import type { DriverClientEvents, DriverServerEvents, DriverSession, SocketData } from '#shared/events.js';
import { deliveryUpdatePayload, driverStatusPayload, type LocationFix, locationPayload, offerAcceptPayload, offerDeclinePayload } from '#shared/schemas.js';
import type { DeliveriesService } from '../deliveries/deliveries.service.js';
import type { AuthGate } from '../platform/auth-throttle.js';
import { BUSY_WINDOW_MS, createBatchWindow, HANDSHAKES_PER_BATCH } from '../platform/batch-window.js';
import { HubError, overloadedError, rateLimitedError } from '../platform/errors.js';
import type { HubEvents } from '../platform/hub-events.js';
import type { Logger } from '../platform/logger.js';
import type { Metrics } from '../platform/metrics.js';
import { createLogThrottle } from '../platform/log-throttle.js';
import type { RateLimits } from '../platform/rate-limits.js';
import { parsePayload } from '../platform/payload.js';
import { eventListener, handshakeError, otherEventsRefuser } from '../platform/socket-edge.js';
import type { PushKind } from '../platform/schema.js';
import { isAcknowledgement, type PushService, type PushTransport } from '../pushes/pushes.service.js';
import { STORED_SLOTS } from '../presence/position-pipeline.js';
import { type PresenceService, SHED_RETRY_MS } from '../presence/presence.service.js';

interface DriversInterServer {
  /** "The driver's connection `sessionId` speaks for it now": every node closes the driver's older ones. */
  'driver:takeover': (driverId: string, sessionId: string) => void;
  /** The same for many drivers at once, `[driverId, sessionId]` pairs: one message per batch of connects. */
  'driver:takeovers': (pairs: [string, string][]) => void;
}

/** How long a driver's newest connection seen in a takeover is remembered (see `newestSeen`). */
const TAKEOVER_MEMORY_MS = 120_000;

/** Handshakes gather this long at the door, so a reconnect storm's connect budgets cost one Redis script call per batch. */
const DOOR_WINDOW_MS = 2;

export type DriversNamespace = Namespace<DriverClientEvents, DriverServerEvents, DriversInterServer, SocketData>;
type DriverSocket = Socket<any, any, any, SocketData>;

export const driverRoom = (driverId: string) => `driver:${driverId}`;

function highestSeq(fixes: readonly LocationFix[]): number | undefined {
  let highest: number | undefined;
  for (const fix of fixes) if (fix.seq !== undefined && (highest === undefined || fix.seq > highest)) highest = fix.seq;
  return highest;
}

/**
 * A connection's place among the driver's connections: its handshake time (ms, zero-padded), then
 * its socket id to break ties. Compared as plain strings, here and in PostgreSQL (collate "C").
 */
export function sessionIdOf(socket: { id: string; handshake: { issued: number } }): string {
  return `${String(socket.handshake.issued).padStart(15, '0')}.${socket.id}`;
}

/** The `/drivers` namespace: identity comes from the verified token only, never from a payload. */
export function attachDriversNamespace(
  nsp: DriversNamespace,
  deps: {
    presence: PresenceService;
    pushes: PushService;
    deliveries: DeliveriesService;
    events: HubEvents;
    logger: Logger;
    metrics: Metrics;
    limits: RateLimits;
    /** How often each driver's `location:stored` confirmation goes out at most (LOCATION_CONFIRM_MS). */
    storedTickMs?: number;
    auth: AuthGate;
    /** True when the Redis adapter links this node to others. */
    clustered: boolean;
  },
): { stop(): void } {
  const { presence, deliveries, events, metrics, limits } = deps;
  const connectLog = createLogThrottle();

  events.on('driver:revoked', ({ driverId }) => nsp.in(driverRoom(driverId)).disconnectSockets(true));

  // Pushes go to the driver's room with an acknowledgement: through the adapter to whichever node
  // holds the socket the first time, to this node's own socket when it sends again.
  type Broadcast = { timeout(ms: number): { emit(event: PushKind, payload: unknown, ack: (err: unknown, replies: unknown[]) => void): void } };
  const withAck = (target: Broadcast, kind: PushKind, payload: unknown, timeoutMs: number) =>
    new Promise<unknown>((resolve) => {
      try {
        target.timeout(timeoutMs).emit(kind, payload, (_err, replies) => resolve(replies?.find(isAcknowledgement) ?? replies?.[0] ?? null));
      } catch {
        resolve(null);
      }
    });
  /**
   * Pushes sent to a socket of this node and not answered yet, by kind and delivery: a push due
   * again while the app has yet to answer the last send (a re-send pass crossing a reconnect's)
   * shares that send instead of reaching the app twice.
   */
  const awaiting = new WeakMap<DriverSocket, Map<string, Promise<unknown>>>();
  const awaitingKey = (kind: PushKind, deliveryId: unknown) => `${kind}:${deliveryId}`;
  const localSockets = (driverId: string) =>
    [...(nsp.adapter.rooms.get(driverRoom(driverId)) ?? [])].map((id) => nsp.sockets.get(id)).filter((socket): socket is DriverSocket => socket !== undefined);
  function sendToSocket(socket: DriverSocket, kind: PushKind, payload: unknown, timeoutMs: number): Promise<unknown> {
    let pending = awaiting.get(socket);
    if (!pending) awaiting.set(socket, (pending = new Map()));
    const key = awaitingKey(kind, (payload as { deliveryId?: unknown } | null)?.deliveryId);
    const inFlight = pending.get(key);
    if (inFlight) return inFlight;
    const send = new Promise<unknown>((resolve) => {
      try {
        // One socket: the acknowledgement's first argument is the app's answer itself.
        socket.timeout(timeoutMs).emit(kind, payload, (err: unknown, reply: unknown) => resolve(err ? null : reply));
      } catch {
        resolve(null);
      }
    });
    pending.set(key, send);
    void send.finally(() => pending.delete(key));
    return send;
  }
  const transport: PushTransport = {
    // A driver whose socket is on this node (every driver, on a single node) gets the push straight
    // from it: the adapter's broadcast with acknowledgement costs a Redis round trip to count the
    // nodes and a publish every node reads and answers. Should a newer connection of the driver be
    // on another node in the milliseconds before its takeover closes this one, that node's re-send
    // pass delivers the push.
    broadcast: (driverId, kind, payload, timeoutMs) =>
      transport.isLocal(driverId) ? transport.sendLocal(driverId, kind, payload, timeoutMs) : withAck(nsp.to(driverRoom(driverId)) as unknown as Broadcast, kind, payload, timeoutMs),
    sendLocal: async (driverId, kind, payload, timeoutMs) => {
      const sockets = localSockets(driverId);
      if (sockets.length === 0) return null;
      const replies = await Promise.all(sockets.map((socket) => sendToSocket(socket, kind, payload, timeoutMs)));
      return replies.find(isAcknowledgement) ?? replies.find((reply) => reply !== null && reply !== undefined) ?? null;
    },
    isLocal: (driverId) => (nsp.adapter.rooms.get(driverRoom(driverId))?.size ?? 0) > 0,
    awaitingAnswer: (driverId, kind, deliveryId) => {
      const sockets = localSockets(driverId);
      return sockets.length > 0 && sockets.every((socket) => awaiting.get(socket)?.has(awaitingKey(kind, deliveryId)) === true);
    },
    *localDrivers() {
      for (const socket of nsp.sockets.values()) yield socket.data.subject;
    },
  };
  deps.pushes.useTransport(transport);

  // Cumulative confirmation: one `location:stored` per driver per tick covers every numbered fix stored since.
  // One bucket of drivers per slice of the interval, so each driver hears at most once per interval
  // and thousands of confirmations never leave in one burst (that stalled the event loop); straight
  // to each socket, as a room broadcast per driver costs far more.
  let storedSlot = 0;
  const storedTimer = setInterval(() => {
    for (const [driverId, upTo] of presence.drainStored(storedSlot)) {
      const room = nsp.adapter.rooms.get(driverRoom(driverId));
      if (!room) continue;
      for (const socketId of room) nsp.sockets.get(socketId)?.emit('location:stored', { upTo });
    }
    storedSlot = (storedSlot + 1) % STORED_SLOTS;
  }, (deps.storedTickMs ?? 3000) / STORED_SLOTS);
  storedTimer.unref();

  nsp.use((socket, next) => {
    if (socket.data.role !== 'driver') return next(handshakeError(new HubError('FORBIDDEN', 'driver token required')));
    next();
  });

  /**
   * The door, for many handshakes at once, first: each driver's connect budget (per driver, not per
   * address: the newest connection wins anyway, so this only caps how often it may win), checked
   * in Redis by one script call for the batch (one per key on a cluster), before any database work. Null: let through.
   */
  const door = createBatchWindow({
    windowMs: DOOR_WINDOW_MS,
    maxWindowMs: BUSY_WINDOW_MS,
    maxBatch: HANDSHAKES_PER_BATCH,
    concurrency: 2,
    run: (driverIds: string[]) => limits.consumeMany('driverConnect', driverIds).catch(() => driverIds.map(() => null)),
  });

  /** Sessions written at the door for sockets not connected yet (null: a newer connection speaks for the driver). */
  const admitted = new WeakMap<DriverSocket, { session: DriverSession | null; abandoned: () => void }>();

  /**
   * Then the connect write itself, at the door: PostgreSQL checks the token's version (a revoked
   * token is refused here, before the socket connects) and makes this connection the one that
   * speaks for the driver, in one statement for many handshakes.
   */
  nsp.use(async (socket, next) => {
    const driverId = socket.data.subject;
    const stopDoor = metrics.handshakeSeconds.startTimer({ stage: 'door' });
    const retryAfterMs = await door.add(driverId).catch(() => null);
    stopDoor();
    if (retryAfterMs !== null) {
      metrics.rateLimited.inc({ event: 'connect' });
      const skipped = connectLog.take(driverId, retryAfterMs);
      if (skipped !== null) deps.logger.warn({ driver: driverId, retryAfterMs, refusedSinceLastLine: skipped }, 'driver handshake rate limited');
      return next(handshakeError(rateLimitedError('connections for this driver', retryAfterMs)));
    }
    const sessionId = sessionIdOf(socket);
    const stopSession = metrics.handshakeSeconds.startTimer({ stage: 'session' });
    let session: DriverSession | null;
    try {
      session = await presence.connect(driverId, sessionId, socket.data.tokenVersion ?? 0);
    } catch (err) {
      stopSession();
      const code = err instanceof HubError ? err.code : null;
      if (code === 'NOT_FOUND' || code === 'TOKEN_INVALID') {
        await deps.auth.failed('handshake', deps.auth.handshakeAddress(socket.handshake));
        return next(handshakeError(code === 'TOKEN_INVALID' ? (err as HubError) : new HubError('TOKEN_INVALID', 'no such driver')));
      }
      deps.logger.warn({ driver: driverId, err: (err as Error).message }, 'driver session could not start');
      return next(handshakeError(new HubError('SERVICE_UNAVAILABLE', 'try again shortly')));
    }
    stopSession();
    // An app gone before its connection opens gets no `disconnect`: the session written for it ends here.
    const abandoned = () => {
      presence.disconnect(driverId, sessionId).catch((err) => deps.logger.warn({ driver: driverId, err: (err as Error).message }, 'disconnect bookkeeping failed'));
    };
    if (socket.conn.readyState !== 'open') {
      abandoned();
      return next(handshakeError(new HubError('SERVICE_UNAVAILABLE', 'connection closed')));
    }
    socket.conn.once('close', abandoned);
    admitted.set(socket, { session, abandoned });
    next();
  });

  // One listener per event for the whole namespace; each reads its socket from `this`.
  // Budgets are per driver (the token's subject), so they hold across reconnects and across nodes.
  const edge = { logger: deps.logger, metrics };
  // Past capacity, fixes are refused before anything else is done with them (a rate-limit-style
  // answer the app backs off on and keeps the fix for) rather than acknowledged and written late;
  // the driver's heartbeat does not depend on them (the heartbeat round keeps connected drivers alive).
  const locationEdge = {
    ...edge,
    limit: (socket: DriverSocket) => {
      if (presence.shedding()) {
        metrics.locationsShed.inc();
        return overloadedError('position', SHED_RETRY_MS);
      }
      return limits.consume('location', socket.data.subject);
    },
  };
  const actionEdge = { ...edge, limit: (socket: DriverSocket) => limits.consume('driverAction', socket.data.subject) };
  const refuseOthers = otherEventsRefuser(['location', 'status', 'delivery:update', 'offer:accept', 'offer:decline'], edge);
  const onLocation = eventListener('location', locationEdge, (socket, payload) => {
    const parsed = parsePayload(locationPayload, payload, 'location');
    const fixes = Array.isArray(parsed) ? parsed : [parsed];
    presence.acceptFixes(socket.data.subject, fixes, highestSeq(fixes));
    return { accepted: fixes.length };
  });
  const onStatus = eventListener('status', actionEdge, async (socket, payload) => {
    const { status } = parsePayload(driverStatusPayload, payload, 'status');
    return { status: await presence.setDuty(socket.data.subject, status) };
  });
  const onDeliveryUpdate = eventListener('delivery:update', actionEdge, async (socket, payload) => {
    const update = parsePayload(deliveryUpdatePayload, payload, 'delivery update');
    return { delivery: await deliveries.updateFromDriver(socket.data.subject, update) };
  });
  // Identity from the token only: a driver answers its own offers.
  const onOfferAccept = eventListener('offer:accept', actionEdge, async (socket, payload) => {
    const answer = parsePayload(offerAcceptPayload, payload, 'offer acceptance');
    return { delivery: await deliveries.acceptOffer(socket.data.subject, answer) };
  });
  const onOfferDecline = eventListener('offer:decline', actionEdge, async (socket, payload) => {
    await deliveries.declineOffer(socket.data.subject, parsePayload(offerDeclinePayload, payload, 'offer decline'));
    return {};
  });
  function onDisconnect(this: DriverSocket, reason: string): void {
    const fields = { socket: this.id, driver: this.data.subject };
    metrics.socketsConnected.dec({ namespace: '/drivers' });
    // The connect write was made at the door, before the socket connected: this one comes after it.
    presence.disconnect(this.data.subject, sessionIdOf(this)).catch((err) => deps.logger.warn({ ...fields, err: (err as Error).message }, 'disconnect bookkeeping failed'));
    deps.logger.debug({ ...fields, reason }, 'driver disconnected');
  }

  /**
   * The newest connection each driver's takeovers named lately, here or on another node. A
   * connection written at the door joins its room only once it connects: a newer connection's
   * takeover that arrived in between finds no socket to close, so the connection looks here.
   */
  const newestSeen = new Map<string, { sessionId: string; at: number }>();
  function remember(driverId: string, sessionId: string): void {
    const now = Date.now();
    const seen = newestSeen.get(driverId);
    if (seen && seen.sessionId >= sessionId) return;
    newestSeen.delete(driverId);
    newestSeen.set(driverId, { sessionId, at: now });
    // Oldest first in insertion order: forget those past the memory.
    for (const [id, entry] of newestSeen) {
      if (now - entry.at < TAKEOVER_MEMORY_MS) break;
      newestSeen.delete(id);
    }
  }

  /** Closes this node's connections of the driver that are older than `sessionId`. */
  function closeOlder(driverId: string, sessionId: string): void {
    remember(driverId, sessionId);
    const room = nsp.adapter.rooms.get(driverRoom(driverId));
    if (!room) return;
    for (const id of [...room]) {
      const socket = nsp.sockets.get(id);
      if (socket && sessionIdOf(socket) < sessionId) socket.disconnect(true);
    }
  }
  nsp.on('driver:takeover', (driverId, sessionId) => {
    if (typeof driverId === 'string' && typeof sessionId === 'string') closeOlder(driverId, sessionId);
  });
  nsp.on('driver:takeovers', (pairs) => {
    if (!Array.isArray(pairs)) return;
    for (const pair of pairs) if (Array.isArray(pair) && typeof pair[0] === 'string' && typeof pair[1] === 'string') closeOlder(pair[0], pair[1]);
  });

  /**
   * Takeovers leave for the other nodes together: every connect that finished in this turn of the
   * event loop (a batch of them does) in one message, rather than one Redis publish per driver.
   */
  let takeovers: [string, string][] = [];
  function announceTakeover(driverId: string, sessionId: string): void {
    if (!deps.clustered) return;
    if (takeovers.length === 0) {
      setImmediate(() => {
        const pairs = takeovers;
        takeovers = [];
        nsp.serverSideEmit('driver:takeovers', pairs);
      });
    }
    takeovers.push([driverId, sessionId]);
  }

  /**
   * One connection speaks for a driver: the newest by handshake time, however many arrive at once
   * on however many nodes. PostgreSQL is the judge: the connect write at the door keeps the newest
   * session id it has seen and answers it. A connection that found a newer one there closes itself;
   * one that found itself closes every older one, on every node. For any two, the later write sees
   * the earlier, so the older of them is closed by one rule or the other: the takeover leaves after
   * the newer one's write, and finds the older one in its room or, if that has not connected yet,
   * is remembered (`newestSeen`) and found by it when it connects.
   */
  function startSession(socket: DriverSocket, driverId: string, session: DriverSession | null): void {
    const sessionId = sessionIdOf(socket);
    const newer = newestSeen.get(driverId);
    if (!session || (newer !== undefined && newer.sessionId > sessionId)) {
      deps.logger.debug({ socket: socket.id, driver: driverId }, 'driver connection superseded by a newer one');
      socket.disconnect(true);
      return;
    }
    closeOlder(driverId, sessionId);
    announceTakeover(driverId, sessionId);
    socket.emit('session', session);
    // Its job again, and whatever the app has not acknowledged (a cancel that crossed the disconnect).
    deps.pushes.connected(driverId, session.activeDelivery).catch((err) => deps.logger.warn({ driver: driverId, err: (err as Error).message }, 'open pushes not re-sent on connect'));
    deps.logger.debug({ socket: socket.id, driver: driverId, status: session.status }, 'driver connected');
  }

  nsp.on('connection', (socket) => {
    const driverId = socket.data.subject;
    metrics.socketsConnected.inc({ namespace: '/drivers' });
    const door = admitted.get(socket);
    admitted.delete(socket);
    if (door) socket.conn.off('close', door.abandoned);
    // Handlers are registered before anything else so no early event is lost.
    socket.onAny(refuseOthers);
    socket.on('location', onLocation);
    socket.on('status', onStatus);
    socket.on('delivery:update', onDeliveryUpdate);
    socket.on('offer:accept', onOfferAccept);
    socket.on('offer:decline', onOfferDecline);
    socket.on('disconnect', onDisconnect);
    socket.join(driverRoom(driverId));
    if (!door) {
      // Every driver socket passes the door; one that did not has no session to speak with.
      socket.disconnect(true);
      return;
    }
    startSession(socket, driverId, door.session);
  });

  return {
    stop() {
      clearInterval(storedTimer);
    },
  };
}
