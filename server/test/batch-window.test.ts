import { describe, expect, it } from 'vitest';
import { createBatchWindow } from '../src/platform/batch-window.js';

const tick = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** A `run` that records each batch and answers when the test releases it. */
function gatedRun<I>() {
  const batches: I[][] = [];
  const gates: (() => void)[] = [];
  return {
    batches,
    release: () => gates.shift()?.(),
    run: async (items: I[]) => {
      batches.push(items);
      await new Promise<void>((resolve) => gates.push(resolve));
      return items.map((item) => `done:${String(item)}`);
    },
  };
}

describe('batch window', () => {
  it('when items arrive within the window, then one batch answers each of them in order', async () => {
    const batches: number[][] = [];
    const window = createBatchWindow<number, number>({
      windowMs: 5,
      maxBatch: 100,
      run: async (items) => {
        batches.push(items);
        return items.map((n) => n * 10);
      },
    });
    const answers = await Promise.all([1, 2, 3].map((n) => window.add(n)));
    expect(answers).toEqual([10, 20, 30]);
    expect(batches).toEqual([[1, 2, 3]]);
    expect(window.pending).toBe(0);
  });

  it('when a batch fills up, then it goes at once without waiting for the window', async () => {
    const batches: number[][] = [];
    const window = createBatchWindow<number, number>({
      windowMs: 60_000,
      maxBatch: 2,
      run: async (items) => {
        batches.push(items);
        return items;
      },
    });
    await expect(Promise.all([window.add(1), window.add(2)])).resolves.toEqual([1, 2]);
    expect(batches).toEqual([[1, 2]]);
  });

  it('when a batch is in flight, then later items gather and go together as soon as it answers', async () => {
    const gated = gatedRun<number>();
    const window = createBatchWindow<number, string>({ windowMs: 1, maxBatch: 100, run: gated.run });
    const first = window.add(1);
    await tick(10);
    expect(gated.batches).toEqual([[1]]);
    const later = [2, 3, 4].map((n) => window.add(n));
    await tick(10);
    // Still one batch out: the others wait for it rather than starting round trips of their own.
    expect(gated.batches).toHaveLength(1);
    expect(window.pending).toBe(4);
    gated.release();
    await expect(first).resolves.toBe('done:1');
    await tick(1);
    expect(gated.batches).toEqual([[1], [2, 3, 4]]);
    gated.release();
    await expect(Promise.all(later)).resolves.toEqual(['done:2', 'done:3', 'done:4']);
  });

  it('when more items wait than a batch holds, then they go in several batches of at most maxBatch', async () => {
    const batches: number[][] = [];
    const window = createBatchWindow<number, number>({
      windowMs: 1,
      maxBatch: 3,
      concurrency: 2,
      run: async (items) => {
        batches.push(items);
        await tick(5);
        return items;
      },
    });
    const all = await Promise.all(Array.from({ length: 8 }, (_, i) => window.add(i)));
    expect(all).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    expect(batches.every((b) => b.length <= 3)).toBe(true);
    expect(batches.flat()).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
  });

  it('when a batch fails, then every item of it fails with that error and later batches still run', async () => {
    let calls = 0;
    const window = createBatchWindow<number, number>({
      windowMs: 1,
      maxBatch: 10,
      run: async (items) => {
        calls += 1;
        if (calls === 1) throw new Error('database away');
        return items;
      },
    });
    const failed = [window.add(1), window.add(2)];
    await expect(failed[0]).rejects.toThrow('database away');
    await expect(failed[1]).rejects.toThrow('database away');
    await expect(window.add(3)).resolves.toBe(3);
  });

  it('when run answers the wrong number of results, then the batch fails instead of mismatching answers', async () => {
    const window = createBatchWindow<number, number>({ windowMs: 1, maxBatch: 10, run: async () => [1] });
    const results = await Promise.allSettled([window.add(1), window.add(2)]);
    expect(results.map((r) => r.status)).toEqual(['rejected', 'rejected']);
  });

  it('when settle is awaited, then it resolves once every item added so far is answered', async () => {
    const gated = gatedRun<number>();
    const window = createBatchWindow<number, string>({ windowMs: 1, maxBatch: 10, run: gated.run });
    const answer = window.add(7);
    let settled = false;
    const settling = window.settle().then(() => {
      settled = true;
    });
    await tick(10);
    expect(settled).toBe(false);
    gated.release();
    await answer;
    await settling;
    expect(settled).toBe(true);
  });

  it('when a batch held several items, then the next window is maxWindowMs, and windowMs again once an item came alone', async () => {
    const launchedAt: number[] = [];
    const window = createBatchWindow<number, number>({
      windowMs: 5,
      maxWindowMs: 60,
      maxBatch: 100,
      run: async (items) => {
        launchedAt.push(performance.now());
        return items;
      },
    });
    // After a burst the next item waits the busy window for company.
    await Promise.all(Array.from({ length: 20 }, (_, i) => window.add(i)));
    const added = performance.now();
    await window.add(100);
    expect(launchedAt[1] - added).toBeGreaterThanOrEqual(55);
    // That batch held one item: the window is back to 5 ms.
    const alone = performance.now();
    await window.add(101);
    expect(launchedAt[2] - alone).toBeLessThan(40);
  });
});
