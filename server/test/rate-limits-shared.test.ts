import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { createRateLimits } from '../src/platform/rate-limits.js';
import { CircuitBreaker } from '../src/platform/redis.js';
import { freePort } from './support/net.js';

describe('cluster-scoped rate limits on one Redis', () => {
  let redis: Redis;
  const prefix = () => `rl${randomBytes(4).toString('hex')}:`;

  beforeAll(async () => {
    redis = new Redis(inject('redisUrl'), { maxRetriesPerRequest: 1 });
    // Until the client is ready every count falls back to memory (as `consume` does).
    await redis.ping();
  });
  afterAll(() => redis.disconnect());

  const limitsOn = (client: Redis | null, keyPrefix: string, breaker = new CircuitBreaker()) =>
    createRateLimits({ redis: client, breaker, prefix: keyPrefix, rules: { driverConnect: { points: 3, seconds: 30 } } });

  it('when a batch spends a key past its budget, then that key alone is refused with the time left, and one-at-a-time calls share the same budget', async () => {
    const keyPrefix = prefix();
    const limits = limitsOn(redis, keyPrefix);
    const batch = await limits.consumeMany('driverConnect', ['a', 'b', 'a', 'a', 'a']);
    expect(batch.slice(0, 4)).toEqual([null, null, null, null]);
    expect(batch[4]).toBeGreaterThan(28_000);
    expect(batch[4]).toBeLessThanOrEqual(30_000);
    // b has two points left of its three, counted in Redis where `consume` looks too.
    expect(await limits.consume('driverConnect', 'b')).toBeNull();
    expect(await limits.consume('driverConnect', 'b')).toBeNull();
    expect(await limits.consume('driverConnect', 'b')).toBeGreaterThan(0);
    expect(Number(await redis.get(`${keyPrefix}rl:driverConnect:b`))).toBe(3);
    expect(await redis.pttl(`${keyPrefix}rl:driverConnect:b`)).toBeGreaterThan(28_000);
  });

  it('when another node spent a key, then a batch here refuses it, and a key refused once is refused again without asking Redis', async () => {
    const keyPrefix = prefix();
    const [here, there] = [limitsOn(redis, keyPrefix), limitsOn(redis, keyPrefix)];
    for (let i = 0; i < 3; i++) expect(await there.consume('driverConnect', 'spent')).toBeNull();
    const first = await here.consumeMany('driverConnect', ['spent', 'fresh']);
    expect(first[0]).toBeGreaterThan(0);
    expect(first[1]).toBeNull();
    const countBefore = Number(await redis.get(`${keyPrefix}rl:driverConnect:spent`));
    const again = await here.consumeMany('driverConnect', ['spent']);
    expect(again[0]).toBeGreaterThan(0);
    expect(Number(await redis.get(`${keyPrefix}rl:driverConnect:spent`))).toBe(countBefore);
  });

  it('when Redis is unreachable, then a batch is counted in this process per key and nothing is refused that has budget', async () => {
    const port = await freePort();
    const gone = new Redis({ port, host: '127.0.0.1', lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null, enableOfflineQueue: false });
    try {
      const limits = limitsOn(gone, prefix());
      const answers = await limits.consumeMany('driverConnect', ['a', 'a', 'a', 'a', 'b']);
      expect(answers.slice(0, 3)).toEqual([null, null, null]);
      expect(answers[3]).toBeGreaterThan(0);
      expect(answers[4]).toBeNull();
    } finally {
      gone.disconnect();
    }
  });

  it('when there is no Redis at all, then batches are counted in memory like single calls', async () => {
    const limits = limitsOn(null, prefix());
    expect(await limits.consumeMany('driverConnect', ['x', 'x', 'x'])).toEqual([null, null, null]);
    expect(await limits.consume('driverConnect', 'x')).toBeGreaterThan(0);
  });
});
