import type { Cluster } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DriverMoved } from '#shared/schemas.js';
import { cellIdOf } from '../src/presence/cells.js';
import { clusterPresenceKeys } from '../src/presence/presence-cluster.store.js';
import { type ChildHub, envFrom, spawnHub } from './support/child-hub.js';
import {
  api,
  connectSocket,
  createTestDatabase,
  type DriverClient,
  firstEvent,
  hasSharedPostgres,
  onDutyDriver,
  order,
  postWebhook,
  startCluster,
  type TestDatabase,
  type TestHub,
} from './support/hub.js';
import { eventually } from './support/net.js';
import { PrivateRedisCluster } from './support/redis-cluster.js';

const DEGREES = 0.25;
const PREFIX = 'rc:';
const keys = clusterPresenceKeys(PREFIX);
/** Each test works around a cell border of its own (latitude 40.5 is a row border at 0.25°). */
const border = (lng: number) => ({ lat: 40.5, lng });
const off = (p: { lat: number; lng: number }, dLat: number, dLng = 0) => ({ lat: p.lat + dLat, lng: p.lng + dLng });
const COMMAND_TIMEOUT_MS = 800;

type Driver = DriverClient & { id: string };

describe.skipIf(!hasSharedPostgres())('the hub on a three-master Redis Cluster', () => {
  let redisCluster: PrivateRedisCluster;
  let db: TestDatabase;
  let hubs: TestHub[];
  let direct: Cluster;
  const opened: { close(): void }[] = [];

  beforeAll(async () => {
    redisCluster = await new PrivateRedisCluster().start();
    direct = redisCluster.client();
    db = await createTestDatabase();
    hubs = await startCluster(db, 3, {
      REDIS_URL: '',
      REDIS_CLUSTER_NODES: redisCluster.seeds,
      REDIS_PREFIX: PREFIX,
      REDIS_CELL_DEGREES: String(DEGREES),
      REDIS_COMMAND_TIMEOUT_MS: String(COMMAND_TIMEOUT_MS),
      HEARTBEAT_TTL_SECONDS: '3',
    });
    for (const hub of hubs) await eventually(async () => (await health(hub)).status === 'ok', `${hub.config.NODE_ID} healthy`, 20_000);
  }, 90_000);

  afterAll(async () => {
    for (const c of opened) c.close();
    await Promise.all(hubs?.map((h) => h.stop()) ?? []);
    direct?.disconnect();
    await redisCluster?.stop();
    await db?.drop();
  });

  async function health(hub: { url: string }) {
    return (await api(hub, 'GET', '/health', undefined, null)).body;
  }

  async function driver(hub: TestHub, at: { lat: number; lng: number }, name: string): Promise<Driver> {
    const d = await onDutyDriver(hub, at, name);
    opened.push(d);
    return d;
  }

  /** Which cell sets hold a driver (cells given), read straight from the cluster. */
  async function setsHolding(id: string, cells: string[]): Promise<string[]> {
    const held: string[] = [];
    for (const cell of cells) if ((await direct.zscore(keys.cellGeo(cell), id)) !== null) held.push(cell);
    return held;
  }

  async function statusOf(id: string): Promise<string> {
    const drivers = (await api(hubs[0], 'GET', '/admin/drivers')).body.drivers as { id: string; status: string }[];
    return drivers.find((d) => d.id === id)!.status;
  }

  it('when the nearest driver is across a cell border on another node, then the order at the border goes to it and the job reaches its socket', async () => {
    const pickup = off(border(-3.2), -0.0005);
    const across = await driver(hubs[1], off(border(-3.2), 0.001), 'Across');
    const farther = await driver(hubs[2], off(border(-3.2), -0.01), 'Farther');
    const cells = [cellIdOf(off(border(-3.2), 0.001), DEGREES), cellIdOf(pickup, DEGREES)];
    expect(cells[0]).not.toBe(cells[1]);
    await eventually(async () => (await setsHolding(across.id, cells)).length === 1, 'the driver across the border in its cell set');
    const res = await postWebhook(hubs[0], '/events/seller-order-ready', order({ pickup }));
    expect(res.body).toMatchObject({ status: 'ASSIGNED', driverId: across.id });
    await eventually(() => across.assignments.length === 1, 'assignment pushed to the socket on node 1');
    // BUSY: in no cell set; the other one still in exactly its own.
    await eventually(async () => (await setsHolding(across.id, cells)).length === 0, 'the busy driver out of every set');
    expect(await setsHolding(farther.id, cells)).toEqual([cellIdOf(pickup, DEGREES)]);
    const metrics = await (await fetch(`${hubs[0].url}/metrics`)).text();
    expect(metrics).toMatch(/hub_assignments_total\{[^}]*source="redis"[^}]*\} [1-9]/);
  });

  it('when a driver drives back and forth across a cell border while orders arrive at the border on other nodes, then each order gets one driver, nobody holds two, and each driver is in at most one set', async () => {
    const line = border(-2.6);
    const cells = [cellIdOf(off(line, 0.001), DEGREES), cellIdOf(off(line, -0.001), DEGREES)];
    const crosser = await driver(hubs[1], off(line, 0.002), 'Crosser');
    const steady = await driver(hubs[2], off(line, -0.004), 'Steady');
    let step = 0;
    let driving = true;
    const drive = (async () => {
      while (driving) {
        step += 1;
        // A fix every few tens of milliseconds, alternating sides of the border.
        crosser.socket.emit('location', off(line, step % 2 === 0 ? 0.0015 : -0.0015));
        await new Promise((r) => setTimeout(r, 25));
      }
    })();
    const assigned: string[] = [];
    try {
      for (let i = 0; i < 6; i++) {
        const res = await postWebhook(hubs[i % 2 === 0 ? 0 : 2], '/events/seller-order-ready', order({ pickup: off(line, i % 2 === 0 ? 0.0003 : -0.0003) }));
        expect(res.status).toBe(200);
        expect(res.body.status).toBe('ASSIGNED');
        assigned.push(res.body.driverId);
        const holder = [crosser, steady].find((d) => d.id === res.body.driverId)!;
        const sets = await setsHolding(holder.id, cells);
        expect(sets.length).toBeLessThanOrEqual(1);
        // The job done: the driver is free again for the next order.
        await eventually(() => holder.assignments.some((a) => a.deliveryId === res.body.deliveryId), 'assignment pushed');
        // Whole answers compared, so a refusal shows its code.
        expect(await holder.emitAck('delivery:update', { deliveryId: res.body.deliveryId, status: 'PICKED_UP' })).toMatchObject({ ok: true });
        expect(await holder.emitAck('delivery:update', { deliveryId: res.body.deliveryId, status: 'DELIVERED' })).toMatchObject({ ok: true });
        for (const d of [crosser, steady]) expect((await setsHolding(d.id, cells)).length).toBeLessThanOrEqual(1);
      }
    } finally {
      driving = false;
      await drive;
    }
    // The crosser is the nearest to every pickup whenever it is free and placed; in the instant of
    // a move it is in no set (allowed: never in two), so the steady one may take some orders.
    expect(assigned.filter((id) => id === crosser.id).length).toBeGreaterThanOrEqual(1);
    await eventually(async () => {
      const held = await Promise.all([crosser, steady].map((d) => setsHolding(d.id, cells)));
      return held.every((sets) => sets.length === 1);
    }, 'both free drivers in exactly one cell set');
  });

  it('when a driver on node 0 moves, then a map on node 2 sees it through the sharded adapter', async () => {
    const moving = await driver(hubs[0], off(border(-2), 0.01), 'Mapped');
    const token = (await api<{ token: string }>(hubs[2], 'POST', '/admin/tokens', { role: 'dispatcher', subject: 'cluster-map' })).body.token;
    const socket = connectSocket(hubs[2], '/dispatch', { token });
    opened.push({ close: () => socket.disconnect() });
    const moves: DriverMoved[] = [];
    socket.on('drivers:moved', (batch: DriverMoved[]) => moves.push(...batch));
    await firstEvent(socket, 'snapshot');
    await eventually(async () => {
      await moving.emitAck('location', off(border(-2), 0.02));
      return moves.some((m) => m.id === moving.id && Math.abs(m.lat - (border(-2).lat + 0.02)) < 1e-9);
    }, 'the move seen on node 2');
  });

  it('when the node holding a driver is killed (SIGKILL), then the heartbeat expires, the ghost leaves its cell set and is never assigned', async () => {
    let child: ChildHub | null = await spawnHub(envFrom(hubs[0].config, { NODE_ID: 'doomed' }));
    try {
      // envFrom names REDIS_URL; the cluster seeds and cell size come from the test hub's config.
      const place = off(border(-1.4), 0.001);
      const ghost = await driver({ ...hubs[0], url: child.url } as TestHub, place, 'Ghost');
      const cell = cellIdOf(place, DEGREES);
      await eventually(async () => (await setsHolding(ghost.id, [cell])).length === 1, 'ghost placed');
      await child.kill('SIGKILL');
      child = null;
      ghost.close();
      await eventually(async () => (await statusOf(ghost.id)) === 'OFFLINE', 'ghost swept OFFLINE', 20_000);
      await eventually(async () => (await setsHolding(ghost.id, [cell])).length === 0, 'ghost out of its cell set', 20_000);
      const res = await postWebhook(hubs[1], '/events/seller-order-ready', order({ pickup: place }));
      expect(res.body.driverId ?? null).not.toBe(ghost.id);
    } catch (err) {
      if (child) console.error(child.logs.slice(-30).join('\n'));
      throw err;
    } finally {
      await child?.kill('SIGKILL');
    }
  }, 90_000);

  it('when the cluster drifts from PostgreSQL (a lost member, a ghost PostgreSQL calls OFFLINE, a stray in a neighbour cell), then the reconcile and the sweep put it right', async () => {
    const place = off(border(-1.1), 0.002);
    const cell = cellIdOf(place, DEGREES);
    const neighbour = cellIdOf(off(border(-1.1), -0.002), DEGREES);
    const free = await driver(hubs[0], place, 'Drift free');
    await eventually(async () => (await setsHolding(free.id, [cell])).length === 1, 'free driver placed');
    // A lost member: gone from its cell while its record still places it there.
    await direct.zrem(keys.cellGeo(cell), free.id);
    // A stray: the same driver written into the neighbour cell, which its record does not name.
    await direct.geoadd(keys.cellGeo(neighbour), place.lng, place.lat - 0.004, free.id);
    // A ghost: a driver PostgreSQL calls OFFLINE that the cluster believes free, in the cell.
    const ghost = (await api<{ id: string }>(hubs[0], 'POST', '/admin/drivers', { name: 'Drift ghost' })).body;
    const b = keys.bucketOf(ghost.id);
    await direct.hset(keys.status(b), ghost.id, 'AVAILABLE');
    await direct.hset(keys.place(b), ghost.id, `${Date.now() * 1000}|${cell}`);
    await direct.geoadd(keys.cellGeo(cell), place.lng, place.lat, ghost.id);
    await eventually(async () => (await setsHolding(free.id, [cell, neighbour])).join() === cell, 'the free driver back in its cell only', 15_000);
    await eventually(async () => (await setsHolding(ghost.id, [cell, neighbour])).length === 0, 'the ghost out of every set', 15_000);
    expect(await direct.hget(keys.status(b), ghost.id)).toBe('OFFLINE');
  });

  it('when the shard of a cell is killed and restarted empty, then orders there are assigned from PostgreSQL meanwhile and the cell is rebuilt', async () => {
    const place = off(border(-0.8), -0.002);
    const cell = cellIdOf(place, DEGREES);
    const shard = await redisCluster.nodeOf(keys.cellGeo(cell));
    const here = [await driver(hubs[0], place, 'Shard A'), await driver(hubs[1], off(place, -0.003), 'Shard B'), await driver(hubs[2], off(place, -0.006), 'Shard C')];
    await eventually(async () => (await direct.zcard(keys.cellGeo(cell))) === 3, 'three drivers in the cell');
    await redisCluster.kill(shard);
    const during: { status: number; body: any; ms: number }[] = [];
    for (let i = 0; i < 2; i++) {
      const started = performance.now();
      const res = await postWebhook(hubs[i], '/events/seller-order-ready', order({ pickup: place }));
      during.push({ ...res, ms: performance.now() - started });
    }
    for (const r of during) {
      expect(r.body.status).toBe('ASSIGNED');
      expect(r.ms).toBeLessThan(COMMAND_TIMEOUT_MS * 6 + 2000);
    }
    expect(new Set(during.map((r) => r.body.driverId)).size).toBe(2);
    // The cell's shard was away: hub 0 answered from PostgreSQL rather than from a partial picture.
    const metrics = await (await fetch(`${hubs[0].url}/metrics`)).text();
    expect(metrics).toMatch(/hub_assignments_total\{[^}]*source="postgres"[^}]*\} [1-9]/);
    await eventually(async () => (await health(hubs[0])).status === 'degraded', 'degraded while the shard is down', 15_000);
    // Rate-limited driver actions (counted in Redis, each key on its shard) still answer, in time.
    for (const d of here.filter((x) => !during.some((r) => r.body.driverId === x.id))) {
      const started = performance.now();
      expect((await d.emitAck('status', { status: 'AVAILABLE' })).ok).toBe(true);
      expect(performance.now() - started).toBeLessThan(COMMAND_TIMEOUT_MS * 6 + 2000);
    }
    await redisCluster.restart(shard);
    for (const hub of hubs) await eventually(async () => (await health(hub)).status === 'ok', `${hub.config.NODE_ID} healthy again`, 30_000);
    const free = here.filter((d) => !during.some((r) => r.body.driverId === d.id));
    await eventually(async () => JSON.stringify(await direct.zrange(keys.cellGeo(cell), '0', '-1')) === JSON.stringify(free.map((d) => d.id)), 'the free driver back in the rebuilt cell', 20_000);
    const after = await postWebhook(hubs[2], '/events/seller-order-ready', order({ pickup: place }));
    expect(after.body).toMatchObject({ status: 'ASSIGNED', driverId: free[0].id });
    const deliveries = (await api(hubs[0], 'GET', '/admin/deliveries?limit=1000')).body.deliveries as { driverId: string | null; status: string }[];
    const active = deliveries.filter((d) => d.status === 'ASSIGNED');
    expect(new Set(active.map((d) => d.driverId)).size).toBe(active.length);
  }, 90_000);
});
