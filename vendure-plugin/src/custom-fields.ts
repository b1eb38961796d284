import { type CustomFieldConfig, LanguageCode } from '@vendure/core';

const en = (value: string) => [{ languageCode: LanguageCode.en, value }];

/** Where a seller's goods are collected; on the Seller, or on its Channel (the Channel's win). */
export const pickupCustomFields: CustomFieldConfig[] = [
  { name: 'dispatchPickupLatitude', type: 'float', nullable: true, min: -85.05112878, max: 85.05112878, label: en('Pickup latitude (dispatch)') },
  { name: 'dispatchPickupLongitude', type: 'float', nullable: true, min: -180, max: 180, label: en('Pickup longitude (dispatch)') },
  { name: 'dispatchPickupAddress', type: 'string', nullable: true, length: 500, label: en('Pickup address (dispatch)') },
];

/** Where the order goes: set by the storefront with the shipping address (a geocoder, a map pin). */
export const addressCustomFields: CustomFieldConfig[] = [
  { name: 'dispatchLatitude', type: 'float', nullable: true, min: -85.05112878, max: 85.05112878, label: en('Latitude (dispatch)') },
  { name: 'dispatchLongitude', type: 'float', nullable: true, min: -180, max: 180, label: en('Longitude (dispatch)') },
];

/** The delivery as the hub last reported it. Written by the plugin only; read through `Order.delivery`. */
export const orderCustomFields: CustomFieldConfig[] = [
  { name: 'dispatchStatus', type: 'string', nullable: true, readonly: true, public: false, length: 20, label: en('Delivery status') },
  { name: 'dispatchDeliveryId', type: 'string', nullable: true, readonly: true, public: false, length: 200, label: en('Delivery id (dispatch hub)') },
  { name: 'dispatchDriverId', type: 'string', nullable: true, readonly: true, public: false, length: 200, label: en('Driver id') },
  { name: 'dispatchDriverName', type: 'string', nullable: true, readonly: true, public: false, length: 200, label: en('Driver') },
  // Public: a storefront shows it on the order page and in the customer's emails.
  { name: 'dispatchTrackingUrl', type: 'string', nullable: true, readonly: true, public: true, length: 2000, label: en('Tracking link') },
  { name: 'dispatchReason', type: 'string', nullable: true, readonly: true, public: false, length: 2000, label: en('Delivery note') },
  { name: 'dispatchUpdatedAt', type: 'datetime', nullable: true, readonly: true, public: false, label: en('Delivery updated at') },
  // The last status event applied; an event with a lower sequence is stale and ignored.
  { name: 'dispatchSequence', type: 'int', nullable: true, readonly: true, internal: true },
];

export interface DispatchOrderFields {
  dispatchStatus?: string | null;
  dispatchDeliveryId?: string | null;
  dispatchDriverId?: string | null;
  dispatchDriverName?: string | null;
  dispatchTrackingUrl?: string | null;
  dispatchReason?: string | null;
  dispatchUpdatedAt?: Date | null;
  dispatchSequence?: number | null;
}
