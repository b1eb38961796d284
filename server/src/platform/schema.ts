import { sql } from 'drizzle-orm';
import {
  bigserial,
  boolean,
  check,
  doublePrecision,
  index,
  integer,
  jsonb,
  pgTable,
  primaryKey,
  text,
  timestamp,
  uniqueIndex,
  uuid,
} from 'drizzle-orm/pg-core';
import { ACTIVE_DELIVERY_STATUSES, type DeliveryStatus, type DriverStatus, type Role } from '#shared/schemas.js';

/** The delivery statuses that hold a driver, as an SQL list: `status in ${ACTIVE_STATUSES_SQL}`. */
export const ACTIVE_STATUSES_LIST = `(${ACTIVE_DELIVERY_STATUSES.map((s) => `'${s}'`).join(', ')})`;
export const ACTIVE_STATUSES_SQL = sql.raw(ACTIVE_STATUSES_LIST);

/** 2 x 122 random bits, base64url without padding (43 characters). */
const TRACKING_TOKEN_DEFAULT = sql`translate(encode(uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()), 'base64'), '+/=', '-_')`;

/** A ranked candidate as stored with its delivery: every term of its score and what became of it. */
export interface StoredCandidate {
  driverId: string;
  distanceMeters: number;
  outcome: string;
  [term: string]: unknown;
}

const ts = (name: string) => timestamp(name, { withTimezone: true, mode: 'date' });

/** A seller's own fleet of drivers (`id` = the Vendure seller id); exclusive: its orders never go to the shared pool. */
export const fleets = pgTable('fleets', {
  id: text('id').primaryKey(),
  exclusive: boolean('exclusive').notNull().default(false),
  createdAt: ts('created_at').notNull().defaultNow(),
  updatedAt: ts('updated_at').notNull().defaultNow(),
});

export const drivers = pgTable(
  'drivers',
  {
    id: uuid('id').primaryKey().defaultRandom(),
    name: text('name').notNull(),
    phone: text('phone'),
    vehicle: text('vehicle'),
    status: text('status').$type<DriverStatus>().notNull().default('OFFLINE'),
    /** The driver asked to work (went AVAILABLE) and has not gone off duty: a reconnect brings it back. */
    onDuty: boolean('on_duty').notNull().default(false),
    /** The socket that currently speaks for this driver; a stale socket's disconnect must not take it offline. */
    sessionId: text('session_id'),
    /** Bumped to revoke every token issued before. */
    tokenVersion: integer('token_version').notNull().default(0),
    /**
     * The delivery that holds this driver, written by the claim in the same UPDATE that makes it
     * BUSY and cleared by the release. Every status write derives BUSY from this column of the row it
     * locks, never from a subquery: under READ COMMITTED a write that waited for a claim re-reads the
     * row, but a subquery would still see the snapshot from before the claim.
     */
    currentDeliveryId: uuid('current_delivery_id'),
    /**
     * When the driver last came free (a delivery or offer let it go, or it went on duty): the
     * fairness term of the score ("idle longest"). Null: never since it was created.
     */
    freeSince: ts('free_since'),
    /** The seller's fleet the driver belongs to (the Vendure seller id); null: the shared pool. */
    fleet: text('fleet').references(() => fleets.id),
    createdAt: ts('created_at').notNull().defaultNow(),
    updatedAt: ts('updated_at').notNull().defaultNow(),
  },
  (t) => [
    index('drivers_live_idx').on(t.id).where(sql`${t.status} <> 'OFFLINE'`),
    /** A connected driver is BUSY exactly when a delivery holds it; OFFLINE may keep its delivery. */
    check('drivers_busy_iff_holding_delivery', sql`${t.status} = 'OFFLINE' or (${t.status} = 'BUSY') = (${t.currentDeliveryId} is not null)`),
  ],
);

/**
 * Where each driver was last seen and when it was last heard from. Written thousands of times a
 * second in batches, so it lives apart from `drivers`: those writes never hold a lock an
 * assignment's claim on the driver row would wait for. No index but the key, so updates stay HOT.
 */
export const driverPositions = pgTable('driver_positions', {
  driverId: uuid('driver_id')
    .primaryKey()
    .references(() => drivers.id, { onDelete: 'cascade' }),
  lat: doublePrecision('lat'),
  lng: doublePrecision('lng'),
  heading: doublePrecision('heading'),
  speed: doublePrecision('speed'),
  positionAt: ts('position_at'),
  lastSeenAt: ts('last_seen_at'),
});

export const deliveries = pgTable(
  'deliveries',
  {
    id: uuid('id').primaryKey().defaultRandom(),
    sellerOrderId: text('seller_order_id').notNull(),
    orderCode: text('order_code').notNull(),
    sellerId: text('seller_id'),
    status: text('status').$type<DeliveryStatus>().notNull(),
    driverId: uuid('driver_id').references(() => drivers.id),
    pickupLat: doublePrecision('pickup_lat').notNull(),
    pickupLng: doublePrecision('pickup_lng').notNull(),
    pickupAddress: text('pickup_address'),
    dropoffLat: doublePrecision('dropoff_lat').notNull(),
    dropoffLng: doublePrecision('dropoff_lng').notNull(),
    dropoffAddress: text('dropoff_address'),
    customer: jsonb('customer').$type<{ name?: string; phone?: string }>(),
    notes: text('notes'),
    distanceMeters: doublePrecision('distance_meters'),
    /** Ranked candidates considered at assignment time, so a dispatcher can see why a driver was chosen. */
    candidates: jsonb('candidates').$type<StoredCandidate[]>(),
    assignedAt: ts('assigned_at'),
    /** When the driver's app confirmed it stored the assignment push; null until then. */
    acknowledgedAt: ts('acknowledged_at'),
    /**
     * The secret in the customer's tracking link (`/track/<token>`): 244 random bits from two
     * `gen_random_uuid()` (PostgreSQL's strong random source), base64url. A column default, so every
     * insert path gets one without knowing of it, and existing rows got their own when it was added.
     */
    trackingToken: text('tracking_token').notNull().default(TRACKING_TOKEN_DEFAULT),
    createdAt: ts('created_at').notNull().defaultNow(),
    updatedAt: ts('updated_at').notNull().defaultNow(),
  },
  (t) => [
    uniqueIndex('deliveries_seller_order_id_key').on(t.sellerOrderId),
    uniqueIndex('deliveries_one_active_per_driver')
      .on(t.driverId)
      .where(sql`${t.status} in ${ACTIVE_STATUSES_SQL}`),
    index('deliveries_pending_idx').on(t.createdAt).where(sql`${t.status} = 'PENDING'`),
    index('deliveries_status_created_idx').on(t.status, t.createdAt),
    index('deliveries_driver_created_idx').on(t.driverId, t.createdAt),
    uniqueIndex('deliveries_tracking_token_key').on(t.trackingToken),
  ],
);

export const deliveryEvents = pgTable(
  'delivery_events',
  {
    id: bigserial('id', { mode: 'number' }).primaryKey(),
    deliveryId: uuid('delivery_id')
      .notNull()
      .references(() => deliveries.id),
    fromStatus: text('from_status').$type<DeliveryStatus>(),
    toStatus: text('to_status').$type<DeliveryStatus>().notNull(),
    driverId: uuid('driver_id'),
    /** Who made the change: `webhook`, `hub`, `driver:<id>`, `admin`. */
    actor: text('actor').notNull(),
    reason: text('reason'),
    at: ts('at').notNull().defaultNow(),
  },
  (t) => [index('delivery_events_delivery_idx').on(t.deliveryId, t.id)],
);

export const outbox = pgTable(
  'outbox',
  {
    /** Also the `webhook-id`: stable across retries so receivers can deduplicate. */
    id: uuid('id').primaryKey().defaultRandom(),
    seq: bigserial('seq', { mode: 'number' }).notNull(),
    deliveryId: uuid('delivery_id').notNull(),
    type: text('type').notNull(),
    payload: jsonb('payload').notNull(),
    status: text('status').$type<'PENDING' | 'SENT' | 'DEAD'>().notNull().default('PENDING'),
    attempts: integer('attempts').notNull().default(0),
    nextAttemptAt: ts('next_attempt_at').notNull().defaultNow(),
    lastError: text('last_error'),
    createdAt: ts('created_at').notNull().defaultNow(),
    sentAt: ts('sent_at'),
  },
  (t) => [
    index('outbox_due_idx').on(t.nextAttemptAt).where(sql`${t.status} = 'PENDING'`),
    index('outbox_delivery_seq_idx').on(t.deliveryId, t.seq),
  ],
);

export const OFFER_STATUSES = ['OPEN', 'ACCEPTED', 'DECLINED', 'EXPIRED', 'CANCELLED'] as const;
export type OfferStatus = (typeof OFFER_STATUSES)[number];

/**
 * Offers (DISPATCH_MODE=offer): a reservation of one driver for one delivery until `expiresAt`.
 * The deadline lives here, so any node expires it; at most one open offer per driver and per
 * delivery (partial unique indexes), and a driver is offered a delivery at most once (unique pair).
 */
export const offers = pgTable(
  'offers',
  {
    id: uuid('id').primaryKey().defaultRandom(),
    deliveryId: uuid('delivery_id')
      .notNull()
      .references(() => deliveries.id),
    driverId: uuid('driver_id')
      .notNull()
      .references(() => drivers.id),
    /** 1 for the delivery's first offer, one more for each after it. */
    attempt: integer('attempt').notNull(),
    status: text('status').$type<OfferStatus>().notNull().default('OPEN'),
    /** Why it ended: the driver's decline reason, `expired`, or the cancel's reason. */
    reason: text('reason'),
    distanceMeters: doublePrecision('distance_meters'),
    /** The terms of the driver's score when the offer was made. */
    score: jsonb('score').$type<Record<string, unknown>>(),
    createdAt: ts('created_at').notNull().defaultNow(),
    expiresAt: ts('expires_at').notNull(),
    answeredAt: ts('answered_at'),
  },
  (t) => [
    uniqueIndex('offers_delivery_driver_key').on(t.deliveryId, t.driverId),
    uniqueIndex('offers_one_open_per_delivery').on(t.deliveryId).where(sql`${t.status} = 'OPEN'`),
    uniqueIndex('offers_one_open_per_driver').on(t.driverId).where(sql`${t.status} = 'OPEN'`),
    index('offers_open_expires_idx').on(t.expiresAt).where(sql`${t.status} = 'OPEN'`),
  ],
);

export const PUSH_KINDS = ['assignment', 'offer', 'delivery:cancelled'] as const;
export type PushKind = (typeof PUSH_KINDS)[number];

/**
 * What the hub must tell a driver's app, until the app acknowledges it: written in the transaction
 * that makes the change, so a push survives a dropped adapter message or a dead node. The node
 * holding the driver's socket sends open pushes again from here.
 */
export const pushes = pgTable(
  'pushes',
  {
    deliveryId: uuid('delivery_id').notNull(),
    driverId: uuid('driver_id').notNull(),
    kind: text('kind').$type<PushKind>().notNull(),
    payload: jsonb('payload').notNull(),
    createdAt: ts('created_at').notNull().defaultNow(),
    lastSentAt: ts('last_sent_at'),
    /** Re-sends after the first send; bounded by PUSH_MAX_RESENDS. */
    resends: integer('resends').notNull().default(0),
    acknowledgedAt: ts('acknowledged_at'),
    /** No longer current (the delivery moved on, or left the driver): never sent again. */
    closedAt: ts('closed_at'),
    /** Every re-send went unanswered while the driver was connected: shown to dispatchers, counted. */
    unacknowledgedAt: ts('unacknowledged_at'),
  },
  (t) => [
    primaryKey({ columns: [t.deliveryId, t.driverId, t.kind] }),
    index('pushes_open_idx').on(t.createdAt).where(sql`${t.acknowledgedAt} is null and ${t.closedAt} is null`),
  ],
);

/**
 * Token versions of subjects that have no row of their own (dispatchers, admin JWTs); drivers keep
 * theirs in `drivers`. A subject without a row is at version 0; revoking bumps it, and tokens
 * carrying an older `ver` stop working.
 */
export const tokenVersions = pgTable(
  'token_versions',
  {
    role: text('role').$type<Exclude<Role, 'driver'>>().notNull(),
    subject: text('subject').notNull(),
    version: integer('version').notNull().default(0),
    updatedAt: ts('updated_at').notNull().defaultNow(),
  },
  (t) => [primaryKey({ columns: [t.role, t.subject] })],
);

export const schema = { fleets, offers, drivers, driverPositions, deliveries, deliveryEvents, outbox, pushes, tokenVersions };
