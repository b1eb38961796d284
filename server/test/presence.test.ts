import fc from 'fast-check';
import { SignJWT } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CircuitBreaker } from '../src/platform/redis.js';
import { TOKEN_AUDIENCE, TOKEN_ISSUER } from '../src/platform/tokens.js';
import { createPresenceStore, presenceKeys } from '../src/presence/presence.store.js';
import { envFrom, spawnHub } from './support/child-hub.js';
import {
  ADMIN_TOKEN,
  api,
  connectDriver,
  connectError,
  connectSocket,
  createDriver,
  JWT_SECRET,
  onDutyDriver,
  redisFor,
  startTestHub,
  type TestDatabase,
  type TestHub,
  testConfig,
} from './support/hub.js';
import { HUB_MODES, type PresencePicture, pictureOf } from './support/modes.js';
import { eventually } from './support/net.js';

const BERLIN = { lat: 52.52, lng: 13.405 };

describe.each(HUB_MODES)('driver presence, $name', (mode) => {
  let db: TestDatabase;
  let hub: TestHub;
  let picture: PresencePicture;
  /** Redis itself, for what only the Redis layout has (with Redis only). */
  let redis: ReturnType<typeof redisFor>;
  let keys: ReturnType<typeof presenceKeys>;

  beforeAll(async () => {
    db = await mode.database();
    hub = await startTestHub(testConfig(db, { HEARTBEAT_TTL_SECONDS: '2', ...mode.env }));
    picture = pictureOf(hub);
    if (mode.redis) {
      redis = redisFor(hub);
      keys = presenceKeys(hub.config.REDIS_PREFIX);
    }
  });
  afterAll(async () => {
    await hub?.stop();
    picture?.close();
    redis?.disconnect();
    await db?.drop();
  });

  const inGeo = (id: string) => picture.inGeo(id);
  const latOf = async (id: string) => (await picture.position(id))?.lat;
  const pgStatus = async (id: string) => (await api(hub, 'GET', '/admin/drivers')).body.drivers.find((d: any) => d.id === id)?.status;

  it('when the token is missing, forged, expired or of the wrong role, then connect_error carries a code and no socket opens', async () => {
    const missing = await connectError(connectSocket(hub, '/drivers', {}));
    expect(missing.data.code).toBe('TOKEN_MISSING');
    const forged = await connectError(connectSocket(hub, '/drivers', { token: 'a.b.c' }));
    expect(forged.data.code).toBe('TOKEN_INVALID');
    const key = new TextEncoder().encode(JWT_SECRET);
    const expired = await new SignJWT({ role: 'driver' }).setProtectedHeader({ alg: 'HS256' }).setIssuer(TOKEN_ISSUER).setAudience(TOKEN_AUDIENCE).setSubject('x').setExpirationTime(Math.floor(Date.now() / 1000) - 60).sign(key);
    expect((await connectError(connectSocket(hub, '/drivers', { token: expired }))).data.code).toBe('TOKEN_EXPIRED');
    const otherKey = new TextEncoder().encode('another-secret-another-secret-another-secret');
    const wrongKey = await new SignJWT({ role: 'driver' }).setProtectedHeader({ alg: 'HS256' }).setIssuer(TOKEN_ISSUER).setAudience(TOKEN_AUDIENCE).setSubject('x').setExpirationTime('1h').sign(otherKey);
    expect((await connectError(connectSocket(hub, '/drivers', { token: wrongKey }))).data.code).toBe('TOKEN_INVALID');
    const dispatcher = (await api(hub, 'POST', '/admin/tokens', { role: 'dispatcher', subject: 'd' })).body.token;
    expect((await connectError(connectSocket(hub, '/drivers', { token: dispatcher }))).data.code).toBe('FORBIDDEN');
  });

  it('when a driver connects, then it gets its session; going on duty with a position puts it in the GEO set', async () => {
    const { id, token } = await createDriver(hub, 'Session');
    const client = await connectDriver(hub, token);
    expect(client.session).toEqual({ driverId: id, status: 'OFFLINE', activeDelivery: null, offer: null, locationConfirmation: 'cumulative' });
    expect(await picture.alive(id)).toBe(true);
    expect((await client.emitAck('location', BERLIN)).ok).toBe(true);
    const st = await client.emitAck('status', { status: 'AVAILABLE' });
    expect(st).toEqual({ ok: true, status: 'AVAILABLE' });
    await eventually(() => inGeo(id), 'driver in geo');
    expect(await picture.status(id)).toBe('AVAILABLE');
    expect(await pgStatus(id)).toBe('AVAILABLE');
    client.close();
  });

  it('when pings arrive, then positions reach GEO and, in batches, PostgreSQL', async () => {
    const driver = await onDutyDriver(hub, BERLIN, 'Mover');
    await driver.emitAck('location', { lat: 52.6, lng: 13.5, heading: 90, speed: 8 });
    await eventually(async () => Math.abs(((await latOf(driver.id)) ?? 0) - 52.6) < 1e-4, 'geo position updated');
    await eventually(async () => {
      const d = (await api(hub, 'GET', '/admin/drivers')).body.drivers.find((x: any) => x.id === driver.id);
      return d.lat === 52.6 && d.lng === 13.5;
    }, 'postgres position flushed');
    driver.close();
  });

  it('when a batch of buffered fixes arrives, then the newest wins', async () => {
    const driver = await onDutyDriver(hub, BERLIN, 'Batch');
    const now = Date.now();
    const ack = await driver.emitAck('location', [
      { lat: 10, lng: 10, ts: now - 1000 },
      { lat: 11, lng: 11, ts: now },
      { lat: 9, lng: 9, ts: now - 2000 },
    ]);
    expect(ack).toEqual({ ok: true, accepted: 3 });
    await eventually(async () => Math.abs(((await latOf(driver.id)) ?? 0) - 11) < 1e-4, 'newest fix in geo');
    driver.close();
  });

  it('when a ping is invalid, then the ack says ok:false with a code, it is counted, and nothing changes', async () => {
    const driver = await onDutyDriver(hub, BERLIN, 'Bad');
    await eventually(() => inGeo(driver.id), 'in geo');
    const bad: unknown[] = [
      { lat: 91, lng: 0 },
      { lat: 86, lng: 0 },
      { lat: 0, lng: 181 },
      { lat: 'x', lng: 0 },
      { lat: null, lng: 0 },
      { lng: 0 },
      { lat: 1, lng: 1, driverId: 'someone-else' },
      'hello',
      [],
      42,
      null,
    ];
    for (const payload of bad) {
      const ack = await driver.emitAck('location', payload);
      expect(ack.ok, JSON.stringify(payload)).toBe(false);
      if (!ack.ok) expect(ack.error.code).toBe('VALIDATION_FAILED');
    }
    // Non-finite numbers cannot travel as JSON; socket.io turns them into null, which is refused above.
    expect(await latOf(driver.id)).toBeCloseTo(BERLIN.lat, 4);
    const metrics = await (await fetch(`${hub.url}/metrics`)).text();
    expect(metrics).toMatch(/hub_input_rejected_total\{[^}]*event="location"[^}]*\} \d+/);
    driver.close();
  });

  it('when a driver goes off duty, then it leaves the GEO set and late pings do not bring it back', async () => {
    const driver = await onDutyDriver(hub, BERLIN, 'OffDuty');
    await eventually(() => inGeo(driver.id), 'in geo');
    expect(await driver.emitAck('status', { status: 'OFFLINE' })).toEqual({ ok: true, status: 'OFFLINE' });
    expect(await inGeo(driver.id)).toBe(false);
    await driver.emitAck('location', { lat: 52.53, lng: 13.41 });
    await new Promise((r) => setTimeout(r, 150));
    expect(await inGeo(driver.id)).toBe(false);
    expect((await driver.emitAck('status', { status: 'BUSY' })).ok).toBe(false);
    driver.close();
  });

  it('when a driver disconnects, then it is OFFLINE in Redis and PostgreSQL at once; reconnecting on duty brings it back AVAILABLE', async () => {
    const driver = await onDutyDriver(hub, BERLIN, 'Reconnect');
    await eventually(() => inGeo(driver.id), 'in geo');
    driver.close();
    await eventually(async () => !(await inGeo(driver.id)) && (await picture.status(driver.id)) === 'OFFLINE', 'out of geo');
    await eventually(async () => (await pgStatus(driver.id)) === 'OFFLINE', 'offline in postgres');
    const again = await connectDriver(hub, driver.token);
    expect(again.session.status).toBe('AVAILABLE');
    await eventually(() => inGeo(driver.id), 'back in geo');
    again.close();
  });

  it('when the same driver connects twice, then the newest connection wins and the old one is closed', async () => {
    const { token, id } = await createDriver(hub, 'Twice');
    const first = await connectDriver(hub, token);
    const closed = new Promise((resolve) => first.socket.once('disconnect', resolve));
    const second = await connectDriver(hub, token);
    await closed;
    expect(second.socket.connected).toBe(true);
    await new Promise((r) => setTimeout(r, 100));
    expect(await picture.alive(id)).toBe(true);
    second.close();
  });

  it.runIf(mode.redis)('when pings race with a status change to BUSY, then a BUSY or OFFLINE driver never appears in GEOSEARCH', async () => {
    const prefix = `${hub.config.REDIS_PREFIX}race:`;
    const store = createPresenceStore({ redis, breaker: new CircuitBreaker(), prefix, heartbeatTtlSeconds: 30 });
    const ids = ['d1', 'd2', 'd3'];
    await fc.assert(
      fc.asyncProperty(
        fc.scheduler(),
        fc.array(fc.record({ id: fc.constantFrom(...ids), kind: fc.constantFrom('ping', 'busy', 'offline', 'available') }), { minLength: 5, maxLength: 25 }),
        async (s, ops) => {
          for (const id of ids) await store.setStatus(id, 'AVAILABLE', { position: BERLIN, heartbeat: 'refresh' });
          const finalStatus = new Map<string, string>(ids.map((id) => [id, 'AVAILABLE']));
          const tasks = ops.map((op) =>
            s.schedule(Promise.resolve(op)).then(async () => {
              if (op.kind === 'ping') await store.writeFixes([{ id: op.id, ...BERLIN }]);
              else if (op.kind === 'busy') await store.setStatus(op.id, 'BUSY');
              else if (op.kind === 'offline') await store.setStatus(op.id, 'OFFLINE');
              else await store.setStatus(op.id, 'AVAILABLE', { position: BERLIN, heartbeat: 'refresh' });
              if (op.kind !== 'ping') finalStatus.set(op.id, op.kind.toUpperCase());
              const found = await store.nearest(BERLIN, 1000, 10);
              const statuses = await redis.hgetall(presenceKeys(prefix).status);
              for (const f of found) expect(statuses[f.driverId]).toBe('AVAILABLE');
            }),
          );
          await s.waitAll();
          await Promise.all(tasks);
          const found = new Set((await store.nearest(BERLIN, 1000, 10)).map((f) => f.driverId));
          for (const id of ids) {
            if (finalStatus.get(id) !== 'AVAILABLE') expect(found.has(id)).toBe(false);
          }
        },
      ),
      { numRuns: 60 },
    );
  });

  it.runIf(mode.redis)('when a batch of status changes is written at once, then each driver ends as setStatus alone would leave it: only AVAILABLE ones with a position and a heartbeat are in GEO', async () => {
    const prefix = `${hub.config.REDIS_PREFIX}batch:`;
    const store = createPresenceStore({ redis, breaker: new CircuitBreaker(), prefix, heartbeatTtlSeconds: 30 });
    const own = presenceKeys(prefix);
    await store.setStatus('was-available', 'AVAILABLE', { position: BERLIN, heartbeat: 'refresh' });
    await store.setStatuses([
      { id: 'connects', status: 'AVAILABLE', position: { lat: 52.5, lng: 13.4 }, heartbeat: 'refresh' },
      { id: 'no-position', status: 'AVAILABLE', heartbeat: 'refresh' },
      { id: 'no-heartbeat', status: 'AVAILABLE', position: BERLIN },
      { id: 'busy', status: 'BUSY', position: BERLIN, heartbeat: 'refresh' },
      { id: 'was-available', status: 'OFFLINE', heartbeat: 'drop' },
    ]);
    expect(await redis.hgetall(own.status)).toEqual({ connects: 'AVAILABLE', 'no-position': 'AVAILABLE', 'no-heartbeat': 'AVAILABLE', busy: 'BUSY', 'was-available': 'OFFLINE' });
    expect((await redis.zrange(own.geo, '0', '-1')).sort()).toEqual(['connects']);
    const [[lng, lat]] = (await redis.geopos(own.geo, 'connects')) as [string, string][];
    expect(Number(lat)).toBeCloseTo(52.5, 4);
    expect(Number(lng)).toBeCloseTo(13.4, 4);
    expect(await redis.exists(own.online('was-available'), own.online('no-heartbeat'))).toBe(0);
    expect(await redis.pttl(own.online('connects'))).toBeGreaterThan(29_000);
    await store.setStatuses([]);
  });

  it.runIf(mode.redis)('when a driver pings several times a second, then its heartbeat key is rewritten every TTL/3 and not per ping, and it stays alive past the TTL', async () => {
    const driver = await onDutyDriver(hub, BERLIN, 'Chatty');
    try {
      const started = Date.now();
      let lowestPttl = Number.POSITIVE_INFINITY;
      // 3 s of pings every 150 ms with a 2 s TTL: alive throughout, yet not rewritten on every fix.
      while (Date.now() - started < 3000) {
        expect((await driver.emitAck('location', { lat: BERLIN.lat + Math.random() * 1e-3, lng: BERLIN.lng })).ok).toBe(true);
        await new Promise((r) => setTimeout(r, 150));
        const pttl = await redis.pttl(keys.online(driver.id));
        expect(pttl).toBeGreaterThan(0);
        lowestPttl = Math.min(lowestPttl, pttl);
      }
      // Rewritten on every fix, the key would never fall much below the full 2 s.
      expect(lowestPttl).toBeLessThan(1600);
      expect(await inGeo(driver.id)).toBe(true);
      expect(await pgStatus(driver.id)).toBe('AVAILABLE');
    } finally {
      driver.close();
    }
  });

  it.runIf(mode.redis)('when thousands of GEO members lose their heartbeat, then the expiry sweep removes exactly those, one slice at a time', async () => {
    const prefix = `${hub.config.REDIS_PREFIX}expiry:`;
    const store = createPresenceStore({ redis, breaker: new CircuitBreaker(), prefix, heartbeatTtlSeconds: 30 });
    const ids = Array.from({ length: 2600 }, (_, i) => `driver-${String(i).padStart(4, '0')}`);
    const silent = new Set(ids.filter((_, i) => i % 3 === 0));
    const own = presenceKeys(prefix);
    const pipeline = redis.pipeline();
    for (const [i, id] of ids.entries()) {
      pipeline.geoadd(own.geo, String(BERLIN.lng + i * 1e-5), String(BERLIN.lat), id);
      if (!silent.has(id)) pipeline.set(own.online(id), '1', 'EX', 30);
    }
    await pipeline.exec();
    const removed = await store.expiredDrivers();
    expect(new Set(removed)).toEqual(silent);
    const left = await redis.zrange(own.geo, '0', '-1');
    expect(left.length).toBe(ids.length - silent.size);
    expect(left.some((id) => silent.has(id))).toBe(false);
    const keysLeft = await redis.keys(`${prefix}*`);
    if (keysLeft.length) await redis.del(...keysLeft);
  });

  it.runIf(mode.redis)('when thousands of quiet drivers are touched, then every one gets its heartbeat key with the TTL, slice after slice', async () => {
    const prefix = `${hub.config.REDIS_PREFIX}touch:`;
    const store = createPresenceStore({ redis, breaker: new CircuitBreaker(), prefix, heartbeatTtlSeconds: 30 });
    const ids = Array.from({ length: 4500 }, (_, i) => `quiet-${String(i).padStart(4, '0')}`);
    await store.touch(ids);
    const own = presenceKeys(prefix);
    const pipeline = redis.pipeline();
    for (const id of ids) pipeline.ttl(own.online(id));
    const ttls = ((await pipeline.exec()) ?? []).map(([, ttl]) => ttl as number);
    expect(ttls).toHaveLength(ids.length);
    expect(ttls.filter((ttl) => ttl <= 0 || ttl > 30)).toEqual([]);
    const keysLeft = await redis.keys(`${prefix}*`);
    expect(keysLeft).toHaveLength(ids.length);
    await redis.del(...keysLeft);
  });

  it.runIf(mode.redis && mode.sharedDatabase)('when a hub process is killed with SIGKILL, then its drivers go OFFLINE by heartbeat expiry and leave the GEO set', async () => {
    const child = await spawnHub(envFrom(hub.config, { NODE_ID: 'victim', HEARTBEAT_TTL_SECONDS: '2' }));
    const victimHub = { url: child.url } as TestHub;
    try {
      const { id, token } = await createDriver(victimHub, 'Ghost');
      const client = await connectDriver(victimHub, token, { reconnection: false });
      await client.emitAck('location', BERLIN);
      await client.emitAck('status', { status: 'AVAILABLE' });
      await eventually(() => inGeo(id), 'ghost in geo');
      console.log('ghost in geo', Date.now());
      await child.kill('SIGKILL');
      console.log('killed', Date.now());
      await eventually(async () => !(await inGeo(id)), 'ghost out of geo', 15_000);
      await eventually(async () => (await pgStatus(id)) === 'OFFLINE', 'ghost offline in postgres', 15_000);
      expect(await redis.hget(keys.status, id)).toBe('OFFLINE');
      client.close();
    } finally {
      await child.kill('SIGKILL');
    }
  }, 60_000);

  it('when the admin token is used as a socket token, then the handshake is refused', async () => {
    expect((await connectError(connectSocket(hub, '/drivers', { token: ADMIN_TOKEN }))).data.code).toBe('TOKEN_INVALID');
  });
});
