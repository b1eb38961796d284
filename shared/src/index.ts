export * from './errors.js';
export * from './events.js';
export * from './schemas.js';
export * from './webhooks.js';
export * from './driver-client/index.js';
