import { randomBytes, randomUUID } from 'node:crypto';
import fc from 'fast-check';
import type { Cluster } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../src/platform/logger.js';
import { createRateLimits } from '../src/platform/rate-limits.js';
import { type ClusterRedisClients, connectRedis, createRedisClusterClients } from '../src/platform/redis.js';
import { cellIdOf, cellsAround } from '../src/presence/cells.js';
import { type ClusterPresenceStore, createClusterPresenceStore } from '../src/presence/presence-cluster.store.js';
import { eventually } from './support/net.js';
import { PrivateRedisCluster } from './support/redis-cluster.js';

const logger = createLogger({ level: 'silent', nodeId: 'unit' });
const DEGREES = 0.25;
/** A corner of four cells (52.5 N, 13.5 E): fixes around it land in four GEO sets. */
const CORNER = { lat: 52.5, lng: 13.5 };
const near = (dLat: number, dLng: number) => ({ lat: CORNER.lat + dLat, lng: CORNER.lng + dLng });

/** Each member's presence and the cell's version for it, read in one script on the cell's shard. */
const READ_CELL = `
local out = {}
for i = 1, #ARGV do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  local ver = redis.call('HGET', KEYS[2], ARGV[i]) or ''
  if score then out[i] = 'in|' .. ver else out[i] = 'out|' .. ver end
end
return out`;

let cluster: PrivateRedisCluster;
const clients: ClusterRedisClients[] = [];
let reader: Cluster;

async function hubStore(prefix: string, interleave?: Parameters<typeof createClusterPresenceStore>[0]["interleave"]) {
  const redis = createRedisClusterClients({ nodes: cluster.ports.map((port) => ({ host: '127.0.0.1', port })), commandTimeoutMs: 2000, logger });
  clients.push(redis);
  expect(await connectRedis(redis, 10_000)).toBe(true);
  return createClusterPresenceStore({
    cluster: redis.command,
    breaker: redis.breaker,
    shards: redis.shards,
    prefix,
    heartbeatTtlSeconds: 30,
    cellDegrees: DEGREES,
    commandTimeoutMs: 2000,
    interleave,
  });
}

beforeAll(async () => {
  cluster = await new PrivateRedisCluster().start();
  reader = cluster.client();
  reader.defineCommand('readCell', { numberOfKeys: 2, lua: READ_CELL });
}, 60_000);

afterAll(async () => {
  reader?.disconnect();
  for (const redis of clients) await redis.close();
  await cluster?.stop();
});

async function readCell(store: ClusterPresenceStore, cell: string, ids: string[]): Promise<{ in: boolean; ver: string }[]> {
  const replies = (await (reader as Cluster & { readCell(...args: string[]): Promise<string[]> }).readCell(store.keys.cellGeo(cell), store.keys.cellVersions(cell), ...ids)) as string[];
  return replies.map((reply) => {
    const [where, ver] = reply.split('|');
    return { in: where === 'in', ver };
  });
}

describe('presence on a three-master Redis Cluster (store level)', () => {
  it('when the nearest driver is across a cell border, then the search finds it before a farther one in the pickup cell', async () => {
    const store = await hubStore(`pc${randomBytes(3).toString('hex')}:`);
    await store.rebuild([]);
    expect(await store.hasPicture()).toBe(true);
    const across = randomUUID();
    const sameCell = randomUUID();
    const pickup = near(-0.001, -0.1);
    expect(store.cellOf(pickup)).not.toBe(store.cellOf(near(0.001, -0.1)));
    for (const [id, at] of [
      [across, near(0.001, -0.1)],
      [sameCell, near(-0.008, -0.1)],
    ] as const) {
      await store.setStatus(id, 'AVAILABLE', { position: at, heartbeat: 'refresh' });
    }
    const found = await store.nearest(pickup, 1000, 5);
    expect(found.map((d) => d.driverId)).toEqual([across, sameCell]);
    expect(found[0].distanceMeters).toBeLessThan(250);

    // BUSY: out of every set and never proposed.
    await store.setStatus(across, 'BUSY');
    expect((await store.nearest(pickup, 1000, 5)).map((d) => d.driverId)).toEqual([sameCell]);
    const cells = cellsAround(pickup, 1000, DEGREES);
    for (const cell of cells) expect((await readCell(store, cell, [across]))[0].in).toBe(false);
  });

  it('when fixes on both sides of a cell border race with status changes on two hubs, then a driver is never in two cell sets and never proposed unless AVAILABLE', async () => {
    const prefix = `pc${randomBytes(3).toString('hex')}:`;
    let rng = () => 0.5;
    const interleave = async () => {
      const wait = Math.floor(rng() * 6);
      if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
    };
    const hubs = [await hubStore(prefix, interleave), await hubStore(prefix, interleave)];
    await hubs[0].rebuild([]);
    await hubs[1].hasPicture();
    const spots = [near(0.002, 0.002), near(0.002, -0.002), near(-0.002, 0.002), near(-0.002, -0.002), near(0.26, 0.002)];
    const cells = [...new Set(spots.map((s) => cellIdOf(s, DEGREES)))];
    expect(cells.length).toBe(5);

    const op = fc.record({
      hub: fc.integer({ min: 0, max: 1 }),
      driver: fc.integer({ min: 0, max: 2 }),
      kind: fc.constantFrom('fix', 'fix', 'fix', 'available', 'busy', 'offline'),
      spot: fc.integer({ min: 0, max: spots.length - 1 }),
    });
    let violations: string[] = [];

    await fc.assert(
      fc.asyncProperty(fc.array(fc.array(op, { minLength: 1, maxLength: 6 }), { minLength: 4, maxLength: 12 }), fc.integer(), async (rounds, seed) => {
        let state = seed >>> 0 || 1;
        rng = () => {
          state = (Math.imul(state, 1103515245) + 12345) >>> 0;
          return state / 2 ** 32;
        };
        const drivers = [randomUUID(), randomUUID(), randomUUID()];
        const last = new Map<string, { lat: number; lng: number }>();
        let sampling = true;
        violations = [];
        // Two passes over every cell; a member present with the same version in both passes of two
        // cells was in both sets at once (leaving a set always moves its version on).
        const sampler = (async () => {
          while (sampling) {
            const first = await Promise.all(cells.map((cell) => readCell(hubs[0], cell, drivers)));
            const second = await Promise.all(cells.map((cell) => readCell(hubs[0], cell, drivers)));
            drivers.forEach((id, d) => {
              const held = cells.filter((_, c) => first[c][d].in && second[c][d].in && first[c][d].ver === second[c][d].ver);
              if (held.length > 1) violations.push(`${id} in ${held.join(' and ')}`);
            });
          }
        })();
        for (const round of rounds) {
          await Promise.all(
            round.map(async ({ hub, driver, kind, spot }) => {
              const id = drivers[driver];
              const store = hubs[hub];
              if (kind === 'fix') {
                last.set(id, spots[spot]);
                await store.writeFixes([{ id, ...spots[spot], beat: true }]);
              } else if (kind === 'available') {
                await store.setStatus(id, 'AVAILABLE', { position: last.get(id) ?? spots[spot], heartbeat: 'refresh' });
                if (!last.has(id)) last.set(id, spots[spot]);
              } else if (kind === 'busy') {
                await store.setStatus(id, 'BUSY');
              } else {
                await store.setStatus(id, 'OFFLINE', { heartbeat: 'drop' });
              }
              // Anything proposed is AVAILABLE by its record at the time, and proposed once.
              const proposed = await store.nearest(CORNER, 5000, 10);
              expect(new Set(proposed.map((p) => p.driverId)).size).toBe(proposed.length);
            }),
          );
        }
        sampling = false;
        await sampler;
        expect(violations).toEqual([]);
        // Quiet now: every set holds exactly the AVAILABLE drivers, each in the cell of its record.
        const { statuses, inGeo } = await hubs[0].lookup(drivers);
        const membership = await Promise.all(cells.map((cell) => readCell(hubs[0], cell, drivers)));
        drivers.forEach((id, d) => {
          const holding = cells.filter((_, c) => membership[c][d].in);
          if (statuses[d] === 'AVAILABLE') {
            expect(holding.length, `${id} AVAILABLE in ${holding.join(',')}`).toBeLessThanOrEqual(1);
            expect(inGeo[d]).toBe(holding.length === 1);
          } else {
            expect(holding, `${id} ${statuses[d]} still in a set`).toEqual([]);
          }
        });
      }),
      { numRuns: 25, seed: 2202, endOnFailure: true },
    );
  }, 120_000);

  it('when a member was left in a cell its record does not name (a stray), then the sweep removes it and the search never proposed it', async () => {
    const store = await hubStore(`pc${randomBytes(3).toString('hex')}:`);
    await store.rebuild([]);
    const id = randomUUID();
    await store.setStatus(id, 'AVAILABLE', { position: near(0.002, 0.002), heartbeat: 'refresh' });
    // A stray as a lost removal would leave it: the member written straight into another cell.
    const strayCell = cellIdOf(near(-0.002, -0.002), DEGREES);
    await reader.geoadd(store.keys.cellGeo(strayCell), CORNER.lng - 0.002, CORNER.lat - 0.002, id);
    const found = await store.nearest(near(-0.002, -0.002), 1000, 5);
    expect(found.filter((d) => d.driverId === id)).toHaveLength(1);
    expect(found[0].distanceMeters).toBeGreaterThan(400);
    await store.expiredDrivers();
    expect((await readCell(store, strayCell, [id]))[0].in).toBe(false);
    expect((await store.lookup([id])).inGeo).toEqual([true]);
  });

  it('when a heartbeat expires, then the sweep takes the driver out of its cell', async () => {
    const store = await hubStore(`pc${randomBytes(3).toString('hex')}:`);
    await store.rebuild([]);
    const id = randomUUID();
    await store.setStatus(id, 'AVAILABLE', { position: near(0.01, 0.01), heartbeat: 'refresh' });
    await reader.del(store.keys.online(id));
    expect(await store.expiredDrivers()).toEqual([id]);
    expect((await store.lookup([id])).inGeo).toEqual([false]);
    expect(await store.nearest(near(0.01, 0.01), 1000, 5)).toEqual([]);
  });

  it('when thousands of quiet drivers are touched, then every one gets its heartbeat key with the TTL on its own shard', async () => {
    const store = await hubStore(`pc${randomBytes(3).toString('hex')}:`);
    const ids = Array.from({ length: 4500 }, () => randomUUID());
    await store.touch(ids);
    const ttls = await Promise.all(ids.map((id) => reader.ttl(store.keys.online(id))));
    expect(ttls.filter((ttl) => ttl <= 0 || ttl > 30)).toEqual([]);
  });

  it('when the walk over statuses and GEO members runs, then it visits every driver across all shards once', async () => {
    const store = await hubStore(`pc${randomBytes(3).toString('hex')}:`);
    await store.rebuild([]);
    const ids = Array.from({ length: 40 }, () => randomUUID());
    await store.writeFixes(ids.map((id, i) => ({ id, ...near(0.3 - i * 0.015, 0.01), beat: true })));
    for (const id of ids) await store.setStatus(id, 'AVAILABLE', { position: near(0.3 - ids.indexOf(id) * 0.015, 0.01), heartbeat: 'refresh' });
    const seenStatuses: string[] = [];
    let cursor = '0';
    do {
      const [next, pairs] = await store.scanStatuses(cursor, 7);
      seenStatuses.push(...pairs.map(([id]) => id));
      cursor = next;
    } while (cursor !== '0');
    expect(new Set(seenStatuses)).toEqual(new Set(ids));
    const seenGeo: string[] = [];
    do {
      const [next, members] = await store.scanGeo(cursor, 7);
      seenGeo.push(...members);
      cursor = next;
    } while (cursor !== '0');
    expect(new Set(seenGeo)).toEqual(new Set(ids));
    await eventually(async () => (await store.nearest(near(0.15, 0.01), 50_000, 50)).length === 40, 'all found', 5000);
  });

  it('when two hubs count a cluster-wide rate limit on the Redis Cluster, then the budget holds across them, each key on its own shard', async () => {
    const prefix = `pc${randomBytes(3).toString('hex')}:`;
    const limits = [];
    for (let i = 0; i < 2; i++) {
      const redis = createRedisClusterClients({ nodes: cluster.ports.map((port) => ({ host: '127.0.0.1', port })), commandTimeoutMs: 2000, logger });
      clients.push(redis);
      expect(await connectRedis(redis, 10_000)).toBe(true);
      limits.push(createRateLimits({ redis: redis.command, breaker: redis.breaker, breakerFor: redis.breakerFor, prefix, rules: { driverAction: { points: 3, seconds: 30 } } }));
    }
    const answers: (number | null)[] = [];
    for (const i of [0, 1, 0, 1]) answers.push(await limits[i].consume('driverAction', 'driver-a'));
    expect(answers.slice(0, 3)).toEqual([null, null, null]);
    expect(answers[3]).toBeGreaterThan(0);
    // Another key, likely on another shard, has its own budget.
    expect(await limits[1].consume('driverAction', 'driver-b')).toBeNull();
    // A batch (keys on several shards cannot share one script) counts each key in the same budget.
    const batch = await limits[0].consumeMany('driverAction', ['driver-a', 'driver-b', 'driver-c', 'driver-b']);
    expect(batch[0]).toBeGreaterThan(0);
    expect(batch.slice(1)).toEqual([null, null, null]);
    expect(await limits[1].consume('driverAction', 'driver-b')).toBeGreaterThan(0);
  });
});
