import { EventEmitter } from 'node:events';
import type { AssignmentPush, DeliveryStatus, DeliveryView, DriverStatus, OfferPush } from '#shared/schemas.js';

/**
 * Domain events inside one process. Services emit them; the socket edges turn them into
 * Socket.IO messages (which the Redis adapter fans out to the other nodes).
 */
export interface HubEventMap {
  'driver:status': [{ driverId: string; status: DriverStatus; position: { lat: number; lng: number } | null }];
  'delivery:assigned': [{ driverId: string; assignment: AssignmentPush }];
  /** Offer mode: a delivery is reserved for the driver until the offer's deadline. */
  'delivery:offered': [{ driverId: string; offer: OfferPush }];
  'delivery:cancelled': [{ driverId: string; deliveryId: string; reason: string }];
  'delivery:updated': [{ delivery: DeliveryView; previousStatus: DeliveryStatus | null }];
  'driver:revoked': [{ driverId: string }];
  /** A dispatcher's (or admin JWT's) tokens were revoked: its open sockets close, on every node. */
  'subject:revoked': [{ role: 'dispatcher' | 'admin'; subject: string }];
  /** A driver's app acknowledged a push, or never did within the bounded re-sends. */
  'push:acknowledged': [PushEvent];
  'push:unacknowledged': [PushEvent];
  /** Redis answers again after being lost: what the adapter dropped meanwhile is sent again. */
  'redis:restored': [];
}

export interface PushEvent {
  deliveryId: string;
  driverId: string;
  kind: 'assignment' | 'offer' | 'delivery:cancelled';
  at: string;
}

export class HubEvents extends EventEmitter<HubEventMap> {}
