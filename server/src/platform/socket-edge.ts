import type { Socket } from 'socket.io';
import type { AckReply, ErrorBody } from '#shared/errors.js';
import { HubError, rateLimitedError, toHubError } from './errors.js';
import { createLogThrottle } from './log-throttle.js';
import type { Logger } from './logger.js';
import type { Metrics } from './metrics.js';

type AnySocket = Socket<any, any, any, any>;

export interface EdgeDeps {
  logger: Logger;
  metrics: Metrics;
  /**
   * Consulted before the payload is even parsed: null to go on, else milliseconds until a retry may
   * pass, or the refusal itself (a hub shedding load says why).
   */
  limit?: (socket: AnySocket) => number | HubError | null | Promise<number | null>;
}

/** Who a log line about a socket is about, under the same keys as the namespaces' own lines. */
const socketFields = (socket: AnySocket) => ({ socket: socket.id, [socket.data?.role === 'driver' ? 'driver' : 'dispatcher']: socket.data?.subject });

/**
 * Per socket: one rate-limit line per window however many refusals (a flood must not turn into a
 * log flood). Shared by every namespace; a socket id is unique across them.
 */
const rateLimitLog = createLogThrottle();

function noteRateLimited(socket: AnySocket, event: string, retryAfterMs: number, deps: EdgeDeps): void {
  deps.metrics.rateLimited.inc({ event });
  const skipped = rateLimitLog.take(socket.id, retryAfterMs);
  if (skipped !== null) deps.logger.warn({ ...socketFields(socket), event, retryAfterMs, refusedSinceLastLine: skipped }, 'socket rate limited');
}

/**
 * A refused handshake as Socket.IO passes it to `next`: the client's `connect_error` carries the
 * code as its message and the error body as its `data`.
 */
export function handshakeError(error: HubError): Error & { data: ErrorBody } {
  return Object.assign(new Error(error.code), { data: error.toBody() });
}

/** A listener shared by every socket of a namespace: Socket.IO calls it with the socket as `this`. */
export type SharedListener = (this: AnySocket, ...args: unknown[]) => void;

/**
 * The listener for a client event whose handler returns the ack body. Every failure becomes an
 * `{ ok: false, error }` ack, is logged once and counted; nothing a client sends can crash the
 * process. Built once per namespace and shared by its sockets (no closures per connection, which
 * at tens of thousands of sockets is memory), and synchronous all the way when the limit and the
 * handler are (a location ping: no promise per event).
 */
export function eventListener<T extends object>(
  event: string,
  deps: EdgeDeps,
  handler: (socket: AnySocket, payload: unknown) => Promise<T> | T,
): SharedListener {
  type Ack = ((reply: AckReply<T>) => void) | undefined;
  const refuse = (socket: AnySocket, ack: Ack, refusal: number | HubError) => {
    const error = typeof refusal === 'number' ? rateLimitedError(`${event} events`, refusal) : refusal;
    noteRateLimited(socket, event, (error.details as { retryAfterMs?: number } | undefined)?.retryAfterMs ?? 1000, deps);
    ack?.({ ok: false, error: error.toBody() });
  };
  const fail = (socket: AnySocket, ack: Ack, err: unknown) => {
    const hubError = toHubError(err);
    deps.metrics.inputRejected.inc({ event, code: hubError.code });
    const level = hubError.code === 'INTERNAL' || hubError.code === 'SERVICE_UNAVAILABLE' ? 'error' : 'info';
    deps.logger[level](
      { ...socketFields(socket), event, code: hubError.code, err: err instanceof HubError ? undefined : (err as Error)?.message },
      'socket event refused',
    );
    ack?.({ ok: false, error: hubError.toBody() });
  };
  const run = (socket: AnySocket, ack: Ack, payload: unknown) => {
    try {
      const result = handler(socket, payload);
      if (result instanceof Promise) result.then((body) => ack?.({ ok: true, ...body }), (err) => fail(socket, ack, err));
      else ack?.({ ok: true, ...result });
    } catch (err) {
      fail(socket, ack, err);
    }
  };
  return function onClientEvent(this: AnySocket, ...args: unknown[]): void {
    const last = args[args.length - 1];
    const ack = typeof last === 'function' ? (last as (reply: AckReply<T>) => void) : undefined;
    const payload = ack ? args.slice(0, -1)[0] : args[0];
    let limited: number | HubError | null | Promise<number | null> = null;
    try {
      limited = deps.limit ? deps.limit(this) : null;
    } catch {
      // A limiter that breaks lets the event through rather than locking drivers out.
    }
    if (limited instanceof Promise) {
      limited.catch(() => null).then((retryAfterMs) => (retryAfterMs === null ? run(this, ack, payload) : refuse(this, ack, retryAfterMs)));
    } else if (limited !== null) refuse(this, ack, limited);
    else run(this, ack, payload);
  };
}

/**
 * The catch-all listener for events a namespace does not handle: a FORBIDDEN ack instead of
 * silence (a dispatcher sending `location` learns at once that it may not). Counted, not logged:
 * unknown events cost nothing else. Shared by every socket of the namespace (`socket.onAny`).
 */
export function otherEventsRefuser(known: readonly string[], deps: { metrics: Metrics }): SharedListener {
  const allowed = new Set(known);
  return function refuseOtherEvent(this: AnySocket, event: unknown, ...args: unknown[]): void {
    if (typeof event === 'string' && allowed.has(event)) return;
    deps.metrics.inputRejected.inc({ event: 'unknown', code: 'FORBIDDEN' });
    const last = args[args.length - 1];
    if (typeof last === 'function') {
      (last as (reply: AckReply) => void)({ ok: false, error: { code: 'FORBIDDEN', message: `${this.nsp.name} does not accept this event` } });
    }
  };
}
