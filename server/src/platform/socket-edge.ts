import type { Socket } from 'socket.io';
import type { z } from 'zod';
import type { AckReply } from '#shared/errors.js';
import { HubError, toHubError, validationError } from './errors.js';
import type { Logger } from './logger.js';
import type { Metrics } from './metrics.js';

type AnySocket = Socket<any, any, any, any>;

/** A UTF-16 half without its other half: not Unicode at all (jsonb refuses it, text would mangle it). */
const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;

/** The path of the first string in `value` that PostgreSQL could not store faithfully, or null. */
export function findUnstorableText(value: unknown): PropertyKey[] | null {
  // PostgreSQL text and jsonb cannot hold a NUL.
  if (typeof value === 'string') return value.includes('\u0000') || LONE_SURROGATE.test(value) ? [] : null;
  if (value === null || typeof value !== 'object') return null;
  // Runs on every location ping: the path is built only on the way back from a bad string.
  for (const key in value) {
    const inner = (value as Record<string, unknown>)[key];
    if (inner === null || (typeof inner !== 'string' && typeof inner !== 'object')) continue;
    const found = findUnstorableText(inner);
    if (found) return [Array.isArray(value) ? Number(key) : key, ...found];
  }
  return null;
}

/**
 * Parses a client payload (socket event or HTTP body) with its shared schema; a bad one is a
 * VALIDATION_FAILED HubError. Text the schemas let through but the database would choke on is
 * refused here too, so it is a 400 and not a 500 halfway through a transaction.
 */
export function parsePayload<S extends z.ZodType>(schema: S, payload: unknown, what: string): z.infer<S> {
  const parsed = schema.safeParse(payload);
  if (!parsed.success) throw validationError(parsed.error.issues, what);
  // After the schema: only known, bounded fields are left to walk.
  const bad = findUnstorableText(parsed.data);
  if (bad) throw validationError([{ path: bad, message: 'text must be valid Unicode without NUL characters' }], what);
  return parsed.data;
}

export interface EdgeDeps {
  logger: Logger;
  metrics: Metrics;
  /** Consulted before the payload is even parsed: null to go on, else milliseconds until a retry may pass. */
  limit?: (socket: AnySocket) => number | null | Promise<number | null>;
}

/** Per socket: when its last rate-limit line was written, and how many refusals went unlogged since. */
const rateLimitLog = new WeakMap<AnySocket, { until: number; suppressed: number }>();

/** Who a log line about a socket is about, under the same keys as the namespaces' own lines. */
const socketFields = (socket: AnySocket) => ({ socket: socket.id, [socket.data?.role === 'driver' ? 'driver' : 'dispatcher']: socket.data?.subject });

function noteRateLimited(socket: AnySocket, event: string, retryAfterMs: number, deps: EdgeDeps): void {
  deps.metrics.rateLimited.inc({ event });
  // A flood must not turn into a log flood: one line per socket per window.
  const now = Date.now();
  const entry = rateLimitLog.get(socket);
  if (entry && now < entry.until) {
    entry.suppressed += 1;
    return;
  }
  deps.logger.warn({ ...socketFields(socket), event, retryAfterMs, refusedSinceLastLine: entry?.suppressed ?? 0 }, 'socket rate limited');
  rateLimitLog.set(socket, { until: now + Math.max(retryAfterMs, 1000), suppressed: 0 });
}

export function rateLimitedBody(what: string, retryAfterMs: number) {
  return { code: 'RATE_LIMITED' as const, message: `too many ${what}; retry in ${retryAfterMs} ms`, details: { retryAfterMs } };
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
  const refuse = (socket: AnySocket, ack: Ack, retryAfterMs: number) => {
    noteRateLimited(socket, event, retryAfterMs, deps);
    ack?.({ ok: false, error: rateLimitedBody(`${event} events`, retryAfterMs) });
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
    let limited: number | null | Promise<number | null> = null;
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
