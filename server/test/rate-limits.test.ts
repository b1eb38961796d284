import { describe, expect, it } from 'vitest';
import { WindowCounters } from '../src/platform/rate-limits.js';

describe('node-scoped rate limits', () => {
  it('when a key spends its window, then the next event is refused with the time left, and a new window lets it through', () => {
    let now = 1_000;
    const counters = new WindowCounters(3, 2000, () => now);
    expect([counters.consume('d1'), counters.consume('d1'), counters.consume('d1')]).toEqual([null, null, null]);
    now += 500;
    expect(counters.consume('d1')).toBe(1500);
    expect(counters.consume('d2')).toBeNull();
    now += 1500;
    expect(counters.consume('d1')).toBeNull();
  });

  it('when many keys come and go, then ended windows are swept and do not pile up', () => {
    let now = 0;
    const counters = new WindowCounters(1, 1000, () => now);
    for (let i = 0; i < 5000; i++) counters.consume(`gone-${i}`);
    now += 1000;
    counters.consume('still-here');
    expect((counters as unknown as { windows: Map<string, unknown> }).windows.size).toBe(1);
  });
});
