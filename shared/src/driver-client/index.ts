/**
 * The driver client: what a driver app (React Native, Node) needs to talk to the hub. Import it
 * from here, not from shared/src/index.ts, in an app: the package root also carries webhook signing,
 * which needs node:crypto.
 */
export { createDriverClient } from './driver-client.js';
export type {
  ActiveDelivery,
  ConnectionChange,
  ConnectionState,
  DriverClient,
  DriverClientEventMap,
  DriverClientOptions,
  DriverState,
  LocationInput,
  LocationProgress,
  RequestOptions,
} from './driver-client.js';
export { DriverClientError, DRIVER_CLIENT_OWN_ERROR_CODES } from './driver-client-error.js';
export type { DriverClientErrorCode, DriverClientOwnErrorCode, HubErrorCode } from './driver-client-error.js';
export { DEFAULT_BACKOFF, backoffWindow, fullJitterDelay } from './backoff.js';
export type { BackoffOptions } from './backoff.js';
export { DRIVERS_NAMESPACE, socketIoConnector } from './driver-socket.js';
export type { DriverSocket, DriverSocketConnector, DriverSocketTarget } from './driver-socket.js';
export type { DriverClientRuntime } from './runtime.js';
