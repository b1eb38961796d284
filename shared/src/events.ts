import type { Ack } from './errors.js';
import type {
  AssignmentPush,
  DeliveryPushState,
  DeliveryStatus,
  DeliveryView,
  DriverMoved,
  DriverStatus,
  DriverView,
  Role,
} from './schemas.js';

/** Events a driver app sends on `/drivers`. Payloads are `unknown` on purpose: the hub validates them. */
export interface DriverClientEvents {
  location: (payload: unknown, ack?: Ack<{ accepted: number }>) => void;
  status: (payload: unknown, ack?: Ack<{ status: DriverStatus }>) => void;
  'delivery:update': (payload: unknown, ack?: Ack<{ delivery: DeliveryView }>) => void;
}

export interface DriverSession {
  driverId: string;
  status: DriverStatus;
  activeDelivery: AssignmentPush | null;
}

export interface DriverServerEvents {
  session: (session: DriverSession) => void;
  assignment: (assignment: AssignmentPush) => void;
  'delivery:cancelled': (payload: { deliveryId: string; reason: string }) => void;
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

export type ClientToServerEvents = DriverClientEvents & DispatchClientEvents;
export type ServerToClientEvents = DriverServerEvents & DispatchServerEvents;

/** No inter-server events are shared with clients; the hub's own are private to its realtime edge. */
export type InterServerEvents = Record<string, never>;

export interface SocketData {
  role: Role;
  subject: string;
  tokenExpiresAt: number | null;
  tokenVersion: number | null;
}
