import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { deletePrefix } from '../../load-tests/bench/redis-keys.js';
import { createLogger } from '../src/platform/logger.js';
import { connectRedis, createRedisClients, type SingleRedisClients } from '../src/platform/redis.js';

describe("the command client's pipelines", () => {
  let clients: SingleRedisClients;
  const prefix = `pipelines:${randomUUID()}:`;

  beforeAll(async () => {
    clients = createRedisClients({ url: inject('redisUrl'), commandTimeoutMs: 2000, logger: createLogger({ level: 'silent', nodeId: 'unit' }) });
    expect(await connectRedis(clients, 5000)).toBe(true);
  });

  afterAll(async () => {
    await deletePrefix(inject('redisUrl'), prefix);
    await clients.close();
  });

  it('when a pipeline is built, then it has no length getter of its own and its length still counts its commands', async () => {
    const pipeline = clients.command.pipeline();
    expect(Object.getOwnPropertyDescriptor(pipeline, 'length')).toBeUndefined();
    expect(pipeline.length).toBe(0);
    pipeline.set(`${prefix}a`, '1').incr(`${prefix}a`);
    expect(pipeline.length).toBe(2);
    expect(await pipeline.exec()).toEqual([
      [null, 'OK'],
      [null, 2],
    ]);
  });

  it('when commands are sent in one tick, then they share a pipeline and each gets its own answer, in order', async () => {
    const key = `${prefix}tick`;
    const answers = await Promise.all([clients.command.set(key, 'x'), clients.command.append(key, 'y'), clients.command.get(key), clients.command.del(key)]);
    expect(answers).toEqual(['OK', 2, 'xy', 1]);
  });

  it('when pipelines are built, then Object.defineProperty is the builtin again afterwards and still defines a length elsewhere', () => {
    const builtin = Object.defineProperty;
    clients.command.pipeline();
    expect(Object.defineProperty).toBe(builtin);
    const plain = Object.defineProperty({}, 'length', { value: 3, enumerable: true });
    expect(plain).toEqual({ length: 3 });
  });

  it("when multi() builds a transaction, then it still works (it keeps ioredis's own pipeline)", async () => {
    const key = `${prefix}multi`;
    expect(await clients.command.multi().set(key, '5').incrby(key, 2).exec()).toEqual([
      [null, 'OK'],
      [null, 7],
    ]);
  });
});
