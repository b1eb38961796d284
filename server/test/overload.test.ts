import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { presenceKeys } from '../src/presence/presence.store.js';
import {
  api,
  connectDriver,
  createDriver,
  createTestDatabase,
  metricOf,
  type DriverClient,
  redisFor,
  startTestHub,
  type TestDatabase,
  type TestHub,
  testConfig,
} from './support/hub.js';
import { eventually } from './support/net.js';

const BERLIN = { lat: 52.52, lng: 13.405 };
const TTL_SECONDS = 2;

/** Keeps this process's event loop busy most of the time, as a hub past its capacity is. */
function overloadLoop(busyMs: number, everyMs: number): () => void {
  const timer = setInterval(() => {
    const until = performance.now() + busyMs;
    while (performance.now() < until) {
      // busy: nothing else in the process runs meanwhile
    }
  }, everyMs);
  return () => clearInterval(timer);
}

describe('a hub past its capacity', () => {
  let db: TestDatabase;
  let hub: TestHub;
  let redis: ReturnType<typeof redisFor>;

  beforeAll(async () => {
    db = await createTestDatabase();
    // A short heartbeat, so several of them expire during the test, and a low lag limit, so the
    // loop kept busy below counts as overload.
    hub = await startTestHub(testConfig(db, { HEARTBEAT_TTL_SECONDS: String(TTL_SECONDS), SHED_LAG_MS: '50' }));
    redis = redisFor(hub);
  });
  afterAll(async () => {
    await hub?.stop();
    redis?.disconnect();
    await db?.drop();
  });

  it('when the event loop runs late for several heartbeat lifetimes, then fixes are refused with a coded answer, no live driver goes OFFLINE, and a driver that leaves still does', async () => {
    const keys = presenceKeys(hub.config.REDIS_PREFIX);
    const drivers: (DriverClient & { id: string })[] = [];
    for (let i = 0; i < 5; i++) {
      const { id, token } = await createDriver(hub, `Busy ${i}`);
      const client = await connectDriver(hub, token);
      // The hub may already shed a fix here when the machine is busy (the lag limit is low), which
      // is its documented answer; the driver retries, as the driver client does.
      const first = { lat: BERLIN.lat + i * 0.001, lng: BERLIN.lng };
      await eventually(async () => (await client.emitAck('location', first)).ok === true, 'the first fix taken', 10_000);
      expect((await client.emitAck('status', { status: 'AVAILABLE' })).ok).toBe(true);
      drivers.push(Object.assign(client, { id }));
    }
    const [leaver, ...staying] = drivers;
    await eventually(async () => (await redis.zcard(keys.geo)) === drivers.length, 'every driver in the GEO set');
    const sweptBefore = await metricOf(hub, 'hub_drivers_swept_total');
    const shedBefore = await metricOf(hub, 'hub_location_fixes_shed_total');

    const replies: { ok: boolean; error?: { code: string; details?: unknown } }[] = [];
    const notLive = new Set<string>();
    let pinging = true;
    const pings = staying.map(async (driver, i) => {
      for (let n = 0; pinging; n++) {
        replies.push(await driver.emitAck('location', { lat: BERLIN.lat + i * 0.001 + (n % 2) * 1e-5, lng: BERLIN.lng }));
        await new Promise((r) => setTimeout(r, 100));
      }
    });
    const stopLoad = overloadLoop(90, 110);
    try {
      const until = Date.now() + TTL_SECONDS * 3 * 1000;
      let left = false;
      while (Date.now() < until) {
        if (!left && Date.now() > until - TTL_SECONDS * 1500) {
          // A driver that really leaves during the overload goes OFFLINE all the same.
          leaver.close();
          left = true;
        }
        const statuses = await redis.hmget(keys.status, ...staying.map((d) => d.id));
        const scores = (await redis.call('ZMSCORE', keys.geo, ...staying.map((d) => d.id))) as (string | null)[];
        staying.forEach((d, i) => {
          if (statuses[i] !== 'AVAILABLE' || scores[i] === null) notLive.add(d.id);
        });
        await new Promise((r) => setTimeout(r, 200));
      }
    } finally {
      stopLoad();
      pinging = false;
      await Promise.all(pings);
    }

    const refused = replies.filter((r) => !r.ok);
    expect(refused.length).toBeGreaterThan(0);
    for (const r of refused) {
      expect(r.error).toMatchObject({ code: 'RATE_LIMITED', details: { overloaded: true } });
      expect((r.error?.details as { retryAfterMs?: number }).retryAfterMs).toBeGreaterThan(0);
    }
    expect(await metricOf(hub, 'hub_location_fixes_shed_total')).toBe(shedBefore + refused.length);
    expect([...notLive]).toEqual([]);
    const listed = new Map<string, string>((await api(hub, 'GET', '/admin/drivers')).body.drivers.map((d: any) => [d.id, d.status]));
    for (const driver of staying) expect(listed.get(driver.id)).toBe('AVAILABLE');
    expect(await metricOf(hub, 'hub_drivers_swept_total')).toBe(sweptBefore);
    await eventually(async () => (await api(hub, 'GET', '/admin/drivers')).body.drivers.find((d: any) => d.id === leaver.id)?.status === 'OFFLINE', 'the driver that left OFFLINE');

    // Once the hub has caught up, fixes are taken again.
    await eventually(async () => (await staying[0].emitAck('location', BERLIN)).ok === true, 'fixes taken again', 5000);
    for (const driver of staying) driver.close();
  });
});
