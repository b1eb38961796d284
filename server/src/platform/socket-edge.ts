import type { Socket } from 'socket.io';
import type { z } from 'zod';
import type { AckReply } from '../../../shared/src/errors.js';
import { HubError, toHubError, validationError } from './errors.js';
import type { Logger } from './logger.js';
import type { Metrics } from './metrics.js';

type AnySocket = Socket<any, any, any, any>;

/** Parses a client payload with its shared schema; a bad one is a VALIDATION_FAILED HubError. */
export function parsePayload<S extends z.ZodType>(schema: S, payload: unknown, what: string): z.infer<S> {
  const parsed = schema.safeParse(payload);
  if (!parsed.success) throw validationError(parsed.error.issues, what);
  return parsed.data;
}

/**
 * Registers a client event whose handler returns the ack body. Every failure becomes an
 * `{ ok: false, error }` ack, is logged once and counted; nothing a client sends can crash the process.
 */
export function onEvent<T extends object>(
  socket: AnySocket,
  event: string,
  deps: { logger: Logger; metrics: Metrics },
  handler: (payload: unknown) => Promise<T> | T,
): void {
  socket.on(event, async (...args: unknown[]) => {
    const last = args[args.length - 1];
    const ack = typeof last === 'function' ? (last as (reply: AckReply<T>) => void) : undefined;
    const payload = ack ? args.slice(0, -1)[0] : args[0];
    try {
      const result = await handler(payload);
      ack?.({ ok: true, ...result });
    } catch (err) {
      const hubError = toHubError(err);
      deps.metrics.inputRejected.inc({ event, code: hubError.code });
      const level = hubError.code === 'INTERNAL' || hubError.code === 'SERVICE_UNAVAILABLE' ? 'error' : 'info';
      deps.logger[level](
        { event, code: hubError.code, err: err instanceof HubError ? undefined : (err as Error)?.message },
        'socket event refused',
      );
      ack?.({ ok: false, error: hubError.toBody() });
    }
  });
}
