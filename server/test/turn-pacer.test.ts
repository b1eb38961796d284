import { describe, expect, it } from 'vitest';
import { createTurnPacer } from '../src/platform/turn-pacer.js';

const nextTurn = () => new Promise<void>((resolve) => setImmediate(resolve));

describe('turn pacer', () => {
  it('when more work arrives in one turn than the limit, then the rest starts in later turns, in arrival order', async () => {
    const pacer = createTurnPacer(3);
    const started: number[] = [];
    for (let i = 0; i < 8; i++) pacer.admit(() => started.push(i));
    expect(started).toEqual([0, 1, 2]);
    expect(pacer.waiting).toBe(5);
    await nextTurn();
    expect(started).toEqual([0, 1, 2, 3, 4, 5]);
    await nextTurn();
    expect(started).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    expect(pacer.waiting).toBe(0);
  });

  it('when work waits for later turns, then the event loop goes round between them (timers and I/O run)', async () => {
    const pacer = createTurnPacer(1);
    const order: string[] = [];
    // A timer stands for a webhook waiting on the node; the first handshake takes long enough for it to come due.
    setTimeout(() => order.push('timer'), 1);
    pacer.admit(() => {
      const until = performance.now() + 3;
      while (performance.now() < until);
      order.push('first');
    });
    for (const name of ['second', 'third']) pacer.admit(() => order.push(name));
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(order[0]).toBe('first');
    expect(order.indexOf('timer')).toBeLessThan(order.indexOf('third'));
  });

  it('when a piece of work throws, then the others still start', async () => {
    const pacer = createTurnPacer(1);
    const started: number[] = [];
    pacer.admit(() => started.push(0));
    pacer.admit(() => {
      throw new Error('broken');
    });
    pacer.admit(() => started.push(2));
    await nextTurn();
    await nextTurn();
    expect(started).toEqual([0, 2]);
  });

  it('when the work comes one at a time, then each starts at once', () => {
    const pacer = createTurnPacer(2);
    const started: number[] = [];
    pacer.admit(() => started.push(1));
    expect(started).toEqual([1]);
  });
});
