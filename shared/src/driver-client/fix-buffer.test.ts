import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { FixBuffer } from './fix-buffer.js';

const fix = (n: number) => ({ lat: 52, lng: 13, ts: 1_000 + n });

describe('fix buffer', () => {
  it('when more fixes arrive than it holds, then the oldest go first and the newest stay', () => {
    const buffer = new FixBuffer(3);
    const dropped = [1, 2, 3, 4, 5].map((n) => buffer.add(fix(n)));
    expect(dropped).toEqual([0, 0, 0, 1, 1]);
    expect(buffer.size).toBe(3);
    expect(buffer.dropped).toBe(2);
    expect(buffer.oldest(10).map((f) => [f.seq, f.ts])).toEqual([
      [2, 1003],
      [3, 1004],
      [4, 1005],
    ]);
  });

  it('when a batch is acknowledged, then exactly its fixes leave, even if newer ones arrived meanwhile', () => {
    const buffer = new FixBuffer(10);
    for (let n = 0; n < 5; n++) buffer.add(fix(n));
    const batch = buffer.oldest(3);
    buffer.add(fix(5));
    expect(buffer.confirmRange(batch[0].seq, batch[batch.length - 1].seq)).toBe(3);
    expect(buffer.oldest(10).map((f) => f.seq)).toEqual([3, 4, 5]);
    // A late second ack for the same batch changes nothing.
    expect(buffer.confirmRange(0, 2)).toBe(0);
  });

  it('when fixes are sent on a connection, then only new ones count as unsent there, and all of them again after markAllUnsent', () => {
    const buffer = new FixBuffer(10);
    for (let n = 0; n < 4; n++) buffer.add(fix(n));
    buffer.markSent(buffer.unsent(1, 2), 1);
    expect(buffer.unsent(1, 10).map((f) => f.seq)).toEqual([2, 3]);
    expect(buffer.awaitingConfirmation(1)).toBe(true);
    expect(buffer.awaitingConfirmation(2)).toBe(false);
    buffer.markAllUnsent();
    expect(buffer.unsent(1, 10).map((f) => f.seq)).toEqual([0, 1, 2, 3]);
    expect(buffer.confirmUpTo(2)).toBe(3);
    expect(buffer.oldest(10).map((f) => f.seq)).toEqual([3]);
  });

  it('when any mix of adds and confirmations happens, then it never holds more than its capacity, numbers only grow, and a confirmed fix never comes back', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 20 }),
        fc.array(fc.oneof(fc.constant({ op: 'add' as const }), fc.record({ op: fc.constant('upTo' as const), n: fc.integer({ min: 0, max: 60 }) }), fc.record({ op: fc.constant('batch' as const), size: fc.integer({ min: 1, max: 10 }) })), { maxLength: 80 }),
        (capacity, ops) => {
          const buffer = new FixBuffer(capacity);
          const confirmed = new Set<number>();
          let added = 0;
          for (const op of ops) {
            if (op.op === 'add') buffer.add(fix(added++));
            else if (op.op === 'upTo') {
              for (const f of buffer.oldest(capacity)) if (f.seq <= op.n) confirmed.add(f.seq);
              buffer.confirmUpTo(op.n);
            } else {
              const batch = buffer.oldest(op.size);
              if (batch.length) {
                batch.forEach((f) => confirmed.add(f.seq));
                buffer.confirmRange(batch[0].seq, batch[batch.length - 1].seq);
              }
            }
            const seqs = buffer.oldest(capacity + 1).map((f) => f.seq);
            expect(seqs.length).toBeLessThanOrEqual(capacity);
            expect(seqs).toEqual([...seqs].sort((a, b) => a - b));
            for (const seq of seqs) expect(confirmed.has(seq)).toBe(false);
            // What is kept is the newest of what was never confirmed.
            if (seqs.length) expect(seqs[seqs.length - 1]).toBe(added - 1);
          }
        },
      ),
    );
  });
});
