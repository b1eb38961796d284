import { z } from 'zod';
import type { DispatchClientEvents, DispatchServerEvents, DriverClientEvents, DriverServerEvents } from '#shared/events.js';
import * as replies from '#shared/replies.js';
import {
  deliveryUpdatePayload,
  driverStatus,
  driverStatusPayload,
  locationFix,
  locationPayload,
  locationStored,
  offerAcceptPayload,
  offerDeclinePayload,
  viewportPayload,
} from '#shared/schemas.js';
import { createSchemaCatalogue, type JsonSchema } from './json-schema.js';

/**
 * The Socket.IO API as an AsyncAPI 3.0 document, from the shared event maps (every event of
 * shared/src/events.ts must have an entry here, or this file does not compile) and the zod schemas
 * the hub validates client events with and describes its pushes with.
 */

export interface SocketEvent {
  /** The Socket.IO event name. */
  event: string;
  summary: string;
  payload: z.ZodType;
  /** What the receiver answers through the Socket.IO acknowledgement, if it is asked to. */
  ack?: { schema: z.ZodType; description: string };
}

export interface SocketNamespace {
  address: string;
  title: string;
  description: string;
  /** Events clients send (the hub receives). */
  fromClient: Record<string, SocketEvent>;
  /** Events the hub sends. */
  fromHub: Record<string, SocketEvent>;
}

const pushAck = {
  schema: z.object({ ok: z.literal(true) }),
  description:
    'The app answers `{ ok: true }` once it has stored the job; until then the hub sends it again every PUSH_RETRY_MS while the driver is connected, and at once on reconnect.',
};

const driverClient: { [K in keyof DriverClientEvents]: SocketEvent } = {
  location: {
    event: 'location',
    summary: 'A location fix, or up to 100 buffered offline fixes (the newest wins); numbered fixes (`seq`) sent without an ack are confirmed by `location:stored`',
    payload: locationPayload,
    ack: { schema: replies.ackReply({ accepted: z.number().int() }), description: 'How many fixes were taken, or why none were.' },
  },
  'offer:accept': {
    event: 'offer:accept',
    summary: 'Accept the open offer (offer mode): a conditional write that succeeds only for this driver before the deadline',
    payload: offerAcceptPayload,
    ack: { schema: replies.ackReply({ delivery: replies.deliveryView }), description: 'The delivery, now ASSIGNED; OFFER_EXPIRED, NOT_FOUND or FORBIDDEN otherwise.' },
  },
  'offer:decline': {
    event: 'offer:decline',
    summary: 'Decline the open offer (offer mode); the next candidate gets it',
    payload: offerDeclinePayload,
    ack: { schema: replies.ackReply({}), description: 'Declined, or why not.' },
  },
  status: {
    event: 'status',
    summary: 'Go on duty (AVAILABLE) or off duty (OFFLINE)',
    payload: driverStatusPayload,
    ack: { schema: replies.ackReply({ status: driverStatus }), description: "The driver's status now (BUSY while a delivery is active)." },
  },
  'delivery:update': {
    event: 'delivery:update',
    summary: 'Progress on the driver\'s own delivery; repeating a report changes nothing',
    payload: deliveryUpdatePayload,
    ack: {
      schema: replies.ackReply({ delivery: replies.deliveryView }),
      description: 'The delivery as it is now; NOT_FOUND, FORBIDDEN (not this driver\'s) or INVALID_TRANSITION otherwise.',
    },
  },
};

const driverServer: { [K in keyof DriverServerEvents]: SocketEvent } = {
  session: { event: 'session', summary: 'On every connect: who the hub thinks this driver is, and the active delivery if any', payload: replies.driverSession },
  assignment: {
    event: 'assignment',
    summary: 'A delivery assigned to this driver (again on reconnect while it is active)',
    payload: replies.assignmentPush,
    ack: pushAck,
  },
  'delivery:cancelled': { event: 'delivery:cancelled', summary: "The shop cancelled this driver's delivery", payload: replies.deliveryCancelledPush, ack: pushAck },
  offer: {
    event: 'offer',
    summary: 'A delivery offered to this driver until `expiresAt` (offer mode); answer with offer:accept or offer:decline',
    payload: replies.offerPush,
    ack: pushAck,
  },
  'location:stored': {
    event: 'location:stored',
    summary: 'Every fix numbered up to `upTo` on this connection is stored (at most one a second per driver)',
    payload: locationStored,
  },
};

const dispatchClient: { [K in keyof DispatchClientEvents]: SocketEvent } = {
  viewport: {
    event: 'viewport',
    summary: 'Only stream drivers inside this box (null: everywhere)',
    payload: viewportPayload,
    ack: { schema: replies.ackReply({}), description: 'Accepted, or why not.' },
  },
};

const dispatchServer: { [K in keyof DispatchServerEvents]: SocketEvent } = {
  snapshot: { event: 'snapshot', summary: 'On connect: every driver and the open deliveries', payload: replies.dispatchSnapshot },
  'drivers:moved': {
    event: 'drivers:moved',
    summary: 'Positions that changed, batched: one message per hub node per MAP_TICK_MS, not one per ping',
    payload: z.array(replies.driverMoved),
  },
  'driver:status': { event: 'driver:status', summary: 'A driver went AVAILABLE, BUSY or OFFLINE', payload: replies.driverStatusChanged },
  'delivery:updated': { event: 'delivery:updated', summary: 'A delivery changed status', payload: replies.deliveryUpdated },
  'delivery:push': {
    event: 'delivery:push',
    summary: "A driver's app acknowledged a push, or let every bounded re-send go unanswered",
    payload: replies.deliveryPushState,
  },
};

export const NAMESPACES: Record<'drivers' | 'dispatch', SocketNamespace> = {
  drivers: {
    address: '/drivers',
    title: 'Driver apps',
    description: 'Handshake `auth: { token }` with a driver JWT (role `driver`). Identity comes from the token only: a driver moves and updates only itself.',
    fromClient: driverClient,
    fromHub: driverServer,
  },
  dispatch: {
    address: '/dispatch',
    title: 'Dispatcher maps',
    description: 'Handshake `auth: { token }` with a dispatcher or admin JWT.',
    fromClient: dispatchClient,
    fromHub: dispatchServer,
  },
};

const NAMED: Record<string, z.ZodType> = {
  LocationFix: locationFix,
  Place: replies.assignmentPush.shape.pickup,
  ErrorBody: replies.errorBody,
  DeliveryView: replies.deliveryView,
  DriverView: replies.driverView,
  AssignmentPush: replies.assignmentPush,
  DriverSession: replies.driverSession,
  DriverMoved: replies.driverMoved,
  DispatchSnapshot: replies.dispatchSnapshot,
};

/** `delivery:update` -> `deliveryUpdate`: AsyncAPI keys allow letters, digits, `.`, `-` and `_`. */
export function messageKey(event: string): string {
  return event.replace(/[:\s]+(.)/g, (_m, c: string) => c.toUpperCase());
}

export function buildAsyncApiDocument(opts: { version: string }): JsonSchema {
  // AsyncAPI's default schema format is a superset of JSON Schema draft-07.
  const schemas = createSchemaCatalogue(NAMED, '#/components/schemas/', 'draft-07');
  const channels: Record<string, unknown> = {};
  const operations: Record<string, unknown> = {};

  for (const [channelId, nsp] of Object.entries(NAMESPACES)) {
    const messages: Record<string, unknown> = {};
    const add = (direction: 'receive' | 'send', spec: SocketEvent) => {
      const key = messageKey(spec.event);
      messages[key] = { name: spec.event, title: spec.event, summary: spec.summary, payload: schemas.ref(spec.payload, direction === 'receive' ? 'input' : 'output') };
      const operation: Record<string, unknown> = {
        action: direction,
        channel: { $ref: `#/channels/${channelId}` },
        summary: `${direction === 'receive' ? 'client -> hub' : 'hub -> client'}: ${spec.summary}`,
        messages: [{ $ref: `#/channels/${channelId}/messages/${key}` }],
      };
      if (spec.ack) {
        const ackKey = `${key}Ack`;
        messages[ackKey] = {
          name: `${spec.event} ack`,
          title: `${spec.event} acknowledgement`,
          summary: spec.ack.description,
          payload: schemas.ref(spec.ack.schema, direction === 'receive' ? 'output' : 'input'),
        };
        operation.reply = { channel: { $ref: `#/channels/${channelId}` }, messages: [{ $ref: `#/channels/${channelId}/messages/${ackKey}` }] };
      }
      operations[`${channelId}.${direction}.${key}`] = operation;
    };
    for (const spec of Object.values(nsp.fromClient)) add('receive', spec);
    for (const spec of Object.values(nsp.fromHub)) add('send', spec);
    channels[channelId] = { address: nsp.address, title: nsp.title, description: nsp.description, servers: [{ $ref: '#/servers/hub' }], messages };
  }

  return {
    asyncapi: '3.0.0',
    info: {
      title: 'Dispatch hub sockets',
      version: opts.version,
      description: [
        'Socket.IO 4 namespaces of the dispatch hub (websocket transport only, no sticky sessions needed).',
        'Operations are described from the hub\'s side: `receive` is what a client emits, `send` what the hub emits.',
        'A client event may carry an acknowledgement; every ack is `{ ok: true, ... }` or `{ ok: false, error: { code, message } }`.',
        'A bad handshake token gets `connect_error` with the error code as message and `{ code, message }` as data.',
      ].join('\n'),
    },
    defaultContentType: 'application/json',
    servers: {
      hub: {
        host: 'localhost:3000',
        protocol: 'ws',
        pathname: '/socket.io/',
        description: 'The hub itself (Engine.IO 4 / Socket.IO 5 protocol); put your own host here, or go through the load balancer.',
      },
    },
    channels,
    operations,
    components: { schemas: schemas.components() },
  };
}
