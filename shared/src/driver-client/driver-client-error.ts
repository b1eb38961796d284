import type { ErrorBody, ErrorCode } from '../errors.js';

/** Codes the client gives its own failures; the others come from the hub. */
export const DRIVER_CLIENT_OWN_ERROR_CODES = [
  /** No answer within the request's timeout. The hub may still have applied it: every request is safe to repeat. */
  'TIMEOUT',
  /** Not connected when asked, or the connection went before the answer came. Same caveat as TIMEOUT. */
  'DISCONNECTED',
  /** The client was closed. */
  'CLOSED',
  /** An app handler or listener threw or rejected (reported on `error`; a push is then not acknowledged). */
  'HANDLER_FAILED',
] as const;
export type DriverClientOwnErrorCode = (typeof DRIVER_CLIENT_OWN_ERROR_CODES)[number];

/** Codes the hub may answer with (ERROR_CODES, `OFFER_EXPIRED` included; kept explicit for clients built against older lists). */
export type HubErrorCode = ErrorCode | 'OFFER_EXPIRED';

export type DriverClientErrorCode = HubErrorCode | DriverClientOwnErrorCode;

/** Every failure the client reports: a hub refusal (its code and details) or one of the client's own. */
export class DriverClientError extends Error {
  override readonly name = 'DriverClientError';

  constructor(
    readonly code: DriverClientErrorCode,
    message: string,
    readonly details?: unknown,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }

  /** A hub refusal as an error. A code this version does not know is passed through as it is. */
  static fromBody(body: ErrorBody | { code: string; message?: string; details?: unknown }): DriverClientError {
    return new DriverClientError(body.code as DriverClientErrorCode, body.message ?? body.code, body.details);
  }

  /** For RATE_LIMITED: how long the hub asked to wait. */
  get retryAfterMs(): number | undefined {
    const value = (this.details as { retryAfterMs?: unknown } | undefined)?.retryAfterMs;
    return typeof value === 'number' && Number.isFinite(value) && value >= 0 ? value : undefined;
  }
}
