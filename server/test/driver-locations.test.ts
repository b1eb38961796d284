import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../src/platform/logger.js';
import { startHub } from '../src/main.js';
import { presenceKeys } from '../src/presence/presence.store.js';
import {
  api,
  connectSocket,
  createDriver,
  createTestDatabase,
  firstEvent,
  onDutyDriver,
  order,
  postWebhook,
  redisFor,
  type TestDatabase,
  type TestHub,
  testConfig,
} from './support/hub.js';
import { eventually } from './support/net.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('locations over HTTP and cumulative confirmation of fixes', () => {
  let db: TestDatabase;
  let hub: TestHub;
  let redis: Redis;

  beforeAll(async () => {
    db = await createTestDatabase();
    const config = testConfig(db, { LOCATION_CONFIRM_MS: '1000' });
    const running = await startHub(config, createLogger({ level: config.LOG_LEVEL, nodeId: config.NODE_ID }), {
      edge: { rateLimits: { location: { points: 6, seconds: 10 } } },
    });
    hub = { ...running, url: `http://127.0.0.1:${running.port}` };
    redis = redisFor(hub);
  });
  afterAll(async () => {
    redis?.disconnect();
    await hub?.stop();
    await db?.drop();
  });

  const geoKey = () => presenceKeys(hub.config.REDIS_PREFIX).geo;
  const post = (token: string | null, body: unknown) => api(hub, 'POST', '/drivers/me/locations', body, token);

  it('when an on-duty driver posts a batch of fixes, then the newest reaches drivers:geo and PostgreSQL, and the answer counts them', async () => {
    const driver = await onDutyDriver(hub, { lat: 45.0, lng: 7.0 }, 'Backgrounded');
    const res = await post(driver.token, [
      { lat: 45.001, lng: 7.001, ts: 1_000 },
      { lat: 45.003, lng: 7.003, ts: 3_000 },
      { lat: 45.002, lng: 7.002, ts: 2_000 },
    ]);
    expect(res).toEqual({ status: 200, body: { accepted: 3 } });
    await eventually(async () => {
      const [pos] = await redis.geopos(geoKey(), driver.id);
      return pos && Math.abs(Number(pos[1]) - 45.003) < 1e-4;
    }, 'the newest fix in GEO');
    await eventually(async () => {
      const listed = (await api(hub, 'GET', '/admin/drivers')).body.drivers.find((d: any) => d.id === driver.id);
      return Math.abs(listed.lat - 45.003) < 1e-6;
    }, 'the newest fix in PostgreSQL');
    driver.close();
  });

  it('when a BUSY driver posts fixes over HTTP, then its position moves but it never enters drivers:geo', async () => {
    const at = { lat: 46.0, lng: 8.0 };
    const driver = await onDutyDriver(hub, at, 'Busy in background');
    const res = await postWebhook(hub, '/events/seller-order-ready', order({ pickup: at }));
    expect(res.body.driverId).toBe(driver.id);
    await eventually(async () => (await redis.zscore(geoKey(), driver.id)) === null, 'the claimed driver out of GEO');
    for (let i = 1; i <= 3; i++) {
      expect((await post(driver.token, { lat: at.lat + i * 0.001, lng: at.lng })).status).toBe(200);
      await sleep(100);
      expect(await redis.zscore(geoKey(), driver.id)).toBeNull();
    }
    await eventually(async () => {
      const listed = (await api(hub, 'GET', '/admin/drivers')).body.drivers.find((d: any) => d.id === driver.id);
      return listed.status === 'BUSY' && Math.abs(listed.lat - (at.lat + 0.003)) < 1e-6;
    }, 'the position kept in PostgreSQL');
    driver.close();
  });

  it('when the request is unauthenticated, not a driver, over 100 fixes, malformed or over budget, then a coded 4xx and nothing changes', async () => {
    const { id, token } = await createDriver(hub, 'Strict');
    const dispatcher = (await api(hub, 'POST', '/admin/tokens', { role: 'dispatcher', subject: 'd' })).body.token;
    const fix = { lat: 47, lng: 9 };
    const cases: [string | null, unknown, number, string][] = [
      [null, fix, 401, 'TOKEN_MISSING'],
      ['not-a-token', fix, 401, 'TOKEN_INVALID'],
      [dispatcher, fix, 403, 'FORBIDDEN'],
      [token, Array.from({ length: 101 }, () => fix), 400, 'VALIDATION_FAILED'],
      [token, { lat: 91, lng: 9 }, 400, 'VALIDATION_FAILED'],
      [token, { lat: 47, lng: 9, driverId: '00000000-0000-0000-0000-000000000000' }, 400, 'VALIDATION_FAILED'],
      [token, '{not json', 400, 'VALIDATION_FAILED'],
    ];
    for (const [bearer, body, status, code] of cases) {
      const res = await post(bearer, body);
      expect(res.status, JSON.stringify(body).slice(0, 60)).toBe(status);
      expect(res.body.error.code).toBe(code);
    }
    const listed = (await api(hub, 'GET', '/admin/drivers')).body.drivers.find((d: any) => d.id === id);
    expect(listed.lat).toBeNull();

    // The budget (6 per 10 s in this hub) is the socket path's, spent before any database work
    // (the malformed requests above spent some): go over it.
    let limited: { status: number; body: any } | null = null;
    const res = await fetch(`${hub.url}/drivers/me/locations`, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: JSON.stringify(fix) });
    expect(res.status).toBe(200);
    for (let i = 0; i < 10 && !limited; i++) {
      const r = await fetch(`${hub.url}/drivers/me/locations`, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: JSON.stringify(fix) });
      if (r.status === 429) {
        limited = { status: r.status, body: await r.json() };
        expect(Number(r.headers.get('retry-after'))).toBeGreaterThan(0);
      } else expect(r.status).toBe(200);
    }
    expect(limited?.body.error.code).toBe('RATE_LIMITED');

    // A revoked token is refused like on the socket (another driver: this one's budget is spent).
    const other = await createDriver(hub, 'Revoked');
    await api(hub, 'POST', `/admin/drivers/${other.id}/revoke-tokens`);
    const revoked = await post(other.token, fix);
    expect(revoked.status).toBe(401);
    expect(revoked.body.error.code).toBe('TOKEN_INVALID');
  });

  it('when an app numbers its fixes and sends them without acknowledgements, then one location:stored confirms everything up to the newest stored', async () => {
    const { token } = await createDriver(hub, 'Numbered');
    const socket = connectSocket(hub, '/drivers', { token });
    const confirmations: number[] = [];
    socket.on('location:stored', (p: { upTo: number }) => confirmations.push(p.upTo));
    const session = await firstEvent<any>(socket, 'session');
    expect(session).toMatchObject({ locationConfirmation: 'cumulative', offer: null });
    socket.emit('location', [
      { lat: 48.0, lng: 10.0, seq: 0 },
      { lat: 48.001, lng: 10.0, seq: 1 },
    ]);
    socket.emit('location', { lat: 48.002, lng: 10.0, seq: 2 });
    await eventually(() => confirmations.includes(2), 'a confirmation up to 2', 5000);
    // Nothing new stored: nothing more is sent; the numbers never go down on the connection.
    const count = confirmations.length;
    await sleep(1500);
    expect(confirmations.length).toBe(count);
    expect([...confirmations].sort((a, b) => a - b)).toEqual(confirmations);
    socket.emit('location', { lat: 48.003, lng: 10.0, seq: 3 });
    await eventually(() => confirmations.at(-1) === 3, 'the next confirmation', 5000);
    socket.disconnect();
  });
});
