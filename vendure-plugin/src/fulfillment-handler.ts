import { FulfillmentHandler, LanguageCode } from '@vendure/core';
import { FULFILLMENT_HANDLER_CODE } from './constants.js';

/** The fulfillment the plugin creates when the hub reports a pickup or a delivery and the order has none. */
export const dispatchHubFulfillmentHandler = new FulfillmentHandler({
  code: FULFILLMENT_HANDLER_CODE,
  description: [{ languageCode: LanguageCode.en, value: 'Delivered by a driver of the dispatch hub' }],
  args: {
    deliveryId: { type: 'string', required: false },
    trackingUrl: { type: 'string', required: false },
  },
  createFulfillment: (_ctx, _orders, _lines, args) => ({
    method: 'Dispatch hub courier',
    trackingCode: args.trackingUrl || args.deliveryId || undefined,
  }),
});
