import { and, asc, desc, eq, inArray, lt, lte, notExists, sql } from 'drizzle-orm';
import { alias } from 'drizzle-orm/pg-core';
import { DELIVERY_EVENT_TYPES, type DeliveryEventType } from '#shared/schemas.js';
import type { Database, DbOrTx } from '../platform/db.js';
import { outbox } from '../platform/schema.js';

/** One list of event types, in shared/, so receivers (the Vendure plugin) parse what the hub writes. */
export const OUTBOX_EVENT_TYPES = DELIVERY_EVENT_TYPES;

export type OutboxEventType = DeliveryEventType;

export interface OutboxEventInput {
  deliveryId: string;
  type: OutboxEventType;
  payload: unknown;
}

export type OutboxRow = typeof outbox.$inferSelect;

/**
 * The head of an insert for a caller that writes its event inside a larger statement; a
 * `select delivery_id, type, payload ...` follows it. Every other column takes its default.
 */
export const OUTBOX_INSERT = 'insert into outbox (delivery_id, type, payload)';

/**
 * A row handed to one relay for one send; `attempts` already counts this attempt. `trackingToken`
 * is the delivery's, read with the claim: the customer's link is added to the event as it is sent,
 * from the PUBLIC_URL of the node sending it.
 */
export type ClaimedEvent = Pick<OutboxRow, 'id' | 'seq' | 'deliveryId' | 'type' | 'payload' | 'attempts' | 'createdAt' | 'nextAttemptAt'> & {
  trackingToken?: string | null;
};

export type DeadEvent = Pick<OutboxRow, 'id' | 'seq' | 'deliveryId' | 'type' | 'payload' | 'attempts' | 'lastError' | 'createdAt' | 'nextAttemptAt'>;

export interface OutboxStats {
  pending: number;
  sent: number;
  dead: number;
}

const MAX_ERROR_LENGTH = 1000;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

const claimedColumns = {
  id: outbox.id,
  seq: outbox.seq,
  deliveryId: outbox.deliveryId,
  type: outbox.type,
  payload: outbox.payload,
  attempts: outbox.attempts,
  createdAt: outbox.createdAt,
  nextAttemptAt: outbox.nextAttemptAt,
};

const claimedWithLink = {
  ...claimedColumns,
  trackingToken: sql<string | null>`(select d.tracking_token from deliveries d where d.id = ${outbox.deliveryId})`,
};

const truncate = (error: string) => (error.length > MAX_ERROR_LENGTH ? `${error.slice(0, MAX_ERROR_LENGTH)}…` : error);

/**
 * The outbox table's only SQL. Ordering rule (claimDue): an event is handed out only when no
 * earlier PENDING event of the same delivery exists, so a failing event holds back its successors.
 * DEAD predecessors do not block: a dead event waits for a human, and freezing every later status
 * of that order until someone replays it would leave Vendure further behind than skipping one
 * (each payload carries the delivery's full current status, so a receiver converges anyway).
 */
export function createOutboxStore(database: Database) {
  const { db } = database;

  return {
    /** Writes an event in the caller's transaction, so it exists exactly when the change it reports does. */
    async enqueue(executor: DbOrTx, event: OutboxEventInput): Promise<string> {
      if (!(OUTBOX_EVENT_TYPES as readonly string[]).includes(event.type)) {
        throw new Error(`unknown outbox event type: ${event.type}`);
      }
      const [row] = await executor
        .insert(outbox)
        .values({ deliveryId: event.deliveryId, type: event.type, payload: event.payload ?? {} })
        .returning({ id: outbox.id });
      return row.id;
    },

    /**
     * Takes up to `limit` due events, oldest first, at most one per delivery (the head of its
     * queue), and leases them: next_attempt_at moves `leaseMs` ahead, so other relays skip them
     * while this one sends, and they come due again by themselves if this process dies. One
     * statement, so the pick and the lease are one transaction. `attempts` is bumped here, at
     * the start of the attempt, so a send that kills the process still counts, and so markFailed
     * and markDead can tell their own claim from a later one.
     */
    async claimDue(limit: number, leaseMs: number): Promise<ClaimedEvent[]> {
      if (limit <= 0) return [];
      const earlier = alias(outbox, 'earlier');
      const due = db
        .select({ id: outbox.id })
        .from(outbox)
        .where(
          and(
            eq(outbox.status, 'PENDING'),
            lte(outbox.nextAttemptAt, sql`now()`),
            notExists(
              db
                .select({ one: sql`1` })
                .from(earlier)
                .where(and(eq(earlier.deliveryId, outbox.deliveryId), eq(earlier.status, 'PENDING'), lt(earlier.seq, outbox.seq))),
            ),
          ),
        )
        .orderBy(asc(outbox.seq))
        .limit(limit)
        .for('update', { of: outbox, skipLocked: true });
      const rows = await db
        .update(outbox)
        .set({
          nextAttemptAt: sql`now() + (${Math.max(0, Math.round(leaseMs))}::integer * interval '1 millisecond')`,
          attempts: sql`${outbox.attempts} + 1`,
        })
        .where(inArray(outbox.id, due))
        .returning(claimedWithLink);
      return rows.sort((a, b) => a.seq - b.seq);
    },

    async markSent(id: string): Promise<boolean> {
      // Unfenced: a 2xx is a delivery whichever claim produced it.
      const rows = await db
        .update(outbox)
        .set({ status: 'SENT', sentAt: sql`now()`, lastError: null })
        .where(and(eq(outbox.id, id), eq(outbox.status, 'PENDING')))
        .returning({ id: outbox.id });
      return rows.length === 1;
    },

    /** `attempt` (the claim's attempts) fences off a stale relay whose lease already ran out. */
    async markFailed(id: string, error: string, nextAttemptAt: Date, attempt?: number): Promise<boolean> {
      const rows = await db
        .update(outbox)
        .set({ lastError: truncate(error), nextAttemptAt })
        .where(and(eq(outbox.id, id), eq(outbox.status, 'PENDING'), attempt === undefined ? undefined : eq(outbox.attempts, attempt)))
        .returning({ id: outbox.id });
      return rows.length === 1;
    },

    /** A dead row has no next attempt, so next_attempt_at keeps the time it died for the admin view. */
    async markDead(id: string, error: string, attempt?: number): Promise<boolean> {
      const rows = await db
        .update(outbox)
        .set({ status: 'DEAD', lastError: truncate(error), nextAttemptAt: sql`now()` })
        .where(and(eq(outbox.id, id), eq(outbox.status, 'PENDING'), attempt === undefined ? undefined : eq(outbox.attempts, attempt)))
        .returning({ id: outbox.id });
      return rows.length === 1;
    },

    /** Newest first: the admin looks at what broke last. */
    async listDead(limit = 100): Promise<DeadEvent[]> {
      return db
        .select({ ...claimedColumns, lastError: outbox.lastError })
        .from(outbox)
        .where(eq(outbox.status, 'DEAD'))
        .orderBy(desc(outbox.seq))
        .limit(Math.max(1, Math.min(limit, 1000)));
    },

    /**
     * DEAD -> PENDING, due now, attempts from zero. The event keeps its seq, so it goes out before
     * any of its delivery's still-pending successors. Its age is past the horizon already: if the
     * receiver still fails, it goes back to DEAD after that one attempt.
     */
    async replay(id: string): Promise<boolean> {
      if (!UUID.test(id)) return false;
      const rows = await db
        .update(outbox)
        .set({ status: 'PENDING', attempts: 0, nextAttemptAt: sql`now()`, lastError: null })
        .where(and(eq(outbox.id, id), eq(outbox.status, 'DEAD')))
        .returning({ id: outbox.id });
      return rows.length === 1;
    },

    async get(id: string): Promise<OutboxRow | null> {
      if (!UUID.test(id)) return null;
      const [row] = await db.select().from(outbox).where(eq(outbox.id, id)).limit(1);
      return row ?? null;
    },

    async stats(): Promise<OutboxStats> {
      const rows = await db
        .select({ status: outbox.status, count: sql<number>`count(*)::integer` })
        .from(outbox)
        .groupBy(outbox.status);
      const stats: OutboxStats = { pending: 0, sent: 0, dead: 0 };
      for (const row of rows) {
        if (row.status === 'PENDING') stats.pending = Number(row.count);
        else if (row.status === 'SENT') stats.sent = Number(row.count);
        else if (row.status === 'DEAD') stats.dead = Number(row.count);
      }
      return stats;
    },

    /** Events still to deliver and how long the oldest has waited (0 when none): the relay's lag. */
    async lag(): Promise<{ pending: number; oldestSeconds: number }> {
      const [row] = await db
        .select({
          pending: sql<number>`count(*)::integer`,
          oldestSeconds: sql<number>`coalesce(extract(epoch from now() - min(${outbox.createdAt})), 0)::float8`,
        })
        .from(outbox)
        .where(eq(outbox.status, 'PENDING'));
      return { pending: Number(row?.pending ?? 0), oldestSeconds: Number(row?.oldestSeconds ?? 0) };
    },
  };
}

export type OutboxStore = ReturnType<typeof createOutboxStore>;
