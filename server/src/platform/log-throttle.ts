/**
 * At most one log line per key per window, however many refusals happen in between; the skipped
 * ones are counted and reported with the next line (metrics count every one).
 */
export function createLogThrottle(maxKeys = 10_000) {
  const entries = new Map<string, { until: number; suppressed: number }>();
  return {
    /** Returns the number of refusals skipped since the last line when this one should be logged, else null. */
    take(key: string, windowMs: number, now = Date.now()): number | null {
      const entry = entries.get(key);
      if (entry && now < entry.until) {
        entry.suppressed += 1;
        return null;
      }
      const suppressed = entry?.suppressed ?? 0;
      if (!entry && entries.size >= maxKeys) {
        for (const [k, e] of entries) if (now >= e.until) entries.delete(k);
        // Still full of live windows: drop the oldest rather than grow without bound.
        if (entries.size >= maxKeys) entries.delete(entries.keys().next().value as string);
      }
      entries.set(key, { until: now + Math.max(windowMs, 1000), suppressed: 0 });
      return suppressed;
    },
    forget(key: string): void {
      entries.delete(key);
    },
  };
}

export type LogThrottle = ReturnType<typeof createLogThrottle>;
