import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { SignJWT } from 'jose';
import postgres from 'postgres';
import type { Socket } from 'socket.io-client';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { EdgeOptions } from '../src/app.js';
import type { Config } from '../src/platform/config.js';
import { createLogger } from '../src/platform/logger.js';
import { createTokenService, TOKEN_AUDIENCE, TOKEN_ISSUER } from '../src/platform/tokens.js';
import { signWebhook } from '#shared/webhooks.js';
import { startHub } from '../src/main.js';
import { proxyToSharedRedis, type TcpProxy } from './support/faults.js';
import {
  ADMIN_TOKEN,
  api,
  connectDriver,
  connectError,
  connectSocket,
  createDriver,
  createTestDatabase,
  type DriverClient,
  firstEvent,
  hasSharedPostgres,
  JWT_SECRET,
  onDutyDriver,
  order,
  postWebhook,
  type TestDatabase,
  type TestHub,
  testConfig,
  WEBHOOK_SECRET,
} from './support/hub.js';
import { type LogSink, logSink } from './support/log-sink.js';
import { eventually } from './support/net.js';

const BERLIN = { lat: 52.52, lng: 13.405 };
const READY = '/events/seller-order-ready';
const tokens = createTokenService(JWT_SECRET);

type Sink = LogSink;

async function startHubWith(config: Config, opts: { edge?: EdgeOptions; sink?: Sink } = {}): Promise<TestHub> {
  const logger = createLogger({ level: opts.sink ? 'trace' : config.LOG_LEVEL, nodeId: config.NODE_ID }, opts.sink?.stream);
  const hub = await startHub(config, logger, { edge: opts.edge });
  return { ...hub, url: `http://127.0.0.1:${hub.port}` };
}

async function dispatcherToken(hub: TestHub, subject = `disp-${randomUUID()}`): Promise<string> {
  const res = await api<{ token: string }>(hub, 'POST', '/admin/tokens', { role: 'dispatcher', subject });
  expect(res.status).toBe(200);
  return res.body.token;
}

async function connectDispatcher(hub: TestHub, token: string, extra: Record<string, unknown> = {}): Promise<Socket> {
  const socket = connectSocket(hub, '/dispatch', { token }, extra);
  await firstEvent(socket, 'snapshot');
  return socket;
}

const emitAck = (socket: Socket, event: string, payload: unknown): Promise<any> => socket.timeout(10_000).emitWithAck(event, payload);
const closed = (socket: Socket) => new Promise<string>((resolve) => socket.once('disconnect', resolve));
const metricsText = async (hub: TestHub) => (await fetch(`${hub.url}/metrics`)).text();
const metricValue = (text: string, name: string, labels: string): number => {
  const line = text.split('\n').find((l) => l.startsWith(`${name}{`) && l.includes(labels));
  return line ? Number(line.split(' ').pop()) : 0;
};

describe('roles and identity come from the token', () => {
  let db: TestDatabase;
  let hub: TestHub;
  const opened: { close(): void }[] = [];

  beforeAll(async () => {
    db = await createTestDatabase();
    hub = await startHubWith(testConfig(db));
  });
  afterEach(() => {
    for (const c of opened.splice(0)) c.close();
  });
  afterAll(async () => {
    await hub?.stop();
    await db?.drop();
  });

  it('when a driver token tries to join /dispatch, then the handshake is refused with FORBIDDEN', async () => {
    const { token } = await createDriver(hub, 'Nosy');
    const refused = await connectError(connectSocket(hub, '/dispatch', { token }));
    expect(refused.data.code).toBe('FORBIDDEN');
  });

  it('when a dispatcher token tries to join /drivers, then FORBIDDEN; and driver events sent on /dispatch get a FORBIDDEN ack and change nothing', async () => {
    const token = await dispatcherToken(hub);
    expect((await connectError(connectSocket(hub, '/drivers', { token }))).data.code).toBe('FORBIDDEN');

    const driver = await onDutyDriver(hub, BERLIN, 'Bystander');
    opened.push(driver);
    const socket = await connectDispatcher(hub, token);
    opened.push({ close: () => socket.disconnect() });
    const before = (await api(hub, 'GET', '/admin/drivers')).body.drivers.find((d: any) => d.id === driver.id);
    for (const [event, payload] of [
      ['location', { lat: 1, lng: 1 }],
      ['status', { status: 'OFFLINE' }],
      ['delivery:update', { deliveryId: randomUUID(), status: 'DELIVERED' }],
      ['error', { boom: true }],
    ] as const) {
      const ack = await emitAck(socket, event, payload);
      expect(ack, event).toMatchObject({ ok: false, error: { code: 'FORBIDDEN' } });
    }
    await new Promise((r) => setTimeout(r, 300)); // longer than a position flush
    const after = (await api(hub, 'GET', '/admin/drivers')).body.drivers.find((d: any) => d.id === driver.id);
    expect(after).toMatchObject({ status: before.status, lat: before.lat, lng: before.lng });
    expect(socket.connected).toBe(true);
  });

  it('when a token arrives in the query string, then the handshake is refused even if the auth token is good', async () => {
    const { token } = await createDriver(hub, 'Query');
    const refused = await connectError(connectSocket(hub, '/drivers', { token }, { query: { token } }));
    expect(refused.data.code).toBe('TOKEN_INVALID');
  });

  it('when an admin route is called without a token, with a wrong one, a driver or a dispatcher token, then only the admin token writes and dispatchers only read (and act on deliveries)', async () => {
    const driver = await createDriver(hub, 'Matrix');
    const dispatcher = await dispatcherToken(hub);
    const otherKey = new TextEncoder().encode('another-secret-another-secret-another-secret');
    const foreignAdmin = await new SignJWT({ role: 'admin' }).setProtectedHeader({ alg: 'HS256' }).setIssuer(TOKEN_ISSUER).setAudience(TOKEN_AUDIENCE).setSubject('x').setExpirationTime('1h').sign(otherKey);
    const expiredDispatcher = await tokens.issue('dispatcher', 'late', { ttlSeconds: -60 });
    const routes: { method: string; path: string; body?: unknown; dispatcherMay: boolean }[] = [
      { method: 'POST', path: '/admin/drivers', body: { name: 'Sneaky' }, dispatcherMay: false },
      { method: 'POST', path: '/admin/tokens', body: { role: 'dispatcher', subject: 'me' }, dispatcherMay: false },
      { method: 'GET', path: '/admin/drivers', dispatcherMay: true },
      { method: 'GET', path: '/admin/deliveries', dispatcherMay: true },
      { method: 'GET', path: `/admin/deliveries/${randomUUID()}`, dispatcherMay: true },
      { method: 'POST', path: `/admin/deliveries/${randomUUID()}/cancel`, body: { reason: 'x' }, dispatcherMay: true },
      { method: 'POST', path: `/admin/deliveries/${randomUUID()}/redispatch`, dispatcherMay: true },
      { method: 'GET', path: '/admin/outbox/dead', dispatcherMay: false },
      { method: 'POST', path: `/admin/outbox/${randomUUID()}/replay`, dispatcherMay: false },
    ];
    const driversBefore = (await api(hub, 'GET', '/admin/drivers')).body.drivers.length;
    for (const route of routes) {
      const call = (token: string | null) => api(hub, route.method, route.path, route.body, token);
      const label = `${route.method} ${route.path}`;
      expect((await call(null)).status, `${label} without a token`).toBe(401);
      expect((await call('not-the-admin-token-at-all')).status, `${label} with a wrong token`).toBe(401);
      expect((await call(`${ADMIN_TOKEN}x`)).status, `${label} with an almost-admin token`).toBe(401);
      expect((await call(foreignAdmin)).status, `${label} with an admin JWT signed elsewhere`).toBe(401);
      expect((await call(expiredDispatcher)).status, `${label} with an expired token`).toBe(401);
      expect((await call(driver.token)).status, `${label} with a driver token`).toBe(403);
      const asDispatcher = await call(dispatcher);
      if (route.dispatcherMay) expect([200, 404], `${label} as dispatcher`).toContain(asDispatcher.status);
      else expect(asDispatcher.status, `${label} as dispatcher`).toBe(403);
      expect([200, 201, 404], `${label} as admin`).toContain((await call(ADMIN_TOKEN)).status);
    }
    // The only driver written is the admin's own call.
    expect((await api(hub, 'GET', '/admin/drivers')).body.drivers.length).toBe(driversBefore + 1);
    const malformed = await fetch(`${hub.url}/admin/drivers`, { headers: { authorization: `Basic ${ADMIN_TOKEN}` } });
    expect(malformed.status).toBe(401);
  });

  it('when a driver names another driver in a payload, then the strict schemas refuse it and the other driver does not move', async () => {
    const victim = await onDutyDriver(hub, BERLIN, 'Victim');
    const mallory = await onDutyDriver(hub, { lat: 48.85, lng: 2.35 }, 'Mallory');
    opened.push(victim, mallory);
    const forged = [
      ['location', { lat: 40, lng: -3, driverId: victim.id }],
      ['location', [{ lat: 40, lng: -3, id: victim.id }]],
      ['location', { lat: 40, lng: -3, sub: victim.id, role: 'admin' }],
      ['status', { status: 'OFFLINE', driverId: victim.id }],
      ['delivery:update', { deliveryId: randomUUID(), status: 'DELIVERED', driverId: victim.id }],
    ] as const;
    for (const [event, payload] of forged) {
      const ack = await mallory.emitAck(event, payload);
      expect(ack, JSON.stringify(payload)).toMatchObject({ ok: false, error: { code: 'VALIDATION_FAILED' } });
    }
    await new Promise((r) => setTimeout(r, 300));
    const row = (await api(hub, 'GET', '/admin/drivers')).body.drivers.find((d: any) => d.id === victim.id);
    expect(row).toMatchObject({ status: 'AVAILABLE', lat: BERLIN.lat, lng: BERLIN.lng });
  });

  it('when a driver reports on a delivery that is not its own, then FORBIDDEN and the delivery does not change', async () => {
    const owner = await onDutyDriver(hub, { lat: 35.68, lng: 139.69 }, 'Owner');
    opened.push(owner);
    const reply = await postWebhook(hub, READY, order({ pickup: { lat: 35.68, lng: 139.69 } }));
    expect(reply.body).toMatchObject({ status: 'ASSIGNED', driverId: owner.id });
    const { token } = await createDriver(hub, 'Thief');
    const thief = await connectDriver(hub, token);
    opened.push(thief);
    for (const status of ['PICKED_UP', 'DELIVERED'] as const) {
      const ack = await thief.emitAck('delivery:update', { deliveryId: reply.body.deliveryId, status });
      expect(ack).toMatchObject({ ok: false, error: { code: 'FORBIDDEN' } });
    }
    const ack = await thief.emitAck('delivery:update', { deliveryId: reply.body.deliveryId, status: 'FAILED', reason: 'mine now' });
    expect(ack).toMatchObject({ ok: false, error: { code: 'FORBIDDEN' } });
    const delivery = await api(hub, 'GET', `/admin/deliveries/${reply.body.deliveryId}`);
    expect(delivery.body).toMatchObject({ status: 'ASSIGNED', driverId: owner.id });
  });
});

describe('text the database cannot store', () => {
  let db: TestDatabase;
  let hub: TestHub;

  beforeAll(async () => {
    db = await createTestDatabase();
    hub = await startHubWith(testConfig(db));
  });
  afterAll(async () => {
    await hub?.stop();
    await db?.drop();
  });

  it('when a body or payload carries a NUL or a lone surrogate, then VALIDATION_FAILED names the field instead of a 500, and nothing is written', async () => {
    const SYDNEY = { lat: -33.86, lng: 151.2 };
    const driver = await onDutyDriver(hub, SYDNEY, 'Careful');
    const assigned = await postWebhook(hub, READY, order({ pickup: SYDNEY }));
    expect(assigned.body).toMatchObject({ status: 'ASSIGNED', driverId: driver.id });
    const deliveriesBefore = (await api(hub, 'GET', '/admin/deliveries')).body.deliveries.length;

    for (const bad of [{ notes: 'a\u0000b' }, { customer: { name: '\ud800' } }, { sellerOrderId: 'so-\udfff' }]) {
      const res = await postWebhook(hub, READY, { ...order({ pickup: SYDNEY }), ...bad });
      expect(res.status, JSON.stringify(bad)).toBe(400);
      expect(res.body.error.code).toBe('VALIDATION_FAILED');
    }
    const cancel = await postWebhook(hub, '/events/seller-order-cancelled', { sellerOrderId: assigned.body.sellerOrderId, reason: 'gone\u0000' });
    expect(cancel.status).toBe(400);
    const named = await api(hub, 'POST', '/admin/drivers', { name: 'Nul\u0000Driver' });
    expect(named.status).toBe(400);
    expect(named.body.error.details[0].path).toBe('name');

    const ack = await driver.emitAck('delivery:update', { deliveryId: assigned.body.deliveryId, status: 'FAILED', reason: 'flat tyre\u0000' });
    expect(ack).toMatchObject({ ok: false, error: { code: 'VALIDATION_FAILED' } });
    expect((await api(hub, 'GET', `/admin/deliveries/${assigned.body.deliveryId}`)).body.status).toBe('ASSIGNED');
    expect((await api(hub, 'GET', '/admin/deliveries')).body.deliveries.length).toBe(deliveriesBefore);
    // Unusual but well-formed text is fine.
    const rtl = await postWebhook(hub, READY, { ...order({ pickup: SYDNEY }), notes: '\u202eright-to-left \u200b zero-width 🏳️‍🌈 𝒳' });
    expect(rtl.status).toBeLessThan(300);
    driver.close();
  });

  it('when a signed webhook body starts with a byte order mark or holds bad UTF-8, then the signature still checks against the bytes sent and the body is a 400', async () => {
    const sign = (body: Buffer) => signWebhook(WEBHOOK_SECRET, `msg_${randomUUID()}`, Date.now() / 1000, body);
    for (const body of [Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from('{}')]), Buffer.from([0x7b, 0x22, 0xff, 0xfe, 0x22, 0x7d])]) {
      const res = await fetch(`${hub.url}${READY}`, { method: 'POST', headers: { 'content-type': 'application/json', ...sign(body) }, body });
      expect(res.status).toBe(400);
      expect(((await res.json()) as any).error.code).toBe('VALIDATION_FAILED');
    }
  });
});

describe('long-lived sockets are checked again', () => {
  let db: TestDatabase;
  let hub: TestHub;

  beforeAll(async () => {
    db = await createTestDatabase();
    hub = await startHubWith(testConfig(db), { edge: { tokenRecheckMs: 200 } });
  });
  afterAll(async () => {
    await hub?.stop();
    await db?.drop();
  });

  it('when a driver or dispatcher token expires while its socket is open, then the socket is closed and cannot come back with it', async () => {
    const { id } = await createDriver(hub, 'Expiring');
    const driverToken = await tokens.issue('driver', id, { ttlSeconds: 2 });
    const dispatcher = await tokens.issue('dispatcher', 'short-shift', { ttlSeconds: 2 });
    const driver = await connectDriver(hub, driverToken);
    const map = await connectDispatcher(hub, dispatcher);
    const started = Date.now();
    const [driverReason, mapReason] = await Promise.all([closed(driver.socket), closed(map)]);
    expect(driverReason).toBe('io server disconnect');
    expect(mapReason).toBe('io server disconnect');
    expect(Date.now() - started).toBeLessThan(4000);
    expect((await connectError(connectSocket(hub, '/drivers', { token: driverToken }))).data.code).toBe('TOKEN_EXPIRED');
  });

  it('when a token is still valid, then the recheck leaves its socket alone', async () => {
    const { token } = await createDriver(hub, 'Steady');
    const driver = await connectDriver(hub, token);
    await new Promise((r) => setTimeout(r, 700));
    expect(driver.socket.connected).toBe(true);
    expect((await driver.emitAck('location', BERLIN)).ok).toBe(true);
    driver.close();
  });

  it.skipIf(!hasSharedPostgres())('when a driver row is deleted while its socket is open, then the socket is closed', async () => {
    const { id, token } = await createDriver(hub, 'Removed');
    const driver = await connectDriver(hub, token);
    const gone = closed(driver.socket);
    const sql = postgres(db.url!, { max: 1, onnotice: () => {} });
    try {
      await sql`delete from drivers where id = ${id}`;
    } finally {
      await sql.end();
    }
    expect(await gone).toBe('io server disconnect');
    expect((await fetch(`${hub.url}/health`)).status).toBe(200);
  });

  it('when the admin revokes the tokens of a driver, then its open socket closes, the old token is refused, and the new one works', async () => {
    const { id, token } = await createDriver(hub, 'Stolen phone');
    const driver = await connectDriver(hub, token);
    const gone = closed(driver.socket);
    expect((await api(hub, 'POST', `/admin/drivers/${id}/revoke-tokens`)).status).toBe(200);
    expect(await gone).toBe('io server disconnect');
    const refused = await connectError(connectSocket(hub, '/drivers', { token }));
    expect(refused.data).toMatchObject({ code: 'TOKEN_INVALID', message: 'token revoked' });
    const fresh = (await api(hub, 'POST', '/admin/tokens', { role: 'driver', subject: id })).body.token;
    const again = await connectDriver(hub, fresh);
    expect(again.session.driverId).toBe(id);
    again.close();
    expect((await api(hub, 'POST', '/admin/drivers/00000000-0000-4000-8000-000000000000/revoke-tokens')).status).toBe(404);
    expect((await api(hub, 'POST', `/admin/drivers/${id}/revoke-tokens`, undefined, null)).status).toBe(401);
  });
});

describe('rate limits', () => {
  let db: TestDatabase;
  let hub: TestHub;
  let sink: Sink;

  beforeAll(async () => {
    db = await createTestDatabase();
    sink = logSink();
    hub = await startHubWith(testConfig(db), { sink });
  });
  afterAll(async () => {
    await hub?.stop();
    await db?.drop();
  });

  it('when one driver floods location, then it gets RATE_LIMITED acks, counted, logged once, and another driver is unaffected', async () => {
    const { token } = await createDriver(hub, 'Flooder');
    const flooder = await connectDriver(hub, token);
    const honest = await onDutyDriver(hub, BERLIN, 'Honest');
    const logsBefore = sink.lines().filter((l) => l.msg === 'socket rate limited').length;
    const started = Date.now();
    const [flood, calm] = await Promise.all([
      Promise.all(Array.from({ length: 150 }, (_, i) => flooder.emitAck('location', { lat: 10 + i * 1e-5, lng: 10 }))),
      (async () => {
        const acks = [];
        for (let i = 0; i < 5; i++) acks.push(await honest.emitAck('location', { lat: BERLIN.lat + i * 1e-5, lng: BERLIN.lng }));
        return acks;
      })(),
    ]);
    expect(Date.now() - started).toBeLessThan(2000); // the premise: the flood fits in one window
    const accepted = flood.filter((a) => a.ok).length;
    const limited = flood.filter((a) => !a.ok && a.error.code === 'RATE_LIMITED');
    expect(accepted).toBe(40);
    expect(limited).toHaveLength(110);
    expect(limited[0].error.details.retryAfterMs).toBeGreaterThan(0);
    expect(calm.every((a) => a.ok)).toBe(true);
    expect(flooder.socket.connected).toBe(true);

    expect(metricValue(await metricsText(hub), 'hub_rate_limited_total', 'event="location"')).toBeGreaterThanOrEqual(110);
    const lines = sink.lines().filter((l) => l.msg === 'socket rate limited');
    expect(lines.length - logsBefore).toBe(1);
    flooder.close();
    honest.close();
  });

  it('when one driver floods status changes, then they are limited too while its pings still pass', async () => {
    const { token } = await createDriver(hub, 'Toggler');
    const driver = await connectDriver(hub, token);
    const acks = await Promise.all(Array.from({ length: 40 }, (_, i) => driver.emitAck('status', { status: i % 2 ? 'AVAILABLE' : 'OFFLINE' })));
    expect(acks.filter((a) => a.ok).length).toBe(20);
    expect(acks.filter((a) => !a.ok).every((a) => !a.ok && a.error.code === 'RATE_LIMITED')).toBe(true);
    expect((await driver.emitAck('location', BERLIN)).ok).toBe(true);
    driver.close();
  });

  it('when a dispatcher floods viewport changes, then that socket is limited and another dispatcher is not', async () => {
    const token = await dispatcherToken(hub);
    const [noisy, quiet] = await Promise.all([connectDispatcher(hub, token), connectDispatcher(hub, token)]);
    const box = { minLat: 50, minLng: 10, maxLat: 55, maxLng: 15 };
    const acks = await Promise.all(Array.from({ length: 60 }, () => emitAck(noisy, 'viewport', box)));
    expect(acks.filter((a) => a.ok).length).toBe(20);
    expect(acks.filter((a) => !a.ok)[0]).toMatchObject({ ok: false, error: { code: 'RATE_LIMITED' } });
    expect(await emitAck(quiet, 'viewport', box)).toEqual({ ok: true });
    noisy.disconnect();
    quiet.disconnect();
  });

  it('when a driver reconnects in a storm, then handshakes beyond the budget get connect_error RATE_LIMITED, the newest connection stays the only one, and other drivers still connect', async () => {
    const { token } = await createDriver(hub, 'Storm');
    const clients: DriverClient[] = [];
    for (let i = 0; i < 10; i++) clients.push(await connectDriver(hub, token));
    const refused = await connectError(connectSocket(hub, '/drivers', { token }));
    expect(refused.data).toMatchObject({ code: 'RATE_LIMITED' });
    expect(refused.data.details.retryAfterMs).toBeGreaterThan(0);
    await eventually(() => clients.slice(0, -1).every((c) => !c.socket.connected), 'older connections closed');
    expect(clients.at(-1)!.socket.connected).toBe(true);
    expect(metricValue(await metricsText(hub), 'hub_rate_limited_total', 'event="connect"')).toBeGreaterThanOrEqual(1);
    const other = await createDriver(hub, 'Calm');
    const calm = await connectDriver(hub, other.token);
    expect(calm.socket.connected).toBe(true);
    for (const c of [...clients, calm]) c.close();
  });
});

describe('rate limits across nodes and without Redis', () => {
  let db: TestDatabase;
  const hubs: TestHub[] = [];
  const proxies: TcpProxy[] = [];

  beforeAll(async () => {
    db = await createTestDatabase();
  });
  afterAll(async () => {
    for (const proxy of proxies) proxy.set('pass');
    await Promise.all(hubs.map((h) => h.stop()));
    await Promise.all(proxies.map((p) => p.stop()));
    await db?.drop();
  });

  it.skipIf(!hasSharedPostgres())('when a driver spreads a flood of actions over two nodes, then the budget is shared through Redis', async () => {
    const edge = { rateLimits: { driverAction: { points: 10, seconds: 10 } } };
    const base = testConfig(db);
    const a = await startHubWith({ ...base, NODE_ID: 'rl-a' }, { edge });
    const b = await startHubWith({ ...base, NODE_ID: 'rl-b' }, { edge });
    hubs.push(a, b);
    const { token } = await createDriver(a, 'Hopper');
    const onA = await connectDriver(a, token);
    const first = await Promise.all(Array.from({ length: 8 }, () => onA.emitAck('status', { status: 'OFFLINE' })));
    onA.close();
    const onB = await connectDriver(b, token);
    const second = await Promise.all(Array.from({ length: 8 }, () => onB.emitAck('status', { status: 'OFFLINE' })));
    expect(first.every((x) => x.ok)).toBe(true);
    expect(second.filter((x) => x.ok)).toHaveLength(2);
    const redis = new Redis(base.REDIS_URL!, { maxRetriesPerRequest: 1 });
    try {
      expect(await redis.keys(`${base.REDIS_PREFIX}rl:driverAction:*`)).toHaveLength(1);
    } finally {
      redis.disconnect();
    }
    onB.close();
  });

  it('when Redis goes away, then limits still hold from memory and honest drivers still pass', async () => {
    const { proxy, url } = await proxyToSharedRedis();
    proxies.push(proxy);
    const hub = await startHubWith(testConfig(db, { REDIS_URL: url, REDIS_COMMAND_TIMEOUT_MS: '200' }));
    hubs.push(hub);
    const flooder = await connectDriver(hub, (await createDriver(hub, 'Offline flooder')).token);
    const honest = await connectDriver(hub, (await createDriver(hub, 'Offline honest')).token);
    proxy.set('refuse');
    await eventually(async () => (await (await fetch(`${hub.url}/health`)).json()).redis === 'down', 'redis down');
    const flood = await Promise.all(Array.from({ length: 100 }, () => flooder.emitAck('location', BERLIN)));
    expect(flood.filter((x) => x.ok).length).toBeLessThanOrEqual(40);
    expect(flood.filter((x) => !x.ok && x.error.code === 'RATE_LIMITED').length).toBeGreaterThanOrEqual(60);
    expect((await honest.emitAck('location', BERLIN)).ok).toBe(true);
    flooder.close();
    honest.close();
  });
});

describe('origins and sizes', () => {
  let db: TestDatabase;
  let hub: TestHub;
  const ALLOWED = 'https://dispatch.example.com';

  beforeAll(async () => {
    db = await createTestDatabase();
    hub = await startHubWith(testConfig(db, { ALLOWED_ORIGINS: `${ALLOWED},https://ops.example.com` }));
  });
  afterAll(async () => {
    await hub?.stop();
    await db?.drop();
  });

  it("when a browser handshake comes from a foreign origin, then it is refused; an allowed origin, the hub's own origin and no origin at all get in", async () => {
    const token = await dispatcherToken(hub);
    const foreign = connectSocket(hub, '/dispatch', { token }, { extraHeaders: { origin: 'https://evil.example.net' } });
    await connectError(foreign);
    expect(foreign.connected).toBe(false);
    foreign.disconnect();
    const lookalike = connectSocket(hub, '/dispatch', { token }, { extraHeaders: { origin: `${ALLOWED}.evil.net` } });
    await connectError(lookalike);
    lookalike.disconnect();

    const allowed = await connectDispatcher(hub, token, { extraHeaders: { origin: ALLOWED } });
    const native = await connectDispatcher(hub, token);
    // The hub's own map page is same-origin: it needs no entry in the list.
    const own = await connectDispatcher(hub, token, { extraHeaders: { origin: hub.url } });
    expect(allowed.connected && native.connected && own.connected).toBe(true);
    for (const s of [allowed, native, own]) s.disconnect();
  });

  it('when a socket message is larger than the buffer limit, then only that socket is closed and the hub keeps serving', async () => {
    const big = await connectDriver(hub, (await createDriver(hub, 'Big')).token);
    const small = await onDutyDriver(hub, BERLIN, 'Small');
    const gone = closed(big.socket);
    big.socket.emit('location', { lat: 1, lng: 1, note: 'x'.repeat(64 * 1024) });
    expect(await gone).toBe('transport close');
    expect((await small.emitAck('location', BERLIN)).ok).toBe(true);
    expect(small.socket.connected).toBe(true);
    expect((await fetch(`${hub.url}/health`)).status).toBe(200);
    small.close();
  });

  it('when an HTTP body is larger than the limit, then 413 before any parsing, for webhooks and admin calls alike', async () => {
    const huge = JSON.stringify({ ...order(), notes: 'x'.repeat(hub.config.MAX_BODY_BYTES) });
    const webhook = await postWebhook(hub, READY, JSON.parse(huge));
    expect(webhook.status).toBe(413);
    expect(webhook.body.error.code).toBe('PAYLOAD_TOO_LARGE');
    const admin = await api(hub, 'POST', '/admin/drivers', { name: 'y'.repeat(hub.config.MAX_BODY_BYTES) });
    expect(admin.status).toBe(413);
    expect((await fetch(`${hub.url}/health`)).status).toBe(200);
  });
});

describe('logs', () => {
  let db: TestDatabase;
  let hub: TestHub;
  let sink: Sink;

  beforeAll(async () => {
    db = await createTestDatabase();
    sink = logSink();
    hub = await startHubWith(testConfig(db), { sink });
  });
  afterAll(async () => {
    await hub?.stop();
    await db?.drop();
  });

  it('when handshakes fail, admin calls carry bearer tokens and webhooks are signed, then no token, secret or signature reaches the log', async () => {
    const secrets = new Set<string>([ADMIN_TOKEN, JWT_SECRET, WEBHOOK_SECRET, WEBHOOK_SECRET.slice('whsec_'.length)]);
    const driver = await createDriver(hub, 'Logged');
    secrets.add(driver.token);
    const dispatcher = await dispatcherToken(hub);
    secrets.add(dispatcher);
    const expired = await tokens.issue('driver', driver.id, { ttlSeconds: -10 });
    const forged = `${driver.token.slice(0, -4)}AAAA`;
    secrets.add(expired).add(forged);

    // Handshakes: good, expired, forged, in the query, wrong role.
    const ok = await connectDriver(hub, driver.token);
    await ok.emitAck('location', { lat: 'nope', lng: 0 });
    ok.close();
    await connectError(connectSocket(hub, '/drivers', { token: expired }));
    await connectError(connectSocket(hub, '/drivers', { token: forged }));
    await connectError(connectSocket(hub, '/drivers', { token: driver.token }, { query: { token: driver.token } }));
    await connectError(connectSocket(hub, '/drivers', { token: dispatcher }));
    await connectError(connectSocket(hub, '/dispatch', { token: ADMIN_TOKEN }));

    // Admin calls: refused and accepted.
    await api(hub, 'GET', '/admin/drivers', undefined, dispatcher);
    await api(hub, 'POST', '/admin/drivers', { name: 'x' }, dispatcher);
    await api(hub, 'POST', '/admin/drivers', { name: 'x' }, `${ADMIN_TOKEN}-wrong`);
    await api(hub, 'POST', '/admin/drivers', { bad: true });
    await api(hub, 'POST', '/admin/tokens', { role: 'driver', subject: driver.id });

    // Webhooks: accepted, retried, refused for a bad signature, and invalid after a good one.
    const signatures: string[] = [];
    const capture = (headers: Record<string, string>, body: string) => {
      signatures.push(headers['webhook-signature']);
      return { headers, body };
    };
    const o = order();
    await postWebhook(hub, READY, o, { mutate: capture });
    await postWebhook(hub, READY, o, { mutate: capture });
    await postWebhook(hub, READY, o, {
      mutate: (headers, body) => {
        signatures.push(headers['webhook-signature']);
        return { headers: { ...headers, 'webhook-signature': `${headers['webhook-signature'].slice(0, -2)}AA` }, body };
      },
    });
    await postWebhook(hub, READY, { ...o, extra: true }, { mutate: capture });
    await postWebhook(hub, '/events/seller-order-cancelled', { sellerOrderId: o.sellerOrderId }, { mutate: capture });
    for (const s of signatures) secrets.add(s.slice('v1,'.length));

    await new Promise((r) => setTimeout(r, 200));
    const text = sink.text();
    expect(text.length).toBeGreaterThan(0);
    expect(sink.lines().some((l) => l.msg === 'socket handshake refused')).toBe(true);
    for (const secret of secrets) expect(text.includes(secret), `log contains ${secret.slice(0, 12)}...`).toBe(false);
    // Also no JWT-looking string at all: three base64url parts starting with a JSON header.
    expect(text).not.toMatch(/eyJ[\w-]+\.eyJ[\w-]+\.[\w-]+/);
  });

  it('when code logs an object that carries a token, a header or the whole config, then those values are redacted', async () => {
    const own = logSink();
    const logger = createLogger({ level: 'info', nodeId: 'redact' }, own.stream);
    const jwt = await tokens.issue('driver', randomUUID());
    logger.info({ token: jwt, handshake: { auth: { token: jwt }, query: { token: jwt } } }, 'socket');
    logger.info({ req: { headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'webhook-signature': 'v1,c2lnbmF0dXJl' } } }, 'request');
    logger.info({ config: hub.config }, 'config');
    const text = own.text();
    for (const secret of [jwt, ADMIN_TOKEN, JWT_SECRET, WEBHOOK_SECRET, 'c2lnbmF0dXJl']) expect(text.includes(secret), secret.slice(0, 12)).toBe(false);
    expect(text).toContain('[redacted]');
    expect(own.lines()).toHaveLength(3);
  });
});
