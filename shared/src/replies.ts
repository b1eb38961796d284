import { z } from 'zod';
import { ERROR_CODES, type ErrorBody } from './errors.js';
import type { DispatchSnapshot, DriverSession } from './events.js';
import {
  type AssignmentPush,
  type DeliveryView,
  type DriverMoved,
  type DriverView,
  type OrderReadyReply,
  type TrackingState,
  DELIVERY_STATUSES,
  deliveryStatus,
  driverStatus,
  place,
} from './schemas.js';

/**
 * What the hub sends, as zod schemas: HTTP answers, socket pushes and acks. They are the source of
 * the OpenAPI and AsyncAPI documents (`/openapi.json`, `/asyncapi.json`) and a client may validate
 * what it receives with them. Each one is checked at compile time against the TypeScript type the
 * hub's code produces (bottom of this file), so the documents cannot drift from the code.
 */

const isoTime = z.iso.datetime({ offset: true });
const uuid = z.uuid();

export const errorBody = z.object({
  code: z.enum(ERROR_CODES),
  message: z.string(),
  /** VALIDATION_FAILED: `[{ path, message }]`, one per refused field. */
  details: z.unknown().optional(),
});

/** Every HTTP error: `{ error: { code, message, details? } }`. */
export const errorReply = z.object({ error: errorBody });

export const healthReply = z.object({
  status: z.enum(['ok', 'degraded']),
  postgres: z.enum(['up', 'down']),
  redis: z.enum(['up', 'down', 'disabled']),
  node: z.string(),
  uptimeSeconds: z.number().int().min(0),
});

export const deliveryView = z.object({
  id: uuid,
  sellerOrderId: z.string(),
  orderCode: z.string(),
  status: deliveryStatus,
  driverId: uuid.nullable(),
  pickup: place,
  dropoff: place,
  createdAt: isoTime,
  updatedAt: isoTime,
  /** When the driver's app confirmed the assignment push; null until then. */
  acknowledgedAt: isoTime.nullable(),
  /** OFFERED only: when the open offer lapses unless its driver accepts (hub clock). */
  offerExpiresAt: isoTime.nullable().optional(),
});

export const driverView = z.object({
  id: uuid,
  name: z.string(),
  status: driverStatus,
  lat: z.number().nullable(),
  lng: z.number().nullable(),
  lastSeenAt: isoTime.nullable(),
});

export const orderReadyReply = z.union([
  z.object({
    status: z.literal('ASSIGNED'),
    deliveryId: uuid,
    sellerOrderId: z.string(),
    driverId: uuid,
    distanceMeters: z.number(),
    idempotent: z.boolean(),
    /** The page the shop can give its customer; see `GET /track/{token}`. */
    trackingUrl: z.string().url(),
  }),
  z.object({
    status: z.literal('OFFERED'),
    deliveryId: uuid,
    sellerOrderId: z.string(),
    /** The driver the delivery is offered to (DISPATCH_MODE=offer). */
    driverId: uuid,
    /** When the offer lapses unless the driver accepts it (hub clock). */
    offerExpiresAt: isoTime,
    idempotent: z.boolean(),
    trackingUrl: z.string().url(),
  }),
  z.object({
    status: z.enum(DELIVERY_STATUSES.filter((s) => s !== 'ASSIGNED' && s !== 'OFFERED') as [Exclude<(typeof DELIVERY_STATUSES)[number], 'ASSIGNED' | 'OFFERED'>, ...Exclude<(typeof DELIVERY_STATUSES)[number], 'ASSIGNED' | 'OFFERED'>[]]),
    deliveryId: uuid,
    sellerOrderId: z.string(),
    driverId: uuid.nullable(),
    idempotent: z.boolean(),
    trackingUrl: z.string().url(),
  }),
]);

export const orderCancelledReply = z.object({
  status: deliveryStatus,
  deliveryId: uuid,
  sellerOrderId: z.string(),
  idempotent: z.boolean(),
  /** The same link as in the ready answer; it shows the customer that the delivery was cancelled. */
  trackingUrl: z.string().url(),
});

/** `POST /admin/deliveries/{id}/cancel`. */
export const dispatcherCancelReply = z.object({ delivery: deliveryView, idempotent: z.boolean() });

/** `POST /admin/deliveries/{id}/redispatch`: the delivery afterwards, and the driver it was taken from (null when it was PENDING). */
export const redispatchReply = z.object({ delivery: deliveryView, takenFrom: uuid.nullable() });

export const createdDriverReply = z.object({
  id: uuid,
  name: z.string(),
  status: driverStatus,
  /** The seller's fleet the driver belongs to; null: the shared pool. */
  fleet: z.string().nullable(),
  /** The driver's JWT: what the driver app connects with. */
  token: z.string(),
});

export const tokenReply = z.object({ token: z.string() });

/** `PATCH /admin/drivers/{id}`: the driver after the move. */
export const updatedDriverReply = z.object({ id: uuid, name: z.string(), status: driverStatus, fleet: z.string().nullable() });

/** `PUT` and `GET /admin/fleets/{fleet}`. */
export const fleetReply = z.object({
  fleet: z.string(),
  /** Exclusive: the seller's orders never go to the shared pool. */
  exclusive: z.boolean(),
  /** Drivers that belong to the fleet. */
  drivers: z.number().int().min(0),
});

export const revokedTokensReply = z.object({ revoked: z.literal(true), token: z.string() });

export const driversReply = z.object({ drivers: z.array(driverView) });

export const deliveriesReply = z.object({ deliveries: z.array(deliveryView) });

export const deliveryDetail = deliveryView.extend({
  distanceMeters: z.number().nullable(),
  assignedAt: isoTime.nullable(),
  /**
   * The drivers considered at the last assignment or offer, best first, with every term of their
   * score (docs/api.md, "Scoring") and what happened to each claim: `chosen`, `offered`, `taken`
   * (claimed by another order first), `not-tried`. Older deliveries carry only the first three fields.
   */
  candidates: z.array(
    z.object({
      driverId: uuid,
      distanceMeters: z.number(),
      outcome: z.string(),
      rank: z.number().int().optional(),
      /** `fleet`: the seller's own fleet; `shared`: the shared pool. */
      pool: z.enum(['fleet', 'shared']).optional(),
      fleet: z.string().nullable().optional(),
      /** Metres farther than the nearest candidate of the same pool. */
      beyondNearestMeters: z.number().optional(),
      /** Within FAIRNESS_BAND_METERS of the nearest: idle time, then deliveries today, decided. */
      withinBand: z.boolean().optional(),
      fairnessBandMeters: z.number().optional(),
      /** Seconds since the driver last came free; null when the band held nobody else to compare. */
      idleSeconds: z.number().nullable().optional(),
      /** Deliveries assigned to the driver since midnight UTC; null likewise. */
      deliveriesToday: z.number().int().nullable().optional(),
    }),
  ),
  /** Offer mode: every offer of the delivery, first first, and how each ended. */
  offers: z.array(
    z.object({
      driverId: uuid,
      attempt: z.number().int(),
      /** OPEN until the driver answers or the deadline passes. */
      outcome: z.enum(['OPEN', 'ACCEPTED', 'DECLINED', 'EXPIRED', 'CANCELLED']),
      /** The driver's reason for a decline, `expired`, or the cancel's reason. */
      reason: z.string().nullable(),
      distanceMeters: z.number().nullable(),
      /** The driver's score terms when the offer was made. */
      score: z.record(z.string(), z.unknown()).nullable(),
      offeredAt: isoTime,
      expiresAt: isoTime,
      answeredAt: isoTime.nullable(),
    }),
  ),
  /** The audit trail: one entry per transition. */
  events: z.array(
    z.object({
      from: deliveryStatus.nullable(),
      to: deliveryStatus,
      actor: z.string(),
      driverId: uuid.nullable(),
      reason: z.string().nullable(),
      at: isoTime,
    }),
  ),
  /** What the driver's app was told about this delivery, and whether it confirmed it. */
  pushes: z.array(
    z.object({
      driverId: uuid,
      kind: z.enum(['assignment', 'offer', 'delivery:cancelled']),
      createdAt: isoTime.nullable(),
      lastSentAt: isoTime.nullable(),
      resends: z.number().int(),
      acknowledgedAt: isoTime.nullable(),
      closedAt: isoTime.nullable(),
      unacknowledgedAt: isoTime.nullable(),
    }),
  ),
});

/** `GET /track/:token/state`; see TrackingState in schemas.ts for the privacy rules. */
export const trackingStateReply = z.object({
  status: deliveryStatus,
  orderCode: z.string(),
  driver: z
    .object({
      /** The first word of the driver's name, nothing more. */
      firstName: z.string(),
      lat: z.number().nullable(),
      lng: z.number().nullable(),
      heading: z.number().nullable(),
      /** When the hub took this position, ms since the epoch. */
      ts: z.number().nullable(),
    })
    .nullable(),
  pickup: place,
  dropoff: place,
  updatedAt: isoTime,
});

export const locationsAcceptedReply = z.object({ accepted: z.number().int().min(1).max(100) });

export const deadOutboxEventsReply = z.object({
  events: z.array(
    z.object({
      id: uuid,
      deliveryId: uuid,
      type: z.string(),
      sequence: z.number().int(),
      attempts: z.number().int(),
      lastError: z.string().nullable(),
      createdAt: isoTime,
      deadAt: isoTime,
      payload: z.unknown(),
    }),
  ),
});

export const replayedReply = z.object({ replayed: z.literal(true) });

// ---- sockets ----

export const assignmentPush = z.object({
  deliveryId: uuid,
  sellerOrderId: z.string(),
  orderCode: z.string(),
  pickup: place,
  dropoff: place,
  assignedAt: isoTime,
  /** Where the job stands, so an app reconnecting after the pickup knows it. */
  status: z.enum(['ASSIGNED', 'PICKED_UP']).optional(),
});

export const offerPush = z.object({
  deliveryId: uuid,
  sellerOrderId: z.string(),
  orderCode: z.string(),
  pickup: place,
  dropoff: place,
  distanceMeters: z.number(),
  expiresAt: isoTime,
});

export const driverSession = z.object({
  driverId: uuid,
  status: driverStatus,
  activeDelivery: assignmentPush.nullable(),
  offer: offerPush.nullable().optional(),
  locationConfirmation: z.literal('cumulative').optional(),
});

export const deliveryCancelledPush = z.object({ deliveryId: uuid, reason: z.string() });

export const deliveryPushState = z.object({
  deliveryId: uuid,
  driverId: uuid,
  kind: z.enum(['assignment', 'offer', 'delivery:cancelled']),
  state: z.enum(['acknowledged', 'unacknowledged']),
  at: isoTime,
});

export const driverMoved = z.object({
  id: uuid,
  lat: z.number(),
  lng: z.number(),
  heading: z.number().nullable(),
  speed: z.number().nullable(),
  status: driverStatus,
  /** When the hub took the fix, ms since epoch. */
  ts: z.number(),
});

export const dispatchSnapshot = z.object({ drivers: z.array(driverView), deliveries: z.array(deliveryView) });

export const driverStatusChanged = z.object({ id: uuid, status: driverStatus, ts: z.number() });

export const deliveryUpdated = deliveryView.extend({ previousStatus: deliveryStatus.nullable() });

/** An ack: `{ ok: true, ...result }` or `{ ok: false, error }`. */
export function ackReply<T extends z.ZodRawShape>(result: T) {
  return z.union([z.object({ ok: z.literal(true), ...result }), z.object({ ok: z.literal(false), error: errorBody })]);
}

// ---- the schemas above describe exactly the types the hub's code uses ----

/** True when A and B are the same type (not merely assignable one way). */
export type SameType<A, B> = (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false;
/** Fails to compile unless its argument is `true`. */
export function sameShape<T extends true>(..._proof: T extends true ? [] : [never]): void {}

sameShape<SameType<z.infer<typeof errorBody>, ErrorBody>>();
sameShape<SameType<z.infer<typeof deliveryView>, DeliveryView>>();
sameShape<SameType<z.infer<typeof driverView>, DriverView>>();
sameShape<SameType<z.infer<typeof assignmentPush>, AssignmentPush>>();
sameShape<SameType<z.infer<typeof driverMoved>, DriverMoved>>();
sameShape<SameType<z.infer<typeof driverSession>, DriverSession>>();
sameShape<SameType<z.infer<typeof dispatchSnapshot>, DispatchSnapshot>>();
sameShape<SameType<z.infer<typeof orderReadyReply>, OrderReadyReply>>();
sameShape<SameType<z.infer<typeof trackingStateReply>, TrackingState>>();
