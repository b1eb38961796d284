import { readdirSync, readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { clusterProblems } from '../src/cluster.js';
import { startApiThread } from '../src/platform/api-thread.js';
import { ConfigError, parseConfig } from '../src/platform/config.js';
import { HubEvents } from '../src/platform/hub-events.js';
import { createMetrics } from '../src/platform/metrics.js';
import { envFrom, spawnHub, type ChildHub } from './support/child-hub.js';
import { api, connectDriver, createDriver, createTestDatabase, hasSharedPostgres, order, postWebhook, testConfig, type TestDatabase } from './support/hub.js';
import { logSink } from './support/log-sink.js';
import { createLogger } from '../src/platform/logger.js';
import { eventually } from './support/net.js';

const PLACE = { lat: 48.85, lng: 2.35 };

describe.skipIf(!hasSharedPostgres())('the API thread (API_THREAD=true)', () => {
  let db: TestDatabase;
  let hub: ChildHub;
  let main: { url: string };
  let apiSide: { url: string };

  beforeAll(async () => {
    db = await createTestDatabase();
    hub = await spawnHub(envFrom(testConfig(db), { NODE_ID: 'threaded', API_THREAD: 'true', HTTP_PORT: '0', SHUTDOWN_TIMEOUT_MS: '2000' }));
    main = { url: hub.url };
    apiSide = { url: `http://127.0.0.1:${hub.apiPort}` };
  });
  afterAll(async () => {
    await hub?.kill('SIGKILL');
    await db?.drop();
  });

  it('when a webhook comes to HTTP_PORT, then the API thread assigns the nearest driver and the driver connected on PORT gets the push and acknowledges it', async () => {
    expect(hub.apiPort).not.toBeNull();
    expect(hub.apiPort).not.toBe(hub.port);
    const near = await createDriver(apiSide, 'Near');
    const far = await createDriver(main, 'Far');
    const nearApp = await connectDriver(main, near.token);
    const farApp = await connectDriver(main, far.token);
    for (const [app, offset] of [[nearApp, 0.001], [farApp, 0.05]] as const) {
      await app.emitAck('location', { lat: PLACE.lat + offset, lng: PLACE.lng });
      await app.emitAck('status', { status: 'AVAILABLE' });
    }

    const res = await postWebhook(apiSide, '/events/seller-order-ready', order({ pickup: PLACE }));
    expect(res.status).toBe(200);
    expect(res.body.driverId).toBe(near.id);
    await eventually(() => nearApp.assignments.length === 1, 'assignment pushed by the main thread');
    expect(nearApp.assignments[0]).toMatchObject({ deliveryId: res.body.deliveryId });
    expect(farApp.assignments).toHaveLength(0);
    // The thread's claim reached Redis and the main thread's sockets alike: the driver is BUSY everywhere.
    const drivers = (await api(main, 'GET', '/admin/drivers')).body.drivers as { id: string; status: string }[];
    expect(drivers.find((d) => d.id === near.id)?.status).toBe('BUSY');
    await eventually(async () => (await metric(main, 'hub_pushes_acknowledged_total', 'thread="main"')) >= 1, 'the acknowledgement recorded by the main thread');
    nearApp.close();
    farApp.close();
  });

  it.skipIf(process.platform !== 'linux')('when an operator lists the hub\'s threads (top -H, ps -L), then the API thread is the one named hub-api', () => {
    const pid = hub.process.pid!;
    const names = readdirSync(`/proc/${pid}/task`).map((tid) => ({ tid: Number(tid), name: readFileSync(`/proc/${pid}/task/${tid}/comm`, 'utf8').trim() }));
    const named = names.filter((t) => t.name === 'hub-api');
    expect(named).toHaveLength(1);
    expect(named[0].tid).not.toBe(pid);
  });

  it('when /metrics is read on either port, then it has both threads\' series, each metric described once', async () => {
    for (const side of [main, apiSide]) {
      const text = await (await fetch(`${side.url}/metrics`)).text();
      expect(text).toMatch(/^hub_webhook_requests_total\{[^}]*thread="api"[^}]*\} [1-9]/m);
      expect(text).toMatch(/^hub_sockets_connected\{[^}]*thread="main"/m);
      // Each thread says what it sees of Redis at the scrape, whichever port's /health was asked.
      expect(text).toMatch(/^hub_redis_up\{[^}]*thread="main"[^}]*\} 1$/m);
      expect(text).toMatch(/^hub_redis_up\{[^}]*thread="api"[^}]*\} 1$/m);
      const helps = text.split('\n').filter((line) => line.startsWith('# HELP hub_webhook_requests_total '));
      expect(helps).toHaveLength(1);
      // Process-wide figures once per process, each thread's own loop lag per thread.
      expect(text.match(/^process_resident_memory_bytes\{.*$/gm)).toHaveLength(1);
      expect(text).toMatch(/^nodejs_eventloop_lag_p99_seconds\{[^}]*thread="api"/m);
      expect(text).toMatch(/^nodejs_eventloop_lag_p99_seconds\{[^}]*thread="main"/m);
    }
  });

  it('when an admin revokes a driver on HTTP_PORT, then its socket on the main thread is closed', async () => {
    const driver = await createDriver(apiSide, 'Revoked');
    const app = await connectDriver(main, driver.token);
    const closed = new Promise<string>((resolve) => app.socket.once('disconnect', resolve));
    const res = await api(apiSide, 'POST', `/admin/drivers/${driver.id}/revoke-tokens`);
    expect(res.status).toBeLessThan(300);
    expect(await closed).toBe('io server disconnect');
  });

  it('when a driver posts fixes to HTTP_PORT, then the API thread writes them through to PostgreSQL', async () => {
    const driver = await createDriver(apiSide, 'Background');
    const res = await fetch(`${apiSide.url}/drivers/me/locations`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${driver.token}` },
      body: JSON.stringify([{ lat: PLACE.lat + 0.2, lng: PLACE.lng }]),
    });
    expect(res.status).toBe(200);
    await eventually(async () => {
      const drivers = (await api(main, 'GET', '/admin/drivers')).body.drivers as { id: string; lat: number | null }[];
      return Math.abs((drivers.find((d) => d.id === driver.id)?.lat ?? 0) - (PLACE.lat + 0.2)) < 1e-9;
    }, 'the position in PostgreSQL');
  });

  it('when the webhook secret was generated, then the signed curl example printed at start targets HTTP_PORT', async () => {
    const env = envFrom(testConfig(db), { NODE_ID: 'curl', API_THREAD: 'true', HTTP_PORT: '0' });
    delete env.WEBHOOK_SECRET;
    const child = await spawnHub(env);
    try {
      // The notes follow the listening line.
      const note = await eventually(() => child.logs.find((line) => line.includes('curl -s -X POST')), 'the curl example in the log');
      expect(note).toContain(`http://localhost:${child.apiPort}/events/seller-order-ready`);
    } finally {
      await child.kill('SIGKILL');
    }
  });

  it('when the hub gets SIGTERM, then the API thread stops with it and the process exits 0', async () => {
    expect(await hub.kill('SIGTERM')).toBe(0);
    await expect(fetch(`${apiSide.url}/health`)).rejects.toThrow();
  });
});

describe('the API thread, with a stand-in entry', () => {
  it('when the thread dies, then the main thread starts it again on the port it had', async () => {
    const logs = logSink();
    const events = new HubEvents();
    const given: string[] = [];
    events.on('driver:revoked', ({ driverId }) => given.push(driverId));
    const metrics = createMetrics('stand-in');
    const thread = await startApiThread({
      entry: new URL('./support/dying-api-thread.mjs', import.meta.url),
      data: { config: { HTTP_PORT: 0 } as never, mainPort: 1 },
      logger: createLogger({ level: 'info', nodeId: 'stand-in', pretty: false }, logs.stream),
      events,
      registry: metrics.registry,
      restarted: () => metrics.apiThreadRestarts.inc(),
      shutdownTimeoutMs: 500,
    });
    expect(thread.port()).toBe(45_678);
    await eventually(() => given.length >= 2, 'a second thread started', 5000);
    expect(given.slice(0, 2)).toEqual(['given-0', 'given-45678']);
    expect(logs.lines().some((line) => line.msg === 'api thread exited; restarting it')).toBe(true);
    expect((await metrics.apiThreadRestarts.get()).values[0].value).toBeGreaterThanOrEqual(1);
    await thread.stop();
  });

  it('when npm run cluster is asked for several workers with API_THREAD, then it refuses and says why; one worker may have it', () => {
    const env = { API_THREAD: 'true', HTTP_PORT: '8081', DATABASE_URL: 'postgres://127.0.0.1/x', REDIS_URL: 'redis://127.0.0.1:6379' };
    expect(clusterProblems(env, 2)).toEqual([expect.stringMatching(/^API_THREAD: not with more than one worker/)]);
    expect(clusterProblems(env, 1)).toEqual([]);
    expect(clusterProblems({ ...env, API_THREAD: 'false' }, 2)).toEqual([]);
  });

  it('when API_THREAD is set without HTTP_PORT or without DATABASE_URL, then the config is refused with the reason', () => {
    const env = { API_THREAD: 'true', WEBHOOK_SECRET: undefined };
    expect(() => parseConfig({ ...env, DATABASE_URL: 'postgres://127.0.0.1/x' }, () => 'x'.repeat(40))).toThrow(ConfigError);
    expect(() => parseConfig({ ...env, HTTP_PORT: '8081' }, () => 'x'.repeat(40))).toThrow(/API_THREAD: needs HTTP_PORT .* and DATABASE_URL/);
    expect(parseConfig({ ...env, HTTP_PORT: '8081', DATABASE_URL: 'postgres://127.0.0.1/x' }, () => 'x'.repeat(40)).API_THREAD).toBe(true);
  });
});

async function metric(hub: { url: string }, name: string, labels: string): Promise<number> {
  const text = await (await fetch(`${hub.url}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name}{`) && l.includes(labels));
  return line ? Number(line.slice(line.lastIndexOf(' ') + 1)) : 0;
}
