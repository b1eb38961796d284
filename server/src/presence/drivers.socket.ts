import type { Namespace } from 'socket.io';
import type { DriverClientEvents, DriverServerEvents, SocketData } from '../../../shared/src/events.js';
import { deliveryUpdatePayload, driverStatusPayload, locationPayload } from '../../../shared/src/schemas.js';
import type { DeliveriesService } from '../deliveries/deliveries.service.js';
import { HubError } from '../platform/errors.js';
import type { HubEvents } from '../platform/hub-events.js';
import type { Logger } from '../platform/logger.js';
import type { Metrics } from '../platform/metrics.js';
import { createLogThrottle, type RateLimits } from '../platform/rate-limits.js';
import { onEvent, parsePayload, rateLimitedBody, refuseOtherEvents } from '../platform/socket-edge.js';
import type { DriversStore } from './drivers.store.js';
import type { PresenceService } from './presence.service.js';

export type DriversNamespace = Namespace<DriverClientEvents, DriverServerEvents, Record<string, never>, SocketData>;

export const driverRoom = (driverId: string) => `driver:${driverId}`;

/** The `/drivers` namespace: identity comes from the verified token only, never from a payload. */
export function attachDriversNamespace(
  nsp: DriversNamespace,
  deps: { presence: PresenceService; drivers: DriversStore; deliveries: DeliveriesService; events: HubEvents; logger: Logger; metrics: Metrics; limits: RateLimits },
): void {
  const { presence, deliveries, events, metrics, limits } = deps;
  const connectLog = createLogThrottle();

  // Pushes go to the driver's room; the Redis adapter reaches whichever node holds the socket.
  events.on('delivery:assigned', ({ driverId, assignment }) => nsp.to(driverRoom(driverId)).emit('assignment', assignment));
  events.on('driver:revoked', ({ driverId }) => nsp.in(driverRoom(driverId)).disconnectSockets(true));
  events.on('delivery:cancelled', ({ driverId, deliveryId, reason }) =>
    nsp.to(driverRoom(driverId)).emit('delivery:cancelled', { deliveryId, reason }),
  );

  nsp.use((socket, next) => {
    if (socket.data.role !== 'driver') return next(Object.assign(new Error('FORBIDDEN'), { data: { code: 'FORBIDDEN', message: 'driver token required' } }));
    next();
  });

  // A revoked token (the driver's token version moved on) or a removed driver is refused at the door.
  nsp.use(async (socket, next) => {
    try {
      const current = (await deps.drivers.tokenVersions([socket.data.subject])).get(socket.data.subject);
      if (current !== undefined && (socket.data.tokenVersion ?? 0) === current) return next();
      next(Object.assign(new Error('TOKEN_INVALID'), { data: { code: 'TOKEN_INVALID', message: current === undefined ? 'no such driver' : 'token revoked' } }));
    } catch {
      next(Object.assign(new Error('SERVICE_UNAVAILABLE'), { data: { code: 'SERVICE_UNAVAILABLE', message: 'try again shortly' } }));
    }
  });

  // Per driver, not per address: the newest connection wins anyway, so this only caps how often it may win.
  nsp.use(async (socket, next) => {
    const driverId = socket.data.subject;
    const retryAfterMs = await limits.consume('driverConnect', driverId);
    if (retryAfterMs === null) return next();
    metrics.rateLimited.inc({ event: 'connect' });
    const skipped = connectLog.take(driverId, retryAfterMs);
    if (skipped !== null) deps.logger.warn({ driver: driverId, retryAfterMs, refusedSinceLastLine: skipped }, 'driver handshake rate limited');
    next(Object.assign(new Error('RATE_LIMITED'), { data: rateLimitedBody('connections for this driver', retryAfterMs) }));
  });

  nsp.on('connection', async (socket) => {
    const driverId = socket.data.subject;
    const log = deps.logger.child({ socket: socket.id, driver: driverId });
    metrics.socketsConnected.inc({ namespace: '/drivers' });
    const edge = { logger: log, metrics };
    // Budgets are per driver (the token's subject), so they hold across reconnects and across nodes.
    const locationEdge = { ...edge, limit: () => limits.consume('location', driverId) };
    const actionEdge = { ...edge, limit: () => limits.consume('driverAction', driverId) };
    // Handlers are registered before any await so no early event is lost.
    refuseOtherEvents(socket, ['location', 'status', 'delivery:update'], edge);
    onEvent(socket, 'location', locationEdge, (payload) => {
      const parsed = parsePayload(locationPayload, payload, 'location');
      const fixes = Array.isArray(parsed) ? parsed : [parsed];
      presence.acceptFixes(driverId, fixes);
      return { accepted: fixes.length };
    });
    onEvent(socket, 'status', actionEdge, async (payload) => {
      const { status } = parsePayload(driverStatusPayload, payload, 'status');
      return { status: await presence.setDuty(driverId, status) };
    });
    onEvent(socket, 'delivery:update', actionEdge, async (payload) => {
      const update = parsePayload(deliveryUpdatePayload, payload, 'delivery update');
      return { delivery: await deliveries.updateFromDriver(driverId, update) };
    });
    socket.on('disconnect', (reason) => {
      metrics.socketsConnected.dec({ namespace: '/drivers' });
      presence.disconnect(driverId, socket.id).catch((err) => log.warn({ err: (err as Error).message }, 'disconnect bookkeeping failed'));
      log.debug({ reason }, 'driver disconnected');
    });

    try {
      // One connection speaks for a driver: the newest wins, on whichever node the old one lives.
      socket.join(driverRoom(driverId));
      nsp.in(driverRoom(driverId)).except(socket.id).disconnectSockets(true);
      const session = await presence.connect(driverId, socket.id);
      if (!socket.connected) return;
      socket.emit('session', session);
      if (session.activeDelivery) socket.emit('assignment', session.activeDelivery);
      log.debug({ status: session.status }, 'driver connected');
    } catch (err) {
      const code = err instanceof HubError ? err.code : 'SERVICE_UNAVAILABLE';
      log.warn({ code, err: (err as Error).message }, 'driver session could not start');
      socket.disconnect(true);
    }
  });
}
