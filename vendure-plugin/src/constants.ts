export const PLUGIN_OPTIONS = Symbol('DISPATCH_HUB_PLUGIN_OPTIONS');
export const LOGGER_CTX = 'DispatchHubPlugin';
export const QUEUE_NAME = 'dispatch-hub-webhooks';
/** The inbound route for the hub's status events: `POST /dispatch-hub/events`. */
export const STATUS_CONTROLLER_PATH = 'dispatch-hub';
export const STATUS_ROUTE = 'events';
export const STATUS_PATH = `/${STATUS_CONTROLLER_PATH}/${STATUS_ROUTE}`;
export const FULFILLMENT_HANDLER_CODE = 'dispatch-hub';
/** The hub refuses bodies above 64 KiB; its status events are far smaller. */
export const MAX_STATUS_BODY_BYTES = 64 * 1024;
