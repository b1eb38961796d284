import type { Channel, InjectableStrategy, Order, RequestContext, Seller } from '@vendure/core';
import type { Place } from '../../shared/src/schemas.js';

/** A place without its checks yet: the plugin validates it against the hub's schema before sending. */
export interface CandidatePlace {
  lat: number | null | undefined;
  lng: number | null | undefined;
  address?: string | null;
}

/**
 * Where an order is picked up and where it goes. Replace it (plugin option `locationStrategy`) when
 * coordinates live elsewhere: a geocoder, a store-locations table, a warehouse per product.
 * Return undefined (or a place with missing coordinates) when they are unknown: the order is then
 * refused with a clear message and nothing is sent.
 */
export interface DispatchLocationStrategy extends InjectableStrategy {
  /** `order` has `channels` (with their `seller`) and `shippingAddress` loaded. */
  pickup(ctx: RequestContext, order: Order): Promise<CandidatePlace | undefined> | CandidatePlace | undefined;
  dropoff(ctx: RequestContext, order: Order): Promise<CandidatePlace | undefined> | CandidatePlace | undefined;
}

interface PickupCustomFields {
  dispatchPickupLatitude?: number | null;
  dispatchPickupLongitude?: number | null;
  dispatchPickupAddress?: string | null;
}

interface AddressCustomFields {
  dispatchLatitude?: number | null;
  dispatchLongitude?: number | null;
}

/**
 * The default: pickup from the custom fields of the order's seller channel (a seller order's own
 * channel, else the default channel), falling back to that channel's Seller; dropoff from the
 * shipping address's custom fields.
 */
export class CustomFieldLocationStrategy implements DispatchLocationStrategy {
  pickup(_ctx: RequestContext, order: Order): CandidatePlace | undefined {
    const channels = order.channels ?? [];
    // A seller order belongs to its seller's channel and the default channel: the seller's wins.
    const sellerChannel: Channel | undefined = channels.find((c) => c.code !== '__default_channel__') ?? channels[0];
    if (!sellerChannel) return undefined;
    for (const holder of [sellerChannel, sellerChannel.seller as Seller | undefined]) {
      const fields = (holder?.customFields ?? {}) as PickupCustomFields;
      if (isCoordinate(fields.dispatchPickupLatitude) && isCoordinate(fields.dispatchPickupLongitude)) {
        return { lat: fields.dispatchPickupLatitude, lng: fields.dispatchPickupLongitude, address: fields.dispatchPickupAddress ?? undefined };
      }
    }
    return undefined;
  }

  dropoff(_ctx: RequestContext, order: Order): CandidatePlace | undefined {
    const address = order.shippingAddress;
    if (!address) return undefined;
    const fields = ((address as { customFields?: AddressCustomFields }).customFields ?? {}) as AddressCustomFields;
    return { lat: fields.dispatchLatitude, lng: fields.dispatchLongitude, address: formatAddress(address) };
  }
}

function isCoordinate(value: unknown): value is number {
  return typeof value === 'number' && Number.isFinite(value);
}

export function formatAddress(address: Order['shippingAddress']): string | undefined {
  const parts = [address.streetLine1, address.streetLine2, [address.postalCode, address.city].filter(Boolean).join(' '), address.countryCode]
    .map((p) => (typeof p === 'string' ? p.trim() : ''))
    .filter((p) => p.length > 0);
  return parts.length ? parts.join(', ').slice(0, 500) : undefined;
}

export type { Place };
