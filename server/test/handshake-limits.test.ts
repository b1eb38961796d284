import type { Socket } from 'socket.io-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sharedLoad, SNAPSHOT_MAX_DELIVERIES, SNAPSHOT_MAX_DRIVERS } from '../src/realtime/dispatch.socket.js';
import { TcpProxy } from './support/faults.js';
import {
  api,
  connectDriver,
  connectError,
  connectSocket,
  createDriver,
  createTestDatabase,
  firstEvent,
  hasSharedPostgres,
  type TestDatabase,
  type TestHub,
  startTestHub,
  testConfig,
} from './support/hub.js';

describe('snapshot loads', () => {
  it('when many callers arrive together, then at most one load runs and one waits, and each caller gets a load that started after it called', async () => {
    let started = 0;
    const gates: (() => void)[] = [];
    const load = sharedLoad(() => {
      const n = ++started;
      return new Promise<number>((resolve) => gates.push(() => resolve(n)));
    });
    const first = load();
    const during = Array.from({ length: 20 }, () => load());
    expect(started).toBe(1);
    gates.shift()!();
    expect(await first).toBe(1);
    // The ones that came while load 1 ran get load 2, which starts only now.
    await new Promise((r) => setTimeout(r, 0));
    expect(started).toBe(2);
    const late = load();
    gates.shift()!();
    expect(await Promise.all(during)).toEqual(Array(20).fill(2));
    await new Promise((r) => setTimeout(r, 0));
    gates.shift()!();
    expect(await late).toBe(3);
    expect(started).toBe(3);
  });

  it('when a load fails, then its callers see the failure and the next caller starts a fresh one', async () => {
    let calls = 0;
    const load = sharedLoad(async () => {
      calls += 1;
      if (calls === 1) throw new Error('database away');
      return calls;
    });
    await expect(load()).rejects.toThrow('database away');
    expect(await load()).toBe(2);
  });

  it('when the snapshot is built, then it is bounded', () => {
    expect(SNAPSHOT_MAX_DRIVERS).toBeLessThanOrEqual(10_000);
    expect(SNAPSHOT_MAX_DELIVERIES).toBeLessThanOrEqual(1000);
  });
});

describe.skipIf(!hasSharedPostgres())('handshake rate limits come before any database lookup', () => {
  let db: TestDatabase;
  let hub: TestHub;
  let postgresProxy: TcpProxy;

  beforeAll(async () => {
    db = await createTestDatabase();
    const url = new URL(db.url!);
    postgresProxy = new TcpProxy(Number(url.port || 5432));
    await postgresProxy.start();
    url.port = String(postgresProxy.port);
    hub = await startTestHub(testConfig(db, { DATABASE_URL: url.toString() }), {
      edge: { rateLimits: { driverConnect: { points: 2, seconds: 60 }, dispatcherConnect: { points: 2, seconds: 60 } } },
    });
  });
  afterAll(async () => {
    postgresProxy?.set('pass');
    await hub?.stop();
    await postgresProxy?.stop();
    await db?.drop();
  });

  it('when a driver or a dispatcher is over its handshake budget and PostgreSQL is unreachable, then the handshake is refused as RATE_LIMITED, not as a failed lookup', async () => {
    const { token } = await createDriver(hub, 'Eager');
    const dispatcher = (await api(hub, 'POST', '/admin/tokens', { role: 'dispatcher', subject: 'eager-desk' })).body.token;
    const open: Socket[] = [];
    for (let i = 0; i < 2; i++) {
      open.push((await connectDriver(hub, token)).socket);
      const map = connectSocket(hub, '/dispatch', { token: dispatcher });
      await firstEvent(map, 'snapshot');
      open.push(map);
    }
    postgresProxy.set('refuse');
    const started = Date.now();
    const driver = await connectError(connectSocket(hub, '/drivers', { token }));
    const map = await connectError(connectSocket(hub, '/dispatch', { token: dispatcher }));
    expect(driver.data).toMatchObject({ code: 'RATE_LIMITED', details: { retryAfterMs: expect.any(Number) } });
    expect(map.data).toMatchObject({ code: 'RATE_LIMITED', details: { retryAfterMs: expect.any(Number) } });
    expect(Date.now() - started).toBeLessThan(5000);
    // Within budget, the same outage is a lookup that fails: proof the limit ran first above.
    const other = await createDriverWhileDown();
    expect(other).toBe('SERVICE_UNAVAILABLE');
    postgresProxy.set('pass');
    for (const s of open) s.disconnect();
  });

  /** A fresh driver's first handshake during the outage (its token minted before it). */
  async function createDriverWhileDown(): Promise<string> {
    postgresProxy.set('pass');
    const { token } = await createDriver(hub, 'Fresh');
    postgresProxy.set('refuse');
    return (await connectError(connectSocket(hub, '/drivers', { token }))).data.code;
  }
});
