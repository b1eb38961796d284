import { describe, expect, it } from 'vitest';
import { retryOnConflict, uniqueViolation } from '../src/platform/db.js';

describe('statement retries', () => {
  it('when PostgreSQL cancels a statement to break a deadlock, then it runs again and its answer is returned', async () => {
    let calls = 0;
    const answer = await retryOnConflict(async () => {
      calls += 1;
      if (calls === 1) throw Object.assign(new Error('Failed query'), { cause: { code: '40P01', message: 'deadlock detected' } });
      return 'row';
    });
    expect(answer).toBe('row');
    expect(calls).toBe(2);
  });

  it('when a statement fails for another reason, then it is not run again', async () => {
    let calls = 0;
    const failing = retryOnConflict(async () => {
      calls += 1;
      throw Object.assign(new Error('duplicate'), { code: '23505', constraint_name: 'deliveries_seller_order_id_key' });
    });
    await expect(failing).rejects.toThrow('duplicate');
    expect(calls).toBe(1);
  });

  it('when deadlocks go on, then it gives up after the last attempt', async () => {
    let calls = 0;
    await expect(
      retryOnConflict(async () => {
        calls += 1;
        throw Object.assign(new Error('deadlock'), { code: '40P01' });
      }, 3),
    ).rejects.toThrow('deadlock');
    expect(calls).toBe(3);
  });

  it('when a unique index is broken, then the constraint is named whichever driver wrapped the error', () => {
    expect(uniqueViolation(Object.assign(new Error('x'), { cause: { code: '23505', constraint_name: 'k1' } }))).toBe('k1');
    expect(uniqueViolation({ code: '23505', constraint: 'k2' })).toBe('k2');
    expect(uniqueViolation({ code: '40P01' })).toBeNull();
  });
});
