import { z } from 'zod';
import { ERROR_CODES } from '#shared/errors.js';
import * as replies from '#shared/replies.js';
import { createDriverBody, dispatcherActionBody, fleetBody, fleetId, listDeliveriesQuery, locationPayload, mintTokenBody, place, sellerOrderCancelled, sellerOrderReady, updateDriverBody } from '#shared/schemas.js';
import { WEBHOOK_TOLERANCE_SECONDS } from '#shared/webhooks.js';
import { uuidParam } from '../admin/admin.routes.js';
import type { DeliveriesService } from '../deliveries/deliveries.service.js';
import type { HealthBody } from '../app.js';
import { deadEventsQuery } from '../outbox/outbox.routes.js';
import { TRACKING_TOKEN } from '../tracking/tracking-links.js';
import { createSchemaCatalogue, type JsonSchema } from './json-schema.js';
import { frontDoorIndex, guideName, jsonDocument, mapConfigReply } from './page-schemas.js';

/**
 * The hub's HTTP API as an OpenAPI 3.1 document, built from the zod schemas the routes validate
 * with (requests) and the reply schemas in shared/src/replies.ts (answers). Adding a route to the
 * hub means adding it to OPERATIONS below: the test in server/test/api-docs.test.ts compares this
 * list with the routes the hono app really has, both ways, and validates real answers against it.
 */

type Method = 'get' | 'post' | 'put' | 'patch' | 'delete';
/** `reader`: admin or dispatcher may read; `dispatcher`: admin or dispatcher may act. */
type Auth = 'admin' | 'reader' | 'dispatcher' | 'webhook' | 'driver';

interface Answer {
  description: string;
  json?: z.ZodType;
  /** Another media type, described in words (pages, Prometheus text, files). */
  media?: string;
  headers?: Record<string, { description: string; schema: JsonSchema }>;
}

export interface HttpOperation {
  method: Method;
  /** As mounted in hono (`/admin/deliveries/:id`). */
  path: string;
  operationId: string;
  tag: string;
  summary: string;
  description?: string;
  auth?: Auth;
  body?: z.ZodType;
  query?: z.ZodObject;
  params?: Record<string, { schema: z.ZodType; description: string }>;
  answers: Record<number, Answer>;
  /** Refusals beyond the ones implied by auth, body and the database (those are added here). */
  refusals?: Record<number, string>;
  /** False for routes that never touch PostgreSQL (no 503 when it is down). */
  usesDatabase?: boolean;
}

const HTML = 'text/html; charset=utf-8';

/** Files served as they are (the map's script, vendored libraries): not an API, not in the document. */
export function isStaticFile(path: string): boolean {
  return /\.(js|css|png|svg|ico|map)$/.test(path);
}

const deliveryId = { schema: uuidParam, description: 'the delivery id' };
const trackingToken = { schema: z.string().regex(TRACKING_TOKEN), description: "the delivery's tracking token, from its `trackingUrl`" };

export const OPERATIONS: HttpOperation[] = [
  // ---- Vendure's webhooks ----
  {
    method: 'post',
    path: '/events/seller-order-ready',
    operationId: 'sellerOrderReady',
    tag: 'webhooks',
    summary: 'A seller order is ready: create the delivery and assign (or, with DISPATCH_MODE=offer, offer) it to the best available driver',
    description:
      'Idempotent per `sellerOrderId`: a retry (or a concurrent duplicate on any node) answers the delivery as it is now, with `idempotent: true`, and changes nothing. Candidates are ranked by the documented score (distance first; within FAIRNESS_BAND_METERS of the nearest, the longest idle, then fewer deliveries today) and, with `sellerId`, come from the seller\'s fleet first, then the shared pool unless the fleet is exclusive.',
    auth: 'webhook',
    body: sellerOrderReady,
    answers: {
      200: { description: 'Assigned to a driver (or, for a retry, the delivery as it is now).', json: replies.orderReadyReply },
      202: {
        description:
          'No driver free in range: the delivery is PENDING and is assigned when one becomes free. In offer mode: OFFERED, with the reserved `driverId` and `offerExpiresAt` (or PENDING when nobody could be reserved).',
        json: replies.orderReadyReply,
      },
    },
    refusals: { 409: 'CONFLICT: this sellerOrderId already exists with another pickup or dropoff.' },
  },
  {
    method: 'post',
    path: '/events/seller-order-cancelled',
    operationId: 'sellerOrderCancelled',
    tag: 'webhooks',
    summary: 'A seller order was cancelled: cancel the delivery, free the driver, tell the driver app',
    auth: 'webhook',
    body: sellerOrderCancelled,
    answers: { 200: { description: 'Cancelled (or, for a retry, already cancelled: `idempotent: true`).', json: replies.orderCancelledReply } },
    refusals: {
      404: 'NOT_FOUND: no delivery for this sellerOrderId.',
      409: 'INVALID_TRANSITION: the delivery already ended (DELIVERED or FAILED).',
    },
  },
  // ---- driver apps ----
  {
    method: 'post',
    path: '/drivers/me/locations',
    operationId: 'postDriverLocations',
    tag: 'drivers',
    summary: 'Background location for apps whose OS will not keep a socket open: one fix or up to 100',
    description:
      'The socket `location` event over HTTP: the same validation, per-driver budget (checked before any database work), token-version check and atomic GEO rule (a BUSY or OFFLINE driver never enters drivers:geo).',
    auth: 'driver',
    body: locationPayload,
    answers: { 200: { description: 'How many fixes were taken (the newest wins).', json: replies.locationsAcceptedReply } },
  },
  // ---- operations ----
  {
    method: 'get',
    path: '/health',
    operationId: 'health',
    tag: 'operations',
    summary: 'Liveness and readiness: 200 while PostgreSQL is up (also when Redis is down: `degraded` still serves)',
    answers: {
      200: { description: 'PostgreSQL is up; `status` is `degraded` when Redis is configured but down.', json: replies.healthReply },
      503: { description: 'PostgreSQL is down.', json: replies.healthReply },
    },
    usesDatabase: false,
  },
  {
    method: 'get',
    path: '/metrics',
    operationId: 'metrics',
    tag: 'operations',
    summary: "Prometheus metrics of this process (scrape each node directly, not through the balancer)",
    answers: { 200: { description: 'Prometheus text exposition format; every series labelled `node`.', media: 'text/plain; version=0.0.4; charset=utf-8' } },
    usesDatabase: false,
  },
  // ---- admin and dispatcher reads ----
  {
    method: 'post',
    path: '/admin/drivers',
    operationId: 'createDriver',
    tag: 'admin',
    summary: 'Create a driver; the answer carries the JWT its app connects with',
    auth: 'admin',
    body: createDriverBody,
    answers: { 201: { description: 'Created, OFFLINE until its app connects and goes on duty.', json: replies.createdDriverReply } },
    refusals: { 404: 'NOT_FOUND: `fleet` names no fleet (create it with PUT /admin/fleets/{fleet}).' },
  },
  {
    method: 'patch',
    path: '/admin/drivers/:id',
    operationId: 'updateDriver',
    tag: 'admin',
    summary: "Move a driver into a seller's fleet, or (`fleet: null`) to the shared pool",
    auth: 'admin',
    params: { id: { schema: uuidParam, description: 'the driver id' } },
    body: updateDriverBody,
    answers: { 200: { description: 'The driver after the move; the next assignment honours it on every node.', json: replies.updatedDriverReply } },
    refusals: { 404: 'NOT_FOUND: no driver with this id, or no such fleet (create it with PUT /admin/fleets/{fleet}).' },
  },
  {
    method: 'put',
    path: '/admin/fleets/:fleet',
    operationId: 'putFleet',
    tag: 'admin',
    summary: "Create a seller's fleet or change whether it is exclusive (an exclusive fleet's orders never go to the shared pool)",
    auth: 'admin',
    params: { fleet: { schema: fleetId, description: 'the Vendure seller id, as `sellerId` carries it in the webhook' } },
    body: fleetBody,
    answers: {
      200: { description: 'Changed.', json: replies.fleetReply },
      201: { description: 'Created.', json: replies.fleetReply },
    },
  },
  {
    method: 'get',
    path: '/admin/fleets/:fleet',
    operationId: 'getFleet',
    tag: 'admin',
    summary: "A seller's fleet: whether it is exclusive and how many drivers belong to it",
    auth: 'reader',
    params: { fleet: { schema: fleetId, description: 'the Vendure seller id' } },
    answers: { 200: { description: 'The fleet.', json: replies.fleetReply } },
    refusals: { 404: 'NOT_FOUND: no such fleet.' },
  },
  {
    method: 'get',
    path: '/admin/drivers',
    operationId: 'listDrivers',
    tag: 'admin',
    summary: 'Every driver with status and last known position',
    auth: 'reader',
    answers: { 200: { description: 'The drivers.', json: replies.driversReply } },
  },
  {
    method: 'post',
    path: '/admin/tokens',
    operationId: 'mintToken',
    tag: 'admin',
    summary: 'Mint a dispatcher token (for the map), or a new token for an existing driver',
    auth: 'admin',
    body: mintTokenBody,
    answers: { 200: { description: 'The token (a JWT).', json: replies.tokenReply } },
    refusals: { 404: 'NOT_FOUND: role driver and no driver with this id.' },
  },
  {
    method: 'post',
    path: '/admin/drivers/:id/revoke-tokens',
    operationId: 'revokeDriverTokens',
    tag: 'admin',
    summary: "A lost phone: every token the driver holds stops working and its sockets close; answers a fresh token",
    auth: 'admin',
    params: { id: { schema: uuidParam, description: 'the driver id' } },
    answers: { 200: { description: 'Revoked; `token` is the only one valid now.', json: replies.revokedTokensReply } },
    refusals: { 404: 'NOT_FOUND: no driver with this id.' },
  },
  {
    method: 'post',
    path: '/admin/dispatchers/:subject/revoke-tokens',
    operationId: 'revokeDispatcherTokens',
    tag: 'admin',
    summary: "A leaked dispatcher token: every token of that subject stops working and its open maps close on every node; answers a fresh token",
    auth: 'admin',
    params: { subject: { schema: mintTokenBody.shape.subject, description: 'the dispatcher subject the tokens were minted for' } },
    answers: { 200: { description: 'Revoked; `token` is the only one valid now.', json: replies.revokedTokensReply } },
  },
  {
    method: 'get',
    path: '/admin/deliveries',
    operationId: 'listDeliveries',
    tag: 'admin',
    summary: 'Deliveries, newest first, optionally by status or driver',
    auth: 'reader',
    query: listDeliveriesQuery,
    answers: { 200: { description: 'The deliveries.', json: replies.deliveriesReply } },
  },
  {
    method: 'get',
    path: '/admin/deliveries/:id',
    operationId: 'getDelivery',
    tag: 'admin',
    summary: 'One delivery with its audit trail and the ranked candidates of its assignment',
    auth: 'reader',
    params: { id: deliveryId },
    answers: { 200: { description: 'The delivery.', json: replies.deliveryDetail } },
    refusals: { 404: 'NOT_FOUND: no delivery with this id.' },
  },
  {
    method: 'post',
    path: '/admin/deliveries/:id/cancel',
    operationId: 'cancelDelivery',
    tag: 'admin',
    summary: "A dispatcher cancels a delivery: the driver is freed and its app told, Vendure gets `delivery.cancelled`",
    description:
      'The path of the `seller-order-cancelled` webhook, with the caller in the audit row (`dispatcher:<subject>` or `admin`) and `reason` (optional) as its reason and in the driver app\'s `delivery:cancelled`. Cancelling a cancelled delivery answers it again with `idempotent: true`.',
    auth: 'dispatcher',
    params: { id: deliveryId },
    body: dispatcherActionBody,
    answers: { 200: { description: 'Cancelled (or already cancelled: `idempotent: true`).', json: replies.dispatcherCancelReply } },
    refusals: {
      404: 'NOT_FOUND: no delivery with this id.',
      409: 'INVALID_TRANSITION: the delivery already ended (DELIVERED or FAILED); `details.status` says which.',
    },
  },
  {
    method: 'post',
    path: '/admin/deliveries/:id/redispatch',
    operationId: 'redispatchDelivery',
    tag: 'admin',
    summary: "Send a stuck delivery back to assignment: a PENDING one is tried now; an ASSIGNED one whose driver's app never confirmed it is taken from that driver and assigned to another",
    description:
      'The driver it is taken from is freed, gets `delivery:cancelled`, and is never given this delivery again. The audit trail records the step (ASSIGNED -> PENDING, the driver, the caller, `reason`), then the new assignment if a driver was free; otherwise the delivery waits PENDING like any other.',
    auth: 'dispatcher',
    params: { id: deliveryId },
    body: dispatcherActionBody,
    answers: { 200: { description: 'The delivery afterwards: ASSIGNED to another driver, or PENDING.', json: replies.redispatchReply } },
    refusals: {
      404: 'NOT_FOUND: no delivery with this id.',
      409: "INVALID_TRANSITION: not PENDING, or ASSIGNED but already confirmed by the driver's app (cancel it instead), or picked up or ended; `details` carries `status` and `acknowledged`.",
    },
  },
  {
    method: 'get',
    path: '/admin/outbox/dead',
    operationId: 'listDeadOutboxEvents',
    tag: 'admin',
    summary: 'Status events to Vendure that were given up on (OUTBOX_MAX_AGE_SECONDS without delivery)',
    auth: 'admin',
    query: deadEventsQuery,
    answers: { 200: { description: 'The dead events, for inspection or replay.', json: replies.deadOutboxEventsReply } },
  },
  {
    method: 'post',
    path: '/admin/outbox/:id/replay',
    operationId: 'replayOutboxEvent',
    tag: 'admin',
    summary: 'Send a dead status event again',
    auth: 'admin',
    params: { id: { schema: uuidParam, description: 'the outbox event id (also its `webhook-id`)' } },
    answers: { 200: { description: 'Queued for sending again.', json: replies.replayedReply } },
    refusals: { 404: 'NOT_FOUND: no dead event with this id.' },
  },
  // ---- the customer's tracking link ----
  {
    method: 'get',
    path: '/track/:token',
    operationId: 'trackingPage',
    tag: 'tracking',
    summary: "The customer's tracking page: status steps, the driver's first name and distance, a live marker once map tiles load",
    description:
      'Polls `/track/{token}/state` every 3 s while the delivery is active (paused while the page is hidden). A token that is malformed, unknown or expired (`TRACKING_TTL_HOURS` after the delivery ended) gets the same plain 404 page and counts as a failed guess for the caller\'s address. Served with `Referrer-Policy: no-referrer` and `Cache-Control: no-store`.',
    params: { token: trackingToken },
    answers: {
      200: { description: 'The page, with the state at the time of the request.', media: HTML },
      404: { description: 'A plain page: no such link, or it expired.', media: HTML },
      429: { description: "A plain page: this link's read budget (60 a minute, page and state together) or the address's failure budget is used up; `Retry-After` says when.", media: HTML },
      503: { description: 'A plain page: PostgreSQL is unavailable.', media: HTML },
    },
  },
  {
    method: 'get',
    path: '/track/:token/state',
    operationId: 'trackingState',
    tag: 'tracking',
    summary: "What the tracking page shows: status, order code, pickup, dropoff, and the driver's first name and position while ASSIGNED or PICKED_UP",
    description:
      'No phone number, no other delivery, no driver once the delivery is not ASSIGNED or PICKED_UP. Reads of one token are shared on a node for a second, whatever the number of viewers.',
    params: { token: trackingToken },
    answers: { 200: { description: 'The state.', json: replies.trackingStateReply } },
    refusals: {
      404: 'NOT_FOUND: no such link, or it expired.',
      429: "RATE_LIMITED: this link's read budget or the address's failure budget is used up; `Retry-After` says when.",
    },
  },
  // ---- pages and documents ----
  {
    method: 'get',
    path: '/',
    operationId: 'frontDoor',
    tag: 'pages',
    summary: 'The front door: what this hub is, its health, and links (HTML for browsers, JSON otherwise)',
    description: 'Content negotiation on `Accept`: `text/html` gets the page, anything else the JSON index.',
    answers: { 200: { description: 'The page or the index.', json: frontDoorIndex, media: HTML } },
    usesDatabase: false,
  },
  {
    method: 'get',
    path: '/map',
    operationId: 'mapPage',
    tag: 'pages',
    summary: 'The dispatcher live map (open with `#token=<dispatcher token>`)',
    answers: { 200: { description: 'The page.', media: HTML } },
    usesDatabase: false,
  },
  {
    method: 'get',
    path: '/map/',
    operationId: 'mapPageSlash',
    tag: 'pages',
    summary: 'Redirects to /map',
    answers: { 301: { description: 'Moved to /map.', headers: { location: { description: '/map', schema: { type: 'string' } } } } },
    usesDatabase: false,
  },
  {
    method: 'get',
    path: '/map/config.json',
    operationId: 'mapConfig',
    tag: 'pages',
    summary: "The map page's settings and the hub's clock",
    answers: { 200: { description: 'Settings.', json: mapConfigReply } },
    usesDatabase: false,
  },
  {
    method: 'get',
    path: '/docs',
    operationId: 'apiReference',
    tag: 'pages',
    summary: 'This document as a browsable API reference (Swagger UI, served by the hub)',
    answers: { 200: { description: 'The page.', media: HTML } },
    usesDatabase: false,
  },
  {
    method: 'get',
    path: '/docs/sockets',
    operationId: 'socketEvents',
    tag: 'pages',
    summary: 'The Socket.IO namespaces and events, generated from the same schemas as /asyncapi.json',
    answers: { 200: { description: 'The page.', media: HTML } },
    usesDatabase: false,
  },
  {
    method: 'get',
    path: '/docs/guides/:name',
    operationId: 'guide',
    tag: 'pages',
    summary: "One of the project's guides (docs/*.md) as Markdown text",
    params: { name: { schema: guideName, description: 'the guide, e.g. `deployment.md`' } },
    answers: { 200: { description: 'The guide.', media: 'text/markdown; charset=utf-8' } },
    refusals: { 404: 'NOT_FOUND: no such guide (or the guides are not shipped with this build).' },
    usesDatabase: false,
  },
  {
    method: 'get',
    path: '/openapi.json',
    operationId: 'openapi',
    tag: 'pages',
    summary: 'This document (OpenAPI 3.1)',
    answers: { 200: { description: 'The document.', json: jsonDocument } },
    usesDatabase: false,
  },
  {
    method: 'get',
    path: '/asyncapi.json',
    operationId: 'asyncapi',
    tag: 'pages',
    summary: 'The socket events (AsyncAPI 3.0)',
    answers: { 200: { description: 'The document.', json: jsonDocument } },
    usesDatabase: false,
  },
];

/** The named schemas: shown as models in the reference, and what $refs point at. */
const NAMED: Record<string, z.ZodType> = {
  ErrorReply: replies.errorReply,
  SellerOrderReady: sellerOrderReady,
  SellerOrderCancelled: sellerOrderCancelled,
  Place: place,
  OrderReadyReply: replies.orderReadyReply,
  OrderCancelledReply: replies.orderCancelledReply,
  Health: replies.healthReply,
  CreateDriver: createDriverBody,
  CreatedDriver: replies.createdDriverReply,
  UpdateDriver: updateDriverBody,
  UpdatedDriver: replies.updatedDriverReply,
  FleetBody: fleetBody,
  Fleet: replies.fleetReply,
  MintToken: mintTokenBody,
  Token: replies.tokenReply,
  RevokedTokens: replies.revokedTokensReply,
  DriverView: replies.driverView,
  Drivers: replies.driversReply,
  DeliveryView: replies.deliveryView,
  Deliveries: replies.deliveriesReply,
  DeliveryDetail: replies.deliveryDetail,
  LocationsAccepted: replies.locationsAcceptedReply,
  DeadOutboxEvents: replies.deadOutboxEventsReply,
  Replayed: replies.replayedReply,
  DispatcherAction: dispatcherActionBody,
  DispatcherCancel: replies.dispatcherCancelReply,
  Redispatch: replies.redispatchReply,
  TrackingState: replies.trackingStateReply,
  FrontDoorIndex: frontDoorIndex,
  MapConfig: mapConfigReply,
};

// The detail and health answers are built in server code: their schemas must describe exactly those types.
replies.sameShape<replies.SameType<z.infer<typeof replies.deliveryDetail>, Awaited<ReturnType<DeliveriesService['get']>>>>();
replies.sameShape<replies.SameType<z.infer<typeof replies.healthReply>, HealthBody>>();

/** `/admin/deliveries/:id` -> `/admin/deliveries/{id}`. */
export function openApiPath(honoPath: string): string {
  return honoPath.replace(/:([A-Za-z0-9_]+)/g, '{$1}');
}

const WEBHOOK_HEADERS = [
  {
    name: 'webhook-id',
    description: 'Unique per message and the same on every retry of it (receivers deduplicate by it).',
    schema: { type: 'string', minLength: 1 },
    example: 'msg_2mXwR1fQ',
  },
  {
    name: 'webhook-timestamp',
    description: `Unix seconds when the message was signed; refused when more than ${WEBHOOK_TOLERANCE_SECONDS} s off the hub's clock either way.`,
    schema: { type: 'string', pattern: '^[0-9]{1,15}$' },
    example: '1767225600',
  },
  {
    name: 'webhook-signature',
    description:
      '`v1,` + base64 HMAC-SHA256 of `{webhook-id}.{webhook-timestamp}.{raw body}`, keyed with the bytes the `whsec_` secret\'s base64 decodes to. A space-separated list is accepted (secret rotation); one match is enough.',
    schema: { type: 'string', minLength: 4 },
    example: 'v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4=',
  },
];

const AUTH_REFUSALS: Record<Auth, Record<number, string>> = {
  admin: { 401: 'UNAUTHORIZED: no bearer token, or not a valid one.', 403: 'FORBIDDEN: a valid token whose role may not do this (only the admin may).' },
  reader: { 401: 'UNAUTHORIZED: no bearer token, or not a valid one.', 403: 'FORBIDDEN: a valid token whose role may not read this (admin and dispatcher may).' },
  dispatcher: { 401: 'UNAUTHORIZED: no bearer token, or not a valid one.', 403: 'FORBIDDEN: a valid token whose role may not do this (admin and dispatcher may).' },
  driver: {
    401: 'TOKEN_MISSING, TOKEN_INVALID (also revoked) or TOKEN_EXPIRED: the bearer must be a valid driver JWT.',
    403: 'FORBIDDEN: a valid token of another role.',
    429: 'RATE_LIMITED: over the driver\'s location budget (the socket path\'s); `Retry-After` says when to try again.',
  },
  webhook: {
    401: 'INVALID_SIGNATURE: headers missing, timestamp out of tolerance, or no signature matches any configured secret.',
    503: 'SERVICE_UNAVAILABLE: PostgreSQL is unavailable, or WEBHOOK_SECRET is not configured on this hub (production).',
  },
};

function refusalsOf(op: HttpOperation): Record<number, string> {
  const all: Record<number, string> = {};
  if (op.body || op.query) all[400] = 'VALIDATION_FAILED: `details` lists `{ path, message }` per refused field (or the body is not JSON).';
  Object.assign(all, op.auth ? AUTH_REFUSALS[op.auth] : {});
  if (op.body) all[413] = 'PAYLOAD_TOO_LARGE: the body is larger than MAX_BODY_BYTES (64 KiB by default).';
  if (op.usesDatabase !== false && all[503] === undefined) all[503] = 'SERVICE_UNAVAILABLE: PostgreSQL is unavailable; retry later.';
  return { ...all, ...op.refusals };
}

export interface OpenApiOptions {
  version: string;
}

export function buildOpenApiDocument(opts: OpenApiOptions): JsonSchema {
  const schemas = createSchemaCatalogue(NAMED, '#/components/schemas/');
  const errorContent = { 'application/json': { schema: schemas.ref(replies.errorReply, 'output') } };
  const paths: Record<string, Record<string, unknown>> = {};

  for (const op of OPERATIONS) {
    const parameters: unknown[] = [];
    for (const [name, param] of Object.entries(op.params ?? {})) {
      parameters.push({ name, in: 'path', required: true, description: param.description, schema: schemas.ref(param.schema, 'input') });
    }
    if (op.query) {
      const query = schemas.ref(op.query, 'input') as { properties?: Record<string, JsonSchema>; required?: string[] };
      for (const [name, schema] of Object.entries(query.properties ?? {})) {
        parameters.push({ name, in: 'query', required: query.required?.includes(name) ?? false, schema });
      }
    }
    if (op.auth === 'webhook') {
      for (const header of WEBHOOK_HEADERS) parameters.push({ in: 'header', required: true, ...header });
    }

    const responses: Record<string, unknown> = {};
    for (const [status, answer] of Object.entries(op.answers)) {
      const content: Record<string, unknown> = {};
      if (answer.json) content['application/json'] = { schema: schemas.ref(answer.json, 'output') };
      if (answer.media) content[answer.media] = { schema: { type: 'string' } };
      responses[status] = {
        description: answer.description,
        ...(answer.headers ? { headers: answer.headers } : {}),
        ...(Object.keys(content).length > 0 ? { content } : {}),
      };
    }
    for (const [status, description] of Object.entries(refusalsOf(op))) {
      responses[status] ??= { description, content: errorContent };
    }

    const path = openApiPath(op.path);
    paths[path] ??= {};
    paths[path][op.method] = {
      operationId: op.operationId,
      tags: [op.tag],
      summary: op.summary,
      ...(op.description ? { description: op.description } : {}),
      ...(op.auth === 'admin' || op.auth === 'reader' || op.auth === 'dispatcher' || op.auth === 'driver' ? { security: [{ bearer: [] }] } : {}),
      ...(parameters.length > 0 ? { parameters } : {}),
      ...(op.body ? { requestBody: { required: true, content: { 'application/json': { schema: schemas.ref(op.body, 'input') } } } } : {}),
      responses,
    };
  }

  return {
    openapi: '3.1.0',
    info: {
      title: 'Dispatch hub',
      version: opts.version,
      description: [
        'A realtime dispatch hub for delivery driver apps, for shops built on Vendure.',
        '',
        "Every error is `{ \"error\": { \"code\", \"message\", \"details\"? } }`; the codes: " + ERROR_CODES.map((c) => `\`${c}\``).join(', ') + '.',
        '',
        "Vendure's webhooks are signed per Standard Webhooks (headers `webhook-id`, `webhook-timestamp`, `webhook-signature`; see each webhook).",
        'Admin routes take `Authorization: Bearer <ADMIN_TOKEN>` (or an admin JWT); dispatcher JWTs may read drivers and deliveries, and cancel or redispatch a delivery.',
        '',
        'Driver apps and the map talk to the hub over Socket.IO: see [/docs/sockets](/docs/sockets) and [/asyncapi.json](/asyncapi.json).',
      ].join('\n'),
    },
    tags: [
      { name: 'webhooks', description: "Vendure's calls, signed per Standard Webhooks" },
      { name: 'admin', description: 'Drivers, tokens, deliveries and the outbox (bearer token)' },
      { name: 'drivers', description: "Driver apps' own calls (a driver JWT as bearer)" },
      { name: 'tracking', description: "The customer's tracking link (the token in the path is the credential)" },
      { name: 'operations', description: 'Health checks and metrics' },
      { name: 'pages', description: 'Pages and documents for people and tools' },
    ],
    paths,
    components: {
      schemas: schemas.components(),
      securitySchemes: {
        bearer: { type: 'http', scheme: 'bearer', description: 'ADMIN_TOKEN, or a JWT minted by POST /admin/tokens (role dispatcher reads).' },
      },
    },
  };
}
