import type { OrderReadyReply, SellerOrderReady } from '#shared/schemas.js';
import type { DeliveriesStore, DeliveryRow } from '../deliveries/deliveries.store.js';
import type { DeliveryAnnouncer } from '../deliveries/delivery-announcer.js';
import { createBatchWindow } from '../platform/batch-window.js';
import { HubError } from '../platform/errors.js';
import type { HubEvents } from '../platform/hub-events.js';
import type { Logger } from '../platform/logger.js';
import type { Metrics } from '../platform/metrics.js';
import type { PresenceService } from '../presence/presence.service.js';
import type { TrackingLinks } from '../tracking/tracking-links.js';

export interface DispatchDeps {
  deliveries: Pick<DeliveriesStore, 'createAndAssign' | 'assignPending' | 'assignOldestPendingTo' | 'pending' | 'get' | 'takenFrom' | 'anyPending'>;
  presence: Pick<PresenceService, 'nearestCandidates'>;
  announce: DeliveryAnnouncer;
  events: HubEvents;
  logger: Logger;
  metrics: Pick<Metrics, 'assignments' | 'assignmentSeconds'>;
  /** The customer's tracking link, in every answer to the webhook. */
  links: TrackingLinks;
  config: { maxRadiusKm: number; pendingRetryMs: number };
}

const CANDIDATES = 5;

/** Drivers coming free gather this long, so a reconnect storm asks once whether anything waits. */
const FREED_WINDOW_MS = 5;

function samePlaces(row: DeliveryRow, order: SellerOrderReady): boolean {
  return (
    row.pickupLat === order.pickup.lat &&
    row.pickupLng === order.pickup.lng &&
    row.dropoffLat === order.dropoff.lat &&
    row.dropoffLng === order.dropoff.lng
  );
}

export function replyFor(row: DeliveryRow, idempotent: boolean, links: TrackingLinks): OrderReadyReply {
  const trackingUrl = links.urlFor(row.trackingToken);
  if (row.status === 'ASSIGNED' && row.driverId) {
    return {
      status: 'ASSIGNED',
      deliveryId: row.id,
      sellerOrderId: row.sellerOrderId,
      driverId: row.driverId,
      distanceMeters: Math.round(row.distanceMeters ?? 0),
      idempotent,
      trackingUrl,
    };
  }
  return {
    status: row.status as Exclude<typeof row.status, 'ASSIGNED'>,
    deliveryId: row.id,
    sellerOrderId: row.sellerOrderId,
    driverId: row.driverId,
    idempotent,
    trackingUrl,
  };
}

export function createDispatchService(deps: DispatchDeps) {
  const { deliveries, presence, announce, events, metrics } = deps;
  const log = deps.logger.child({ component: 'dispatch' });
  let timer: NodeJS.Timeout | undefined;

  /**
   * One PENDING delivery against the nearest free drivers, past those it was taken from (sent back
   * to assignment); null when nobody could be claimed.
   */
  async function assignPendingRow(row: DeliveryRow): Promise<DeliveryRow | null> {
    const passOver = await deliveries.takenFrom(row.id);
    const { source, candidates } = await presence.nearestCandidates({ lat: row.pickupLat, lng: row.pickupLng }, CANDIDATES, passOver);
    if (candidates.length === 0) return null;
    const result = await deliveries.assignPending(row.id, candidates);
    if (!result) return null;
    metrics.assignments.inc({ source: `pending-${source}` });
    await announce({ delivery: result.delivery, previousStatus: 'PENDING' });
    return result.delivery;
  }

  /**
   * The waiting deliveries, oldest first. A driver who comes free during the pass may first show up
   * in the search of a newer delivery: the older ones nobody could take are then tried again before
   * it, so the oldest still goes first.
   */
  async function assignPendingNow(limit = 20): Promise<number> {
    let assigned = 0;
    const unplaced: DeliveryRow[] = [];
    for (const row of await deliveries.pending(limit)) {
      if (unplaced.length > 0 && (await presence.nearestCandidates({ lat: row.pickupLat, lng: row.pickupLng }, 1)).candidates.length > 0) {
        for (const older of [...unplaced]) {
          if (!(await assignPendingRow(older))) continue;
          assigned += 1;
          unplaced.splice(unplaced.indexOf(older), 1);
        }
      }
      if (await assignPendingRow(row)) assigned += 1;
      else unplaced.push(row);
    }
    return assigned;
  }

  async function offerPendingTo(driverId: string, position: { lat: number; lng: number }): Promise<void> {
    const result = await deliveries.assignOldestPendingTo({ id: driverId, ...position }, deps.config.maxRadiusKm * 1000);
    if (!result) return;
    metrics.assignments.inc({ source: 'driver-freed' });
    log.info({ delivery: result.delivery.id, driver: driverId }, 'pending delivery assigned to freed driver');
    await announce({ delivery: result.delivery, previousStatus: 'PENDING' });
  }

  /**
   * Drivers that came free, together: one look for any waiting delivery (there usually is none, and
   * a storm of reconnects is thousands of drivers coming free), then each driver in turn.
   */
  const freed = createBatchWindow<{ driverId: string; position: { lat: number; lng: number } }, void>({
    windowMs: FREED_WINDOW_MS,
    maxBatch: 1000,
    run: async (items) => {
      let waiting = await deliveries.anyPending();
      for (let i = 0; waiting && i < items.length; i++) {
        const { driverId, position } = items[i];
        await offerPendingTo(driverId, position).catch((err) => log.warn({ driver: driverId, err: (err as Error).message }, 'pending offer failed'));
        // The waiting deliveries may all be taken by now: the rest of the batch need not try.
        if (i % 20 === 19) waiting = await deliveries.anyPending();
      }
      return items.map(() => undefined);
    },
  });

  events.on('driver:status', ({ driverId, status, position }) => {
    if (status !== 'AVAILABLE' || !position) return;
    freed.add({ driverId, position }).catch((err) => log.warn({ driver: driverId, err: (err as Error).message }, 'pending offer failed'));
  });

  return {
    /** The webhook's work: idempotent by sellerOrderId, PostgreSQL judges the claim. */
    async orderReady(order: SellerOrderReady): Promise<OrderReadyReply> {
      const started = performance.now();
      const { source, candidates } = await presence.nearestCandidates(order.pickup, CANDIDATES);
      const outcome = await deliveries.createAndAssign(order, candidates);
      if (!outcome.created) return answerRetry(outcome.delivery, order);
      let { delivery, chosen } = outcome;
      if (!chosen && candidates.length >= CANDIDATES) {
        // Every proposed driver was claimed by a concurrent order: look further before calling it PENDING.
        const tried = new Set(candidates.map((c) => c.driverId));
        const wider = (await presence.nearestCandidates(order.pickup, CANDIDATES * 6)).candidates.filter((c) => !tried.has(c.driverId));
        const second = wider.length > 0 ? await deliveries.assignPending(delivery.id, wider) : null;
        if (second) ({ delivery, chosen } = second);
      }
      await announce({ delivery, previousStatus: chosen ? 'PENDING' : null });
      if (chosen) {
        metrics.assignments.inc({ source });
        metrics.assignmentSeconds.observe((performance.now() - started) / 1000);
      }
      log.info(
        { delivery: delivery.id, sellerOrderId: order.sellerOrderId, driver: chosen?.driverId ?? null, source },
        chosen ? 'delivery assigned' : 'delivery pending: no driver free',
      );
      return replyFor(delivery, false, deps.links);
    },

    assignPendingNow,

    /** Tries one delivery now, if it is still PENDING (a dispatcher sent it back to assignment). */
    async assignPendingDelivery(deliveryId: string): Promise<DeliveryRow | null> {
      const row = await deliveries.get(deliveryId);
      return row && row.status === 'PENDING' ? assignPendingRow(row) : null;
    },

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
    return replyFor(row, true, deps.links);
  }
}

export type DispatchService = ReturnType<typeof createDispatchService>;
