import { randomUUID } from 'node:crypto';
import { and, asc, desc, eq, type SQL, sql } from 'drizzle-orm';
import type { AssignmentPush, DeliveryStatus, DeliveryView, ListDeliveriesQuery, SellerOrderReady } from '#shared/schemas.js';
import { OUTBOX_INSERT, type OutboxEventType } from '../outbox/outbox.store.js';
import { PUSH_UPSERT, PUSH_UPSERT_CONFLICT, type PushesStore } from '../pushes/pushes.store.js';
import { columnNames, type Database, type DbOrTx, isRetryableConflict, retryOnConflict, rowMapper, type Tx, uniqueViolation } from '../platform/db.js';
import { ACTIVE_STATUSES_LIST, deliveries, deliveryEvents, fleets } from '../platform/schema.js';
import { type DriverPresenceRow, type DriversStore, fairnessFactsOf, haversineSql } from '../drivers/drivers.store.js';

/** A delivery as stored, with the ranked candidates its assignment considered (read by the detail view). */
export type DeliveryRecord = typeof deliveries.$inferSelect;
/**
 * A delivery as the hub acts on it: every column but the audit of its candidates, which only the
 * detail view reads. The webhook's claim returns this and no more: its candidates are the largest
 * column of the row, serialized by PostgreSQL and parsed by the hub for nothing on every order.
 */
export type DeliveryRow = Omit<DeliveryRecord, 'candidates'>;
export type Candidate = { driverId: string; distanceMeters: number };
export type RankedCandidate = Candidate & { outcome: 'chosen' | 'taken' | 'not-tried' } & Record<string, unknown>;

/**
 * Why the candidates are in their order (dispatch/scoring.ts): each driver's score terms, stored
 * with the delivery, and the pool each was proposed from. With `pooled`, a claim takes a driver
 * only while it still belongs to that pool (and a shared-pool driver only while the seller's
 * fleet is not exclusive): PostgreSQL judges pools as it judges availability.
 */
export interface CandidateExplanation {
  pooled: boolean;
  terms: ReadonlyMap<string, { fleet: string | null }>;
}

const termsOf = (explain: CandidateExplanation | undefined, driverId: string) => explain?.terms.get(driverId);

/** What the outbox needs to write a status event in the caller's transaction. */
export interface OutboxWriter {
  enqueue(executor: DbOrTx, event: { deliveryId: string; type: OutboxEventType; payload: unknown }): Promise<unknown>;
}

export type CreateOutcome =
  | { created: true; delivery: DeliveryRow; chosen: Candidate | null }
  | { created: false; delivery: DeliveryRow };

const SELLER_ORDER_KEY = 'deliveries_seller_order_id_key';
const ONE_ACTIVE_PER_DRIVER_KEY = 'deliveries_one_active_per_driver';

/**
 * A claim lost to a concurrent one: a deadlock, a serialization failure, or the one-active-delivery
 * index (the last guard, should a driver row ever disagree with its deliveries). Nothing was
 * written, and a fresh statement sees the winner and passes that driver over.
 */
export function lostClaim(err: unknown): boolean {
  return isRetryableConflict(err) || uniqueViolation(err) === ONE_ACTIVE_PER_DRIVER_KEY;
}

/** What the webhook's claim leaves out of the row it returns (see DeliveryRow). */
const NOT_RETURNED = ['candidates'] as const;
const toDeliveryRow = rowMapper(deliveries, NOT_RETURNED);
const ROW_COLUMNS = columnNames(deliveries, NOT_RETURNED);

/** Index of CREATE_AND_ASSIGN's $13, the candidates. */
const CANDIDATES_PARAM = 12;

/**
 * $1 id, $2 sellerOrderId, $3 orderCode, $4 sellerId, $5-$7 pickup lat/lng/address, $8-$10 dropoff,
 * $11 customer (json), $12 notes, $13 candidates (json [{id, dist, ord, fleet, pooled, terms}], best first), $14 now,
 * $15 the assigned event's payload without its driverId, $16 the assignment push for the driver's app,
 * $17 whether the candidates inside the fairness band are ranked here by their facts (two or more
 * share a band). Returns the new row with fresh = true, or the existing one with fresh = false.
 *
 * The claim locks the candidate rows in order (FOR UPDATE under LIMIT): a row another statement
 * holds is waited for and then re-checked on its new version (status and current_delivery_id), so
 * a driver claimed meanwhile is passed over and the next candidate taken. The active-delivery
 * subquery is the partial unique index's twin for what this statement's snapshot already sees.
 */
const CREATE_AND_ASSIGN = `
with input as (
  select c.id, c.dist, c.ord, c.fleet, c.pooled, c.terms
  from jsonb_to_recordset($13::jsonb) as c(id uuid, dist float8, ord int, fleet text, pooled boolean, terms jsonb)
), facts as (${fairnessFactsOf(`select id from input where $17::boolean and (terms->>'withinBand')::boolean`)}
), ranked as (
  -- With $17, the score of dispatch/scoring.ts on the facts just read: pool, inside the band
  -- first, then longest idle, fewest deliveries today, nearest (unknown facts rank last); else
  -- the order the candidates came in.
  select i.*, f.idle, f.today, (row_number() over (order by
      case when $17::boolean then null else i.ord end,
      i.terms->>'pool' = 'shared', coalesce((i.terms->>'withinBand')::boolean, true) desc,
      f.idle desc nulls last, f.today asc nulls last, i.dist, i.ord))::int - 1 as place
  from input i left join facts f on f.id = i.id
), known as (
  select ${ROW_COLUMNS} from deliveries where seller_order_id = $2::text
), pick as (
  select d.id, i.dist, i.place
  from ranked i join drivers d on d.id = i.id
  -- The candidates by primary key: joined on their own, the planner hashes every driver against them.
  where d.id = any(array(select id from input))
    and not exists (select 1 from known)
    and d.status = 'AVAILABLE'
    and d.current_delivery_id is null
    and not exists (select 1 from deliveries a where a.driver_id = d.id and a.status in ${ACTIVE_STATUSES_LIST})
    and (not coalesce(i.pooled, false) or (d.fleet is not distinct from i.fleet
      and (i.fleet is not null or not exists (select 1 from fleets f where f.id = $4::text and f.exclusive))))
  order by i.place
  limit 1
  for update of d
), claimed as (
  update drivers set status = 'BUSY', current_delivery_id = $1::uuid, updated_at = $14::timestamptz
  from pick where drivers.id = pick.id
  returning drivers.id, pick.dist, pick.place
), created as (
  insert into deliveries (id, seller_order_id, order_code, seller_id, status, driver_id,
    pickup_lat, pickup_lng, pickup_address, dropoff_lat, dropoff_lng, dropoff_address, customer, notes,
    distance_meters, candidates, assigned_at, created_at, updated_at)
  select $1::uuid, $2::text, $3::text, $4::text, case when c.id is null then 'PENDING' else 'ASSIGNED' end, c.id,
    $5::float8, $6::float8, $7::text, $8::float8, $9::float8, $10::text, $11::jsonb, $12::text,
    c.dist,
    (select jsonb_agg(coalesce(i.terms, '{}'::jsonb) || jsonb_build_object('driverId', i.id, 'distanceMeters', i.dist, 'outcome',
        case when i.place = c.place then 'chosen' when c.place is null or i.place < c.place then 'taken' else 'not-tried' end)
        || case when $17::boolean then jsonb_build_object('rank', i.place + 1, 'idleSeconds', i.idle, 'deliveriesToday', i.today) else '{}'::jsonb end
        order by i.place)
      from ranked i),
    case when c.id is null then null else $14::timestamptz end, $14::timestamptz, $14::timestamptz
  from (select 1) as one left join claimed c on true
  where not exists (select 1 from known)
  returning ${ROW_COLUMNS}
), audit as (
  insert into delivery_events (delivery_id, from_status, to_status, driver_id, actor, at)
  select id, null, 'PENDING', null, 'webhook', created_at from created
  union all
  select id, 'PENDING', 'ASSIGNED', driver_id, 'hub', assigned_at from created where status = 'ASSIGNED'
), notified as (
  ${OUTBOX_INSERT} select id, 'delivery.assigned', $15::jsonb || jsonb_build_object('driverId', driver_id)
  from created where status = 'ASSIGNED'
), pushed as (
  ${PUSH_UPSERT} select id, driver_id, 'assignment', $16::jsonb from created where status = 'ASSIGNED'
  ${PUSH_UPSERT_CONFLICT}
)
select true as fresh, * from created
union all
select false as fresh, * from known`;

/**
 * An audit row that took the delivery away from a driver and back to PENDING (`driver_id` names
 * that driver): the claim paths pass such a driver over for this delivery.
 */
const TAKEN_FROM_DRIVER = sql`${deliveryEvents.toStatus} = 'PENDING' and ${deliveryEvents.fromStatus} is not null and ${deliveryEvents.driverId} is not null`;

/**
 * A delivery this driver's pool may take: a fleet driver only its seller's orders; a shared-pool
 * driver any order but those of a seller whose fleet is exclusive.
 */
const poolAdmits = (driverId: string) => sql`exists (select 1 from drivers dr where dr.id = ${driverId} and (
  (dr.fleet is not null and dr.fleet = ${deliveries.sellerId})
  or (dr.fleet is null and not exists (select 1 from fleets f where f.id = ${deliveries.sellerId} and f.exclusive))))`;

/** What a driver that came free may take: PENDING, within reach, of its pool, never taken from it. */
const waitingWithinReachOf = (driverId: string, distance: SQL, radiusMeters: number) => [
  eq(deliveries.status, 'PENDING'),
  sql`${distance} <= ${radiusMeters}`,
  poolAdmits(driverId),
  sql`not exists (select 1 from ${deliveryEvents} where ${deliveryEvents.deliveryId} = ${deliveries.id} and ${TAKEN_FROM_DRIVER} and ${deliveryEvents.driverId} = ${driverId})`,
];

export interface TransitionResult {
  delivery: DeliveryRow;
  previousStatus: DeliveryStatus;
  changed: boolean;
  /** The driver freed by a terminal transition, with its new presence row. */
  released: DriverPresenceRow | null;
}

const OUTBOX_TYPE: Partial<Record<DeliveryStatus, OutboxEventType>> = {
  ASSIGNED: 'delivery.assigned',
  PICKED_UP: 'delivery.picked_up',
  DELIVERED: 'delivery.delivered',
  FAILED: 'delivery.failed',
  CANCELLED: 'delivery.cancelled',
};

/** The status event Vendure is told about; the same shape whichever write path makes it. */
export function statusEvent(
  row: Pick<DeliveryRow, 'id' | 'sellerOrderId' | 'orderCode' | 'status' | 'driverId'> & { updatedAt: Date | string },
  from: DeliveryStatus,
  reason: string | null,
): { deliveryId: string; type: OutboxEventType; payload: Record<string, unknown> } {
  const type = OUTBOX_TYPE[row.status];
  if (!type) throw new Error(`no status event for ${row.status}`);
  return {
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
      at: typeof row.updatedAt === 'string' ? row.updatedAt : row.updatedAt.toISOString(),
    },
  };
}

/** A pickup or dropoff point; the address only when there is one. */
function place(lat: number, lng: number, address: string | null): DeliveryView['pickup'] {
  return address ? { lat, lng, address } : { lat, lng };
}

export function toDeliveryView(row: DeliveryRow): DeliveryView {
  return {
    id: row.id,
    sellerOrderId: row.sellerOrderId,
    orderCode: row.orderCode,
    status: row.status,
    driverId: row.driverId,
    pickup: place(row.pickupLat, row.pickupLng, row.pickupAddress),
    dropoff: place(row.dropoffLat, row.dropoffLng, row.dropoffAddress),
    createdAt: row.createdAt.toISOString(),
    updatedAt: row.updatedAt.toISOString(),
    acknowledgedAt: row.acknowledgedAt?.toISOString() ?? null,
  };
}

/** What every push about a job tells the app of it: which order, where from, where to. */
export function jobFields(row: DeliveryRow): Pick<AssignmentPush, 'deliveryId' | 'sellerOrderId' | 'orderCode' | 'pickup' | 'dropoff'> {
  return {
    deliveryId: row.id,
    sellerOrderId: row.sellerOrderId,
    orderCode: row.orderCode,
    pickup: place(row.pickupLat, row.pickupLng, row.pickupAddress),
    dropoff: place(row.dropoffLat, row.dropoffLng, row.dropoffAddress),
  };
}

export function toAssignmentPush(row: DeliveryRow): AssignmentPush {
  return {
    ...jobFields(row),
    assignedAt: (row.assignedAt ?? row.updatedAt).toISOString(),
    status: row.status === 'PICKED_UP' ? 'PICKED_UP' : 'ASSIGNED',
  };
}

const ANY_PENDING = `select exists (select 1 from deliveries where status = 'PENDING') as waiting`;

/**
 * The active delivery of each of many drivers ($1, a JSON array of ids), read on every batch of
 * reconnects to send it again: one statement text whatever the batch's size (so one prepared plan),
 * the drivers found through the index on driver_id, and rows mapped by the claim's own mapper.
 */
const ACTIVE_FOR_DRIVERS = `select ${ROW_COLUMNS} from deliveries
  where driver_id = any(array(select jsonb_array_elements_text($1::jsonb)::uuid)) and status in ${ACTIVE_STATUSES_LIST}`;

export function createDeliveriesStore(deps: { database: Database; drivers: DriversStore; outbox: OutboxWriter; pushes: PushesStore }) {
  const { database, drivers, outbox, pushes } = deps;
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
    if (from !== null && OUTBOX_TYPE[row.status]) await outbox.enqueue(tx, statusEvent(row, from, reason));
  }

  /** Drivers this delivery was taken from (sent back to assignment): never given it again. */
  async function takenFrom(executor: DbOrTx, deliveryId: string): Promise<Set<string>> {
    const rows = await executor
      .select({ driverId: deliveryEvents.driverId })
      .from(deliveryEvents)
      .where(and(eq(deliveryEvents.deliveryId, deliveryId), TAKEN_FROM_DRIVER));
    return new Set(rows.map((r) => r.driverId).filter((id): id is string => id !== null));
  }

  async function fleetIsExclusive(executor: DbOrTx, fleet: string): Promise<boolean> {
    const [row] = await executor.select({ exclusive: fleets.exclusive }).from(fleets).where(eq(fleets.id, fleet)).limit(1);
    return row?.exclusive === true;
  }

  /** Tries candidates in their ranked order; the first successful conditional claim wins. */
  async function claimFirst(
    tx: Tx,
    deliveryId: string,
    offered: readonly Candidate[],
    explain?: CandidateExplanation,
    sellerId?: string | null,
  ): Promise<{ chosen: Candidate | null; ranked: RankedCandidate[] }> {
    const excluded = await takenFrom(tx, deliveryId);
    const candidates = excluded.size === 0 ? offered : offered.filter((c) => !excluded.has(c.driverId));
    const ranked: RankedCandidate[] = candidates.map((c) => ({ ...termsOf(explain, c.driverId), ...c, outcome: 'not-tried' }));
    const sharedClosed = explain?.pooled && sellerId ? await fleetIsExclusive(tx, sellerId) : false;
    for (const candidate of ranked) {
      const terms = termsOf(explain, candidate.driverId);
      const pool = explain?.pooled ? { fleet: terms?.fleet ?? null } : undefined;
      if (pool && pool.fleet === null && sharedClosed) continue;
      if (await drivers.claim(tx, candidate.driverId, deliveryId, pool)) {
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
    await pushes.enqueue(tx, { deliveryId: assigned.id, driverId: chosen.driverId, kind: 'assignment', payload: toAssignmentPush(assigned) });
    return assigned;
  }

  /**
   * A claiming transaction, run again when it lost to a concurrent claim (it changed nothing then);
   * still losing after that, the delivery stays PENDING for the next pass rather than failing.
   */
  async function claimInTransaction<T>(work: (tx: Tx) => Promise<T | null>): Promise<T | null> {
    try {
      return await retryOnConflict(() => db.transaction(work), 3, lostClaim);
    } catch (err) {
      if (lostClaim(err)) return null;
      throw err;
    }
  }

  return {
    async findBySellerOrderId(sellerOrderId: string): Promise<DeliveryRow | null> {
      const [row] = await db.select().from(deliveries).where(eq(deliveries.sellerOrderId, sellerOrderId)).limit(1);
      return row ?? null;
    },

    /** The drivers a delivery was taken from: the search for its next driver looks past them. */
    takenFrom: (deliveryId: string): Promise<Set<string>> => takenFrom(db, deliveryId),

    async get(id: string): Promise<DeliveryRecord | null> {
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
        .where(sql`${deliveries.status} in ('PENDING', 'OFFERED', 'ASSIGNED', 'PICKED_UP')`)
        .orderBy(desc(deliveries.createdAt))
        .limit(limit);
    },

    /** The delivery that holds each of the given drivers, for those one holds (one statement for many). */
    async activeForDrivers(driverIds: readonly string[]): Promise<Map<string, DeliveryRow>> {
      if (driverIds.length === 0) return new Map();
      const rows = (await database.query<Record<string, unknown>>(ACTIVE_FOR_DRIVERS, [JSON.stringify(driverIds)])).map(toDeliveryRow);
      return new Map(rows.map((row) => [row.driverId!, row]));
    },

    /** Whether any delivery waits for a driver: most drivers coming free need look no further. */
    async anyPending(): Promise<boolean> {
      const [row] = await database.query<{ waiting: boolean }>(ANY_PENDING, []);
      return row?.waiting === true;
    },

    /**
     * The webhook's whole write in one statement, so one round trip and no transaction held open
     * across the network: when no delivery exists for the sellerOrderId, the first free candidate
     * is claimed (a locked, re-checked conditional write), the delivery inserted in its final state,
     * its audit rows and the `delivery.assigned` outbox event written. When one exists, nothing is
     * written and it is returned. A twin that commits after this statement's snapshot makes the
     * insert fail on the unique key, which rolls the claim back; the twin's row is returned then.
     */
    async createAndAssign(
      order: SellerOrderReady,
      candidates: readonly Candidate[],
      explain?: CandidateExplanation,
      /** `band`: the candidates inside the fairness band are ranked by the claim, on facts it reads itself. */
      ranking: 'as-given' | 'band' = 'as-given',
    ): Promise<CreateOutcome> {
      const id = randomUUID();
      const now = new Date().toISOString();
      const assignedEvent = statusEvent(
        { id, sellerOrderId: order.sellerOrderId, orderCode: order.orderCode, status: 'ASSIGNED', driverId: null, updatedAt: now },
        'PENDING',
        null,
      );
      const params = [
        id,
        order.sellerOrderId,
        order.orderCode,
        order.sellerId ?? null,
        order.pickup.lat,
        order.pickup.lng,
        order.pickup.address ?? null,
        order.dropoff.lat,
        order.dropoff.lng,
        order.dropoff.address ?? null,
        order.customer ? JSON.stringify(order.customer) : null,
        order.notes ?? null,
        JSON.stringify(
          candidates.map((c, ord) => {
            const terms = termsOf(explain, c.driverId);
            return terms ? { id: c.driverId, dist: c.distanceMeters, ord, fleet: terms.fleet, pooled: explain!.pooled, terms } : { id: c.driverId, dist: c.distanceMeters, ord };
          }),
        ),
        now,
        JSON.stringify(assignedEvent.payload),
        JSON.stringify({ deliveryId: id, sellerOrderId: order.sellerOrderId, orderCode: order.orderCode, pickup: order.pickup, dropoff: order.dropoff, assignedAt: now, status: 'ASSIGNED' } satisfies AssignmentPush),
        ranking === 'band' && explain !== undefined,
      ];
      const run = (withCandidates: unknown[]) => database.query<Record<string, unknown> & { fresh: boolean }>(CREATE_AND_ASSIGN, withCandidates);
      try {
        // A claim that keeps losing to concurrent ones still records the order: PENDING, never an error.
        const [raw] = await retryOnConflict(() => run(params), 3, lostClaim).catch((err: unknown) => {
          if (!lostClaim(err)) throw err;
          return run(params.map((p, i) => (i === CANDIDATES_PARAM ? '[]' : p)));
        });
        if (!raw) throw new Error('create-and-assign returned no row');
        const delivery = toDeliveryRow(raw);
        if (!raw.fresh) return { created: false, delivery };
        const chosen = delivery.driverId ? { driverId: delivery.driverId, distanceMeters: delivery.distanceMeters ?? 0 } : null;
        return { created: true, delivery, chosen };
      } catch (err) {
        if (uniqueViolation(err) !== SELLER_ORDER_KEY) throw err;
        const twin = await this.findBySellerOrderId(order.sellerOrderId);
        if (!twin) throw err;
        return { created: false, delivery: twin };
      }
    },

    /** Pending deliveries, oldest first, for the periodic retry. */
    /** Deliveries waiting for a driver (for the metrics gauge). */
    async countPending(): Promise<number> {
      const [row] = await db.select({ count: sql<number>`count(*)::integer` }).from(deliveries).where(eq(deliveries.status, 'PENDING'));
      return Number(row?.count ?? 0);
    },

    async pending(limit: number): Promise<DeliveryRow[]> {
      return db.select().from(deliveries).where(eq(deliveries.status, 'PENDING')).orderBy(asc(deliveries.createdAt)).limit(limit);
    },

    /** Assigns one PENDING delivery to the first free candidate; skips a delivery another node is handling. */
    async assignPending(deliveryId: string, candidates: readonly Candidate[], explain?: CandidateExplanation): Promise<{ delivery: DeliveryRow; chosen: Candidate } | null> {
      return claimInTransaction(async (tx) => {
        const [row] = await tx
          .select()
          .from(deliveries)
          .where(and(eq(deliveries.id, deliveryId), eq(deliveries.status, 'PENDING')))
          .for('update', { skipLocked: true });
        if (!row) return null;
        const { chosen, ranked } = await claimFirst(tx, row.id, candidates, explain, row.sellerId);
        if (!chosen) return null;
        return { delivery: await assignInTx(tx, row, chosen, ranked), chosen };
      });
    },

    /**
     * Offer mode's look for a driver that just came free: the oldest PENDING delivery within reach
     * of its pool that it was never offered nor taken from (the offer itself locks and re-checks).
     */
    async oldestPendingFor(
      driver: { id: string; lat: number; lng: number },
      radiusMeters: number,
    ): Promise<{ delivery: DeliveryRow; distanceMeters: number; explain: CandidateExplanation } | null> {
      const distance = haversineSql(deliveries.pickupLat, deliveries.pickupLng, driver.lat, driver.lng);
      const [row] = await db
        .select({ delivery: deliveries, distance, fleet: sql<string | null>`(select fleet from drivers where id = ${driver.id})` })
        .from(deliveries)
        .where(
          and(
            ...waitingWithinReachOf(driver.id, distance, radiusMeters),
            sql`not exists (select 1 from offers o where o.delivery_id = ${deliveries.id} and o.driver_id = ${driver.id})`,
            // A delivery never offered yet and only just created is its webhook's to place, by the
            // ranking: taken here it would go to whichever driver happened to come free nearby.
            sql`(${deliveries.createdAt} < now() - interval '2 seconds' or exists (select 1 from offers o where o.delivery_id = ${deliveries.id}))`,
          ),
        )
        .orderBy(asc(deliveries.createdAt))
        .limit(1);
      if (!row) return null;
      const distanceMeters = Number(row.distance);
      const terms = { driverId: driver.id, distanceMeters, pool: row.fleet === null ? 'shared' : 'fleet', fleet: row.fleet, rank: 1, reason: 'came free near the oldest waiting delivery' };
      return { delivery: row.delivery, distanceMeters, explain: { pooled: true, terms: new Map([[driver.id, terms]]) } };
    },

    /** The oldest PENDING delivery whose pickup is within reach of a driver that just became free. */
    async assignOldestPendingTo(
      driver: { id: string; lat: number; lng: number },
      radiusMeters: number,
    ): Promise<{ delivery: DeliveryRow; chosen: Candidate } | null> {
      return claimInTransaction(async (tx) => {
        const distance = haversineSql(deliveries.pickupLat, deliveries.pickupLng, driver.lat, driver.lng);
        const [row] = await tx
          .select({ delivery: deliveries, distance })
          .from(deliveries)
          .where(and(...waitingWithinReachOf(driver.id, distance, radiusMeters)))
          .orderBy(asc(deliveries.createdAt))
          .limit(1)
          .for('update', { skipLocked: true });
        if (!row) return null;
        const candidate = { driverId: driver.id, distanceMeters: Number(row.distance) };
        const { chosen, ranked } = await claimFirst(tx, row.delivery.id, [candidate]);
        if (!chosen) return null;
        return { delivery: await assignInTx(tx, row.delivery, chosen, ranked), chosen };
      });
    },

    /**
     * A dispatcher sends an ASSIGNED delivery whose driver's app never confirmed it back to
     * PENDING, under the row lock: the driver is released and told (a `delivery:cancelled` push),
     * the audit row names the driver it was taken from (so the claims pass that driver over for
     * it) and who did it. PENDING already: nothing to undo (`changed: false`). Anything else is
     * refused with the state it is in; `acknowledged` when the driver's app had confirmed the job.
     */
    async unassign(input: {
      deliveryId: string;
      actor: string;
      reason: string;
    }): Promise<(TransitionResult & { takenFrom: string | null }) | { error: 'NOT_FOUND' | 'INVALID_TRANSITION'; status?: DeliveryStatus; acknowledged?: boolean }> {
      return db.transaction(async (tx) => {
        const [row] = await tx.select().from(deliveries).where(eq(deliveries.id, input.deliveryId)).for('update');
        if (!row) return { error: 'NOT_FOUND' as const };
        if (row.status === 'PENDING') return { delivery: row, previousStatus: row.status, changed: false, released: null, takenFrom: null };
        if (row.status !== 'ASSIGNED' || row.acknowledgedAt !== null || !row.driverId) {
          return { error: 'INVALID_TRANSITION' as const, status: row.status, acknowledged: row.acknowledgedAt !== null };
        }
        const [updated] = await tx
          .update(deliveries)
          .set({ status: 'PENDING', driverId: null, distanceMeters: null, assignedAt: null, acknowledgedAt: null, updatedAt: new Date() })
          .where(eq(deliveries.id, row.id))
          .returning();
        await tx.insert(deliveryEvents).values({
          deliveryId: row.id,
          fromStatus: row.status,
          toStatus: 'PENDING',
          driverId: row.driverId,
          actor: input.actor,
          reason: input.reason,
        });
        await pushes.closeStale(tx, row.id, null);
        await pushes.enqueue(tx, { deliveryId: row.id, driverId: row.driverId, kind: 'delivery:cancelled', payload: { deliveryId: row.id, reason: input.reason } });
        const released = await drivers.release(tx, row.driverId, row.id);
        return { delivery: updated, previousStatus: row.status, changed: true, released, takenFrom: row.driverId };
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
        if (row.status === 'OFFERED') {
          await database.rows(
            sql`update offers set status = 'CANCELLED', reason = ${input.reason ?? 'cancelled'}, answered_at = clock_timestamp() where delivery_id = ${row.id} and status = 'OPEN'`,
            tx,
          );
        }
        // What the driver's app was told about the earlier state is no longer current; a cancel it must hear of.
        await pushes.closeStale(tx, row.id, null);
        if (input.to === 'CANCELLED' && row.driverId) {
          await pushes.enqueue(tx, { deliveryId: row.id, driverId: row.driverId, kind: 'delivery:cancelled', payload: { deliveryId: row.id, reason: input.reason ?? 'cancelled' } });
        }
        const terminal = input.to === 'DELIVERED' || input.to === 'FAILED' || input.to === 'CANCELLED';
        const released = terminal && row.driverId ? await drivers.release(tx, row.driverId, row.id) : null;
        return { delivery: updated, previousStatus: row.status, changed: true, released };
      });
    },
  };
}

export type DeliveriesStore = ReturnType<typeof createDeliveriesStore>;
