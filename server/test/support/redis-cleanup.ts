import { afterAll, inject } from 'vitest';
import { deletePrefix } from '../../../load-tests/bench/redis-keys.js';
import { takeTestPrefixes } from './test-prefixes.js';

/**
 * After a test file (its own hooks have stopped its hubs by then), the keys its hubs wrote to the
 * shared Redis under their own prefixes are deleted: the shared Redis is never flushed, and
 * without this every run left about a hundred keys that never expire.
 */
afterAll(async () => {
  for (const prefix of takeTestPrefixes()) {
    // A test that took Redis away: nothing left to tidy there.
    await deletePrefix(inject('redisUrl'), prefix).catch(() => {});
  }
});
