import type { Namespace } from 'socket.io';
import type { DispatchClientEvents, DispatchServerEvents, DispatchSnapshot, SocketData } from '#shared/events.js';
import { type DriverMoved, type Viewport, viewportPayload } from '#shared/schemas.js';
import type { TokenVersionsStore } from '../admin/token-versions.store.js';
import type { DeliveriesService } from '../deliveries/deliveries.service.js';
import type { AuthGate } from '../platform/auth-throttle.js';
import { HubError, rateLimitedError } from '../platform/errors.js';
import type { HubEvents } from '../platform/hub-events.js';
import type { Logger } from '../platform/logger.js';
import type { Metrics } from '../platform/metrics.js';
import { createLogThrottle } from '../platform/log-throttle.js';
import type { RateLimits } from '../platform/rate-limits.js';
import { parsePayload } from '../platform/payload.js';
import { eventListener, handshakeError, otherEventsRefuser } from '../platform/socket-edge.js';
import type { DriversStore } from '../drivers/drivers.store.js';
import type { PresenceService } from '../presence/presence.service.js';

/** A `/dispatch` event other than the position batches, as the clients receive it. */
export type DispatchEvent =
  | { event: 'driver:status'; payload: Parameters<DispatchServerEvents['driver:status']>[0] }
  | { event: 'delivery:updated'; payload: Parameters<DispatchServerEvents['delivery:updated']>[0] }
  | { event: 'delivery:push'; payload: Parameters<DispatchServerEvents['delivery:push']>[0] };

interface DispatchInterServer {
  /** A node's position batch as JSON text: encoded once, natively, and parsed only where a map watches. */
  'drivers:moved': (moves: string) => void;
  /** "A map is open on my node": sent every WATCH_ANNOUNCE_MS while one is. */
  'dispatch:watching': () => void;
  /** The same when the first map opens on a node, which waits for every other node's answer before it reads the map's snapshot. */
  'dispatch:first-map': (heard: () => void) => void;
  /** One node's status and delivery events of one tick, in the order they happened there. */
  'dispatch:events': (batch: DispatchEvent[]) => void;
}

export type DispatchNamespace = Namespace<DispatchClientEvents, DispatchServerEvents, DispatchInterServer, SocketData & { viewport?: Viewport }>;

const WATCH_ANNOUNCE_MS = 1000;

/** What one snapshot holds at most: the most recently seen drivers and the newest open deliveries. */
export const SNAPSHOT_MAX_DRIVERS = 10_000;
export const SNAPSHOT_MAX_DELIVERIES = 1000;

/**
 * One load shared by every caller that arrives while it is pending, with one rule: a caller gets
 * a load that started after it called (a load already running could have read the database before
 * an event the caller would then miss). So at most one load runs and one waits, however many
 * callers arrive together.
 */
export function sharedLoad<T>(load: () => Promise<T>): () => Promise<T> {
  let running: Promise<T> | null = null;
  let next: Promise<T> | null = null;
  const start = (): Promise<T> => {
    const current: Promise<T> = load().finally(() => {
      if (running === current) running = null;
    });
    running = current;
    return current;
  };
  return () => {
    if (!running) return start();
    next ??= running.then(
      () => {},
      () => {},
    ).then(() => {
      next = null;
      return start();
    });
    return next;
  };
}

/** Every map a token subject has open, on any node. */
export const subjectRoom = (role: string, subject: string) => `${role}:${subject}`;

export function inViewport(move: { lat: number; lng: number }, viewport: Viewport | undefined): boolean {
  if (!viewport) return true;
  const { minLat, maxLat, minLng, maxLng } = viewport;
  if (move.lat < minLat || move.lat > maxLat) return false;
  // A viewport may cross the antimeridian (minLng > maxLng).
  return minLng <= maxLng ? move.lng >= minLng && move.lng <= maxLng : move.lng >= minLng || move.lng <= maxLng;
}

/**
 * The `/dispatch` namespace: a snapshot on connect, then one `drivers:moved` batch per node per
 * tick. Each node shares its batch with the others (serverSideEmit) and every node filters it
 * for its own dispatchers' viewports.
 *
 * `driver:status` and `delivery:updated` travel the same way on a shorter tick: a plain
 * `nsp.emit` costs one Redis PUBLISH per event (two per assignment), so each node sends one batch
 * per tick and every node replays it to its own dispatchers as the individual events clients
 * expect. Like the position batches, they cross nodes only while a map is open somewhere.
 */
export function attachDispatchNamespace(
  nsp: DispatchNamespace,
  deps: {
    presence: PresenceService;
    drivers: DriversStore;
    deliveries: DeliveriesService;
    tokenVersions: TokenVersionsStore;
    events: HubEvents;
    logger: Logger;
    metrics: Metrics;
    auth: AuthGate;
    tickMs: number;
    /** How long status and delivery events wait to share one Redis message; 50 ms by default. */
    eventTickMs?: number;
    /** True when the Redis adapter links this node to others. */
    clustered: boolean;
    limits: RateLimits;
  },
): { stop(): void } {
  const { events, metrics } = deps;
  const log = deps.logger.child({ component: 'dispatch-socket' });

  function deliverLocally(moves: DriverMoved[]): void {
    for (const socket of nsp.sockets.values()) {
      const viewport = socket.data.viewport;
      const visible = viewport ? moves.filter((m) => inViewport(m, viewport)) : moves;
      if (visible.length > 0) socket.emit('drivers:moved', visible);
    }
  }

  // Nobody watching anywhere: position batches are neither built nor sent (most of their cost at
  // tens of thousands of pings a second), and status and delivery events stay on their node
  // (every other node would wake to decode each batch, one per tick with any order or change).
  // Nodes with an open map say so every second.
  let remoteWatchersUntil = 0;
  const watchedElsewhere = () => Date.now() < remoteWatchersUntil;
  // Five announcements may go missing before a node stops sharing with an open map.
  const heardOfMap = () => {
    remoteWatchersUntil = Date.now() + 5 * WATCH_ANNOUNCE_MS;
  };
  nsp.on('dispatch:watching', heardOfMap);
  nsp.on('dispatch:first-map', (heard) => {
    heardOfMap();
    if (typeof heard === 'function') heard();
  });
  const announceWatching = () => {
    if (deps.clustered && nsp.sockets.size > 0) nsp.serverSideEmit('dispatch:watching');
  };
  const watchTimer = setInterval(announceWatching, WATCH_ANNOUNCE_MS);
  watchTimer.unref();

  /**
   * The first map on this node reads its snapshot only once every other node has heard that a map
   * watches: a change another node made before that is in the snapshot (events are told after
   * their commit), and one made after it is shared with this node. Without the wait, a change
   * made between the snapshot's read and the other node hearing of the map would be lost to it.
   * Bounded by the adapter's request timeout (a node that does not answer is not waited for).
   */
  let othersHeard: Promise<void> = Promise.resolve();
  function announceFirstMap(): void {
    if (!deps.clustered) return;
    othersHeard = nsp.serverSideEmitWithAck('dispatch:first-map').then(
      () => {},
      (err: unknown) => log.warn({ err: (err as Error).message }, 'not every node confirmed the open map'),
    );
  }

  nsp.on('drivers:moved', (packed) => {
    if (nsp.sockets.size === 0 || typeof packed !== 'string') return;
    try {
      deliverLocally(JSON.parse(packed) as DriverMoved[]);
    } catch (err) {
      log.warn({ err: (err as Error).message }, 'unreadable position batch from another node');
    }
  });

  const timer = setInterval(() => {
    if (nsp.sockets.size === 0 && !watchedElsewhere()) {
      deps.presence.discardMoves();
      return;
    }
    const moves = deps.presence.drainMoves();
    if (moves.length === 0) return;
    if (nsp.sockets.size > 0) deliverLocally(moves);
    // Single node: no other node to tell (and the in-memory adapter warns on serverSideEmit).
    // Thousands of moves per tick: JSON text costs a fraction of the adapter's msgpack of objects.
    if (deps.clustered) nsp.serverSideEmit('drivers:moved', JSON.stringify(moves));
  }, deps.tickMs);
  timer.unref();

  // Local only: the sender's batch never comes back to it (the Redis adapter drops requests
  // carrying its own uid), and other nodes' dispatchers get it from their own node.
  function emitLocally(batch: DispatchEvent[]): void {
    // Socket.IO encodes a broadcast before it looks for recipients: with no dispatcher here, skip it.
    if (nsp.sockets.size === 0) return;
    for (const e of batch) {
      if (e.event === 'driver:status') nsp.local.emit('driver:status', e.payload);
      else if (e.event === 'delivery:updated') nsp.local.emit('delivery:updated', e.payload);
      else nsp.local.emit('delivery:push', e.payload);
    }
  }

  nsp.on('dispatch:events', (batch) => emitLocally(batch));

  let pending: DispatchEvent[] = [];
  let stopped = false;

  function share(): void {
    if (pending.length === 0) return;
    const batch = pending;
    pending = [];
    nsp.serverSideEmit('dispatch:events', batch);
  }

  function record(e: DispatchEvent): void {
    // This node's dispatchers need not wait for the tick: only the Redis message is batched.
    emitLocally([e]);
    if (!deps.clustered || !watchedElsewhere()) return;
    pending.push(e);
    // Shutdown still produces events (drivers dropped as their sockets close) while Redis is up.
    if (stopped) share();
  }

  const eventTimer = setInterval(share, deps.eventTickMs ?? 50);
  eventTimer.unref();

  events.on('driver:status', ({ driverId, status }) => record({ event: 'driver:status', payload: { id: driverId, status, ts: Date.now() } }));
  events.on('delivery:updated', ({ delivery, previousStatus }) => record({ event: 'delivery:updated', payload: { ...delivery, previousStatus } }));
  events.on('push:acknowledged', ({ at, ...key }) => record({ event: 'delivery:push', payload: { ...key, state: 'acknowledged', at } }));
  events.on('push:unacknowledged', ({ at, ...key }) => record({ event: 'delivery:push', payload: { ...key, state: 'unacknowledged', at } }));

  nsp.use((socket, next) => {
    if (socket.data.role !== 'dispatcher' && socket.data.role !== 'admin') {
      return next(handshakeError(new HubError('FORBIDDEN', 'dispatcher token required')));
    }
    next();
  });

  // Per dispatcher, before any database lookup: every handshake that passes costs a snapshot.
  const connectLog = createLogThrottle();
  nsp.use(async (socket, next) => {
    const subject = socket.data.subject;
    const retryAfterMs = await deps.limits.consume('dispatcherConnect', subject);
    if (retryAfterMs === null) return next();
    metrics.rateLimited.inc({ event: 'dispatch-connect' });
    const skipped = connectLog.take(subject, retryAfterMs);
    if (skipped !== null) log.warn({ dispatcher: subject, retryAfterMs, refusedSinceLastLine: skipped }, 'dispatcher handshake rate limited');
    next(handshakeError(rateLimitedError('connections for this dispatcher', retryAfterMs)));
  });

  // A revoked token (the subject's token version moved on) is refused at the door, after the limit.
  nsp.use(async (socket, next) => {
    const { role, subject, tokenVersion } = socket.data;
    try {
      if ((tokenVersion ?? 0) === (await deps.tokenVersions.version(role as 'dispatcher' | 'admin', subject))) return next();
      await deps.auth.failed('handshake', deps.auth.handshakeAddress(socket.handshake));
      next(handshakeError(new HubError('TOKEN_INVALID', 'token revoked')));
    } catch {
      next(handshakeError(new HubError('SERVICE_UNAVAILABLE', 'try again shortly')));
    }
  });

  // Through the adapter: the subject's maps close on whichever node holds them.
  events.on('subject:revoked', ({ role, subject }) => nsp.in(subjectRoom(role, subject)).disconnectSockets(true));

  const loadSnapshot = sharedLoad<DispatchSnapshot>(async () => {
    const [drivers, deliveries] = await Promise.all([deps.drivers.list(SNAPSHOT_MAX_DRIVERS), deps.deliveries.listOpen(SNAPSHOT_MAX_DELIVERIES)]);
    return { drivers, deliveries };
  });

  const refuseOthers = otherEventsRefuser(['viewport'], { metrics });
  // Per socket: each map window has its own viewport, so each gets its own budget.
  const onViewport = eventListener('viewport', { logger: log, metrics, limit: (socket) => deps.limits.consume('viewport', socket.id) }, (socket, payload) => {
    const viewport = parsePayload(viewportPayload, payload, 'viewport');
    socket.data.viewport = viewport ?? undefined;
    return {};
  });
  const onDisconnect = () => metrics.socketsConnected.dec({ namespace: '/dispatch' });

  nsp.on('connection', async (socket) => {
    metrics.socketsConnected.inc({ namespace: '/dispatch' });
    socket.join(subjectRoom(socket.data.role, socket.data.subject));
    // The first map on this node: the other nodes start sending their batches now, not in a second.
    if (nsp.sockets.size === 1) announceFirstMap();
    socket.on('disconnect', onDisconnect);
    socket.onAny(refuseOthers);
    socket.on('viewport', onViewport);
    try {
      await othersHeard;
      const snapshot = await loadSnapshot();
      if (socket.connected) socket.emit('snapshot', snapshot);
    } catch (err) {
      log.warn({ socket: socket.id, dispatcher: socket.data.subject, err: (err as Error).message }, 'snapshot failed');
      socket.disconnect(true);
    }
  });

  return {
    stop() {
      clearInterval(timer);
      clearInterval(eventTimer);
      clearInterval(watchTimer);
      stopped = true;
      share();
    },
  };
}
