import { randomUUID } from 'node:crypto';
import { request } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { signWebhook } from '#shared/webhooks.js';
import { Redis } from 'ioredis';
import { createAuthThrottle } from '../src/platform/auth-throttle.js';
import { addressKey, createClientAddress } from '../src/platform/client-address.js';
import { PrivateRedis, proxyToSharedRedis, TcpProxy } from './support/faults.js';
import {
  ADMIN_TOKEN,
  connectError,
  connectSocket,
  createDriver,
  createTestDatabase,
  firstEvent,
  hasSharedPostgres,
  order,
  startCluster,
  type TestDatabase,
  type TestHub,
  startTestHub,
  testConfig,
  WEBHOOK_SECRET,
} from './support/hub.js';
import { eventually } from './support/net.js';

/** A small budget so a test spends it in a handful of requests. */
const BUDGET = { AUTH_FAILURE_LIMIT: '5', AUTH_FAILURE_WINDOW_SECONDS: '60' };

interface Reply {
  status: number;
  retryAfter: string | undefined;
  body: any;
}

/**
 * An HTTP request from a chosen loopback address (Linux answers on all of 127/8): each test
 * "client" gets an address of its own, so budgets are not shared by accident.
 */
function httpFrom(from: string, hub: TestHub, method: string, path: string, headers: Record<string, string> = {}, body?: string): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port: hub.port, method, path, headers, localAddress: from }, (res) => {
      const parts: Buffer[] = [];
      res.on('data', (c: Buffer) => parts.push(c));
      res.on('end', () => {
        const text = Buffer.concat(parts).toString();
        resolve({ status: res.statusCode!, retryAfter: res.headers['retry-after'] as string | undefined, body: text ? JSON.parse(text) : null });
      });
    });
    req.on('error', reject);
    if (body !== undefined) req.setHeader('content-length', Buffer.byteLength(body));
    req.end(body);
  });
}

const bearer = (token: string) => ({ authorization: `Bearer ${token}` });

function signed(body: string, secret = WEBHOOK_SECRET): Record<string, string> {
  return { 'content-type': 'application/json', ...signWebhook(secret, `msg_${randomUUID()}`, Date.now() / 1000, body) };
}

const WRONG_SECRET = `whsec_${Buffer.from('not-the-secret-at-all-0123456789').toString('base64')}`;

describe('client addresses', () => {
  it('when there is no trusted proxy, then the peer address is the client and X-Forwarded-For is ignored', () => {
    const of = createClientAddress([]);
    expect(of('203.0.113.7', '198.51.100.1')).toBe('203.0.113.7');
    expect(of('::ffff:203.0.113.7', undefined)).toBe('203.0.113.7');
  });

  it('when the peer is a trusted proxy, then the nearest untrusted hop of X-Forwarded-For is the client, and a forged left part changes nothing', () => {
    const of = createClientAddress(['10.0.0.0/8', '127.0.0.1']);
    expect(of('10.1.2.3', '198.51.100.1')).toBe('198.51.100.1');
    expect(of('10.1.2.3', '6.6.6.6, 198.51.100.1')).toBe('198.51.100.1');
    expect(of('127.0.0.1', '198.51.100.1, 10.9.9.9')).toBe('198.51.100.1');
    expect(of('10.1.2.3', undefined)).toBe('10.1.2.3');
    expect(of('10.1.2.3', 'not-an-address')).toBe('10.1.2.3');
    // Not from the proxy: the header is the client's own words.
    expect(of('203.0.113.7', '198.51.100.1')).toBe('203.0.113.7');
  });

  it('when clients use IPv6, then one /64 is one client, however it is spelled', () => {
    expect(addressKey('2001:db8:1:2:aaaa::1')).toBe('2001:db8:1:2::/64');
    expect(addressKey('2001:0db8:0001:0002:ffff:ffff:ffff:ffff')).toBe('2001:db8:1:2::/64');
    expect(addressKey('2001:db8::1')).toBe('2001:db8:0:0::/64');
    expect(addressKey('fe80::1%eth0')).toBe('fe80:0:0:0::/64');
    expect(addressKey('garbage')).toBe('unknown');
  });
});

describe('failed authentication is throttled per client address', () => {
  let db: TestDatabase;
  let hub: TestHub;

  beforeAll(async () => {
    db = await createTestDatabase();
    hub = await startTestHub(testConfig(db, BUDGET));
  });
  afterAll(async () => {
    await hub?.stop();
    await db?.drop();
  });

  it('when one address sends wrong admin bearers, then past the budget it gets 429 with Retry-After even with the right token, and another address is unaffected', async () => {
    const attacker = '127.0.0.2';
    for (let i = 0; i < 5; i++) expect((await httpFrom(attacker, hub, 'GET', '/admin/drivers', bearer(`wrong-${i}`))).status).toBe(401);
    const throttled = await httpFrom(attacker, hub, 'GET', '/admin/drivers', bearer('wrong-again'));
    expect(throttled.status).toBe(429);
    expect(throttled.body.error).toMatchObject({ code: 'RATE_LIMITED' });
    expect(Number(throttled.retryAfter)).toBeGreaterThan(0);
    expect(Number(throttled.retryAfter)).toBeLessThanOrEqual(60);
    // The right token looks exactly like a wrong one now: a guess that hit cannot be told apart.
    expect((await httpFrom(attacker, hub, 'GET', '/admin/drivers', bearer(ADMIN_TOKEN))).status).toBe(429);
    expect((await httpFrom(attacker, hub, 'GET', '/admin/drivers')).status).toBe(429);

    const honest = '127.0.0.3';
    expect((await httpFrom(honest, hub, 'GET', '/admin/drivers', bearer(ADMIN_TOKEN))).status).toBe(200);
    expect((await httpFrom(honest, hub, 'GET', '/admin/drivers', bearer('typo'))).status).toBe(401);
    expect((await httpFrom(honest, hub, 'GET', '/admin/drivers', bearer(ADMIN_TOKEN))).status).toBe(200);
    // Public routes are not authentication: a throttled address still reads /health.
    expect((await httpFrom(attacker, hub, 'GET', '/health')).status).toBe(200);
    const metrics = await (await fetch(`${hub.url}/metrics`)).text();
    expect(metrics).toMatch(/hub_auth_failures_total\{kind="admin"[^}]*\} [6-9]/);
    expect(metrics).toMatch(/hub_rate_limited_total\{event="auth"[^}]*\} [3-9]/);
  });

  it('when one address sends badly signed webhooks, then past the budget even a valid one from it is 429, and Vendure on another address still gets through', async () => {
    const attacker = '127.0.0.4';
    const body = JSON.stringify(order());
    for (let i = 0; i < 5; i++) expect((await httpFrom(attacker, hub, 'POST', '/events/seller-order-ready', signed(body, WRONG_SECRET), body)).status).toBe(401);
    const throttled = await httpFrom(attacker, hub, 'POST', '/events/seller-order-ready', signed(body), body);
    expect(throttled.status).toBe(429);
    expect(Number(throttled.retryAfter)).toBeGreaterThan(0);
    const vendure = await httpFrom('127.0.0.5', hub, 'POST', '/events/seller-order-ready', signed(body), body);
    expect(vendure.status).toBe(202);
  });

  it('when one address opens sockets with bad tokens, then past the budget its handshakes get RATE_LIMITED even with a good token, and a driver elsewhere connects', async () => {
    const attacker = { localAddress: '127.0.0.6' };
    const { token } = await createDriver(hub, 'Honest');
    const bad = ['a.b.c', '', 'x'.repeat(50), `${token.slice(0, -3)}AAA`, token.split('.').slice(0, 2).join('.')];
    for (const t of bad) {
      const refused = await connectError(connectSocket(hub, '/drivers', { token: t }, attacker));
      expect(refused.data.code).toMatch(/^TOKEN_/);
    }
    const limited = await connectError(connectSocket(hub, '/drivers', { token }, attacker));
    expect(limited.data).toMatchObject({ code: 'RATE_LIMITED' });
    expect(limited.data.details.retryAfterMs).toBeGreaterThan(0);
    expect((await connectError(connectSocket(hub, '/dispatch', { token: 'nope' }, attacker))).data.code).toBe('RATE_LIMITED');
    // The same budget covers HTTP: the address is refused there too.
    expect((await httpFrom(attacker.localAddress, hub, 'GET', '/admin/drivers', bearer(ADMIN_TOKEN))).status).toBe(429);

    const driver = connectSocket(hub, '/drivers', { token }, { localAddress: '127.0.0.7' });
    const session = await firstEvent<{ driverId: string }>(driver, 'session');
    expect(session.driverId).toBeTruthy();
    driver.disconnect();
  });
});

describe.skipIf(!hasSharedPostgres())('failed authentication across nodes and behind a proxy', () => {
  let db: TestDatabase;
  let hubs: TestHub[];

  beforeAll(async () => {
    db = await createTestDatabase();
    // The test's own connections come from 127.0.0.1, which plays the proxy here.
    hubs = await startCluster(db, 2, { ...BUDGET, TRUSTED_PROXIES: '127.0.0.1' });
  });
  afterAll(async () => {
    await Promise.all(hubs?.map((h) => h.stop()) ?? []);
    await db?.drop();
  });

  it('when an address spends its budget on one node, then the other node refuses it too, and addresses named by the proxy are counted apart', async () => {
    const [a, b] = hubs;
    const attacker = { 'x-forwarded-for': '203.0.113.9' };
    for (let i = 0; i < 3; i++) expect((await httpFrom('127.0.0.1', a, 'GET', '/admin/drivers', { ...attacker, ...bearer(`wrong-${i}`) })).status).toBe(401);
    for (let i = 0; i < 2; i++) {
      const refused = await connectError(connectSocket(b, '/drivers', { token: `bad-${i}` }, { extraHeaders: attacker }));
      expect(refused.data.code).toBe('TOKEN_INVALID');
    }
    expect((await httpFrom('127.0.0.1', a, 'GET', '/admin/drivers', { ...attacker, ...bearer(ADMIN_TOKEN) })).status).toBe(429);
    expect((await httpFrom('127.0.0.1', b, 'GET', '/admin/drivers', { ...attacker, ...bearer(ADMIN_TOKEN) })).status).toBe(429);
    expect((await connectError(connectSocket(a, '/dispatch', { token: 'x' }, { extraHeaders: attacker }))).data.code).toBe('RATE_LIMITED');

    // Another client behind the same proxy, and a client that tries to pick its own address from
    // outside the proxy (its header is ignored and its peer address counts).
    const honest = { 'x-forwarded-for': '198.51.100.20' };
    expect((await httpFrom('127.0.0.1', b, 'GET', '/admin/drivers', { ...honest, ...bearer(ADMIN_TOKEN) })).status).toBe(200);
    expect((await httpFrom('127.0.0.8', b, 'GET', '/admin/drivers', { ...attacker, ...bearer(ADMIN_TOKEN) })).status).toBe(200);
  });
});

describe('failed authentication while Redis is away', () => {
  let db: TestDatabase;
  let hub: TestHub;
  let proxy: TcpProxy;

  beforeAll(async () => {
    db = await createTestDatabase();
    const shared = await proxyToSharedRedis();
    proxy = shared.proxy;
    hub = await startTestHub(testConfig(db, { ...BUDGET, REDIS_URL: shared.url, REDIS_COMMAND_TIMEOUT_MS: '200' }));
  });
  afterAll(async () => {
    proxy?.set('pass');
    await hub?.stop();
    await proxy?.stop();
    await db?.drop();
  });

  it('when Redis is down, then failures are counted in memory: the address is throttled and others still get in', async () => {
    proxy.set('refuse');
    await eventually(async () => (await (await fetch(`${hub.url}/health`)).json()).redis === 'down', 'redis down');
    const attacker = '127.0.0.9';
    for (let i = 0; i < 5; i++) expect((await httpFrom(attacker, hub, 'POST', '/admin/drivers', bearer(`wrong-${i}`), '{}')).status).toBe(401);
    const throttled = await httpFrom(attacker, hub, 'POST', '/admin/drivers', bearer(ADMIN_TOKEN), '{"name":"x"}');
    expect(throttled.status).toBe(429);
    expect(Number(throttled.retryAfter)).toBeGreaterThan(0);
    expect((await connectError(connectSocket(hub, '/drivers', { token: 'x' }, { localAddress: attacker }))).data.code).toBe('RATE_LIMITED');
    const created = await httpFrom('127.0.0.10', hub, 'POST', '/admin/drivers', { ...bearer(ADMIN_TOKEN), 'content-type': 'application/json' }, '{"name":"Still works"}');
    expect(created.status).toBe(201);
  });
});

describe('budget reads shared between nodes', () => {
  // A Redis of its own: the test counts the reads it receives.
  let server: PrivateRedis;
  let redis: Redis;
  beforeAll(async () => {
    server = new PrivateRedis();
    await server.start();
    redis = new Redis(server.url, { maxRetriesPerRequest: 1 });
  });
  afterAll(async () => {
    await redis?.quit();
    await server?.kill();
  });

  it('when an address is clean, then its reads are reused briefly, and failures spent on another node block it here within that time', async () => {
    const prefix = `test:${randomUUID()}:`;
    const here = createAuthThrottle({ redis, prefix, failures: 3, windowSeconds: 60 });
    const elsewhere = createAuthThrottle({ redis, prefix, failures: 3, windowSeconds: 60 });
    const address = '192.0.2.44';
    const before = Number((await redis.info('commandstats')).match(/cmdstat_get:calls=(\d+)/)?.[1] ?? 0);
    for (let i = 0; i < 20; i++) await here.check(address);
    const reads = Number((await redis.info('commandstats')).match(/cmdstat_get:calls=(\d+)/)?.[1] ?? 0) - before;
    expect(reads).toBeLessThanOrEqual(2);

    for (let i = 0; i < 3; i++) await elsewhere.failed(address);
    await expect(elsewhere.check(address)).rejects.toMatchObject({ code: 'RATE_LIMITED' });
    await eventually(async () => (await here.check(address).then(() => 'open', () => 'blocked')) === 'blocked', 'blocked on the other node', 500);
  });
});
