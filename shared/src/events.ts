import type { Ack, AckReply } from './errors.js';
import type {
  AssignmentPush,
  DeliveryCancelledPush,
  DeliveryPushState,
  DeliveryStatus,
  DeliveryUpdatePayload,
  DeliveryView,
  DriverMoved,
  DriverStatus,
  DriverStatusPayload,
  DriverView,
  LocationPayload,
  LocationStored,
  OfferAcceptPayload,
  OfferDeclinePayload,
  OfferPush,
  Role,
} from './schemas.js';

/*
 * The `/drivers` namespace, both ends. The driver client in ./driver-client implements the app's
 * end; the hub implements the other. Two protocols need more words than a type:
 *
 * ## Acknowledged pushes (invariant 8)
 * `assignment`, `offer` and `delivery:cancelled` carry a Socket.IO acknowledgement. The app calls
 * it with `{ ok: true }` once it has taken the push (the driver client: after every handler the app
 * registered for it has returned or resolved). `{ ok: false, error }` means the app could not take
 * it (the driver client sends `INTERNAL` when a handler threw or rejected); the hub records
 * nothing and sends the push again, exactly as if no answer had come. The hub parses the answer
 * with `pushAckReply` (schemas.ts); only `{ ok: true }` is recorded.
 *
 * ## Cumulative confirmation of fixes
 * Acknowledging every `location` event costs the hub one reply per ping. A client may instead ask
 * for one confirmation now and then that covers everything up to a number:
 *
 * 1. The hub announces that it can: `session.locationConfirmation === 'cumulative'`. A client sees
 *    it before sending any fix on the connection (it sends nothing before `session`).
 * 2. The client numbers its fixes (`seq` on each fix: an integer, one more for every new fix, for
 *    the life of the client; a re-sent fix keeps its number) and sends `location` batches WITHOUT
 *    an ack callback, oldest batch first, and keeps every fix until it is confirmed.
 * 3. The hub answers with `location:stored { upTo }`: every fix received on THIS connection whose
 *    `seq` is at most `upTo` is stored, meaning it was applied by the atomic GEO step (which may
 *    rightly leave a BUSY or OFFLINE driver out of `drivers:geo`) or, while Redis is down, recorded
 *    as the driver's last known position for PostgreSQL, or it was superseded by a newer fix of the
 *    driver that was. `upTo` never goes down on a connection. At most one `location:stored` per
 *    driver per short interval (the hub's LOCATION_CONFIRM_MS, 3 s by default: a fraction of the
 *    pings of a driver sending one a second, and well under the client's 10 s `confirmTimeoutMs`),
 *    and none while nothing new was stored. The hub keeps no numbers across connections: a new
 *    connection starts from nothing, and a restarted app may start again from 0.
 * 4. Fixes the hub refuses (validation, rate limit) are not confirmed. The client validates every
 *    fix with the same schema before keeping it, and re-sends whatever stayed unconfirmed for
 *    `confirmTimeoutMs` on the same connection, and everything unconfirmed on the next connection.
 *
 * A hub that does not announce it (or a `location` sent with an ack callback) gets the per-batch
 * `{ ok: true, accepted }` acknowledgement as before; the client then drops a batch's fixes when
 * that ack arrives. Either way no fix is dropped before the hub has it, and a fix confirmed once is
 * never sent again.
 *
 * ## Hub work this contract asks for (issue 16, hub side)
 * - emit the three pushes with an ack callback, record `{ ok: true }`, re-send until then;
 * - `session.offer` and `session.locationConfirmation: 'cumulative'`; `AssignmentPush.status`;
 * - handle `location` without an ack whose fixes carry `seq` as above and emit `location:stored`;
 * - `offer:accept` / `offer:decline`, and `OFFER_EXPIRED` in ERROR_CODES (done with issue 18: the
 *   hub makes offers with DISPATCH_MODE=offer; an offer that lapses reaches the app as
 *   `delivery:cancelled { reason: 'offer expired' }`, which takes it out of the client's state).
 */

/** What each driver event carries, as the app sends it (the hub still validates: see DriverClientEvents). */
export interface DriverEventPayloads {
  /** One fix, or a batch of up to 100 (buffered offline fixes; the newest wins). */
  location: LocationPayload;
  /** Go on or off duty. */
  status: DriverStatusPayload;
  /** Idempotent; codes NOT_FOUND, FORBIDDEN, INVALID_TRANSITION. */
  'delivery:update': DeliveryUpdatePayload;
  /**
   * Codes OFFER_EXPIRED, NOT_FOUND, FORBIDDEN. Idempotent for the driver it was offered to: accepting
   * an offer this driver already accepted answers the delivery again (an app whose first answer was
   * lost to a timeout or a disconnect asks again). The answer is the confirmation: no `assignment`
   * push for the acceptance itself; from then on it is an active delivery like any other (in
   * `session.activeDelivery`, re-sent on reconnect).
   */
  'offer:accept': OfferAcceptPayload;
  /** Idempotent likewise: declining an offer this driver already declined or let expire answers `{ ok: true }`. */
  'offer:decline': OfferDeclinePayload;
}

/** The body of each driver event's `{ ok: true, ... }` acknowledgement. */
export interface DriverEventReplies {
  location: { accepted: number };
  status: { status: DriverStatus };
  'delivery:update': { delivery: DeliveryView };
  'offer:accept': { delivery: DeliveryView };
  'offer:decline': object;
}

export type DriverEventName = keyof DriverEventPayloads;

/** Events a driver app sends on `/drivers`, as the hub receives them: payloads are `unknown` on purpose, the hub validates them. */
export type DriverClientEvents = {
  [E in DriverEventName]: (payload: unknown, ack?: Ack<DriverEventReplies[E]>) => void;
};

/** The same events as a driver app sends them: typed payloads. */
export type DriverAppEvents = {
  [E in DriverEventName]: (payload: DriverEventPayloads[E], ack?: Ack<DriverEventReplies[E]>) => void;
};

/** The acknowledgement the hub passes with a push: the app answers `{ ok: true }` once it has taken it. */
export type PushAck = (reply: AckReply) => void;

export interface DriverSession {
  driverId: string;
  status: DriverStatus;
  activeDelivery: AssignmentPush | null;
  /** The open offer, if any. Optional only because hubs before offers leave it out; absent means null. */
  offer?: OfferPush | null;
  /** Present when the hub confirms numbered fixes cumulatively (`location:stored`); see above. */
  locationConfirmation?: 'cumulative';
}

export interface DriverServerEvents {
  /** On every connect, before anything else the hub sends on that connection. */
  session: (session: DriverSession) => void;
  /**
   * Pushes are emitted with an acknowledgement (invariant 8). `ack` is optional in the type only
   * because hubs before issue 16 sent them without one.
   */
  assignment: (assignment: AssignmentPush, ack?: PushAck) => void;
  offer: (offer: OfferPush, ack?: PushAck) => void;
  'delivery:cancelled': (payload: DeliveryCancelledPush, ack?: PushAck) => void;
  /** Cumulative confirmation of numbered fixes; see above. */
  'location:stored': (payload: LocationStored) => void;
}

/** Events a dispatcher map sends on `/dispatch`. */
export interface DispatchClientEvents {
  viewport: (payload: unknown, ack?: Ack) => void;
}

export interface DispatchSnapshot {
  drivers: DriverView[];
  deliveries: DeliveryView[];
}

export interface DispatchServerEvents {
  snapshot: (snapshot: DispatchSnapshot) => void;
  'drivers:moved': (moves: DriverMoved[]) => void;
  'driver:status': (payload: { id: string; status: DriverStatus; ts: number }) => void;
  'delivery:updated': (payload: DeliveryView & { previousStatus: DeliveryStatus | null }) => void;
  /** A driver app acknowledged a push, or let every bounded re-send go unanswered. */
  'delivery:push': (payload: DeliveryPushState) => void;
}

export interface SocketData {
  role: Role;
  subject: string;
  tokenExpiresAt: number | null;
  tokenVersion: number | null;
}
