import type { ErrorBody, ErrorCode } from '#shared/errors.js';

const HTTP_STATUS: Record<ErrorCode, number> = {
  VALIDATION_FAILED: 400,
  UNAUTHORIZED: 401,
  INVALID_SIGNATURE: 401,
  TOKEN_MISSING: 401,
  TOKEN_INVALID: 401,
  TOKEN_EXPIRED: 401,
  FORBIDDEN: 403,
  NOT_FOUND: 404,
  METHOD_NOT_ALLOWED: 405,
  CONFLICT: 409,
  INVALID_TRANSITION: 409,
  OFFER_EXPIRED: 409,
  PAYLOAD_TOO_LARGE: 413,
  RATE_LIMITED: 429,
  SERVICE_UNAVAILABLE: 503,
  INTERNAL: 500,
};

/** The hub's one error type; edges turn it into an HTTP body or an ack. */
export class HubError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly details?: unknown,
  ) {
    // A HubError is an answer, not a bug: nobody reads its stack, and capturing one costs more
    // than the rest of a refused ping (shed positions are refused by the thousand under overload).
    const stackTraceLimit = Error.stackTraceLimit;
    Error.stackTraceLimit = 0;
    super(message);
    Error.stackTraceLimit = stackTraceLimit;
    this.name = 'HubError';
  }

  get httpStatus(): number {
    return HTTP_STATUS[this.code];
  }

  toBody(): ErrorBody {
    return this.details === undefined
      ? { code: this.code, message: this.message }
      : { code: this.code, message: this.message, details: this.details };
  }
}

/** Whatever was thrown, as a HubError; unknown failures become INTERNAL (or 503 when the database is gone). */
export function toHubError(err: unknown): HubError {
  if (err instanceof HubError) return err;
  if (isDatabaseUnavailable(err)) return new HubError('SERVICE_UNAVAILABLE', 'database unavailable');
  return new HubError('INTERNAL', 'internal error');
}

const PG_UNAVAILABLE = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'CONNECTION_CLOSED', 'CONNECTION_ENDED', 'CONNECTION_DESTROYED', 'CONNECT_TIMEOUT', '57P01', '57P03', '08006', '08001', '08003', '53300']);

/** An error and its causes, outermost first: drivers and drizzle wrap the database's own error. */
export function* causeChain(err: unknown): Generator<{ code?: unknown; constraint_name?: unknown; constraint?: unknown }> {
  const seen = new Set<unknown>();
  for (let e = err; e !== null && typeof e === 'object' && !seen.has(e); e = (e as { cause?: unknown }).cause) {
    seen.add(e);
    yield e as { code?: unknown };
  }
}

export function isDatabaseUnavailable(err: unknown): boolean {
  for (const e of causeChain(err)) if (typeof e.code === 'string' && PG_UNAVAILABLE.has(e.code)) return true;
  return false;
}

export function validationError(issues: { path: PropertyKey[]; message: string }[], what = 'payload'): HubError {
  return new HubError(
    'VALIDATION_FAILED',
    `invalid ${what}`,
    issues.slice(0, 20).map((i) => ({ path: i.path.map(String).join('.'), message: i.message })),
  );
}

/** Too many of `what`: RATE_LIMITED with the wait in `details.retryAfterMs` (HTTP adds Retry-After). */
export function rateLimitedError(what: string, retryAfterMs: number): HubError {
  return new HubError('RATE_LIMITED', `too many ${what}; retry in ${retryAfterMs} ms`, { retryAfterMs });
}

/**
 * Work refused because the hub is past what it can do right now (it sheds positions to keep
 * sessions and heartbeats going): answered like a rate limit, so clients back off the same way.
 */
export function overloadedError(what: string, retryAfterMs: number): HubError {
  return new HubError('RATE_LIMITED', `hub busy: ${what} not stored; retry in ${retryAfterMs} ms`, { retryAfterMs, overloaded: true });
}
