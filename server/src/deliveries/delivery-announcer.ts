import type { DeliveryStatus, OfferPush } from '#shared/schemas.js';
import type { DriverPresenceRow } from '../drivers/drivers.store.js';
import type { HubEvents } from '../platform/hub-events.js';
import type { PresenceService } from '../presence/presence.service.js';
import { type DeliveryRow, toAssignmentPush, toDeliveryView } from './deliveries.store.js';

/** What one committed change of a delivery was. */
export interface DeliveryChange {
  delivery: DeliveryRow;
  /** Null for a delivery that did not exist before. */
  previousStatus: DeliveryStatus | null;
  /** The driver a terminal transition freed, with its presence row after the write. */
  released?: DriverPresenceRow | null;
  /** An offer made with this change (offer mode): pushed to the reserved driver. */
  offer?: OfferPush;
  /** The open offer's deadline, for the dispatchers' countdown. */
  offerExpiresAt?: string | null;
}

/**
 * "A delivery changed", told once for every write path (the webhook, the pending retry, a freed
 * driver, a driver's report, a cancel): the assigned driver's push and its BUSY status, the
 * dispatchers' `delivery:updated`, and a freed driver's new status. Called after the commit.
 */
export type DeliveryAnnouncer = (change: DeliveryChange) => Promise<void>;

export function createDeliveryAnnouncer(deps: { events: HubEvents; presence: Pick<PresenceService, 'claimed' | 'released'> }): DeliveryAnnouncer {
  const { events, presence } = deps;
  return async function announce({ delivery, previousStatus, released, offer, offerExpiresAt }) {
    // Accepting an offer changes nothing for the driver's app or Redis: it was reserved already.
    if (delivery.status === 'ASSIGNED' && delivery.driverId && previousStatus !== 'OFFERED') {
      // The push goes first: the driver is waiting for it, and PostgreSQL already made the claim.
      events.emit('delivery:assigned', { driverId: delivery.driverId, assignment: toAssignmentPush(delivery) });
      await presence.claimed(delivery.driverId);
    }
    if (delivery.status === 'OFFERED' && delivery.driverId && offer) {
      events.emit('delivery:offered', { driverId: delivery.driverId, offer });
      await presence.claimed(delivery.driverId);
    }
    const view = toDeliveryView(delivery);
    if (delivery.status === 'OFFERED') view.offerExpiresAt = offerExpiresAt ?? offer?.expiresAt ?? null;
    events.emit('delivery:updated', { delivery: view, previousStatus });
    if (released) await presence.released(released);
  };
}
