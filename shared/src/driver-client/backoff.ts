/**
 * Capped exponential backoff with full jitter: the n-th retry waits a uniformly random time in
 * [0, min(cap, base * 2^n)). Spreading every retry over the whole window (rather than adding a
 * little noise to a fixed delay) is what keeps a fleet whose node died from coming back at once.
 */
export interface BackoffOptions {
  /** Window of the first retry, in ms. */
  baseMs: number;
  /** Largest window, in ms. */
  capMs: number;
}

export const DEFAULT_BACKOFF: BackoffOptions = { baseMs: 5_000, capMs: 30_000 };

/** The window the `retry`-th retry (0 for the first) draws its delay from. */
export function backoffWindow(retry: number, { baseMs, capMs }: BackoffOptions): number {
  // 2^31 times any sane base is past every cap; the exponent stops growing there.
  return Math.min(capMs, baseMs * 2 ** Math.min(Math.max(0, retry), 31));
}

/** A delay for the `retry`-th retry; `random` returns [0, 1) like Math.random. */
export function fullJitterDelay(retry: number, options: BackoffOptions, random: () => number): number {
  return Math.floor(random() * backoffWindow(retry, options));
}

export function checkBackoffOptions(options: BackoffOptions): BackoffOptions {
  const { baseMs, capMs } = options;
  if (!Number.isFinite(baseMs) || baseMs <= 0) throw new RangeError(`backoff.baseMs must be a positive number, got ${baseMs}`);
  if (!Number.isFinite(capMs) || capMs < baseMs) throw new RangeError(`backoff.capMs must be a number no smaller than baseMs, got ${capMs}`);
  return options;
}
