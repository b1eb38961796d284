import { monitorEventLoopDelay } from 'node:perf_hooks';

/**
 * Whether this process is past what it can do right now, judged by its event loop: when the loop
 * runs late, every socket's frames wait in the kernel and whatever the hub acknowledges it writes
 * seconds later. Work that may wait (positions) is refused while this says so; work that may not
 * (heartbeats, sessions, claims) goes on.
 */
export interface LoadGauge {
  /** True while the loop's recent lag is over the limit, and for `holdMs` after. */
  readonly overloaded: boolean;
  /** The loop's lag p99 in the last sample window, ms. */
  readonly lagMs: number;
  stop(): void;
}

export interface LoadGaugeOptions {
  /** Lag p99 over one sample window above which the process counts as overloaded. */
  lagLimitMs: number;
  /** Length of a sample window. */
  sampleMs?: number;
  /** How long an overload lasts at least once seen, so shedding does not flap window by window. */
  holdMs?: number;
}

const RESOLUTION_MS = 10;

export function createLoadGauge(opts: LoadGaugeOptions): LoadGauge {
  const histogram = monitorEventLoopDelay({ resolution: RESOLUTION_MS });
  histogram.enable();
  const holdMs = opts.holdMs ?? 1000;
  let overloadedUntil = 0;
  let lagMs = 0;
  const timer = setInterval(() => {
    // The histogram counts the resolution itself as delay: 0 means on time.
    lagMs = Math.max(0, histogram.percentile(99) / 1e6 - RESOLUTION_MS);
    histogram.reset();
    if (lagMs > opts.lagLimitMs) overloadedUntil = Date.now() + holdMs;
  }, opts.sampleMs ?? 250);
  timer.unref();
  return {
    get overloaded() {
      return overloadedUntil > 0 && Date.now() < overloadedUntil;
    },
    get lagMs() {
      return lagMs;
    },
    stop() {
      clearInterval(timer);
      histogram.disable();
    },
  };
}

/** A gauge that never reports overload (tests, and processes that shed nothing). */
export const neverOverloaded: LoadGauge = { overloaded: false, lagMs: 0, stop() {} };
