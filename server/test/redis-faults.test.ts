import { Redis } from 'ioredis';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { presenceKeys } from '../src/presence/presence.store.js';
import { PrivateRedis, TcpProxy } from './support/faults.js';
import {
  api,
  createDriver,
  hasSharedPostgres,
  createTestDatabase,
  type DriverClient,
  onDutyDriver,
  order,
  postWebhook,
  startTestHub,
  type TestDatabase,
  type TestHub,
  testConfig,
} from './support/hub.js';
import { eventually } from './support/net.js';

const PLACE = { lat: 40.4168, lng: -3.7038 };
const COMMAND_TIMEOUT_MS = 300;
/** A webhook may spend a few command timeouts before the circuit opens; anything slower is a hang. */
const REQUEST_BOUND_MS = COMMAND_TIMEOUT_MS * 4 + 1000;

describe('redis down, slow or wiped', () => {
  let db: TestDatabase;
  let redisServer: PrivateRedis;
  let proxy: TcpProxy;
  let hub: TestHub;
  let drivers: (DriverClient & { id: string })[];
  let pinger: NodeJS.Timeout;
  let direct: Redis;
  const prefix = 'faults:';
  const keys = presenceKeys(prefix);

  beforeEach(async () => {
    db = await createTestDatabase();
    redisServer = new PrivateRedis();
    await redisServer.start();
    proxy = new TcpProxy(redisServer.port);
    await proxy.start();
    hub = await startTestHub(
      testConfig(db, {
        REDIS_URL: `redis://127.0.0.1:${proxy.port}`,
        REDIS_PREFIX: prefix,
        REDIS_COMMAND_TIMEOUT_MS: String(COMMAND_TIMEOUT_MS),
        HEARTBEAT_TTL_SECONDS: '10',
      }),
    );
    direct = new Redis(redisServer.url, { maxRetriesPerRequest: 1, retryStrategy: () => 100 });
    drivers = [];
    for (let i = 0; i < 6; i++) drivers.push(await onDutyDriver(hub, { lat: PLACE.lat + i * 0.001, lng: PLACE.lng }, `F${i}`));
    // Drivers keep pinging through every fault, as real apps do.
    pinger = setInterval(() => {
      for (const [i, d] of drivers.entries()) d.socket.emit('location', { lat: PLACE.lat + i * 0.001, lng: PLACE.lng + Math.random() * 1e-4 });
    }, 100);
  });

  afterEach(async () => {
    clearInterval(pinger);
    for (const d of drivers ?? []) d.close();
    direct?.disconnect();
    await hub?.stop();
    await proxy?.stop();
    await redisServer?.kill();
    await db?.drop();
  });

  async function sendOrders(count: number): Promise<{ status: number; body: any; ms: number }[]> {
    const replies = [];
    for (let i = 0; i < count; i++) {
      const started = performance.now();
      const res = await postWebhook(hub, '/events/seller-order-ready', order({ pickup: PLACE }));
      replies.push({ ...res, ms: performance.now() - started });
    }
    return replies;
  }

  async function health() {
    return (await api(hub, 'GET', '/health', undefined, null)).body;
  }

  /** Invariants after any fault: nothing lost or doubled, and Redis holds only AVAILABLE drivers. */
  async function checkInvariants(expectedOrders: number) {
    const all = (await api(hub, 'GET', '/admin/deliveries?limit=1000')).body.deliveries as any[];
    expect(all).toHaveLength(expectedOrders);
    expect(new Set(all.map((d) => d.sellerOrderId)).size).toBe(expectedOrders);
    const active = all.filter((d) => d.status === 'ASSIGNED');
    expect(new Set(active.map((d) => d.driverId)).size).toBe(active.length);
    for (const d of all) expect(['ASSIGNED', 'PENDING']).toContain(d.status);
    const pg = (await api(hub, 'GET', '/admin/drivers')).body.drivers as any[];
    const available = pg.filter((d) => d.status === 'AVAILABLE').map((d) => d.id).sort();
    await eventually(async () => {
      const geo = (await direct.zrange(keys.geo, '0', '-1')).sort();
      return JSON.stringify(geo) === JSON.stringify(available);
    }, 'drivers:geo equals the AVAILABLE drivers', 10_000);
    for (const d of active) expect(pg.find((x) => x.id === d.driverId).status).toBe('BUSY');
  }

  function expectBounded(replies: { status: number; ms: number }[]) {
    for (const r of replies) {
      expect([200, 202]).toContain(r.status);
      expect(r.ms).toBeLessThan(REQUEST_BOUND_MS);
    }
  }

  const assignedFrom = (replies: { body: any }[]) => replies.filter((r) => r.body.status === 'ASSIGNED').length;

  it('when Redis is killed mid-load and comes back empty, then assignment goes on from PostgreSQL, health says degraded, and Redis is rebuilt', async () => {
    const before = await sendOrders(2);
    expect(assignedFrom(before)).toBe(2);
    await redisServer.kill();
    await eventually(async () => (await health()).status === 'degraded', 'degraded health');
    expect((await health()).redis).toBe('down');
    const during = await sendOrders(2);
    expectBounded(during);
    expect(assignedFrom(during)).toBe(2);
    const metrics = await (await fetch(`${hub.url}/metrics`)).text();
    expect(metrics).toMatch(/hub_assignments_total\{[^}]*source="postgres"[^}]*\} 2/);
    await redisServer.start(redisServer.port);
    await eventually(async () => (await health()).status === 'ok', 'health ok again', 15_000);
    const after = await sendOrders(4);
    expectBounded(after);
    expect(assignedFrom(after)).toBe(2);
    await checkInvariants(8);
  });

  it('when Redis is black-holed (connection open, no replies), then no request hangs and assignment goes on from PostgreSQL', async () => {
    expect(assignedFrom(await sendOrders(1))).toBe(1);
    proxy.set('blackhole');
    const during = await sendOrders(3);
    expectBounded(during);
    expect(assignedFrom(during)).toBe(3);
    expect((await health()).status).toBe('degraded');
    proxy.set('refuse');
    proxy.set('pass');
    await eventually(async () => (await health()).status === 'ok', 'health ok again', 15_000);
    const after = await sendOrders(2);
    expectBounded(after);
    expect(assignedFrom(after)).toBe(2);
    await checkInvariants(6);
  });

  it('when Redis is flushed, then the hub notices and rebuilds drivers:status and drivers:geo from PostgreSQL', async () => {
    expect(assignedFrom(await sendOrders(2))).toBe(2);
    await direct.flushall();
    await eventually(async () => (await direct.zcard(keys.geo)) === 4, 'geo rebuilt', 10_000);
    expect(Object.values(await direct.hgetall(keys.status)).filter((s) => s === 'BUSY')).toHaveLength(2);
    const after = await sendOrders(2);
    expect(assignedFrom(after)).toBe(2);
    await checkInvariants(4);
  });

  it('when Redis drifts from PostgreSQL (an entry lost, a BUSY driver in GEO), then the reconcile pass puts it right', async () => {
    const replies = await sendOrders(1);
    const busyId = replies[0].body.driverId;
    const freeId = drivers.find((d) => d.id !== busyId)!.id;
    // A driver PostgreSQL calls OFFLINE that Redis believes free: only the Redis -> PostgreSQL walk finds it.
    const ghost = await createDriver(hub, 'Ghost');
    await direct.hset(keys.status, ghost.id, 'AVAILABLE');
    await direct.geoadd(keys.geo, PLACE.lng, PLACE.lat, ghost.id);
    await direct.geoadd(keys.geo, PLACE.lng, PLACE.lat, busyId);
    await direct.hdel(keys.status, freeId);
    await direct.zrem(keys.geo, freeId);
    await eventually(async () => (await direct.geopos(keys.geo, busyId))[0] === null, 'busy driver out of geo', 10_000);
    await eventually(async () => (await direct.hget(keys.status, freeId)) === 'AVAILABLE', 'free driver status back', 10_000);
    await eventually(async () => (await direct.geopos(keys.geo, freeId))[0] !== null, 'free driver back in geo', 10_000);
    await eventually(async () => (await direct.geopos(keys.geo, ghost.id))[0] === null, 'offline ghost out of geo', 10_000);
    expect(await direct.hget(keys.status, ghost.id)).toBe('OFFLINE');
    await checkInvariants(1);
  });

  it.skipIf(!hasSharedPostgres())('when Redis restarts empty, then cross-node broadcasts and pushes work again', async () => {
    const other = await startTestHub({ ...hub.config, NODE_ID: 'other-node' });
    try {
      for (const d of drivers) await d.emitAck('status', { status: 'OFFLINE' });
      const remote = await onDutyDriver(other, PLACE, 'Remote');
      await redisServer.kill();
      await redisServer.start(redisServer.port);
      await eventually(async () => (await health()).status === 'ok', 'health ok', 15_000);
      await eventually(async () => (await direct.zcard(keys.geo)) === 1, 'remote driver back in geo', 10_000);
      const replies = await sendOrders(1);
      expect(replies[0].body).toMatchObject({ status: 'ASSIGNED', driverId: remote.id });
      // The webhook landed on this node; the driver's socket lives on the other one.
      await eventually(() => remote.assignments.length === 1, 'assignment pushed across nodes after restart');
      await checkInvariants(1);
      remote.close();
    } finally {
      await other.stop();
    }
  });
});

describe('redis absent at start', () => {
  it('when Redis is down at start, then the hub starts degraded and goes back to the fast path when Redis appears', async () => {
    const db = await createTestDatabase();
    const redisServer = new PrivateRedis();
    const port = (await (await import('./support/net.js')).freePort());
    const hub = await startTestHub(testConfig(db, { REDIS_URL: `redis://127.0.0.1:${port}`, REDIS_PREFIX: 'late:' }));
    try {
      expect((await api(hub, 'GET', '/health', undefined, null)).body).toMatchObject({ status: 'degraded', redis: 'down' });
      const driver = await onDutyDriver(hub, PLACE, 'Early');
      const first = await postWebhook(hub, '/events/seller-order-ready', order({ pickup: PLACE }));
      expect(first.body).toMatchObject({ status: 'ASSIGNED', driverId: driver.id });
      await redisServer.start(port);
      await eventually(async () => (await api(hub, 'GET', '/health', undefined, null)).body.status === 'ok', 'health ok', 20_000);
      const direct = new Redis(redisServer.url);
      expect(await direct.hget(presenceKeys('late:').status, driver.id)).toBe('BUSY');
      direct.disconnect();
      driver.close();
    } finally {
      await hub.stop();
      await redisServer.kill();
      await db.drop();
    }
  });
});

describe.skipIf(!hasSharedPostgres())('postgresql unavailable', () => {
  it('when PostgreSQL is cut, then webhooks get 503, sockets stay up, nothing is half-written, and it recovers', async () => {
    const db = await createTestDatabase();
    const pgProxy = new TcpProxy(5432);
    await pgProxy.start();
    const url = new URL(db.url ?? 'postgres://postgres@127.0.0.1:5432/postgres');
    url.port = String(pgProxy.port);
    const hub = await startTestHub(testConfig({ ...db, url: db.url ? url.toString() : undefined }));
    try {
      const driver = await onDutyDriver(hub, PLACE, 'PgDown');
      pgProxy.set('refuse');
      const res = await postWebhook(hub, '/events/seller-order-ready', order({ pickup: PLACE }));
      expect(res.status).toBe(503);
      expect(res.body.error.code).toBe('SERVICE_UNAVAILABLE');
      const h = await api(hub, 'GET', '/health', undefined, null);
      expect(h.status).toBe(503);
      expect(h.body.postgres).toBe('down');
      expect(driver.socket.connected).toBe(true);
      pgProxy.set('pass');
      await eventually(async () => (await api(hub, 'GET', '/health', undefined, null)).status === 200, 'postgres back', 15_000);
      const o = order({ pickup: PLACE });
      const ok = await postWebhook(hub, '/events/seller-order-ready', o);
      expect(ok.status).toBe(200);
      expect(ok.body.driverId).toBe(driver.id);
      const all = (await api(hub, 'GET', '/admin/deliveries')).body.deliveries;
      expect(all).toHaveLength(1);
      const detail = (await api(hub, 'GET', `/admin/deliveries/${ok.body.deliveryId}`)).body;
      expect(detail.events.map((e: any) => e.to)).toEqual(['PENDING', 'ASSIGNED']);
      expect(driver.socket.connected).toBe(true);
      driver.close();
    } finally {
      await hub.stop();
      await pgProxy.stop();
      await db.drop();
    }
  });
});
