import { and, asc, desc, eq, sql } from 'drizzle-orm';
import type { AssignmentPush, DeliveryStatus, DeliveryView, ListDeliveriesQuery, SellerOrderReady } from '../../../shared/src/schemas.js';
import type { Database, DbOrTx, Tx } from '../platform/db.js';
import { deliveries, deliveryEvents } from '../platform/schema.js';
import type { DriversStore } from '../presence/drivers.store.js';
import { haversineSql } from '../presence/drivers.store.js';

export type DeliveryRow = typeof deliveries.$inferSelect;
export type Candidate = { driverId: string; distanceMeters: number };
export type RankedCandidate = Candidate & { outcome: 'chosen' | 'taken' | 'not-tried' };

/** What the outbox needs to write a status event in the caller's transaction. */
export interface OutboxWriter {
  enqueue(executor: DbOrTx, event: { deliveryId: string; type: string; payload: unknown }): Promise<unknown>;
}

export interface TransitionResult {
  delivery: DeliveryRow;
  previousStatus: DeliveryStatus;
  changed: boolean;
  /** The driver freed by a terminal transition, with its new presence row. */
  released: { id: string; status: string; lat: number | null; lng: number | null } | null;
}

const OUTBOX_TYPE: Partial<Record<DeliveryStatus, string>> = {
  ASSIGNED: 'delivery.assigned',
  PICKED_UP: 'delivery.picked_up',
  DELIVERED: 'delivery.delivered',
  FAILED: 'delivery.failed',
  CANCELLED: 'delivery.cancelled',
};

export function toDeliveryView(row: DeliveryRow): DeliveryView {
  return {
    id: row.id,
    sellerOrderId: row.sellerOrderId,
    orderCode: row.orderCode,
    status: row.status,
    driverId: row.driverId,
    pickup: { lat: row.pickupLat, lng: row.pickupLng, ...(row.pickupAddress ? { address: row.pickupAddress } : {}) },
    dropoff: { lat: row.dropoffLat, lng: row.dropoffLng, ...(row.dropoffAddress ? { address: row.dropoffAddress } : {}) },
    createdAt: row.createdAt.toISOString(),
    updatedAt: row.updatedAt.toISOString(),
  };
}

export function toAssignmentPush(row: DeliveryRow): AssignmentPush {
  const view = toDeliveryView(row);
  return {
    deliveryId: row.id,
    sellerOrderId: row.sellerOrderId,
    orderCode: row.orderCode,
    pickup: view.pickup,
    dropoff: view.dropoff,
    assignedAt: (row.assignedAt ?? row.updatedAt).toISOString(),
  };
}

export function createDeliveriesStore(deps: { database: Database; drivers: DriversStore; outbox: OutboxWriter }) {
  const { database, drivers, outbox } = deps;
  const { db } = database;

  async function record(
    tx: Tx,
    row: DeliveryRow,
    from: DeliveryStatus | null,
    actor: string,
    reason: string | null,
  ): Promise<void> {
    await tx.insert(deliveryEvents).values({
      deliveryId: row.id,
      fromStatus: from,
      toStatus: row.status,
      driverId: row.driverId,
      actor,
      reason,
    });
    const type = OUTBOX_TYPE[row.status];
    if (type && from !== null) {
      await outbox.enqueue(tx, {
        deliveryId: row.id,
        type,
        payload: {
          deliveryId: row.id,
          sellerOrderId: row.sellerOrderId,
          orderCode: row.orderCode,
          status: row.status,
          previousStatus: from,
          driverId: row.driverId,
          reason,
          at: row.updatedAt.toISOString(),
        },
      });
    }
  }

  /** Tries candidates nearest first; the first successful conditional claim wins. */
  async function claimFirst(tx: Tx, candidates: readonly Candidate[]): Promise<{ chosen: Candidate | null; ranked: RankedCandidate[] }> {
    const ranked: RankedCandidate[] = candidates.map((c) => ({ ...c, outcome: 'not-tried' }));
    for (const candidate of ranked) {
      if (await drivers.claim(tx, candidate.driverId)) {
        candidate.outcome = 'chosen';
        return { chosen: candidate, ranked };
      }
      candidate.outcome = 'taken';
    }
    return { chosen: null, ranked };
  }

  async function assignInTx(tx: Tx, row: DeliveryRow, chosen: Candidate, ranked: RankedCandidate[]): Promise<DeliveryRow> {
    const now = new Date();
    const [assigned] = await tx
      .update(deliveries)
      .set({ status: 'ASSIGNED', driverId: chosen.driverId, distanceMeters: chosen.distanceMeters, candidates: ranked, assignedAt: now, updatedAt: now })
      .where(eq(deliveries.id, row.id))
      .returning();
    await record(tx, assigned, row.status, 'hub', null);
    return assigned;
  }

  return {
    async findBySellerOrderId(sellerOrderId: string): Promise<DeliveryRow | null> {
      const [row] = await db.select().from(deliveries).where(eq(deliveries.sellerOrderId, sellerOrderId)).limit(1);
      return row ?? null;
    },

    async get(id: string): Promise<DeliveryRow | null> {
      const [row] = await db.select().from(deliveries).where(eq(deliveries.id, id)).limit(1);
      return row ?? null;
    },

    async events(id: string) {
      return db.select().from(deliveryEvents).where(eq(deliveryEvents.deliveryId, id)).orderBy(asc(deliveryEvents.id));
    },

    async list(query: ListDeliveriesQuery): Promise<DeliveryRow[]> {
      const conditions = [
        query.status ? eq(deliveries.status, query.status) : undefined,
        query.driverId ? eq(deliveries.driverId, query.driverId) : undefined,
      ].filter((c) => c !== undefined);
      return db
        .select()
        .from(deliveries)
        .where(conditions.length ? and(...conditions) : undefined)
        .orderBy(desc(deliveries.createdAt), desc(deliveries.id))
        .limit(query.limit);
    },

    async listOpen(limit: number): Promise<DeliveryRow[]> {
      return db
        .select()
        .from(deliveries)
        .where(sql`${deliveries.status} in ('PENDING', 'ASSIGNED', 'PICKED_UP')`)
        .orderBy(desc(deliveries.createdAt))
        .limit(limit);
    },

    async activeForDriver(driverId: string): Promise<DeliveryRow | null> {
      const [row] = await db
        .select()
        .from(deliveries)
        .where(and(eq(deliveries.driverId, driverId), sql`${deliveries.status} in ('ASSIGNED', 'PICKED_UP')`))
        .limit(1);
      return row ?? null;
    },

    /**
     * Creates the delivery and claims the first free candidate in one transaction. Returns null
     * when the sellerOrderId already exists (a retry or a concurrent twin): the caller answers from it.
     */
    async createAndAssign(
      order: SellerOrderReady,
      candidates: readonly Candidate[],
    ): Promise<{ delivery: DeliveryRow; chosen: Candidate | null } | null> {
      return db.transaction(async (tx) => {
        const [created] = await tx
          .insert(deliveries)
          .values({
            sellerOrderId: order.sellerOrderId,
            orderCode: order.orderCode,
            sellerId: order.sellerId ?? null,
            status: 'PENDING',
            pickupLat: order.pickup.lat,
            pickupLng: order.pickup.lng,
            pickupAddress: order.pickup.address ?? null,
            dropoffLat: order.dropoff.lat,
            dropoffLng: order.dropoff.lng,
            dropoffAddress: order.dropoff.address ?? null,
            customer: order.customer ?? null,
            notes: order.notes ?? null,
          })
          .onConflictDoNothing({ target: deliveries.sellerOrderId })
          .returning();
        if (!created) return null;
        await record(tx, created, null, 'webhook', null);
        const { chosen, ranked } = await claimFirst(tx, candidates);
        if (!chosen) {
          if (ranked.length > 0) await tx.update(deliveries).set({ candidates: ranked }).where(eq(deliveries.id, created.id));
          return { delivery: created, chosen: null };
        }
        return { delivery: await assignInTx(tx, created, chosen, ranked), chosen };
      });
    },

    /** Pending deliveries, oldest first, for the periodic retry. */
    async pending(limit: number): Promise<DeliveryRow[]> {
      return db.select().from(deliveries).where(eq(deliveries.status, 'PENDING')).orderBy(asc(deliveries.createdAt)).limit(limit);
    },

    /** Assigns one PENDING delivery to the first free candidate; skips a delivery another node is handling. */
    async assignPending(deliveryId: string, candidates: readonly Candidate[]): Promise<{ delivery: DeliveryRow; chosen: Candidate } | null> {
      return db.transaction(async (tx) => {
        const [row] = await tx
          .select()
          .from(deliveries)
          .where(and(eq(deliveries.id, deliveryId), eq(deliveries.status, 'PENDING')))
          .for('update', { skipLocked: true });
        if (!row) return null;
        const { chosen, ranked } = await claimFirst(tx, candidates);
        if (!chosen) return null;
        return { delivery: await assignInTx(tx, row, chosen, ranked), chosen };
      });
    },

    /** The oldest PENDING delivery whose pickup is within reach of a driver that just became free. */
    async assignOldestPendingTo(
      driver: { id: string; lat: number; lng: number },
      radiusMeters: number,
    ): Promise<{ delivery: DeliveryRow; chosen: Candidate } | null> {
      return db.transaction(async (tx) => {
        const distance = haversineSql(deliveries.pickupLat, deliveries.pickupLng, driver.lat, driver.lng);
        const [row] = await tx
          .select({ delivery: deliveries, distance })
          .from(deliveries)
          .where(and(eq(deliveries.status, 'PENDING'), sql`${distance} <= ${radiusMeters}`))
          .orderBy(asc(deliveries.createdAt))
          .limit(1)
          .for('update', { skipLocked: true });
        if (!row) return null;
        const candidate = { driverId: driver.id, distanceMeters: Number(row.distance) };
        const { chosen, ranked } = await claimFirst(tx, [candidate]);
        if (!chosen) return null;
        return { delivery: await assignInTx(tx, row.delivery, chosen, ranked), chosen };
      });
    },

    /**
     * Moves a delivery along its lifecycle under a row lock. `allowedFrom` lists the states the
     * move may start from; asking for the state it already has is an idempotent no-op.
     */
    async transition(input: {
      deliveryId: string;
      to: DeliveryStatus;
      allowedFrom: readonly DeliveryStatus[];
      actor: string;
      reason: string | null;
      /** When set, only this driver's delivery may move. */
      driverId?: string;
    }): Promise<TransitionResult | { error: 'NOT_FOUND' | 'FORBIDDEN' | 'INVALID_TRANSITION'; status?: DeliveryStatus }> {
      return db.transaction(async (tx) => {
        const [row] = await tx.select().from(deliveries).where(eq(deliveries.id, input.deliveryId)).for('update');
        if (!row) return { error: 'NOT_FOUND' as const };
        if (input.driverId !== undefined && row.driverId !== input.driverId) return { error: 'FORBIDDEN' as const };
        if (row.status === input.to) return { delivery: row, previousStatus: row.status, changed: false, released: null };
        if (!input.allowedFrom.includes(row.status)) return { error: 'INVALID_TRANSITION' as const, status: row.status };
        const [updated] = await tx
          .update(deliveries)
          .set({ status: input.to, updatedAt: new Date() })
          .where(eq(deliveries.id, row.id))
          .returning();
        await record(tx, updated, row.status, input.actor, input.reason);
        const terminal = input.to === 'DELIVERED' || input.to === 'FAILED' || input.to === 'CANCELLED';
        const released = terminal && row.driverId ? await drivers.release(tx, row.driverId) : null;
        return { delivery: updated, previousStatus: row.status, changed: true, released };
      });
    },
  };
}

export type DeliveriesStore = ReturnType<typeof createDeliveriesStore>;
