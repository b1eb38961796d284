import { describe, expect, it } from 'vitest';
import { createLoadGauge } from '../src/platform/load-gauge.js';

const tick = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function blockLoop(ms: number): void {
  const until = performance.now() + ms;
  while (performance.now() < until) {
    // busy: the event loop cannot run meanwhile
  }
}

describe('load gauge', () => {
  it('when the event loop is blocked past the limit, then it reports overload for the hold time and then not', async () => {
    const holdMs = 300;
    const gauge = createLoadGauge({ lagLimitMs: 100, sampleMs: 50, holdMs });
    // Polled with generous bounds: on a busy machine timers run late, which only lengthens each wait.
    const until = async (check: () => boolean, withinMs: number) => {
      const deadline = Date.now() + withinMs;
      while (!check() && Date.now() < deadline) await tick(5);
      return check();
    };
    try {
      await tick(120);
      expect(gauge.overloaded).toBe(false);
      blockLoop(250);
      expect(await until(() => gauge.overloaded, 2000)).toBe(true);
      const seenAt = Date.now();
      expect(await until(() => !gauge.overloaded, 5000)).toBe(true);
      expect(Date.now() - seenAt).toBeGreaterThanOrEqual(holdMs - 100);
    } finally {
      gauge.stop();
    }
  });
});
