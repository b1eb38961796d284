import { z } from 'zod';

/** Redis GEO refuses latitudes beyond this (Web Mercator limit). */
export const MAX_GEO_LATITUDE = 85.05112878;

export const latitude = z.number().finite().min(-MAX_GEO_LATITUDE).max(MAX_GEO_LATITUDE);
export const longitude = z.number().finite().min(-180).max(180);

export const DRIVER_STATUSES = ['AVAILABLE', 'BUSY', 'OFFLINE'] as const;
export const driverStatus = z.enum(DRIVER_STATUSES);
export type DriverStatus = z.infer<typeof driverStatus>;

export const DELIVERY_STATUSES = ['PENDING', 'OFFERED', 'ASSIGNED', 'PICKED_UP', 'DELIVERED', 'FAILED', 'CANCELLED'] as const;
export const deliveryStatus = z.enum(DELIVERY_STATUSES);
export type DeliveryStatus = z.infer<typeof deliveryStatus>;
export const TERMINAL_DELIVERY_STATUSES: readonly DeliveryStatus[] = ['DELIVERED', 'FAILED', 'CANCELLED'];
export const ACTIVE_DELIVERY_STATUSES: readonly DeliveryStatus[] = ['ASSIGNED', 'PICKED_UP'];

const boundedText = (max: number) => z.string().max(max);

// ---- driver socket payloads ----

export const locationFix = z
  .object({
    lat: latitude,
    lng: longitude,
    heading: z.number().finite().min(0).max(360).optional(),
    speed: z.number().finite().min(0).max(1000).optional(),
    accuracy: z.number().finite().min(0).max(100_000).optional(),
    /** Client clock, ms since epoch. */
    ts: z.number().finite().int().min(0).max(8.64e15).optional(),
    /**
     * The client's number for this fix, increasing by one per fix for the life of the client
     * (see `location:stored` in events.ts). Optional: a fix without one is never confirmed cumulatively.
     */
    seq: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER).optional(),
  })
  .strict();
export type LocationFix = z.infer<typeof locationFix>;

/** The largest batch `location` accepts (and `POST /drivers/me/locations`). */
export const MAX_LOCATION_BATCH = 100;

/** One fix, or a batch of buffered offline fixes (the newest wins). */
export const locationPayload = z.union([locationFix, z.array(locationFix).min(1).max(MAX_LOCATION_BATCH)]);
export type LocationPayload = z.infer<typeof locationPayload>;

export const driverStatusPayload = z.object({ status: z.enum(['AVAILABLE', 'OFFLINE']) }).strict();
export type DriverStatusPayload = z.infer<typeof driverStatusPayload>;

export const DRIVER_REPORTABLE_STATUSES = ['PICKED_UP', 'DELIVERED', 'FAILED'] as const;
export const deliveryUpdatePayload = z
  .object({
    deliveryId: z.string().uuid(),
    status: z.enum(DRIVER_REPORTABLE_STATUSES),
    reason: boundedText(500).optional(),
  })
  .strict()
  .refine((p) => p.status !== 'FAILED' || (p.reason !== undefined && p.reason.trim().length > 0), {
    message: 'reason is required when status is FAILED',
    path: ['reason'],
  });
export type DeliveryUpdatePayload = z.infer<typeof deliveryUpdatePayload>;

export const offerAcceptPayload = z.object({ deliveryId: z.string().uuid() }).strict();
export type OfferAcceptPayload = z.infer<typeof offerAcceptPayload>;

export const offerDeclinePayload = z
  .object({ deliveryId: z.string().uuid(), reason: boundedText(500).optional() })
  .strict();
export type OfferDeclinePayload = z.infer<typeof offerDeclinePayload>;

/**
 * What a driver app answers to an `assignment`, `offer` or `delivery:cancelled` push (the push's
 * Socket.IO acknowledgement). Only `{ ok: true }` is an acknowledgement; `{ ok: false }`, silence
 * or anything this schema refuses means "not taken", and the hub sends the push again.
 */
export const pushAckReply = z.union([
  // Extra keys are ignored rather than refused, so a newer app may say more.
  z.object({ ok: z.literal(true) }),
  z.object({ ok: z.literal(false), error: z.object({ code: z.string().max(100), message: boundedText(500) }) }),
]);
export type PushAckReply = z.infer<typeof pushAckReply>;

/** `location:stored`: every fix of this connection numbered up to `upTo` is stored (events.ts). */
export const locationStored = z.object({ upTo: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER) }).strict();
export type LocationStored = z.infer<typeof locationStored>;

export const viewportPayload = z
  .object({
    minLat: latitude,
    minLng: longitude,
    maxLat: latitude,
    maxLng: longitude,
  })
  .strict()
  .nullable();
export type Viewport = z.infer<typeof viewportPayload>;

// ---- HTTP payloads ----

export const place = z
  .object({
    lat: latitude,
    lng: longitude,
    address: boundedText(500).optional(),
  })
  .strict();
export type Place = z.infer<typeof place>;

export const sellerOrderReady = z
  .object({
    sellerOrderId: z.string().min(1).max(200),
    orderCode: z.string().min(1).max(200),
    /** The Vendure seller: its fleet is asked first (see fleets in docs/api.md). */
    sellerId: z.string().min(1).max(200).optional(),
    pickup: place,
    dropoff: place,
    customer: z
      .object({ name: boundedText(200).optional(), phone: boundedText(50).optional() })
      .strict()
      .optional(),
    notes: boundedText(2000).optional(),
  })
  .strict();
export type SellerOrderReady = z.infer<typeof sellerOrderReady>;

export const sellerOrderCancelled = z
  .object({ sellerOrderId: z.string().min(1).max(200), reason: boundedText(500).optional() })
  .strict();
export type SellerOrderCancelled = z.infer<typeof sellerOrderCancelled>;

/** The status events the hub sends back to Vendure (see docs/outbox.md), one per delivery transition. */
export const DELIVERY_EVENT_TYPES = [
  'delivery.assigned',
  'delivery.picked_up',
  'delivery.delivered',
  'delivery.failed',
  'delivery.cancelled',
] as const;
export const deliveryEventType = z.enum(DELIVERY_EVENT_TYPES);
export type DeliveryEventType = z.infer<typeof deliveryEventType>;

/**
 * A status event's body as the hub signs and sends it. Loose objects on purpose: the hub may add
 * fields (a receiver keeps working when `trackingUrl` or a driver's name start to arrive).
 */
export const deliveryStatusEvent = z.looseObject({
  /** Equals the `webhook-id` header; never changes across retries. */
  id: z.string().min(1).max(200),
  type: deliveryEventType,
  deliveryId: z.string().min(1).max(200),
  /** Grows with every event the hub writes: an event below one already applied is stale. */
  sequence: z.number().int().min(0),
  occurredAt: z.string().max(100),
  data: z.looseObject({
    deliveryId: z.string().min(1).max(200),
    sellerOrderId: z.string().min(1).max(200),
    orderCode: z.string().min(1).max(200),
    status: deliveryStatus,
    previousStatus: deliveryStatus.nullable(),
    driverId: z.string().max(200).nullable(),
    reason: boundedText(2000).nullable(),
    at: z.string().max(100),
    trackingUrl: z.string().url().max(2000).nullish(),
    driverName: boundedText(200).nullish(),
  }),
});
export type DeliveryStatusEvent = z.infer<typeof deliveryStatusEvent>;

/** A fleet's name: the Vendure seller id (as `sellerId` carries it in the webhook). */
export const fleetId = z.string().min(1).max(200).regex(/^[A-Za-z0-9._:-]+$/, 'letters, digits and . _ : - only');

export const createDriverBody = z
  .object({
    name: z.string().trim().min(1).max(200),
    phone: boundedText(50).optional(),
    vehicle: boundedText(100).optional(),
    /** The seller's fleet the driver belongs to (it must exist: `PUT /admin/fleets/:fleet`); absent or null: the shared pool. */
    fleet: fleetId.nullable().optional(),
  })
  .strict();
export type CreateDriverBody = z.infer<typeof createDriverBody>;

/** `PATCH /admin/drivers/:id`: moves a driver into a fleet (or, with null, to the shared pool). */
export const updateDriverBody = z.object({ fleet: fleetId.nullable() }).strict();
export type UpdateDriverBody = z.infer<typeof updateDriverBody>;

/** `PUT /admin/fleets/:fleet`. */
export const fleetBody = z.object({ exclusive: z.boolean() }).strict();
export type FleetBody = z.infer<typeof fleetBody>;

export const ROLES = ['driver', 'dispatcher', 'admin'] as const;
export const role = z.enum(ROLES);
export type Role = z.infer<typeof role>;

export const mintTokenBody = z
  .object({ role: z.enum(['dispatcher', 'driver']), subject: z.string().min(1).max(200) })
  .strict();
export type MintTokenBody = z.infer<typeof mintTokenBody>;

/** `POST /admin/deliveries/:id/cancel` and `/redispatch`: the reason goes into the audit trail (and, for a cancel, to the driver's app). */
export const dispatcherActionBody = z
  .object({ reason: z.string().trim().min(1).max(500).optional() })
  .strict();
export type DispatcherActionBody = z.infer<typeof dispatcherActionBody>;

export const listDeliveriesQuery = z
  .object({
    status: deliveryStatus.optional(),
    driverId: z.string().uuid().optional(),
    limit: z.coerce.number().int().min(1).max(1000).default(100),
  })
  .strict();
export type ListDeliveriesQuery = z.infer<typeof listDeliveriesQuery>;

// ---- shapes the hub sends ----

export interface DeliveryView {
  id: string;
  sellerOrderId: string;
  orderCode: string;
  status: DeliveryStatus;
  driverId: string | null;
  pickup: Place;
  dropoff: Place;
  createdAt: string;
  updatedAt: string;
  /** When the driver's app confirmed the assignment push; null until then (and while unassigned). */
  acknowledgedAt: string | null;
  /** OFFERED only: when the open offer lapses unless its driver accepts (hub clock). */
  offerExpiresAt?: string | null;
}

/** A driver app's answer to a push, or its absence, as dispatchers see it. */
export interface DeliveryPushState {
  deliveryId: string;
  driverId: string;
  kind: 'assignment' | 'offer' | 'delivery:cancelled';
  state: 'acknowledged' | 'unacknowledged';
  at: string;
}

export interface DriverView {
  id: string;
  name: string;
  status: DriverStatus;
  lat: number | null;
  lng: number | null;
  lastSeenAt: string | null;
}

export interface AssignmentPush {
  deliveryId: string;
  sellerOrderId: string;
  orderCode: string;
  pickup: Place;
  dropoff: Place;
  assignedAt: string;
  /**
   * Where the job stands, so an app that reconnects after PICKED_UP knows it. Optional because
   * hubs before issue 16 leave it out; absent means ASSIGNED.
   */
  status?: 'ASSIGNED' | 'PICKED_UP';
}

/** `offer` (DISPATCH_MODE=offer): a delivery reserved for this driver until `expiresAt` (hub clock, ISO 8601). */
export interface OfferPush {
  deliveryId: string;
  sellerOrderId: string;
  orderCode: string;
  pickup: Place;
  dropoff: Place;
  distanceMeters: number;
  expiresAt: string;
}

export interface DeliveryCancelledPush {
  deliveryId: string;
  reason: string;
}

export interface DriverMoved {
  id: string;
  lat: number;
  lng: number;
  heading: number | null;
  speed: number | null;
  status: DriverStatus;
  ts: number;
}

/**
 * `GET /track/:token/state`: what a shop's customer may see of one delivery. `driver` is present
 * only while the delivery is ASSIGNED or PICKED_UP (its position null until the hub has one);
 * `ts` is when the hub took that position, ms since the epoch. Never a phone number, never
 * another delivery.
 */
export interface TrackingState {
  status: DeliveryStatus;
  orderCode: string;
  driver: { firstName: string; lat: number | null; lng: number | null; heading: number | null; ts: number | null } | null;
  pickup: Place;
  dropoff: Place;
  updatedAt: string;
}

/** `trackingUrl`: the page the shop can give its customer (`<PUBLIC_URL>/track/<token>`). */
export type OrderReadyReply =
  | { status: 'ASSIGNED'; deliveryId: string; sellerOrderId: string; driverId: string; distanceMeters: number; idempotent: boolean; trackingUrl: string }
  | { status: 'OFFERED'; deliveryId: string; sellerOrderId: string; driverId: string; offerExpiresAt: string; idempotent: boolean; trackingUrl: string }
  | { status: Exclude<DeliveryStatus, 'ASSIGNED' | 'OFFERED'>; deliveryId: string; sellerOrderId: string; driverId: string | null; idempotent: boolean; trackingUrl: string };
