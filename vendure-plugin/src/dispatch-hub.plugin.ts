import { PluginCommonModule, type Type, VendurePlugin } from '@vendure/core';
import { adminApiExtensions } from './api-extensions.js';
import { PLUGIN_OPTIONS, STATUS_PATH } from './constants.js';
import { addressCustomFields, orderCustomFields, pickupCustomFields } from './custom-fields.js';
import { MarkReadyForDeliveryResolver, OrderDeliveryResolver } from './delivery.resolver.js';
import { dispatchHubFulfillmentHandler } from './fulfillment-handler.js';
import { DispatchInboundService } from './inbound.service.js';
import { type DispatchHubPluginOptions, type ResolvedOptions, resolveOptions } from './options.js';
import { DispatchOutboundService } from './outbound.service.js';
import { ProcessedStatusEvent } from './processed-status-event.entity.js';
import { rawBodyMiddleware } from './raw-body.middleware.js';
import { DispatchStatusController } from './status.controller.js';

/**
 * Connects a Vendure 3 shop to the dispatch hub. Add `DispatchHubPlugin.init({...})` to the
 * config's plugins, run a migration for its custom fields and table, and point the hub's
 * `VENDURE_WEBHOOK_URL` at `/dispatch-hub/events`. See docs/vendure.md.
 */
@VendurePlugin({
  imports: [PluginCommonModule],
  providers: [
    { provide: PLUGIN_OPTIONS, useFactory: () => DispatchHubPlugin.options },
    DispatchOutboundService,
    DispatchInboundService,
  ],
  controllers: [DispatchStatusController],
  entities: [ProcessedStatusEvent],
  adminApiExtensions: {
    schema: adminApiExtensions,
    resolvers: [OrderDeliveryResolver, MarkReadyForDeliveryResolver],
  },
  configuration: (config) => {
    config.customFields.Order.push(...orderCustomFields);
    config.customFields.Seller.push(...pickupCustomFields);
    config.customFields.Channel.push(...pickupCustomFields);
    config.customFields.Address.push(...addressCustomFields);
    config.shippingOptions.fulfillmentHandlers.push(dispatchHubFulfillmentHandler);
    // The signature covers the bytes as sent: this route must see them before any JSON parser.
    config.apiOptions.middleware.push({ route: STATUS_PATH, handler: rawBodyMiddleware, beforeListen: true });
    return config;
  },
  compatibility: '^3.0.0',
})
export class DispatchHubPlugin {
  static options: ResolvedOptions;

  static init(options: DispatchHubPluginOptions): Type<DispatchHubPlugin> {
    DispatchHubPlugin.options = resolveOptions(options);
    return DispatchHubPlugin;
  }
}
