import type { OrderReadyReply, SellerOrderReady } from '#shared/schemas.js';
import type { Candidate, CandidateExplanation, DeliveriesStore, DeliveryRow } from '../deliveries/deliveries.store.js';
import type { DeliveryAnnouncer } from '../deliveries/delivery-announcer.js';
import { BUSY_WINDOW_MS, createBatchWindow } from '../platform/batch-window.js';
import { HubError } from '../platform/errors.js';
import type { HubEvents } from '../platform/hub-events.js';
import type { Logger } from '../platform/logger.js';
import type { Metrics } from '../platform/metrics.js';
import type { CandidatePool } from '../presence/nearest-candidates.js';
import type { PresenceService } from '../presence/presence.service.js';
import { type EndedOffer, type OffersStore, toOfferPush } from './offers.store.js';
import { type CandidateInput, inFairnessBand, rankCandidates, type ScoreFacts, type ScoredCandidate } from './scoring.js';
import type { TrackingLinks } from '../tracking/tracking-links.js';

/** Which pools an order's candidates come from, in order (fleets/fleet-directory.ts). */
export interface PoolPlanner {
  poolsFor(sellerId: string | null | undefined): CandidatePool[];
}

export interface DispatchDeps {
  deliveries: Pick<DeliveriesStore, 'createAndAssign' | 'assignPending' | 'assignOldestPendingTo' | 'pending' | 'get' | 'takenFrom' | 'anyPending'> &
    Partial<Pick<DeliveriesStore, 'oldestPendingFor'>>;
  presence: Pick<PresenceService, 'nearestCandidates'>;
  /** The fairness facts of the score; absent: ranked by distance alone. */
  scoreFacts?: (driverIds: readonly string[]) => Promise<ReadonlyMap<string, ScoreFacts>>;
  /** Seller fleets; absent: one pool, every driver. */
  pools?: PoolPlanner;
  /** Offer mode's store (DISPATCH_MODE=offer). */
  offers?: Pick<OffersStore, 'offerNext' | 'expireDue' | 'openFor'>;
  announce: DeliveryAnnouncer;
  events: HubEvents;
  logger: Logger;
  metrics: Pick<Metrics, 'assignments' | 'assignmentSeconds' | 'offers'>;
  /** The customer's tracking link, in every answer to the webhook. */
  links: TrackingLinks;
  config: {
    maxRadiusKm: number;
    pendingRetryMs: number;
    /** FAIRNESS_BAND_METERS (default 500). */
    fairnessBandMeters?: number;
    /** DISPATCH_MODE (default assign). */
    mode?: 'assign' | 'offer';
    offerTimeoutSeconds?: number;
    offerMaxAttempts?: number;
    /** How often this node looks for offers past their deadline (default 500 ms). */
    offerSweepMs?: number;
  };
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

export function replyFor(row: DeliveryRow, idempotent: boolean, links: TrackingLinks, offerExpiresAt: Date | null = null): OrderReadyReply {
  const trackingUrl = links.urlFor(row.trackingToken);
  if (row.status === 'OFFERED' && row.driverId && offerExpiresAt) {
    return { status: 'OFFERED', deliveryId: row.id, sellerOrderId: row.sellerOrderId, driverId: row.driverId, offerExpiresAt: offerExpiresAt.toISOString(), idempotent, trackingUrl };
  }
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
    // An OFFERED row without its offer (it ended meanwhile) answers as it will be: PENDING.
    status: row.status === 'OFFERED' ? 'PENDING' : (row.status as Exclude<typeof row.status, 'ASSIGNED' | 'OFFERED'>),
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
  const band = deps.config.fairnessBandMeters ?? 500;
  const offerMode = deps.config.mode === 'offer' && deps.offers !== undefined;
  const maxAttempts = deps.config.offerMaxAttempts ?? 5;
  let timer: NodeJS.Timeout | undefined;
  let sweepTimer: NodeJS.Timeout | undefined;

  /**
   * The candidates of an order, pool by pool (the seller's fleet, then the shared pool unless the
   * fleet is exclusive), ranked by the score (scoring.ts), with every term for the record. The
   * fairness facts are read only when two or more drivers share a band: usually one is nearest.
   */
  async function rankedCandidates(
    point: { lat: number; lng: number },
    count: number,
    passOver: ReadonlySet<string> | undefined,
    sellerId: string | null | undefined,
    /** `claim`: the facts are left to the webhook's claim, which reads them and ranks the band itself. */
    facts: 'read' | 'claim' = 'read',
  ): Promise<{ source: 'redis' | 'postgres'; candidates: Candidate[]; explain: CandidateExplanation | undefined; bandRankedByClaim: boolean }> {
    const pools = deps.pools?.poolsFor(sellerId) ?? [undefined];
    const found: { candidate: Candidate; input: CandidateInput }[] = [];
    let source: 'redis' | 'postgres' = 'redis';
    for (const pool of pools) {
      const result = pool === undefined ? await presence.nearestCandidates(point, count, passOver) : await presence.nearestCandidates(point, count, passOver, pool);
      source = result.source;
      const fleet = pool?.fleet ?? null;
      for (const candidate of result.candidates) found.push({ candidate, input: { driverId: candidate.driverId, distanceMeters: candidate.distanceMeters, pool: fleet === null ? 'shared' : 'fleet', fleet } });
    }
    if (found.length === 0) return { source, candidates: [], explain: undefined, bandRankedByClaim: false };
    const inputs = found.map((f) => f.input);
    const contenders = inFairnessBand(inputs, band);
    const compare = deps.scoreFacts !== undefined && contenders.length > 1;
    const known = compare && facts === 'read' ? await deps.scoreFacts!(contenders.map((c) => c.driverId)) : new Map<string, ScoreFacts>();
    const scored = rankCandidates(inputs, known, band);
    const byId = new Map(found.map((f) => [f.candidate.driverId, f.candidate]));
    const terms = new Map<string, ScoredCandidate>(scored.map((c) => [c.driverId, c]));
    return { source, candidates: scored.map((c) => byId.get(c.driverId)!), explain: { pooled: deps.pools !== undefined, terms }, bandRankedByClaim: compare && facts === 'claim' };
  }

  /** Offer mode: the next driver gets the delivery's offer (never one asked before); null when nobody could be reserved. */
  async function offerPendingRow(row: DeliveryRow, wait = false): Promise<DeliveryRow | null> {
    const passOver = await deliveries.takenFrom(row.id);
    const { source, candidates, explain } = await rankedCandidates({ lat: row.pickupLat, lng: row.pickupLng }, CANDIDATES, passOver, row.sellerId);
    if (candidates.length === 0) return null;
    const result = await deps.offers!.offerNext({ deliveryId: row.id, candidates, explain, timeoutSeconds: deps.config.offerTimeoutSeconds ?? 20, wait });
    if (!result) return null;
    metrics.offers.inc({ outcome: 'made' });
    log.info({ delivery: row.id, driver: result.offer.driverId, attempt: result.offer.attempt, expiresAt: result.offer.expiresAt, source }, 'delivery offered');
    await announce({ delivery: result.delivery, previousStatus: 'PENDING', offer: toOfferPush(result.delivery, result.offer) });
    return result.delivery;
  }

  /**
   * An offer ended unanswered or declined: the delivery is PENDING again and the freed driver told
   * the map; the next candidate gets the offer while attempts remain. Past OFFER_MAX_ATTEMPTS the
   * delivery waits like any other PENDING one.
   */
  async function offerEnded(ended: EndedOffer): Promise<void> {
    await announce({ delivery: ended.delivery, previousStatus: 'OFFERED', released: ended.released });
    if (ended.offer.attempt < maxAttempts) await offerPendingRow(ended.delivery);
  }

  async function sweepOffers(): Promise<number> {
    const expired = await deps.offers!.expireDue(50);
    for (const ended of expired) {
      metrics.offers.inc({ outcome: 'expired' });
      log.info({ delivery: ended.delivery.id, driver: ended.offer.driverId, attempt: ended.offer.attempt }, 'offer expired');
      events.emit('delivery:cancelled', { driverId: ended.offer.driverId, deliveryId: ended.delivery.id, reason: 'offer expired' });
      await offerEnded(ended).catch((err) => log.warn({ delivery: ended.delivery.id, err: (err as Error).message }, 'next offer failed'));
    }
    return expired.length;
  }

  /**
   * One PENDING delivery against the nearest free drivers, past those it was taken from (sent back
   * to assignment); null when nobody could be claimed.
   */
  async function assignPendingRow(row: DeliveryRow): Promise<DeliveryRow | null> {
    if (offerMode) return offerPendingRow(row);
    const passOver = await deliveries.takenFrom(row.id);
    const { source, candidates, explain } = await rankedCandidates({ lat: row.pickupLat, lng: row.pickupLng }, CANDIDATES, passOver, row.sellerId);
    if (candidates.length === 0) return null;
    const result = explain ? await deliveries.assignPending(row.id, candidates, explain) : await deliveries.assignPending(row.id, candidates);
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
    if (offerMode) {
      const row = await deliveries.oldestPendingFor?.({ id: driverId, ...position }, deps.config.maxRadiusKm * 1000);
      if (!row) return;
      const result = await deps.offers!.offerNext({
        deliveryId: row.delivery.id,
        candidates: [{ driverId, distanceMeters: row.distanceMeters }],
        explain: row.explain,
        timeoutSeconds: deps.config.offerTimeoutSeconds ?? 20,
      });
      if (!result) return;
      metrics.offers.inc({ outcome: 'made' });
      log.info({ delivery: result.delivery.id, driver: driverId }, 'pending delivery offered to freed driver');
      await announce({ delivery: result.delivery, previousStatus: 'PENDING', offer: toOfferPush(result.delivery, result.offer) });
      return;
    }
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
    // A reconnect storm is a stream of drivers coming free: one look for waiting deliveries per busy window, not per few drivers.
    maxWindowMs: BUSY_WINDOW_MS * 5,
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
      if (offerMode) return orderReadyOffered(order);
      const started = performance.now();
      // The fairness facts are read by the claim itself: one round trip to PostgreSQL per order, not two.
      const { source, candidates, explain, bandRankedByClaim } = await rankedCandidates(order.pickup, CANDIDATES, undefined, order.sellerId, 'claim');
      const outcome = explain ? await deliveries.createAndAssign(order, candidates, explain, bandRankedByClaim ? 'band' : 'as-given') : await deliveries.createAndAssign(order, candidates);
      if (!outcome.created) return answerRetry(outcome.delivery, order);
      let { delivery, chosen } = outcome;
      if (!chosen && candidates.length >= CANDIDATES) {
        // Every proposed driver was claimed by a concurrent order: look further before calling it PENDING.
        const tried = new Set(candidates.map((c) => c.driverId));
        const widened = await rankedCandidates(order.pickup, CANDIDATES * 6, undefined, order.sellerId);
        const wider = widened.candidates.filter((c) => !tried.has(c.driverId));
        const second = wider.length > 0 ? (widened.explain ? await deliveries.assignPending(delivery.id, wider, widened.explain) : await deliveries.assignPending(delivery.id, wider)) : null;
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

    /** Offer mode: expires offers past their deadline now (what every node's timer runs). */
    sweepOffers: () => (offerMode ? sweepOffers() : Promise.resolve(0)),

    /** After a driver declined: the delivery is PENDING again and the next candidate is asked. */
    offerEnded,

    start(): void {
      timer = setInterval(() => {
        assignPendingNow().catch((err) => log.warn({ err: (err as Error).message }, 'pending retry failed'));
      }, deps.config.pendingRetryMs);
      timer.unref();
      if (offerMode) {
        let sweeping = false;
        sweepTimer = setInterval(() => {
          if (sweeping) return;
          sweeping = true;
          sweepOffers()
            .catch((err) => log.warn({ err: (err as Error).message }, 'offer sweep failed'))
            .finally(() => {
              sweeping = false;
            });
        }, deps.config.offerSweepMs ?? 500);
        sweepTimer.unref();
      }
    },

    stop(): void {
      clearInterval(timer);
      clearInterval(sweepTimer);
    },
  };

  /** Offer mode's webhook: the delivery is recorded PENDING, then offered to the best candidate. */
  async function orderReadyOffered(order: SellerOrderReady): Promise<OrderReadyReply> {
    const outcome = await deliveries.createAndAssign(order, []);
    if (!outcome.created) return answerRetry(outcome.delivery, order);
    await announce({ delivery: outcome.delivery, previousStatus: null });
    // Waits for a pending pass that took the new delivery meanwhile, and answers what it did.
    const offered = (await offerPendingRow(outcome.delivery, true)) ?? (await deliveries.get(outcome.delivery.id)) ?? outcome.delivery;
    if (offered.status === 'PENDING') log.info({ delivery: offered.id, sellerOrderId: order.sellerOrderId }, 'delivery pending: no driver free');
    return replyWithOffer(offered, false);
  }

  async function replyWithOffer(row: DeliveryRow, idempotent: boolean): Promise<OrderReadyReply> {
    if (row.status !== 'OFFERED' || !deps.offers) return replyFor(row, idempotent, deps.links);
    const open = await deps.offers.openFor(row.id);
    return replyFor(row, idempotent, deps.links, open?.expiresAt ?? null);
  }

  async function answerRetry(row: DeliveryRow, order: SellerOrderReady): Promise<OrderReadyReply> {
    if (!samePlaces(row, order)) {
      throw new HubError('CONFLICT', 'sellerOrderId already used with a different pickup or dropoff', {
        deliveryId: row.id,
      });
    }
    return replyWithOffer(row, true);
  }
}

export type DispatchService = ReturnType<typeof createDispatchService>;
