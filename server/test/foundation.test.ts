import { spawnSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, parseConfig } from '../src/platform/config.js';
import { envFrom, spawnHub } from './support/child-hub.js';
import { ADMIN_TOKEN, api, hasSharedPostgres, connectDriver, createDriver, createTestDatabase, type TestDatabase, type TestHub, startTestHub, testConfig } from './support/hub.js';

describe('foundation', () => {
  let db: TestDatabase;
  let hub: TestHub;

  beforeAll(async () => {
    db = await createTestDatabase();
    hub = await startTestHub(testConfig(db));
  });
  afterAll(async () => {
    await hub?.stop();
    await db?.drop();
  });

  it('when PostgreSQL and Redis are up, then /health says ok with both up', async () => {
    const res = await api(hub, 'GET', '/health', undefined, null);
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({ status: 'ok', postgres: 'up', redis: 'up', node: hub.config.NODE_ID });
    expect(typeof res.body.uptimeSeconds).toBe('number');
  });

  it('when /metrics is scraped, then it answers Prometheus text with hub metrics', async () => {
    const res = await fetch(`${hub.url}/metrics`);
    expect(res.status).toBe(200);
    const text = await res.text();
    expect(text).toContain('hub_location_fixes_total');
    expect(text).toContain('process_resident_memory_bytes');
  });

  it('when a route does not exist, then it answers 404 JSON', async () => {
    const res = await api(hub, 'GET', '/nope', undefined, null);
    expect(res.status).toBe(404);
    expect(res.body.error.code).toBe('NOT_FOUND');
  });

  it('when a body is larger than the limit, then it answers 413 and writes nothing', async () => {
    const big = JSON.stringify({ name: 'x'.repeat(200_000) });
    const res = await api(hub, 'POST', '/admin/drivers', big);
    expect(res.status).toBe(413);
    expect(res.body.error.code).toBe('PAYLOAD_TOO_LARGE');
    const list = await api(hub, 'GET', '/admin/drivers');
    expect(list.body.drivers).toHaveLength(0);
  });

  it('when admin routes are called without or with a wrong token, then 401 and nothing changes', async () => {
    expect((await api(hub, 'POST', '/admin/drivers', { name: 'A' }, null)).status).toBe(401);
    expect((await api(hub, 'POST', '/admin/drivers', { name: 'A' }, 'wrong-token')).status).toBe(401);
    expect((await api(hub, 'GET', '/admin/drivers')).body.drivers).toHaveLength(0);
  });

  it('when the admin creates a driver, then it gets an id and a driver token and the driver is listed OFFLINE', async () => {
    const res = await api(hub, 'POST', '/admin/drivers', { name: 'Ada', phone: '+49 1', vehicle: 'bike' });
    expect(res.status).toBe(201);
    expect(res.body).toMatchObject({ name: 'Ada', status: 'OFFLINE' });
    expect(res.body.id).toMatch(/^[0-9a-f-]{36}$/);
    expect(res.body.token.split('.')).toHaveLength(3);
    const list = await api(hub, 'GET', '/admin/drivers');
    expect(list.body.drivers).toEqual([expect.objectContaining({ id: res.body.id, name: 'Ada', status: 'OFFLINE', lat: null, lng: null })]);
  });

  it('when a driver body is invalid, then 400 lists the field errors', async () => {
    const res = await api(hub, 'POST', '/admin/drivers', { name: '', extra: 1 });
    expect(res.status).toBe(400);
    expect(res.body.error.code).toBe('VALIDATION_FAILED');
    expect(res.body.error.details.length).toBeGreaterThan(0);
  });

  it('when a dispatcher token is minted, then it can read drivers but not create them', async () => {
    const minted = await api(hub, 'POST', '/admin/tokens', { role: 'dispatcher', subject: 'desk-1' });
    expect(minted.status).toBe(200);
    const token = minted.body.token;
    expect((await api(hub, 'GET', '/admin/drivers', undefined, token)).status).toBe(200);
    expect((await api(hub, 'POST', '/admin/drivers', { name: 'B' }, token)).status).toBe(403);
  });

  it('when config is malformed, then parsing fails listing every bad field', () => {
    expect(() => parseConfig({ PORT: 'abc', HEARTBEAT_TTL_SECONDS: '-1', WEBHOOK_SECRET: 'nope' }, () => 'x'.repeat(40))).toThrow(ConfigError);
    try {
      parseConfig({ PORT: 'abc', HEARTBEAT_TTL_SECONDS: '-1', WEBHOOK_SECRET: 'nope' }, () => 'x'.repeat(40));
    } catch (err) {
      const problems = (err as ConfigError).problems.join('\n');
      expect(problems).toContain('PORT');
      expect(problems).toContain('HEARTBEAT_TTL_SECONDS');
      expect(problems).toContain('WEBHOOK_SECRET');
    }
  });

  it('when the process starts with bad config or an unreachable database, then it exits non-zero with a clear line and no stack', () => {
    const bad = spawnSync(process.execPath, ['--import', 'tsx', 'server/src/main.ts'], { env: { ...process.env, PORT: 'abc', DATABASE_URL: '' }, encoding: 'utf8', timeout: 30_000 });
    expect(bad.status).toBe(2);
    expect(bad.stderr).toContain('PORT');
    expect(bad.stderr).not.toMatch(/\n\s+at /);
    const down = spawnSync(process.execPath, ['--import', 'tsx', 'server/src/main.ts'], {
      env: { ...process.env, PORT: '0', DATABASE_URL: 'postgres://postgres@127.0.0.1:1/none', REDIS_URL: '', ADMIN_TOKEN },
      encoding: 'utf8',
      timeout: 30_000,
    });
    expect(down.status).toBe(1);
    expect(down.stdout).toContain('PostgreSQL is not usable');
    expect(down.stdout).not.toMatch(/\n\s+at /);
  }, 70_000);

  it.skipIf(!hasSharedPostgres())('when the process gets SIGTERM, then it closes sockets, marks its drivers OFFLINE and exits 0 within the bound', async () => {
    const child = await spawnHub(envFrom(hub.config, { NODE_ID: 'graceful', SHUTDOWN_TIMEOUT_MS: '3000' }));
    const { id, token } = await createDriver({ url: child.url }, 'Leaving');
    const client = await connectDriver({ url: child.url }, token);
    await client.emitAck('status', { status: 'AVAILABLE' });
    const disconnected = new Promise((resolve) => client.socket.once('disconnect', resolve));
    const started = Date.now();
    const code = await child.kill('SIGTERM');
    expect(code).toBe(0);
    expect(Date.now() - started).toBeLessThan(5000);
    await disconnected;
    const driver = (await api(hub, 'GET', '/admin/drivers')).body.drivers.find((d: any) => d.id === id);
    expect(driver.status).toBe('OFFLINE');
    expect(child.logs.join('\n')).toContain('shutting down');
  });
});
