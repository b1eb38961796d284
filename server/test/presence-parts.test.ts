import { describe, expect, it } from 'vitest';
import type { DriverStatus } from '#shared/schemas.js';
import type { DriverPosition, DriverPresenceRow, HeldPresenceRow } from '../src/drivers/drivers.store.js';
import { HubEvents } from '../src/platform/hub-events.js';
import { createLogger } from '../src/platform/logger.js';
import { createMetrics } from '../src/platform/metrics.js';
import { createDriverSessions } from '../src/presence/driver-sessions.js';
import { createCandidateSearch, searchRadii } from '../src/presence/nearest-candidates.js';
import { createPositionPipeline, type PositionPipeline, storedSlotOf } from '../src/presence/position-pipeline.js';
import { createNoopPresenceStore, type Fix, type PresenceStore } from '../src/presence/presence.store.js';
import { createRedisRepair } from '../src/presence/redis-repair.js';

const logger = createLogger({ level: 'silent', nodeId: 'unit' });
const DRIVER = '11111111-1111-4111-8111-111111111111';
const OTHER = '22222222-2222-4222-8222-222222222222';
const BERLIN = { lat: 52.52, lng: 13.405 };

/** A Redis presence store that records its calls and answers what the test sets; nothing is kept. */
function fakeStore(overrides: Partial<PresenceStore> = {}) {
  const calls: { name: string; args: unknown[] }[] = [];
  const record =
    <T>(name: string, answer: (...args: any[]) => T) =>
    async (...args: unknown[]) => {
      calls.push({ name, args });
      return answer(...args);
    };
  const store: PresenceStore = {
    enabled: true,
    available: true,
    healthy: true,
    connected: true,
    writeFixes: record('writeFixes', (fixes: Fix[]) => fixes.map((): DriverStatus => 'AVAILABLE')),
    tryLease: record('tryLease', () => true),
    setStatus: record('setStatus', () => undefined),
    setStatuses: record('setStatuses', () => undefined),
    touch: record('touch', () => undefined),
    nearest: record('nearest', () => []),
    lookup: record('lookup', (ids: string[]) => ({ statuses: ids.map(() => null), inGeo: ids.map(() => false) })),
    scanStatuses: record('scanStatuses', (): [string, [string, string][]] => ['0', []]),
    scanGeo: record('scanGeo', (): [string, string[]] => ['0', []]),
    expiredDrivers: record('expiredDrivers', () => []),
    rebuild: record('rebuild', () => undefined),
    hasPicture: record('hasPicture', () => true),
    ...overrides,
  };
  return { store, calls, named: (name: string) => calls.filter((c) => c.name === name).map((c) => c.args) };
}

describe('position pipeline', () => {
  function pipelineWith(store: Pick<PresenceStore, 'available' | 'writeFixes'>, statuses = new Map<string, DriverStatus>()) {
    const flushed: DriverPosition[][] = [];
    const failures: string[] = [];
    let failFlush = false;
    const pipeline = createPositionPipeline({
      drivers: {
        flushPositions: async (batch) => {
          if (failFlush) throw new Error('postgres away');
          flushed.push([...batch]);
        },
      },
      store,
      statuses,
      redisWriteFailed: (what) => failures.push(what),
      logger,
      metrics: createMetrics('unit'),
      // 3 s: a heartbeat rewrite every second at most.
      config: { heartbeatTtlSeconds: 3, locationTickMs: 5 },
    });
    return {
      pipeline,
      flushed,
      failures,
      failFlushes: (on: boolean) => {
        failFlush = on;
      },
    };
  }
  /** Writes out what is pending now, without the tick timer. */
  const flush = async (pipeline: PositionPipeline) => {
    await pipeline.halt();
    await pipeline.flushAll();
  };

  it('when a batch of fixes arrives, then the newest by client time is written once and the map sees it with the status Redis answered', async () => {
    const redis = fakeStore({ writeFixes: async (fixes) => fixes.map((): DriverStatus => 'BUSY') });
    const { pipeline, flushed } = pipelineWith(redis.store);
    pipeline.acceptFixes(DRIVER, [
      { lat: 1, lng: 1, ts: 1000 },
      { lat: 3, lng: 3, ts: 3000 },
      { lat: 2, lng: 2, ts: 2000 },
    ]);
    await flush(pipeline);
    expect(flushed).toEqual([[expect.objectContaining({ id: DRIVER, lat: 3, lng: 3 })]]);
    expect(pipeline.drainMoves()).toEqual([expect.objectContaining({ id: DRIVER, lat: 3, lng: 3, status: 'BUSY' })]);
    expect(pipeline.drainMoves()).toEqual([]);
  });

  it('when a driver pings within a third of the TTL, then only the first fix rewrites its heartbeat, and a dropped heartbeat comes back with the next fix', async () => {
    const written: Fix[][] = [];
    const { pipeline } = pipelineWith({
      available: true,
      writeFixes: async (fixes) => {
        written.push([...fixes]);
        return fixes.map((): DriverStatus => 'AVAILABLE');
      },
    });
    for (const change of [null, null, 'drop', null] as const) {
      if (change) pipeline.heartbeatChanged(DRIVER, change);
      else {
        pipeline.acceptFixes(DRIVER, [BERLIN]);
        await flush(pipeline);
      }
    }
    expect(written.map(([fix]) => fix.beat)).toEqual([true, false, true]);
  });

  it('when the GEO write fails, then Redis repair hears of it, the next fix rewrites the heartbeat, and the map moves with the status this node knows', async () => {
    let fail = true;
    const written: Fix[][] = [];
    const { pipeline, failures } = pipelineWith(
      {
        available: true,
        writeFixes: async (fixes) => {
          written.push([...fixes]);
          if (fail) throw new Error('timeout');
          return fixes.map((): DriverStatus => 'AVAILABLE');
        },
      },
      new Map([[DRIVER, 'BUSY']]),
    );
    pipeline.acceptFixes(DRIVER, [BERLIN]);
    await flush(pipeline);
    expect(failures).toEqual(['geo batch']);
    expect(pipeline.drainMoves()).toEqual([expect.objectContaining({ id: DRIVER, status: 'BUSY' })]);
    fail = false;
    pipeline.acceptFixes(DRIVER, [BERLIN]);
    await flush(pipeline);
    expect(written.map(([fix]) => fix.beat)).toEqual([true, true]);
  });

  it('when Redis is not available, then no script call is made and positions still reach PostgreSQL', async () => {
    const redis = fakeStore({ available: false });
    const { pipeline, flushed } = pipelineWith(redis.store);
    pipeline.acceptFixes(DRIVER, [BERLIN]);
    await flush(pipeline);
    expect(redis.named('writeFixes')).toEqual([]);
    expect(flushed).toHaveLength(1);
    expect(pipeline.drainMoves()).toEqual([expect.objectContaining({ id: DRIVER, status: 'OFFLINE' })]);
  });

  it('when numbered fixes are stored, then their slot drains the highest number once, and a new connection starts from nothing', async () => {
    const { pipeline } = pipelineWith(fakeStore().store);
    pipeline.acceptFixes(DRIVER, [BERLIN], 7);
    pipeline.acceptFixes(DRIVER, [BERLIN], 5);
    await flush(pipeline);
    expect(pipeline.drainStored(storedSlotOf(DRIVER))).toEqual(new Map([[DRIVER, 7]]));
    expect(pipeline.drainStored(storedSlotOf(DRIVER)).size).toBe(0);
    pipeline.acceptFixes(DRIVER, [BERLIN], 9);
    await pipeline.flushAll();
    pipeline.restartConfirmations(DRIVER);
    expect(pipeline.drainStored(storedSlotOf(DRIVER)).size).toBe(0);
  });

  it('when a numbered fix is stored twice (its GEO write, then its PostgreSQL flush), then it is confirmed once', async () => {
    const { pipeline } = pipelineWith(fakeStore().store);
    pipeline.acceptFixes(DRIVER, [BERLIN], 4);
    // The GEO write goes out on its own after the tick; the PostgreSQL flush waits for its timer.
    await new Promise((r) => setTimeout(r, 40));
    expect(pipeline.drainStored(storedSlotOf(DRIVER))).toEqual(new Map([[DRIVER, 4]]));
    await pipeline.flushToPostgres();
    expect(pipeline.drainStored(storedSlotOf(DRIVER)).size).toBe(0);
    pipeline.acceptFixes(DRIVER, [BERLIN], 5);
    await flush(pipeline);
    expect(pipeline.drainStored(storedSlotOf(DRIVER))).toEqual(new Map([[DRIVER, 5]]));
  });

  it('when a flush is asked for while one is running, then it waits for that one and writes the rest after it, in order', async () => {
    const writes: string[] = [];
    let release: () => void = () => {};
    const pipeline = createPositionPipeline({
      drivers: {
        flushPositions: async (batch) => {
          writes.push(`start ${batch.map((p) => p.lat).join(',')}`);
          if (writes.length === 1) await new Promise<void>((resolve) => (release = resolve));
          writes.push(`end ${batch.map((p) => p.lat).join(',')}`);
        },
      },
      store: fakeStore({ available: false }).store,
      statuses: new Map(),
      redisWriteFailed: () => {},
      logger,
      metrics: createMetrics('unit'),
      config: { heartbeatTtlSeconds: 3, locationTickMs: 5 },
    });
    pipeline.acceptFixes(DRIVER, [BERLIN]);
    const running = pipeline.flushToPostgres();
    const later = { lat: BERLIN.lat + 0.01, lng: BERLIN.lng };
    pipeline.acceptFixes(DRIVER, [later]);
    let secondDone = false;
    const second = pipeline.flushToPostgres().then(() => (secondDone = true));
    await new Promise((resolve) => setTimeout(resolve, 20));
    // A caller about to read positions (going on duty) must not go on while the first batch is unwritten.
    expect(secondDone).toBe(false);
    release();
    await Promise.all([running, second]);
    expect(writes).toEqual([`start ${BERLIN.lat}`, `end ${BERLIN.lat}`, `start ${later.lat}`, `end ${later.lat}`]);
  });

  it('when the PostgreSQL flush fails, then the positions wait for the next flush instead of being lost', async () => {
    const { pipeline, flushed, failFlushes } = pipelineWith(fakeStore({ available: false }).store);
    pipeline.acceptFixes(DRIVER, [BERLIN]);
    failFlushes(true);
    await pipeline.flushToPostgres();
    failFlushes(false);
    await pipeline.flushToPostgres();
    expect(flushed).toEqual([[expect.objectContaining({ id: DRIVER, lat: BERLIN.lat })]]);
  });

  it('when drivers ping and their positions are written, then the heartbeat round learns whose heartbeats the writes refreshed, once', async () => {
    const { pipeline } = pipelineWith(fakeStore().store);
    pipeline.acceptFixes(DRIVER, [BERLIN]);
    await flush(pipeline);
    const kept = pipeline.takeKeptAlive();
    expect(kept.postgres).toEqual(new Set([DRIVER]));
    expect(kept.redisFresh(DRIVER)).toBe(true);
    expect(kept.redisFresh(OTHER)).toBe(false);
    expect(pipeline.takeKeptAlive().postgres.size).toBe(0);
  });

  it('when a connect wrote drivers\' heartbeats itself, then the heartbeat round leaves them alone in PostgreSQL, and in Redis only where the status write went through', async () => {
    const { pipeline } = pipelineWith(fakeStore().store);
    pipeline.heartbeatsWritten([DRIVER], Date.now());
    pipeline.heartbeatsWritten([OTHER], null);
    const kept = pipeline.takeKeptAlive();
    expect(kept.postgres).toEqual(new Set([DRIVER, OTHER]));
    expect(kept.redisFresh(DRIVER)).toBe(true);
    expect(kept.redisFresh(OTHER)).toBe(false);
    // Written long enough ago that the next round would come too late: the round writes it.
    pipeline.heartbeatsWritten([OTHER], Date.now() - 2000);
    expect(pipeline.takeKeptAlive().redisFresh(OTHER)).toBe(false);
  });

  it('when fixes arrive but cannot be written, then the heartbeat round is told nobody was kept alive by them', async () => {
    const { pipeline, failFlushes } = pipelineWith(fakeStore({ writeFixes: async () => Promise.reject(new Error('timeout')) }).store);
    failFlushes(true);
    pipeline.acceptFixes(DRIVER, [BERLIN]);
    await flush(pipeline);
    const kept = pipeline.takeKeptAlive();
    expect(kept.postgres.size).toBe(0);
    expect(kept.redisFresh(DRIVER)).toBe(false);
  });

  it('when a GEO write stays out past a second, then the pipeline says it is behind until the write answers', async () => {
    let answer: (statuses: DriverStatus[]) => void = () => {};
    const { pipeline } = pipelineWith(fakeStore({ writeFixes: () => new Promise((resolve) => (answer = resolve)) }).store);
    pipeline.acceptFixes(DRIVER, [BERLIN]);
    await new Promise((r) => setTimeout(r, 50));
    expect(pipeline.behind()).toBe(false);
    await new Promise((r) => setTimeout(r, 1050));
    expect(pipeline.behind()).toBe(true);
    answer(['AVAILABLE']);
    await pipeline.halt();
    expect(pipeline.behind()).toBe(false);
  });
});

describe('redis repair', () => {
  const row = (id: string, status: DriverStatus, at: { lat: number; lng: number } | null = BERLIN): DriverPresenceRow => ({ id, status, lat: at?.lat ?? null, lng: at?.lng ?? null });

  function repairWith(store: PresenceStore, drivers: Partial<Parameters<typeof createRedisRepair>[0]['drivers']> = {}, local: string[] = [], heard: string[] = []) {
    const events = new HubEvents();
    const restored: number[] = [];
    events.on('redis:restored', () => restored.push(1));
    const touched: string[][] = [];
    const swept: DriverPresenceRow[] = [];
    const repair = createRedisRepair({
      drivers: {
        touch: async (ids) => void touched.push([...ids]),
        sweepSilent: async () => [],
        livePage: async () => [],
        presenceOf: async () => [],
        live: async () => [],
        ...drivers,
      },
      store,
      events,
      logger,
      metrics: createMetrics('unit'),
      config: { heartbeatTtlSeconds: 30 },
      localDrivers: () => local,
      takeKeptAlive: () => ({ postgres: new Set(heard), redisFresh: (id) => heard.includes(id) }),
      sweptOffline: async (r) => void swept.push(r),
    });
    return { repair, restored, touched, swept };
  }

  it('when a write fails while Redis is healthy, then the next repair round reconciles and does not rebuild', async () => {
    const redis = fakeStore();
    const { repair } = repairWith(redis.store, { livePage: async () => [row(DRIVER, 'AVAILABLE')] });
    repair.redisWriteFailed('setStatus', new Error('timeout'));
    await repair.repairRedis();
    expect(redis.named('lookup')).toEqual([[[DRIVER]]]);
    expect(redis.named('rebuild')).toEqual([]);
    expect(repair.redisHealthy()).toBe(true);
  });

  it('when a repair round times out while Redis stays connected, then the next round reconciles, nothing is rebuilt and no restore is announced', async () => {
    let checks = 0;
    const redis = fakeStore({
      hasPicture: async () => {
        checks += 1;
        if (checks === 1) throw new Error('Command timed out');
        return true;
      },
    });
    const { repair, restored } = repairWith(redis.store, { livePage: async () => [row(DRIVER, 'AVAILABLE')] });
    await expect(repair.repairRedis()).rejects.toThrow('Command timed out');
    await repair.repairRedis();
    expect(redis.named('rebuild')).toEqual([]);
    expect(redis.named('lookup')).toEqual([[[DRIVER]]]);
    expect(restored).toEqual([]);
    expect(repair.redisHealthy()).toBe(true);
  });

  it('when Redis was lost and returns, then one node rebuilds it from PostgreSQL, redis:restored is announced once, and health is up again', async () => {
    let available = false;
    const redis = fakeStore();
    Object.defineProperty(redis.store, 'available', { get: () => available });
    const { repair, restored } = repairWith(redis.store, { live: async () => [row(DRIVER, 'AVAILABLE'), row(OTHER, 'BUSY', null)] });
    await repair.repairRedis();
    expect(repair.redisHealthy()).toBe(false);
    available = true;
    await repair.repairRedis();
    expect(redis.named('rebuild')).toEqual([[[{ ...row(DRIVER, 'AVAILABLE'), online: true }, { ...row(OTHER, 'BUSY', null), online: true }]]]);
    expect(restored).toEqual([1]);
    expect(repair.redisHealthy()).toBe(true);
    await repair.repairRedis();
    expect(redis.named('rebuild')).toHaveLength(1);
  });

  it('when writes time out until the circuit opens but the connection stays up, then health is down meanwhile and the next round reconciles: no rebuild, no restore announced', async () => {
    let healthy = true;
    const redis = fakeStore();
    Object.defineProperty(redis.store, 'healthy', { get: () => healthy });
    const { repair, restored } = repairWith(redis.store, { livePage: async () => [row(DRIVER, 'AVAILABLE')] });
    healthy = false;
    for (let i = 0; i < 3; i++) repair.redisWriteFailed('setStatus', new Error('Command timed out'));
    expect(repair.redisHealthy()).toBe(false);
    healthy = true;
    await repair.repairRedis();
    expect(redis.named('rebuild')).toEqual([]);
    expect(redis.named('lookup')).toEqual([[[DRIVER]]]);
    expect(restored).toEqual([]);
    expect(repair.redisHealthy()).toBe(true);
  });

  it('when another node holds the rebuild lock, then this node does not rebuild but counts Redis as back', async () => {
    let healthy = false;
    let connected = false;
    const redis = fakeStore({ hasPicture: async () => false, tryLease: async () => false });
    Object.defineProperty(redis.store, 'healthy', { get: () => healthy });
    Object.defineProperty(redis.store, 'connected', { get: () => connected });
    const { repair, restored } = repairWith(redis.store);
    // A write failing with the connection down: Redis is lost, not just slow.
    repair.redisWriteFailed('setStatus', new Error('gone'));
    healthy = true;
    connected = true;
    expect(repair.redisHealthy()).toBe(false);
    await repair.repairRedis();
    expect(redis.named('rebuild')).toEqual([]);
    expect(restored).toEqual([1]);
    expect(repair.redisHealthy()).toBe(true);
  });

  it('when the sweep finds silent drivers, then each goes offline through the sessions and expired GEO members leave Redis', async () => {
    const redis = fakeStore();
    const silent = [row(DRIVER, 'OFFLINE'), row(OTHER, 'OFFLINE')];
    const { repair, swept } = repairWith(redis.store, { sweepSilent: async () => silent });
    await repair.sweep();
    expect(swept).toEqual(silent);
    expect(redis.named('expiredDrivers')).toHaveLength(1);
  });

  it('when only some of this node drivers had their heartbeats refreshed by position writes, then the heartbeat round touches the others, in both stores', async () => {
    const redis = fakeStore();
    const { repair, touched } = repairWith(redis.store, {}, [DRIVER, OTHER, 'c'], [OTHER]);
    await repair.keepLocalAlive();
    expect(touched).toEqual([[DRIVER, 'c']]);
    expect(redis.named('touch')).toEqual([[[DRIVER, 'c']]]);
  });

  it('when Redis disagrees with PostgreSQL, then reconcile rewrites the entries PostgreSQL still confirms, both ways', async () => {
    const ghost = 'ghost';
    const redis = fakeStore({
      lookup: async () => ({ statuses: ['BUSY'], inGeo: [false] }),
      scanStatuses: async () => ['0', [[ghost, 'AVAILABLE']]],
    });
    const truth = new Map([
      [DRIVER, row(DRIVER, 'AVAILABLE')],
      [ghost, row(ghost, 'OFFLINE')],
    ]);
    const { repair } = repairWith(redis.store, {
      livePage: async () => [row(DRIVER, 'AVAILABLE')],
      presenceOf: async (ids) => ids.flatMap((id) => (truth.has(id) ? [truth.get(id)!] : [])),
    });
    await repair.reconcile();
    expect(redis.named('setStatus')).toEqual([
      [DRIVER, 'AVAILABLE', { position: BERLIN }],
      [ghost, 'OFFLINE', { position: BERLIN }],
    ]);
  });

  it('when the store keeps nothing (a single node), then repair never calls it, and health is not up', async () => {
    const swept: string[] = [];
    const { repair } = repairWith(createNoopPresenceStore(), { sweepSilent: async () => (swept.push('pg'), []) });
    await repair.repairRedis();
    await repair.reconcile();
    await repair.sweep();
    expect(swept).toEqual(['pg']);
    expect(repair.redisHealthy()).toBe(false);
  });
});

describe('driver sessions', () => {
  const held = (sessionId: string, status: DriverStatus = 'AVAILABLE', currentDeliveryId: string | null = null): HeldPresenceRow => ({
    id: DRIVER,
    status,
    lat: BERLIN.lat,
    lng: BERLIN.lng,
    sessionId,
    currentDeliveryId,
  });

  function sessionsWith(drivers: Partial<Parameters<typeof createDriverSessions>[0]['drivers']>, store: Pick<PresenceStore, 'setStatus' | 'setStatuses'> = fakeStore().store) {
    const steps: string[] = [];
    const events = new HubEvents();
    events.on('driver:status', ({ status }) => steps.push(`event ${status}`));
    const failed: string[] = [];
    const heardFrom: { ids: string[]; redis: boolean }[] = [];
    const sessions = createDriverSessions({
      drivers: { connectMany: async () => new Map(), disconnectMany: async () => [], setDuty: async () => null, ...drivers },
      store,
      positions: {
        flushToPostgres: async () => void steps.push('flush'),
        heartbeatChanged: (_id, change) => void steps.push(`heartbeat ${change}`),
        heartbeatsWritten: (ids, redisSentAt) => void heardFrom.push({ ids: [...ids], redis: redisSentAt !== null }),
        forget: () => void steps.push('forget'),
        restartConfirmations: () => void steps.push('confirmations'),
      },
      repair: {
        bestEffort: async (what, call) => {
          try {
            await call();
            return true;
          } catch {
            failed.push(what);
            return false;
          }
        },
      },
      statuses: new Map(),
      events,
      activeAssignments: async (ids) => new Map(ids.map((id) => [id, { deliveryId: 'd1' } as never])),
    });
    return { sessions, steps, failed, heardFrom };
  }

  const written = (row: HeldPresenceRow, tokenVersion = 0) => ({ tokenVersion, row });
  /** connectMany as PostgreSQL answers it: per existing driver, the newest entry whose token version is current is written. */
  const judged =
    (current: Record<string, number>, log?: { driverId: string; sessionId: string; tokenVersion: number }[][]) =>
    async (entries: readonly { driverId: string; sessionId: string; tokenVersion: number }[]) => {
      log?.push([...entries]);
      const out = new Map<string, { tokenVersion: number; row: HeldPresenceRow | null }>();
      for (const [driverId, tokenVersion] of Object.entries(current)) {
        const mine = entries.filter((e) => e.driverId === driverId);
        if (mine.length === 0) continue;
        const newest = mine.filter((e) => e.tokenVersion === tokenVersion).sort((a, b) => (a.sessionId < b.sessionId ? 1 : -1))[0];
        out.set(driverId, { tokenVersion, row: newest ? { ...held(newest.sessionId), id: driverId } : null });
      }
      return out;
    };

  it('when a newer connection already speaks for the driver, then connect answers null and announces nothing', async () => {
    const { sessions, steps } = sessionsWith({ connectMany: async () => new Map([[DRIVER, written(held('000000000000002.b'))]]) });
    expect(await sessions.connect(DRIVER, '000000000000001.a', 0)).toBeNull();
    expect(steps).toEqual([]);
  });

  it('when a driver holding a delivery connects, then the session carries it, the heartbeat is refreshed and the map hears the status', async () => {
    const { sessions, steps } = sessionsWith({ connectMany: async ([entry]) => new Map([[DRIVER, written(held(entry.sessionId, 'BUSY', 'd1'))]]) });
    const session = await sessions.connect(DRIVER, '000000000000001.a', 0);
    expect(session).toMatchObject({ driverId: DRIVER, status: 'BUSY', activeDelivery: { deliveryId: 'd1' } });
    expect(steps).toEqual(['heartbeat refresh', 'event BUSY', 'confirmations']);
    expect([...sessions.localDrivers()]).toEqual([DRIVER]);
  });

  it('when several drivers connect at once, then one connect write and one batch of status writes serve them all, each with its own session', async () => {
    const writes: { driverId: string; sessionId: string; tokenVersion: number }[][] = [];
    const { store, named } = fakeStore();
    const { sessions } = sessionsWith({ connectMany: judged({ [DRIVER]: 0, [OTHER]: 0 }, writes) }, store);
    const answers = await Promise.all([sessions.connect(DRIVER, '000000000000001.a', 0), sessions.connect(OTHER, '000000000000001.b', 0)]);
    expect(writes).toHaveLength(1);
    expect(answers.map((a) => a?.driverId)).toEqual([DRIVER, OTHER]);
    expect(named('setStatuses')).toHaveLength(1);
    expect((named('setStatuses')[0][0] as { id: string }[]).map(({ id }) => id)).toEqual([DRIVER, OTHER]);
  });

  it('when a batch connects, then the heartbeat round is told both stores heard from its drivers; when the status write fails, PostgreSQL only', async () => {
    const { sessions, heardFrom } = sessionsWith({ connectMany: judged({ [DRIVER]: 0, [OTHER]: 0 }) });
    await Promise.all([sessions.connect(DRIVER, '000000000000001.a', 0), sessions.connect(OTHER, '000000000000001.b', 0)]);
    expect(heardFrom).toEqual([{ ids: [DRIVER, OTHER], redis: true }]);
    const failing = fakeStore({ setStatuses: async () => Promise.reject(new Error('timeout')) }).store;
    const broken = sessionsWith({ connectMany: judged({ [DRIVER]: 0 }) }, failing);
    await broken.sessions.connect(DRIVER, '000000000000002.a', 0);
    expect(broken.heardFrom).toEqual([{ ids: [DRIVER], redis: false }]);
    expect(broken.failed).toEqual(['setStatus']);
  });

  it('when two connections of one driver arrive in one batch, then they share one statement and the older answers superseded', async () => {
    const writes: { driverId: string; sessionId: string; tokenVersion: number }[][] = [];
    const { sessions, steps } = sessionsWith({ connectMany: judged({ [DRIVER]: 0 }, writes) });
    const [older, newer] = await Promise.all([sessions.connect(DRIVER, '000000000000001.a', 0), sessions.connect(DRIVER, '000000000000002.b', 0)]);
    expect(writes).toHaveLength(1);
    expect(older).toBeNull();
    expect(newer).toMatchObject({ driverId: DRIVER, status: 'AVAILABLE' });
    expect(steps.filter((step) => step.startsWith('event'))).toEqual(['event AVAILABLE']);
  });

  it('when a revoked token and a current one of the same driver arrive in one batch, then the revoked one is refused TOKEN_INVALID and the current one connects, though older', async () => {
    const { sessions } = sessionsWith({ connectMany: judged({ [DRIVER]: 3 }) });
    const [current, revoked] = await Promise.allSettled([sessions.connect(DRIVER, '000000000000001.a', 3), sessions.connect(DRIVER, '000000000000002.b', 2)]);
    expect(current.status === 'fulfilled' && current.value?.driverId).toBe(DRIVER);
    expect(revoked.status === 'rejected' && (revoked.reason as { code?: string; message?: string }).code).toBe('TOKEN_INVALID');
  });

  it('when a driver of a batch no longer exists, then its connect fails NOT_FOUND and the others still connect', async () => {
    const { sessions } = sessionsWith({ connectMany: judged({ [OTHER]: 0 }) });
    const [gone, there] = await Promise.allSettled([sessions.connect(DRIVER, '000000000000001.a', 0), sessions.connect(OTHER, '000000000000001.b', 0)]);
    expect(gone.status === 'rejected' && (gone.reason as { code?: string }).code).toBe('NOT_FOUND');
    expect(there.status === 'fulfilled' && there.value?.driverId).toBe(OTHER);
  });

  it('when an older connection closes after a newer one connected on this node, then the driver keeps its status and its fixes', async () => {
    const { sessions, steps } = sessionsWith({ connectMany: async ([entry]) => new Map([[DRIVER, written(held(entry.sessionId))]]), disconnectMany: async (entries) => entries.map(() => held('x', 'OFFLINE')) });
    await sessions.connect(DRIVER, '000000000000002.b', 0);
    steps.length = 0;
    await sessions.disconnect(DRIVER, '000000000000001.a');
    expect(steps).toEqual([]);
    await sessions.disconnect(DRIVER, '000000000000002.b');
    expect(steps).toEqual(['forget', 'heartbeat drop', 'event OFFLINE']);
  });

  it('when many sockets close at once, then one statement and one Redis round trip serve them all', async () => {
    const batches: number[] = [];
    const redisCalls: number[] = [];
    const { store } = fakeStore();
    const { sessions } = sessionsWith(
      {
        disconnectMany: async (entries) => {
          batches.push(entries.length);
          return entries.map((entry) => ({ ...held('x', 'OFFLINE'), id: entry.driverId }));
        },
      },
      { ...store, setStatuses: async (rows) => void redisCalls.push(rows.length) },
    );
    const ids = Array.from({ length: 40 }, (_, i) => `00000000-0000-4000-8000-${String(i).padStart(12, '0')}`);
    await Promise.all(ids.map((id) => sessions.disconnect(id, '000000000000001.a')));
    expect(batches).toEqual([40]);
    expect(redisCalls).toEqual([40]);
  });

  it('when a driver goes on duty, then its newest position reaches PostgreSQL before the duty change', async () => {
    const { sessions, steps } = sessionsWith({
      setDuty: async () => {
        steps.push('duty');
        return held('s');
      },
    });
    expect(await sessions.setDuty(DRIVER, 'AVAILABLE')).toBe('AVAILABLE');
    expect(steps).toEqual(['flush', 'duty', 'heartbeat refresh', 'event AVAILABLE']);
  });

  it('when a claim is made and Redis fails, then the failure is noted and the map still hears BUSY', async () => {
    const { sessions, steps, failed } = sessionsWith({}, { setStatus: async () => Promise.reject(new Error('timeout')), setStatuses: async () => Promise.reject(new Error('timeout')) });
    await sessions.claimed(DRIVER);
    expect(failed).toEqual(['claimed']);
    expect(steps).toEqual(['event BUSY']);
  });
});

describe('nearest candidates', () => {
  const searchWith = (store: Pick<PresenceStore, 'available' | 'nearest'>) => {
    const asked: unknown[][] = [];
    const search = createCandidateSearch({
      store,
      drivers: {
        nearestAvailable: async (...args) => {
          asked.push(args);
          return [{ driverId: OTHER, distanceMeters: 42 }];
        },
      },
      logger,
      config: { maxRadiusKm: 20, heartbeatTtlSeconds: 30 },
    });
    return { search, asked };
  };

  it('when the search radius grows, then it goes 1, 3, 8 km and so on up to the maximum', () => {
    expect(searchRadii(20)).toEqual([1000, 3000, 8000, 20_000]);
    expect(searchRadii(200)).toEqual([1000, 3000, 8000, 20_000, 50_000, 150_000, 200_000]);
  });

  it('when Redis answers, then the radii grow from small until one holds drivers, and PostgreSQL is not asked', async () => {
    const radii: number[] = [];
    const { search, asked } = searchWith({
      available: true,
      nearest: async (_point, radius) => {
        radii.push(radius);
        return radius >= 8000 ? [{ driverId: DRIVER, distanceMeters: 5000 }] : [];
      },
    });
    expect(await search(BERLIN, 5)).toEqual({ source: 'redis', candidates: [{ driverId: DRIVER, distanceMeters: 5000 }] });
    expect(radii).toEqual([1000, 3000, 8000]);
    expect(asked).toEqual([]);
  });

  it('when drivers are to be passed over, then a radius holding only them counts as empty, the search goes on outwards and asks for enough', async () => {
    const asks: [number, number][] = [];
    const { search, asked } = searchWith({
      available: true,
      nearest: async (_point, radius, count) => {
        asks.push([radius, count]);
        return radius < 3000 ? [{ driverId: DRIVER, distanceMeters: 200 }] : [{ driverId: DRIVER, distanceMeters: 200 }, { driverId: OTHER, distanceMeters: 2500 }];
      },
    });
    expect(await search(BERLIN, 5, new Set([DRIVER]))).toEqual({ source: 'redis', candidates: [{ driverId: OTHER, distanceMeters: 2500 }] });
    expect(asks).toEqual([
      [1000, 6],
      [3000, 6],
    ]);
    expect(asked).toEqual([]);
    // PostgreSQL's answer is filtered the same way.
    const fallback = searchWith({ available: false, nearest: async () => [] });
    expect(await fallback.search(BERLIN, 5, new Set([OTHER]))).toEqual({ source: 'postgres', candidates: [] });
    expect(fallback.asked).toEqual([[BERLIN, 20_000, 6, 30]]);
  });

  it('when Redis has nobody within the maximum radius, then the answer is empty', async () => {
    const { search, asked } = searchWith({ available: true, nearest: async () => [] });
    expect(await search(BERLIN, 5)).toEqual({ source: 'redis', candidates: [] });
    expect(asked).toEqual([]);
  });

  it('when the Redis search fails, then PostgreSQL last known positions answer, within the maximum radius and the heartbeat TTL', async () => {
    const { search, asked } = searchWith({ available: true, nearest: async () => Promise.reject(new Error('timeout')) });
    expect(await search(BERLIN, 5)).toEqual({ source: 'postgres', candidates: [{ driverId: OTHER, distanceMeters: 42 }] });
    expect(asked).toEqual([[BERLIN, 20_000, 5, 30]]);
  });

  it('when Redis is away or the node has none, then PostgreSQL answers without a Redis call', async () => {
    for (const store of [fakeStore({ available: false }), { store: createNoopPresenceStore(), named: () => [] }]) {
      const { search } = searchWith(store.store);
      expect((await search(BERLIN, 5)).source).toBe('postgres');
      expect(store.named('nearest')).toEqual([]);
    }
  });
});
