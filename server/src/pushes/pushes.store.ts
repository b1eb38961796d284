import { sql } from 'drizzle-orm';
import { type Database, type DbOrTx, retryOnConflict } from '../platform/db.js';
import type { PushKind } from '../platform/schema.js';

export interface PushKey {
  deliveryId: string;
  driverId: string;
  kind: PushKind;
}

export interface OpenPush extends PushKey {
  payload: Record<string, unknown>;
  resends: number;
}

/**
 * Writes a push in the caller's statement or transaction. A driver given the same delivery again
 * (sent back to assignment) gets a fresh push in place of the old one.
 */
export const PUSH_UPSERT = `insert into pushes (delivery_id, driver_id, kind, payload)`;
export const PUSH_UPSERT_CONFLICT = `on conflict (delivery_id, driver_id, kind) do update set payload = excluded.payload,
  created_at = now(), last_sent_at = null, resends = 0, acknowledged_at = null, closed_at = null, unacknowledged_at = null`;

const OPEN = sql`acknowledged_at is null and closed_at is null`;

/**
 * ACKNOWLEDGE_MANY: $1 [[deliveryId, driverId, kind], ...], sorted. The deliveries are locked
 * first, in id order, as every transition locks its delivery before it touches the delivery's
 * pushes: locking the push first deadlocked against a cancel arriving with the acknowledgement,
 * and PostgreSQL could abort the cancel. Pushes are found by their delivery ids through an array
 * (a primary-key lookup; a join on the JSON set would hash the whole table), then matched on the
 * full key.
 */
const ACKNOWLEDGE_MANY = `
with keys as materialized (
  select (e->>0)::uuid as delivery_id, (e->>1)::uuid as driver_id, e->>2 as kind from jsonb_array_elements($1::jsonb) as e
), locked as materialized (
  select d.id from deliveries d where d.id = any(array(select delivery_id from keys)) order by d.id for update
), acked as (
  update pushes p set acknowledged_at = now()
  from keys k join locked l on l.id = k.delivery_id
  where p.delivery_id = any(array(select id from locked))
    and p.delivery_id = k.delivery_id and p.driver_id = k.driver_id and p.kind = k.kind
    and p.acknowledged_at is null and p.closed_at is null
  returning p.delivery_id, p.driver_id, p.kind, p.acknowledged_at
), on_delivery as (
  update deliveries d set acknowledged_at = a.acknowledged_at
  from acked a
  where d.id = any(array(select delivery_id from acked where kind = 'assignment'))
    and d.id = a.delivery_id and a.kind = 'assignment' and d.driver_id = a.driver_id
)
select delivery_id as "deliveryId", driver_id as "driverId", kind, acknowledged_at as "acknowledgedAt" from acked`;

const openPushColumns = sql`delivery_id as "deliveryId", driver_id as "driverId", kind, payload, resends`;

export function createPushesStore(database: Database) {
  return {
    async enqueue(executor: DbOrTx, push: PushKey & { payload: unknown }): Promise<void> {
      await database.rows(
        sql`${sql.raw(PUSH_UPSERT)} values (${push.deliveryId}, ${push.driverId}, ${push.kind}, ${JSON.stringify(push.payload)}::jsonb) ${sql.raw(PUSH_UPSERT_CONFLICT)}`,
        executor,
      );
    },

    /** The delivery moved on: what was pushed about its earlier state is no longer current. */
    async closeStale(executor: DbOrTx, deliveryId: string, keep: PushKind | null): Promise<void> {
      await database.rows(
        sql`update pushes set closed_at = now() where delivery_id = ${deliveryId} and ${OPEN} and (${keep}::text is null or kind <> ${keep})`,
        executor,
      );
    },

    /**
     * Apps confirmed pushes: one statement for many acknowledgements (every assignment is
     * answered, so one round trip per order otherwise). Only an open push counts: a second
     * acknowledgement, or one for a push no longer current, changes nothing. Answers, per key in
     * order, when this call recorded it (null: not recorded); an assignment's is also written on
     * the delivery. A key given twice is recorded for its first place only.
     */
    async acknowledgeMany(keys: readonly PushKey[]): Promise<({ acknowledgedAt: Date } | null)[]> {
      if (keys.length === 0) return [];
      const keyOf = (k: PushKey) => `${k.deliveryId}/${k.driverId}/${k.kind}`;
      const unique = [...new Map(keys.map((k) => [keyOf(k), k])).values()].sort((a, b) => (keyOf(a) < keyOf(b) ? -1 : 1));
      // Sorted, so two batches never lock the same rows in opposite orders; one that lost a deadlock changed nothing.
      const rows = await retryOnConflict(() =>
        database.query<{ deliveryId: string; driverId: string; kind: PushKind; acknowledgedAt: Date | string }>(ACKNOWLEDGE_MANY, [
          JSON.stringify(unique.map((k) => [k.deliveryId, k.driverId, k.kind])),
        ]),
      );
      const recorded = new Map(rows.map((r) => [keyOf(r), new Date(r.acknowledgedAt)]));
      return keys.map((k) => {
        const at = recorded.get(keyOf(k));
        recorded.delete(keyOf(k));
        return at ? { acknowledgedAt: at } : null;
      });
    },

    /**
     * Open pushes whose last send is at least `afterMs` old and that still have re-sends left,
     * oldest first, of drivers connected somewhere: those of drivers connected nowhere (they get
     * theirs on reconnect) must not crowd out the ones a node can deliver. Each node keeps those
     * of its own sockets.
     */
    async due(afterMs: number, limit: number): Promise<OpenPush[]> {
      return database.rows<OpenPush>(sql`
        select ${openPushColumns} from pushes
        where ${OPEN} and unacknowledged_at is null
          and coalesce(last_sent_at, created_at) <= now() - make_interval(secs => ${afterMs / 1000})
          and exists (select 1 from drivers d where d.id = pushes.driver_id and d.session_id is not null)
        order by created_at
        limit ${limit}`);
    },

    /** Every open push of one driver, oldest first (a reconnect sends them all at once). */
    async openFor(driverId: string): Promise<OpenPush[]> {
      return database.rows<OpenPush>(sql`
        select ${openPushColumns} from pushes where driver_id = ${driverId} and ${OPEN} order by created_at`);
    },

    /** Every open push of each of the given drivers, oldest first: one statement for many reconnects. */
    async openForMany(driverIds: readonly string[]): Promise<OpenPush[]> {
      if (driverIds.length === 0) return [];
      return database.rows<OpenPush>(sql`
        select ${openPushColumns} from pushes
        where driver_id in (select jsonb_array_elements_text(${JSON.stringify(driverIds)}::jsonb)::uuid) and ${OPEN}
        order by created_at`);
    },

    /**
     * Counts one more send of each push; those that used their last re-send with this one are
     * flagged unacknowledged and returned (once: later sends, on a reconnect, do not flag again).
     */
    async markResent(keys: readonly PushKey[], maxResends: number): Promise<PushKey[]> {
      if (keys.length === 0) return [];
      // Only the keys go over the wire (an open push carries its payload), once.
      const json = JSON.stringify(keys.map(({ deliveryId, driverId, kind }) => ({ deliveryId, driverId, kind })));
      const rows = await database.rows<PushKey & { flagged: boolean }>(sql`
        with k as materialized (
          select * from jsonb_to_recordset(${json}::jsonb) as k("deliveryId" uuid, "driverId" uuid, kind text)
        )
        update pushes p set resends = p.resends + 1, last_sent_at = now(),
          unacknowledged_at = case when p.resends + 1 >= ${maxResends} then coalesce(p.unacknowledged_at, now()) end
        from k
        where p.delivery_id = any(array(select "deliveryId" from k))
          and p.delivery_id = k."deliveryId" and p.driver_id = k."driverId" and p.kind = k.kind and p.acknowledged_at is null and p.closed_at is null
        returning p.delivery_id as "deliveryId", p.driver_id as "driverId", p.kind, p.resends = ${maxResends} as flagged`);
      return rows.filter((r) => r.flagged).map(({ deliveryId, driverId, kind }) => ({ deliveryId, driverId, kind }));
    },

    /** Pushes of one delivery, for the admin view. */
    async forDelivery(deliveryId: string) {
      const rows = await database.rows<{
        driverId: string;
        kind: PushKind;
        createdAt: Date | string;
        lastSentAt: Date | string | null;
        resends: number;
        acknowledgedAt: Date | string | null;
        closedAt: Date | string | null;
        unacknowledgedAt: Date | string | null;
      }>(sql`
        select driver_id as "driverId", kind, created_at as "createdAt", last_sent_at as "lastSentAt", resends,
          acknowledged_at as "acknowledgedAt", closed_at as "closedAt", unacknowledged_at as "unacknowledgedAt"
        from pushes where delivery_id = ${deliveryId} order by created_at`);
      const iso = (v: Date | string | null) => (v === null ? null : new Date(v).toISOString());
      return rows.map((r) => ({
        driverId: r.driverId,
        kind: r.kind,
        createdAt: iso(r.createdAt),
        lastSentAt: iso(r.lastSentAt),
        resends: r.resends,
        acknowledgedAt: iso(r.acknowledgedAt),
        closedAt: iso(r.closedAt),
        unacknowledgedAt: iso(r.unacknowledgedAt),
      }));
    },

    /** Open pushes flagged unacknowledged (a gauge for operators and dispatchers). */
    async unacknowledgedCount(): Promise<number> {
      const [row] = await database.rows<{ n: number }>(sql`select count(*)::int as n from pushes where ${OPEN} and unacknowledged_at is not null`);
      return row?.n ?? 0;
    },
  };
}

export type PushesStore = ReturnType<typeof createPushesStore>;
