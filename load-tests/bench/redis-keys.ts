import { Redis } from 'ioredis';

const GLOB_SPECIAL = /[*?[\]\\]/g;

/** Deletes every key under `prefix` (taken literally, not as a pattern); returns how many. */
export async function deletePrefix(url: string, prefix: string): Promise<number> {
  const redis = new Redis(url, { maxRetriesPerRequest: 1, lazyConnect: false });
  let removed = 0;
  try {
    let cursor = '0';
    do {
      const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix.replace(GLOB_SPECIAL, '\\$&')}*`, 'COUNT', 1000);
      cursor = next;
      if (keys.length > 0) removed += await redis.unlink(...keys);
    } while (cursor !== '0');
  } finally {
    redis.disconnect();
  }
  return removed;
}
