import type { DriverSession } from '#shared/events.js';
import type { OrderReadyReply, SellerOrderReady } from '#shared/schemas.js';
import { type DeliveriesStore, type DeliveryRow, toAssignmentPush, toDeliveryView } from '../deliveries/deliveries.store.js';
import { HubError } from '../platform/errors.js';
import type { HubEvents } from '../platform/hub-events.js';
import type { Logger } from '../platform/logger.js';
import type { Metrics } from '../platform/metrics.js';
import type { DriversStore } from '../drivers/drivers.store.js';
import type { PresenceService } from '../presence/presence.service.js';
import type { PresenceStore } from '../presence/presence.store.js';

export interface DispatchDeps {
  deliveries: DeliveriesStore;
  drivers: DriversStore;
  presenceStore: PresenceStore | null;
  presence: PresenceService;
  events: HubEvents;
  logger: Logger;
  metrics: Metrics;
  config: { maxRadiusKm: number; heartbeatTtlSeconds: number; pendingRetryMs: number };
}

/** Search radii in metres, small first: GEOSEARCH cost grows with the drivers inside the circle. */
export function searchRadii(maxRadiusKm: number): number[] {
  const max = maxRadiusKm * 1000;
  const steps = [1000, 3000, 8000, 20_000, 50_000, 150_000].filter((r) => r < max);
  return [...steps, max];
}

const CANDIDATES = 5;

function samePlaces(row: DeliveryRow, order: SellerOrderReady): boolean {
  return (
    row.pickupLat === order.pickup.lat &&
    row.pickupLng === order.pickup.lng &&
    row.dropoffLat === order.dropoff.lat &&
    row.dropoffLng === order.dropoff.lng
  );
}

export function replyFor(row: DeliveryRow, idempotent: boolean): OrderReadyReply {
  if (row.status === 'ASSIGNED' && row.driverId) {
    return {
      status: 'ASSIGNED',
      deliveryId: row.id,
      sellerOrderId: row.sellerOrderId,
      driverId: row.driverId,
      distanceMeters: Math.round(row.distanceMeters ?? 0),
      idempotent,
    };
  }
  return {
    status: row.status as Exclude<typeof row.status, 'ASSIGNED'>,
    deliveryId: row.id,
    sellerOrderId: row.sellerOrderId,
    driverId: row.driverId,
    idempotent,
  };
}

export function createDispatchService(deps: DispatchDeps) {
  const { deliveries, drivers, presenceStore, presence, events, metrics } = deps;
  const log = deps.logger.child({ component: 'dispatch' });
  const radii = searchRadii(deps.config.maxRadiusKm);
  let timer: NodeJS.Timeout | undefined;

  /** Nearest free drivers: Redis GEO when it answers, PostgreSQL's last known positions when not. */
  async function candidatesNear(point: { lat: number; lng: number }, count = CANDIDATES) {
    if (presenceStore && presence.redisUsable()) {
      try {
        for (const radius of radii) {
          const found = await presenceStore.nearest(point, radius, count);
          if (found.length > 0) return { source: 'redis' as const, candidates: found };
        }
        return { source: 'redis' as const, candidates: [] };
      } catch (err) {
        log.warn({ err: (err as Error).message }, 'redis search failed; using postgres');
      }
    }
    const candidates = await drivers.nearestAvailable(point, deps.config.maxRadiusKm * 1000, count, deps.config.heartbeatTtlSeconds);
    return { source: 'postgres' as const, candidates };
  }

  async function announce(row: DeliveryRow, previousStatus: DeliveryRow['status'] | null): Promise<void> {
    if (row.status === 'ASSIGNED' && row.driverId) {
      // The push goes first: the driver is waiting for it, and PostgreSQL already made the claim.
      events.emit('delivery:assigned', { driverId: row.driverId, assignment: toAssignmentPush(row) });
      await presence.claimed(row.driverId);
    }
    events.emit('delivery:updated', { delivery: toDeliveryView(row), previousStatus });
  }

  async function assignPendingNow(limit = 20): Promise<number> {
    let assigned = 0;
    for (const row of await deliveries.pending(limit)) {
      const { source, candidates } = await candidatesNear({ lat: row.pickupLat, lng: row.pickupLng });
      if (candidates.length === 0) continue;
      const result = await deliveries.assignPending(row.id, candidates);
      if (!result) continue;
      assigned += 1;
      metrics.assignments.inc({ source: `pending-${source}` });
      await announce(result.delivery, 'PENDING');
    }
    return assigned;
  }

  async function offerPendingTo(driverId: string, position: { lat: number; lng: number }): Promise<void> {
    const result = await deliveries.assignOldestPendingTo({ id: driverId, ...position }, deps.config.maxRadiusKm * 1000);
    if (!result) return;
    metrics.assignments.inc({ source: 'driver-freed' });
    log.info({ delivery: result.delivery.id, driver: driverId }, 'pending delivery assigned to freed driver');
    await announce(result.delivery, 'PENDING');
  }

  events.on('driver:status', ({ driverId, status, position }) => {
    if (status !== 'AVAILABLE' || !position) return;
    offerPendingTo(driverId, position).catch((err) =>
      log.warn({ driver: driverId, err: (err as Error).message }, 'pending offer failed'),
    );
  });

  return {
    /** The webhook's work: idempotent by sellerOrderId, PostgreSQL judges the claim. */
    async orderReady(order: SellerOrderReady): Promise<OrderReadyReply> {
      const started = performance.now();
      const { source, candidates } = await candidatesNear(order.pickup);
      const outcome = await deliveries.createAndAssign(order, candidates);
      if (!outcome.created) return answerRetry(outcome.delivery, order);
      let { delivery, chosen } = outcome;
      if (!chosen && candidates.length >= CANDIDATES) {
        // Every proposed driver was claimed by a concurrent order: look further before calling it PENDING.
        const tried = new Set(candidates.map((c) => c.driverId));
        const wider = (await candidatesNear(order.pickup, CANDIDATES * 6)).candidates.filter((c) => !tried.has(c.driverId));
        const second = wider.length > 0 ? await deliveries.assignPending(delivery.id, wider) : null;
        if (second) ({ delivery, chosen } = second);
      }
      await announce(delivery, chosen ? 'PENDING' : null);
      if (chosen) {
        metrics.assignments.inc({ source });
        metrics.assignmentSeconds.observe((performance.now() - started) / 1000);
      }
      log.info(
        { delivery: delivery.id, sellerOrderId: order.sellerOrderId, driver: chosen?.driverId ?? null, source },
        chosen ? 'delivery assigned' : 'delivery pending: no driver free',
      );
      return replyFor(delivery, false);
    },

    async activeAssignment(driverId: string): Promise<DriverSession['activeDelivery']> {
      const row = await deliveries.activeForDriver(driverId);
      return row ? toAssignmentPush(row) : null;
    },

    assignPendingNow,

    start(): void {
      timer = setInterval(() => {
        assignPendingNow().catch((err) => log.warn({ err: (err as Error).message }, 'pending retry failed'));
      }, deps.config.pendingRetryMs);
      timer.unref();
    },

    stop(): void {
      clearInterval(timer);
    },
  };

  function answerRetry(row: DeliveryRow, order: SellerOrderReady): OrderReadyReply {
    if (!samePlaces(row, order)) {
      throw new HubError('CONFLICT', 'sellerOrderId already used with a different pickup or dropoff', {
        deliveryId: row.id,
      });
    }
    return replyFor(row, true);
  }
}

export type DispatchService = ReturnType<typeof createDispatchService>;
