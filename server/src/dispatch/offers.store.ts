import { and, asc, eq, sql } from 'drizzle-orm';
import type { OfferPush } from '#shared/schemas.js';
import type { Candidate, CandidateExplanation, DeliveryRow, OutboxWriter } from '../deliveries/deliveries.store.js';
import { jobFields, statusEvent } from '../deliveries/deliveries.store.js';
import type { DriverPresenceRow, DriversStore } from '../drivers/drivers.store.js';
import type { Database, DbOrTx, Tx } from '../platform/db.js';
import { deliveries, deliveryEvents, fleets, type OfferStatus, offers } from '../platform/schema.js';
import type { PushesStore } from '../pushes/pushes.store.js';

export type OfferRow = typeof offers.$inferSelect;

export function toOfferPush(delivery: DeliveryRow, offer: Pick<OfferRow, 'distanceMeters' | 'expiresAt'>): OfferPush {
  return {
    ...jobFields(delivery),
    distanceMeters: Math.round(offer.distanceMeters ?? 0),
    expiresAt: offer.expiresAt.toISOString(),
  };
}

/** An offer that ended without an acceptance: the delivery back to PENDING, the driver freed. */
export interface EndedOffer {
  delivery: DeliveryRow;
  offer: OfferRow;
  released: DriverPresenceRow | null;
}

export type AcceptOutcome = { delivery: DeliveryRow; changed: boolean } | { error: 'NOT_FOUND' | 'FORBIDDEN' | 'OFFER_EXPIRED' };
export type DeclineOutcome = (EndedOffer & { changed: true }) | { changed: false } | { error: 'NOT_FOUND' | 'FORBIDDEN' | 'INVALID_TRANSITION' };

/**
 * Offers in PostgreSQL (invariant 9). Every path locks the delivery row first, then writes the
 * offer with a condition on its status and deadline, so an accept, a decline and any number of
 * expiring nodes racing for one offer give exactly one outcome. Deadlines compare with
 * clock_timestamp(), not the transaction's start time.
 */
export function createOffersStore(deps: { database: Database; drivers: Pick<DriversStore, 'claim' | 'release'>; pushes: Pick<PushesStore, 'enqueue' | 'closeStale'>; outbox: OutboxWriter }) {
  const { database, drivers, pushes, outbox } = deps;
  const { db } = database;

  async function lockDelivery(tx: Tx, deliveryId: string, skipLocked: boolean): Promise<DeliveryRow | null> {
    const query = tx.select().from(deliveries).where(eq(deliveries.id, deliveryId));
    const [row] = await (skipLocked ? query.for('update', { skipLocked: true }) : query.for('update'));
    return row ?? null;
  }

  /** Drivers this delivery must not be offered to again: every one offered it before, and those it was taken from. */
  async function alreadyAsked(executor: DbOrTx, deliveryId: string): Promise<Set<string>> {
    const rows = await database.rows<{ driver_id: string }>(
      sql`select driver_id from offers where delivery_id = ${deliveryId}
        union select driver_id from delivery_events where delivery_id = ${deliveryId} and to_status = 'PENDING' and from_status is not null and driver_id is not null`,
      executor,
    );
    return new Set(rows.map((r) => r.driver_id));
  }

  /** The delivery goes back to PENDING and its driver is freed; the audit row names the driver (it is passed over from now on). */
  async function endOffer(tx: Tx, delivery: DeliveryRow, offer: OfferRow, actor: string, reason: string): Promise<EndedOffer> {
    const [updated] = await tx
      .update(deliveries)
      .set({ status: 'PENDING', driverId: null, distanceMeters: null, updatedAt: new Date() })
      .where(eq(deliveries.id, delivery.id))
      .returning();
    await tx.insert(deliveryEvents).values({ deliveryId: delivery.id, fromStatus: 'OFFERED', toStatus: 'PENDING', driverId: offer.driverId, actor, reason });
    await pushes.closeStale(tx, delivery.id, null);
    const released = await drivers.release(tx, offer.driverId, delivery.id);
    return { delivery: updated, offer, released };
  }

  async function offerOf(executor: DbOrTx, deliveryId: string, driverId: string): Promise<OfferRow | null> {
    const [row] = await executor
      .select()
      .from(offers)
      .where(and(eq(offers.deliveryId, deliveryId), eq(offers.driverId, driverId)))
      .limit(1);
    return row ?? null;
  }

  return {
    /**
     * Offers a PENDING delivery to the first candidate that can be reserved: the claim (BUSY, held by
     * this delivery) exactly as an assignment makes it, never to a driver asked before. Null when the
     * delivery is not PENDING (or another node holds it) or nobody could be reserved.
     */
    async offerNext(input: {
      deliveryId: string;
      candidates: readonly Candidate[];
      explain?: CandidateExplanation;
      timeoutSeconds: number;
      /** Wait for a node that holds the delivery (the webhook's first offer) rather than skip it. */
      wait?: boolean;
    }): Promise<{ delivery: DeliveryRow; offer: OfferRow } | null> {
      return db.transaction(async (tx) => {
        const row = await lockDelivery(tx, input.deliveryId, !input.wait);
        if (!row || row.status !== 'PENDING') return null;
        const asked = await alreadyAsked(tx, row.id);
        const [{ n }] = await database.rows<{ n: number }>(sql`select count(*)::int as n from offers where delivery_id = ${row.id}`, tx);
        const sharedClosed =
          input.explain?.pooled && row.sellerId
            ? ((await tx.select({ exclusive: fleets.exclusive }).from(fleets).where(eq(fleets.id, row.sellerId)).limit(1))[0]?.exclusive ?? false)
            : false;
        const ranked = input.candidates
          .filter((c) => !asked.has(c.driverId))
          .map((c) => ({ ...input.explain?.terms.get(c.driverId), ...c, outcome: 'not-tried' as string }));
        let chosen: (typeof ranked)[number] | null = null;
        for (const candidate of ranked) {
          const fleet = input.explain?.terms.get(candidate.driverId)?.fleet ?? null;
          const pool = input.explain?.pooled ? { fleet } : undefined;
          if (pool && fleet === null && sharedClosed) continue;
          if (await drivers.claim(tx, candidate.driverId, row.id, pool)) {
            candidate.outcome = 'offered';
            chosen = candidate;
            break;
          }
          candidate.outcome = 'taken';
        }
        if (!chosen) return null;
        const attempt = Number(n) + 1;
        const [offer] = await tx
          .insert(offers)
          .values({
            deliveryId: row.id,
            driverId: chosen.driverId,
            attempt,
            distanceMeters: chosen.distanceMeters,
            score: (input.explain?.terms.get(chosen.driverId) as Record<string, unknown> | undefined) ?? null,
            expiresAt: sql`clock_timestamp() + make_interval(secs => ${input.timeoutSeconds})`,
          })
          .returning();
        const [offered] = await tx
          .update(deliveries)
          .set({ status: 'OFFERED', driverId: chosen.driverId, distanceMeters: chosen.distanceMeters, candidates: ranked, updatedAt: new Date() })
          .where(eq(deliveries.id, row.id))
          .returning();
        await tx.insert(deliveryEvents).values({
          deliveryId: row.id,
          fromStatus: 'PENDING',
          toStatus: 'OFFERED',
          driverId: chosen.driverId,
          actor: 'hub',
          reason: `offer ${attempt}, until ${offer.expiresAt.toISOString()}`,
        });
        await pushes.enqueue(tx, { deliveryId: row.id, driverId: chosen.driverId, kind: 'offer', payload: toOfferPush(offered, offer) });
        return { delivery: offered, offer };
      });
    },

    /**
     * The driver takes the offer: `... where status = 'OPEN' and driver = me and deadline > now`.
     * Accepting again what this driver accepted answers the delivery again (changed: false).
     */
    async accept(deliveryId: string, driverId: string): Promise<AcceptOutcome> {
      return db.transaction(async (tx) => {
        const row = await lockDelivery(tx, deliveryId, false);
        if (!row) return { error: 'NOT_FOUND' as const };
        const [taken] = await database.rows<{ id: string }>(
          sql`update offers set status = 'ACCEPTED', answered_at = clock_timestamp()
            where delivery_id = ${deliveryId} and driver_id = ${driverId} and status = 'OPEN' and expires_at > clock_timestamp()
            returning id`,
          tx,
        );
        if (!taken) {
          const offer = await offerOf(tx, deliveryId, driverId);
          if (!offer) return { error: 'FORBIDDEN' as const };
          if (offer.status === 'ACCEPTED' && row.driverId === driverId) return { delivery: row, changed: false };
          return { error: 'OFFER_EXPIRED' as const };
        }
        const now = new Date();
        // The acceptance is the app's confirmation of the job: nothing further is pushed for it.
        const [assigned] = await tx
          .update(deliveries)
          .set({ status: 'ASSIGNED', assignedAt: now, acknowledgedAt: now, updatedAt: now })
          .where(eq(deliveries.id, row.id))
          .returning();
        await tx.insert(deliveryEvents).values({ deliveryId: row.id, fromStatus: 'OFFERED', toStatus: 'ASSIGNED', driverId, actor: `driver:${driverId}`, reason: 'offer accepted' });
        await outbox.enqueue(tx, statusEvent(assigned, 'OFFERED', null));
        await pushes.closeStale(tx, row.id, null);
        return { delivery: assigned, changed: true };
      });
    },

    /** The driver turns the offer down (before or after its deadline, as long as it is open). */
    async decline(deliveryId: string, driverId: string, reason: string | null): Promise<DeclineOutcome> {
      return db.transaction(async (tx) => {
        const row = await lockDelivery(tx, deliveryId, false);
        if (!row) return { error: 'NOT_FOUND' as const };
        const [declined] = await tx
          .update(offers)
          .set({ status: 'DECLINED', reason: reason ?? 'declined', answeredAt: sql`clock_timestamp()` })
          .where(and(eq(offers.deliveryId, deliveryId), eq(offers.driverId, driverId), eq(offers.status, 'OPEN')))
          .returning();
        if (!declined) {
          const offer = await offerOf(tx, deliveryId, driverId);
          if (!offer) return { error: 'FORBIDDEN' as const };
          if (offer.status === 'ACCEPTED') return { error: 'INVALID_TRANSITION' as const };
          return { changed: false as const };
        }
        const ended = await endOffer(tx, row, declined, `driver:${driverId}`, `offer declined${reason ? `: ${reason}` : ''}`);
        return { ...ended, changed: true as const };
      });
    },

    /**
     * Expires open offers past their deadline, whichever node made them: each in its own
     * transaction, skipping a delivery another node (or an answer) holds right now; the driver is
     * freed and told (`delivery:cancelled`). Safe on every node at once.
     */
    async expireDue(limit: number): Promise<EndedOffer[]> {
      const due = await database.rows<{ id: string; delivery_id: string }>(
        sql`select id, delivery_id from offers where status = 'OPEN' and expires_at <= clock_timestamp() order by expires_at limit ${limit}`,
      );
      const ended: EndedOffer[] = [];
      for (const { id, delivery_id: deliveryId } of due) {
        const result = await db.transaction(async (tx) => {
          const row = await lockDelivery(tx, deliveryId, true);
          if (!row) return null;
          const [expired] = await tx
            .update(offers)
            .set({ status: 'EXPIRED', reason: 'expired', answeredAt: sql`clock_timestamp()` })
            .where(and(eq(offers.id, id), eq(offers.status, 'OPEN'), sql`${offers.expiresAt} <= clock_timestamp()`))
            .returning();
          if (!expired) return null;
          const outcome = await endOffer(tx, row, expired, 'hub', 'offer expired');
          await pushes.enqueue(tx, { deliveryId, driverId: expired.driverId, kind: 'delivery:cancelled', payload: { deliveryId, reason: 'offer expired' } });
          return outcome;
        });
        if (result) ended.push(result);
      }
      return ended;
    },

    /** A cancelled delivery's open offer ends with it (in the cancel's transaction). */
    async cancelOpen(executor: DbOrTx, deliveryId: string, reason: string): Promise<void> {
      await database.rows(
        sql`update offers set status = 'CANCELLED', reason = ${reason}, answered_at = clock_timestamp() where delivery_id = ${deliveryId} and status = 'OPEN'`,
        executor,
      );
    },

    /** The open offer of a delivery, if any (the webhook's answer carries its deadline). */
    async openFor(deliveryId: string): Promise<OfferRow | null> {
      const [row] = await db
        .select()
        .from(offers)
        .where(and(eq(offers.deliveryId, deliveryId), eq(offers.status, 'OPEN')))
        .limit(1);
      return row ?? null;
    },

    /** Each given driver's open offer as its app receives it (a reconnect's `session`). */
    async openForDrivers(driverIds: readonly string[]): Promise<Map<string, OfferPush>> {
      if (driverIds.length === 0) return new Map();
      const rows = await db
        .select({ delivery: deliveries, offer: offers })
        .from(offers)
        .innerJoin(deliveries, eq(deliveries.id, offers.deliveryId))
        .where(and(eq(offers.status, 'OPEN'), sql`${offers.driverId} in (select jsonb_array_elements_text(${JSON.stringify(driverIds)}::jsonb)::uuid)`));
      return new Map(rows.map((r) => [r.offer.driverId, toOfferPush(r.delivery, r.offer)]));
    },

    /** Open offers' deadlines by delivery, for the dispatchers' view. */
    async deadlines(deliveryIds: readonly string[]): Promise<Map<string, string>> {
      if (deliveryIds.length === 0) return new Map();
      const rows = await db
        .select({ deliveryId: offers.deliveryId, expiresAt: offers.expiresAt })
        .from(offers)
        .where(and(eq(offers.status, 'OPEN'), sql`${offers.deliveryId} in (select jsonb_array_elements_text(${JSON.stringify(deliveryIds)}::jsonb)::uuid)`));
      return new Map(rows.map((r) => [r.deliveryId, r.expiresAt.toISOString()]));
    },

    /** Every offer of a delivery, first first, for the admin view. */
    async forDelivery(deliveryId: string) {
      const rows = await db.select().from(offers).where(eq(offers.deliveryId, deliveryId)).orderBy(asc(offers.attempt));
      return rows.map((o) => ({
        driverId: o.driverId,
        attempt: o.attempt,
        outcome: o.status as OfferStatus,
        reason: o.reason,
        distanceMeters: o.distanceMeters,
        score: o.score,
        offeredAt: o.createdAt.toISOString(),
        expiresAt: o.expiresAt.toISOString(),
        answeredAt: o.answeredAt?.toISOString() ?? null,
      }));
    },
  };
}

export type OffersStore = ReturnType<typeof createOffersStore>;
