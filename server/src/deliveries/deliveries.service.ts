import type { DeliveryStatus, DeliveryUpdatePayload, DeliveryView, ListDeliveriesQuery, OfferAcceptPayload, OfferDeclinePayload } from '#shared/schemas.js';
import { HubError } from '../platform/errors.js';
import type { HubEvents } from '../platform/hub-events.js';
import type { Logger } from '../platform/logger.js';
import type { Metrics } from '../platform/metrics.js';
import type { PushesStore } from '../pushes/pushes.store.js';
import type { z } from 'zod';
import type { deliveryDetail } from '#shared/replies.js';
import type { EndedOffer, OffersStore } from '../dispatch/offers.store.js';
import type { StoredCandidate } from '../platform/schema.js';
import { type DeliveriesStore, type TransitionResult, toDeliveryView } from './deliveries.store.js';
import type { DeliveryAnnouncer } from './delivery-announcer.js';

/** Where each state may be reached from. FAILED is allowed before pickup too: a driver may not reach the shop. */
const ALLOWED_FROM: Record<'PICKED_UP' | 'DELIVERED' | 'FAILED' | 'CANCELLED', readonly DeliveryStatus[]> = {
  PICKED_UP: ['ASSIGNED'],
  DELIVERED: ['PICKED_UP'],
  FAILED: ['ASSIGNED', 'PICKED_UP'],
  CANCELLED: ['PENDING', 'OFFERED', 'ASSIGNED', 'PICKED_UP'],
};

/** A stored candidate as the admin view shows it. */
export type CandidateView = z.infer<typeof deliveryDetail>['candidates'][number];

export interface DeliveriesDeps {
  store: DeliveriesStore;
  metrics?: Pick<Metrics, 'offers' | 'assignments'>;
  /** Drivers' answers to offers; `ended` frees the delivery for the next candidate. */
  offerAnswers?: { store: Pick<OffersStore, 'accept' | 'decline'>; ended: (ended: EndedOffer) => Promise<void> };
  /** Offer mode's store: the detail shows a delivery's offers, the dispatchers an open one's deadline. */
  offers?: Pick<OffersStore, 'forDelivery' | 'deadlines'>;
  pushes: Pick<PushesStore, 'forDelivery'>;
  announce: DeliveryAnnouncer;
  events: HubEvents;
  logger: Logger;
  /** Tries to assign one PENDING delivery now (the dispatch service's pending path). */
  assignNow?: (deliveryId: string) => Promise<unknown>;
}

/** Who changed a delivery, as the audit trail names it: `webhook`, `hub`, `driver:<id>`, `dispatcher:<subject>`, `admin`. */
export type Actor = string;

const noOffers = async (): Promise<z.infer<typeof deliveryDetail>['offers']> => [];

const optionalNumber = (v: unknown) => (typeof v === 'number' ? v : undefined);

function candidateView(c: StoredCandidate): CandidateView {
  const view: CandidateView = { driverId: c.driverId, distanceMeters: c.distanceMeters, outcome: c.outcome };
  const rank = optionalNumber(c.rank);
  if (rank !== undefined) view.rank = rank;
  if (c.pool === 'fleet' || c.pool === 'shared') view.pool = c.pool;
  if (typeof c.fleet === 'string' || c.fleet === null) view.fleet = c.fleet;
  const beyond = optionalNumber(c.beyondNearestMeters);
  if (beyond !== undefined) view.beyondNearestMeters = beyond;
  if (typeof c.withinBand === 'boolean') view.withinBand = c.withinBand;
  const band = optionalNumber(c.fairnessBandMeters);
  if (band !== undefined) view.fairnessBandMeters = band;
  if ('idleSeconds' in c) view.idleSeconds = optionalNumber(c.idleSeconds) ?? null;
  if ('deliveriesToday' in c) view.deliveriesToday = optionalNumber(c.deliveriesToday) ?? null;
  return view;
}

export function createDeliveriesService(deps: DeliveriesDeps) {
  const { store, events } = deps;
  const log = deps.logger.child({ component: 'deliveries' });

  /** OFFERED deliveries carry their open offer's deadline (the dispatchers' countdown). */
  async function withDeadlines(views: DeliveryView[]): Promise<DeliveryView[]> {
    const offered = views.filter((v) => v.status === 'OFFERED');
    if (offered.length === 0 || !deps.offers) return views;
    const deadlines = await deps.offers.deadlines(offered.map((v) => v.id));
    for (const v of offered) v.offerExpiresAt = deadlines.get(v.id) ?? null;
    return views;
  }

  async function afterTransition(result: TransitionResult): Promise<void> {
    if (result.changed) await deps.announce(result);
  }

  async function cancelDelivery(id: string, actor: Actor, why: string): Promise<{ delivery: DeliveryView; idempotent: boolean; trackingToken: string }> {
    const result = await store.transition({
      deliveryId: id,
      to: 'CANCELLED',
      allowedFrom: ALLOWED_FROM.CANCELLED,
      actor,
      reason: why,
    });
    if ('error' in result) {
      if (result.error === 'NOT_FOUND') throw new HubError('NOT_FOUND', 'delivery not found');
      throw new HubError('INVALID_TRANSITION', `cannot cancel a ${result.status ?? 'missing'} delivery`, { status: result.status });
    }
    if (result.changed && result.delivery.driverId) {
      events.emit('delivery:cancelled', { driverId: result.delivery.driverId, deliveryId: id, reason: why });
    }
    await afterTransition(result);
    if (result.changed) log.info({ delivery: id, sellerOrderId: result.delivery.sellerOrderId, actor }, 'delivery cancelled');
    return { delivery: toDeliveryView(result.delivery), idempotent: !result.changed, trackingToken: result.delivery.trackingToken };
  }

  return {
    /** A driver reports progress on its own delivery; repeating a report changes nothing. */
    async updateFromDriver(driverId: string, update: DeliveryUpdatePayload): Promise<DeliveryView> {
      const result = await store.transition({
        deliveryId: update.deliveryId,
        to: update.status,
        allowedFrom: ALLOWED_FROM[update.status],
        actor: `driver:${driverId}`,
        reason: update.reason ?? null,
        driverId,
      });
      if ('error' in result) {
        if (result.error === 'NOT_FOUND') throw new HubError('NOT_FOUND', 'delivery not found');
        if (result.error === 'FORBIDDEN') throw new HubError('FORBIDDEN', 'not your delivery');
        throw new HubError('INVALID_TRANSITION', `cannot move a ${result.status} delivery to ${update.status}`);
      }
      await afterTransition(result);
      if (result.changed) log.info({ delivery: update.deliveryId, driver: driverId, to: update.status }, 'delivery updated by driver');
      return toDeliveryView(result.delivery);
    },

    /**
     * The driver takes its offer (a conditional write: its own, open, before the deadline).
     * Repeating an acceptance answers the delivery again.
     */
    async acceptOffer(driverId: string, { deliveryId }: OfferAcceptPayload): Promise<DeliveryView> {
      if (!deps.offerAnswers) throw new HubError('NOT_FOUND', 'this hub makes no offers');
      const result = await deps.offerAnswers.store.accept(deliveryId, driverId);
      if ('error' in result) {
        if (result.error === 'NOT_FOUND') throw new HubError('NOT_FOUND', 'delivery not found');
        if (result.error === 'FORBIDDEN') throw new HubError('FORBIDDEN', 'this delivery was not offered to you');
        throw new HubError('OFFER_EXPIRED', 'the offer is no longer open');
      }
      if (result.changed) {
        deps.metrics?.offers.inc({ outcome: 'accepted' });
        deps.metrics?.assignments.inc({ source: 'offer-accepted' });
        log.info({ delivery: deliveryId, driver: driverId }, 'offer accepted');
        await deps.announce({ delivery: result.delivery, previousStatus: 'OFFERED' });
      }
      return toDeliveryView(result.delivery);
    },

    /** The driver turns its offer down: freed, and the next candidate is asked. Repeating it changes nothing. */
    async declineOffer(driverId: string, { deliveryId, reason }: OfferDeclinePayload): Promise<void> {
      if (!deps.offerAnswers) throw new HubError('NOT_FOUND', 'this hub makes no offers');
      const { ended } = deps.offerAnswers;
      const result = await deps.offerAnswers.store.decline(deliveryId, driverId, reason ?? null);
      if ('error' in result) {
        if (result.error === 'NOT_FOUND') throw new HubError('NOT_FOUND', 'delivery not found');
        if (result.error === 'FORBIDDEN') throw new HubError('FORBIDDEN', 'this delivery was not offered to you');
        throw new HubError('INVALID_TRANSITION', 'the offer was accepted: report the delivery as FAILED instead');
      }
      if (!result.changed) return;
      deps.metrics?.offers.inc({ outcome: 'declined' });
      log.info({ delivery: deliveryId, driver: driverId, reason }, 'offer declined');
      // The driver has its answer now; the next offer does not hold it up.
      void ended(result).catch((err) => log.warn({ delivery: deliveryId, err: (err as Error).message }, 'next offer failed'));
    },

    /** Vendure cancelled the order: from any non-terminal state; the driver is freed and told. */
    async cancel(sellerOrderId: string, reason: string | undefined): Promise<{ delivery: DeliveryView; idempotent: boolean; trackingToken: string }> {
      const row = await store.findBySellerOrderId(sellerOrderId);
      if (!row) throw new HubError('NOT_FOUND', 'no delivery for this sellerOrderId');
      return cancelDelivery(row.id, 'webhook', reason ?? 'cancelled by the shop');
    },

    /** A dispatcher (or the admin) cancels a delivery: the webhook's path, with the actor in the audit row. */
    async cancelById(id: string, actor: Actor, reason: string | undefined): Promise<{ delivery: DeliveryView; idempotent: boolean }> {
      const { delivery, idempotent } = await cancelDelivery(id, actor, reason ?? `cancelled by ${actor}`);
      return { delivery, idempotent };
    },

    /**
     * "Send back to assignment": a PENDING delivery is tried again now; an ASSIGNED one whose
     * driver's app never confirmed it is taken from that driver (who is freed and told) and
     * assigned again, never to that driver. Answers the delivery as it is afterwards: ASSIGNED to
     * someone else, or PENDING when nobody was free.
     */
    async redispatch(id: string, actor: Actor, reason: string | undefined): Promise<{ delivery: DeliveryView; takenFrom: string | null }> {
      const why = reason ?? `sent back to assignment by ${actor}`;
      const result = await store.unassign({ deliveryId: id, actor, reason: why });
      if ('error' in result) {
        if (result.error === 'NOT_FOUND') throw new HubError('NOT_FOUND', 'delivery not found');
        const refusal =
          result.status === 'ASSIGNED' && result.acknowledged
            ? "the driver's app confirmed this job: cancel it instead"
            : `a ${result.status} delivery cannot go back to assignment`;
        throw new HubError('INVALID_TRANSITION', refusal, { status: result.status, acknowledged: result.acknowledged ?? false });
      }
      if (result.changed && result.takenFrom) {
        events.emit('delivery:cancelled', { driverId: result.takenFrom, deliveryId: id, reason: why });
        log.info({ delivery: id, driver: result.takenFrom, actor }, 'delivery sent back to assignment');
      }
      await afterTransition(result);
      await deps.assignNow?.(id);
      const now = await store.get(id);
      return { delivery: toDeliveryView(now ?? result.delivery), takenFrom: result.takenFrom };
    },

    async get(id: string) {
      const row = await store.get(id);
      if (!row) throw new HubError('NOT_FOUND', 'delivery not found');
      const [events, pushes, offers] = await Promise.all([store.events(id), deps.pushes.forDelivery(id), deps.offers ? deps.offers.forDelivery(id) : noOffers()]);
      const view = await withDeadlines([toDeliveryView(row)]);
      return {
        ...view[0],
        distanceMeters: row.distanceMeters,
        assignedAt: row.assignedAt?.toISOString() ?? null,
        candidates: (row.candidates ?? []).map(candidateView),
        offers,
        events: events.map((e) => ({
          from: e.fromStatus,
          to: e.toStatus,
          actor: e.actor,
          driverId: e.driverId,
          reason: e.reason,
          at: e.at.toISOString(),
        })),
        /** What the driver's app was told and whether it confirmed it. */
        pushes,
      };
    },

    async list(query: ListDeliveriesQuery): Promise<DeliveryView[]> {
      return withDeadlines((await store.list(query)).map(toDeliveryView));
    },

    async listOpen(limit: number): Promise<DeliveryView[]> {
      return withDeadlines((await store.listOpen(limit)).map(toDeliveryView));
    },
  };
}

export type DeliveriesService = ReturnType<typeof createDeliveriesService>;
