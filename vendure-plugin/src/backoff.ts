import { createHash } from 'node:crypto';

export interface BackoffOptions {
  /** Delay ceiling of the first retry; doubles with each attempt. */
  baseMs: number;
  /** Largest delay between two attempts. */
  capMs: number;
}

export const DEFAULT_BACKOFF: BackoffOptions = { baseMs: 1000, capMs: 5 * 60_000 };

/**
 * Exponential backoff with full jitter: in [0, min(cap, base * 2^(attempt-1))). The jitter is
 * derived from the job and the attempt rather than drawn at random, because Vendure's polling job
 * queues ask again on every poll: a fresh draw each time would let a retry through early.
 */
export function backoffDelayMs(jobKey: string, attempt: number, options: BackoffOptions = DEFAULT_BACKOFF): number {
  const ceiling = Math.min(options.capMs, options.baseMs * 2 ** Math.min(Math.max(attempt - 1, 0), 30));
  const digest = createHash('sha256').update(`${jobKey}:${attempt}`).digest();
  const fraction = digest.readUInt32BE(0) / 0x1_0000_0000;
  return Math.floor(fraction * ceiling);
}
