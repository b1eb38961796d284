import { Redis } from 'ioredis';
import { afterAll } from 'vitest';
import { takeTestPrefixes } from './test-prefixes.js';

const GLOB_SPECIAL = /[*?[\]\\]/g;

/**
 * After a test file (its own hooks have stopped its hubs by then), the keys its hubs wrote to the
 * shared Redis under their own prefixes are deleted: the shared Redis is never flushed, and
 * without this every run left a few hundred keys that never expire.
 */
afterAll(async () => {
  for (const [url, prefixes] of takeTestPrefixes()) {
    const redis = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 1 });
    try {
      await redis.connect();
      for (const prefix of prefixes) {
        let cursor = '0';
        do {
          const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix.replace(GLOB_SPECIAL, '\\$&')}*`, 'COUNT', 1000);
          cursor = next;
          if (keys.length > 0) await redis.unlink(...keys);
        } while (cursor !== '0');
      }
    } catch {
      // A test that took Redis away, or a Redis gone with its test: nothing left to tidy there.
    } finally {
      redis.disconnect();
    }
  }
});
