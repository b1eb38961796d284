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
    const gauge = createLoadGauge({ lagLimitMs: 100, sampleMs: 50, holdMs: 300 });
    try {
      await tick(120);
      expect(gauge.overloaded).toBe(false);
      blockLoop(250);
      await tick(80);
      expect(gauge.overloaded).toBe(true);
      await tick(600);
      expect(gauge.overloaded).toBe(false);
    } finally {
      gauge.stop();
    }
  });
});
