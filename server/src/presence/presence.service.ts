import type { DriverSession } from '#shared/events.js';
import type { DriverMoved, DriverStatus, LocationFix } from '#shared/schemas.js';
import { HubError } from '../platform/errors.js';
import type { HubEvents } from '../platform/hub-events.js';
import type { Logger } from '../platform/logger.js';
import type { Metrics } from '../platform/metrics.js';
import type { DriverPosition, DriverPresenceRow, DriversStore } from '../drivers/drivers.store.js';
import type { PresenceStore } from './presence.store.js';

export interface PresenceDeps {
  drivers: DriversStore;
  /** Null in single-node mode (no REDIS_URL): PostgreSQL alone holds the picture. */
  presence: PresenceStore | null;
  events: HubEvents;
  logger: Logger;
  metrics: Metrics;
  activeAssignment: (driverId: string) => Promise<DriverSession['activeDelivery']>;
  config: { heartbeatTtlSeconds: number; locationTickMs: number; positionFlushMs: number; reconcileMs: number };
}

/** The newest of a batch of fixes: by client timestamp when all have one, else the last sent. */
export function newestFix(fixes: readonly LocationFix[]): LocationFix {
  let newest = fixes[fixes.length - 1];
  for (const fix of fixes) {
    if (fix.ts !== undefined && newest.ts !== undefined && fix.ts > newest.ts) newest = fix;
  }
  return newest;
}

/** Buckets of stored-fix confirmations: one is drained per 1/STORED_SLOTS of the confirmation interval. */
export const STORED_SLOTS = 100;

/** A driver's confirmation bucket, from the end of its id (a uuid: evenly spread). */
export function storedSlotOf(driverId: string): number {
  const n = Number.parseInt(driverId.slice(-4), 16);
  return Number.isNaN(n) ? 0 : n % STORED_SLOTS;
}

/** Drivers per step of the reconcile walk. */
const RECONCILE_PAGE = 1000;

export function createPresenceService(deps: PresenceDeps) {
  const { drivers, presence, events, metrics } = deps;
  const log = deps.logger.child({ component: 'presence' });
  /** driverId -> session id of the connection that speaks for it, for drivers whose socket lives on this node. */
  const local = new Map<string, string>();
  /** Statuses this node knows of (its own drivers); Redis's answer wins when it has one. */
  const knownStatus = new Map<string, DriverStatus>();
  let toRedis = new Map<string, DriverPosition>();
  let toPostgres = new Map<string, DriverPosition>();
  /** Positions that changed since the map last looked, with the status the GEO write saw. */
  let moved = new Map<string, DriverPosition & { status: DriverStatus }>();
  /** Local drivers that pinged since the last heartbeat round: their fixes already kept them alive. */
  let heardSinceTouch = new Set<string>();
  /** When this node last rewrote each local driver's heartbeat key with a fix. */
  const beatAt = new Map<string, number>();
  const beatEveryMs = (deps.config.heartbeatTtlSeconds * 1000) / 3;
  const timers: NodeJS.Timeout[] = [];
  /** GEO writes: at most one script call in flight; fixes that arrive meanwhile ride the next one. */
  let geoWrite: Promise<void> | null = null;
  let geoTimer: NodeJS.Timeout | null = null;
  let geoWriteStartedAt = 0;
  let stopped = false;
  let redisLost = false;
  let reconcileSoon = false;
  let flushing: Promise<void> = Promise.resolve();
  /**
   * Numbered fixes stored (GEO written, or flushed to PostgreSQL) since the edge last asked, per
   * driver the highest number, in STORED_SLOTS buckets by driver id: the edge drains one bucket per
   * slice of a second, so the confirmations of thousands of drivers do not all leave at once.
   */
  const stored = Array.from({ length: STORED_SLOTS }, () => new Map<string, number>());
  /** Disconnect bookkeeping still running; shutdown waits for it before closing PostgreSQL. */
  const inflight = new Set<Promise<unknown>>();

  function redisUsable(): boolean {
    return presence?.available === true;
  }

  function redisHealthy(): boolean {
    return presence?.healthy === true && !redisLost;
  }

  /**
   * A Redis write failed. PostgreSQL already holds the truth: a Redis that went away is rebuilt
   * when it returns; a passing failure (one timeout) only needs the next reconcile pass.
   */
  function redisWriteFailed(what: string, err: unknown): void {
    if (presence?.healthy) reconcileSoon = true;
    else redisLost = true;
    log.debug({ what, err: (err as Error).message }, 'redis write skipped');
  }

  async function bestEffort(what: string, call: () => Promise<unknown>): Promise<void> {
    if (!presence) return;
    try {
      await call();
    } catch (err) {
      redisWriteFailed(what, err);
    }
  }

  async function publishStatus(row: DriverPresenceRow, heartbeat: 'refresh' | 'keep' | 'drop'): Promise<void> {
    knownStatus.set(row.id, row.status);
    // A dropped heartbeat must come back with the next fix; a refreshed one need not for a while.
    if (heartbeat === 'drop') beatAt.delete(row.id);
    else if (heartbeat === 'refresh') beatAt.set(row.id, Date.now());
    const position = row.lat !== null && row.lng !== null ? { lat: row.lat, lng: row.lng } : null;
    await bestEffort('setStatus', () => presence!.setStatus(row.id, row.status, { position, heartbeat }));
    events.emit('driver:status', { driverId: row.id, status: row.status, position });
  }

  async function flushToRedis(): Promise<void> {
    if (toRedis.size === 0) return;
    const batch = [...toRedis.values()];
    toRedis = new Map();
    let statuses: DriverStatus[] | null = null;
    if (redisUsable()) {
      // A driver pinging every second needs its heartbeat key rewritten only every TTL/3, not on
      // every fix: most script steps are then a status read and a GEOADD.
      const now = Date.now();
      const fixes = batch.map((p) => {
        const beat = now - (beatAt.get(p.id) ?? 0) >= beatEveryMs;
        if (beat) beatAt.set(p.id, now);
        return { id: p.id, lng: p.lng, lat: p.lat, beat };
      });
      try {
        statuses = await presence!.writeFixes(fixes);
        metrics.geoWrites.inc();
        markStored(batch);
      } catch (err) {
        for (const fix of fixes) if (fix.beat) beatAt.delete(fix.id);
        redisWriteFailed('geo batch', err);
      }
    }
    batch.forEach((p, i) => {
      const status = statuses?.[i] ?? knownStatus.get(p.id) ?? 'OFFLINE';
      if (statuses) knownStatus.set(p.id, status);
      // The position object itself carries the status: no allocation per fix unless a map drains it.
      const fresh = p as DriverPosition & { status: DriverStatus };
      fresh.status = status;
      moved.set(p.id, fresh);
    });
  }

  /**
   * Fixes go to Redis as soon as the previous script call has answered and `locationTickMs` has
   * passed since it started: under light load a fix waits at most one tick, under heavy load the
   * batch grows while a call is in flight, so calls stay few and latency stays one round trip.
   */
  function scheduleGeoWrite(): void {
    if (geoWrite || geoTimer || stopped) return;
    const wait = Math.max(0, geoWriteStartedAt + deps.config.locationTickMs - performance.now());
    geoTimer = setTimeout(() => {
      geoTimer = null;
      geoWriteStartedAt = performance.now();
      geoWrite = flushToRedis()
        .catch((err) => log.warn({ err: (err as Error).message }, 'geo write failed'))
        .finally(() => {
          geoWrite = null;
          if (toRedis.size > 0) scheduleGeoWrite();
        });
    }, wait);
  }

  function markStored(batch: readonly DriverPosition[]): void {
    for (const p of batch) {
      if (p.seq === undefined) continue;
      const bucket = stored[storedSlotOf(p.id)];
      if (p.seq > (bucket.get(p.id) ?? -1)) bucket.set(p.id, p.seq);
    }
  }

  async function flushToPostgres(): Promise<void> {
    if (toPostgres.size === 0) return;
    const batch = [...toPostgres.values()];
    toPostgres = new Map();
    try {
      await drivers.flushPositions(batch);
      metrics.positionFlushes.inc();
      markStored(batch);
    } catch (err) {
      // Keep the newest positions for the next flush rather than lose them.
      for (const p of batch) if (!toPostgres.has(p.id)) toPostgres.set(p.id, p);
      log.warn({ err: (err as Error).message, positions: batch.length }, 'position flush failed');
    }
  }

  async function keepLocalAlive(): Promise<void> {
    // A pinging driver's heartbeat is refreshed by its fixes (Redis each tick, PostgreSQL each
    // flush); only the quiet ones need a write here, which keeps this round small at scale.
    const heard = heardSinceTouch;
    heardSinceTouch = new Set();
    const ids = [...local.keys()].filter((id) => !heard.has(id));
    if (ids.length === 0) return;
    await Promise.allSettled([drivers.touch(ids), bestEffort('touch', () => presence!.touch(ids))]);
  }

  async function sweep(): Promise<void> {
    const swept = await drivers.sweepSilent(deps.config.heartbeatTtlSeconds);
    for (const row of swept) {
      metrics.driversSwept.inc();
      log.info({ driver: row.id }, 'driver heartbeat expired; offline');
      await publishStatus(row, 'drop');
    }
    if (redisUsable()) await bestEffort('expired', () => presence!.expiredDrivers());
  }

  /**
   * Self-healing, both ways: Redis entries that disagree with PostgreSQL are put right (a write
   * skipped during a Redis hiccup, a rebuild racing a status change). Mismatches are read again
   * from PostgreSQL just before the fix, so a change made meanwhile is not overwritten with an old
   * read. A stale GEO member can at worst cost a refused claim, never a double assignment.
   */
  async function reconcile(): Promise<void> {
    if (!redisUsable()) return;
    // Walked a page at a time, with a round trip between pages: at tens of thousands of drivers a
    // single read of everything blocked the event loop for hundreds of milliseconds.
    /** Drivers that look wrong, with the PostgreSQL status they had when they were looked at. */
    const suspects = new Map<string, DriverStatus>();
    // PostgreSQL -> Redis: every live driver has the right status, and is in GEO exactly when AVAILABLE.
    for (let after: string | null = null; ; ) {
      const page = await drivers.livePage(after, RECONCILE_PAGE);
      if (page.length === 0) break;
      after = page[page.length - 1].id;
      const { statuses, inGeo } = await presence!.lookup(page.map((row) => row.id));
      page.forEach((row, i) => {
        const geoRight = row.status === 'AVAILABLE' ? inGeo[i] || row.lat === null : !inGeo[i];
        if (statuses[i] !== row.status || !geoRight) suspects.set(row.id, row.status);
      });
      if (page.length < RECONCILE_PAGE) break;
    }
    // Redis -> PostgreSQL: what Redis calls live, or has in GEO, must be so in PostgreSQL.
    const checkAgainstPostgres = async (entries: [string, string | null][]) => {
      if (entries.length === 0) return;
      const rows = new Map((await drivers.presenceOf(entries.map(([id]) => id))).map((row) => [row.id, row]));
      for (const [id, redisStatus] of entries) {
        const pgStatus = rows.get(id)?.status ?? 'OFFLINE';
        const wrong = redisStatus === null ? pgStatus !== 'AVAILABLE' : redisStatus !== 'OFFLINE' && pgStatus === 'OFFLINE';
        if (wrong) suspects.set(id, pgStatus);
      }
    };
    let cursor = '0';
    do {
      const [next, pairs] = await presence!.scanStatuses(cursor, RECONCILE_PAGE);
      await checkAgainstPostgres(pairs.filter(([, status]) => status !== 'OFFLINE'));
      cursor = next;
    } while (cursor !== '0');
    do {
      const [next, members] = await presence!.scanGeo(cursor, RECONCILE_PAGE);
      await checkAgainstPostgres(members.map((id) => [id, null]));
      cursor = next;
    } while (cursor !== '0');
    if (suspects.size === 0) return;
    const ids = [...suspects.keys()];
    for (let i = 0; i < ids.length; i += RECONCILE_PAGE) {
      for (const row of await drivers.presenceOf(ids.slice(i, i + RECONCILE_PAGE))) {
        if (row.status !== suspects.get(row.id)) continue; // changed since: its own write wins
        const position = row.lat !== null && row.lng !== null ? { lat: row.lat, lng: row.lng } : null;
        await bestEffort('reconcile', () => presence!.setStatus(row.id, row.status, { position }));
      }
    }
    log.info({ fixed: suspects.size }, 'redis presence reconciled with postgres');
  }

  function redisRestored(): void {
    const wasLost = redisLost;
    redisLost = false;
    if (wasLost) events.emit('redis:restored');
  }

  /** Rebuilds Redis from PostgreSQL after it came back (possibly empty) or lost our keys. */
  async function repairRedis(): Promise<void> {
    if (!presence) return;
    if (!presence.available) {
      if (!redisLost) log.warn('redis unavailable; assigning from postgres until it returns');
      redisLost = true;
      return;
    }
    try {
      const needed = redisLost || !(await presence.hasPicture());
      if (!needed) {
        if (reconcileSoon) {
          reconcileSoon = false;
          await reconcile();
        }
        return;
      }
      if (!(await presence.tryRebuildLock(5000))) {
        // Another node is rebuilding right now.
        redisRestored();
        return;
      }
      const live = await drivers.live();
      await presence.rebuild(live.map((row) => ({ ...row, online: true })));
      redisRestored();
      metrics.redisRebuilds.inc();
      log.info({ drivers: live.length }, 'redis presence rebuilt from postgres');
      // Changes that landed between the read and the rebuild: put them right at once.
      await reconcile();
    } catch (err) {
      redisLost = true;
      throw err;
    }
  }

  function every(ms: number, task: () => Promise<void>, name: string): void {
    let running = false;
    const timer = setInterval(() => {
      if (running) return;
      running = true;
      task()
        .catch((err) => log.warn({ task: name, err: (err as Error).message }, 'background task failed'))
        .finally(() => {
          running = false;
        });
    }, ms);
    timer.unref();
    timers.push(timer);
  }

  return {
    start(): void {
      const ttlMs = deps.config.heartbeatTtlSeconds * 1000;
      every(deps.config.positionFlushMs, flushToPostgres, 'positions');
      every(Math.max(200, ttlMs / 3), keepLocalAlive, 'heartbeat');
      every(Math.max(200, ttlMs / 3), sweep, 'sweep');
      every(1000, () => repairRedis(), 'repair');
      // The full comparison reads every live driver from both stores: a safety net, not the main
      // path (a failed write asks for a reconcile on the next repair round by itself).
      every(deps.config.reconcileMs, reconcile, 'reconcile');
      if (presence?.available) repairRedis().catch(() => {});
    },

    async stop(): Promise<void> {
      stopped = true;
      for (const timer of timers) clearInterval(timer);
      timers.length = 0;
      if (geoTimer) clearTimeout(geoTimer);
      geoTimer = null;
      await geoWrite;
      await flushing;
      await Promise.allSettled([...inflight]);
      await flushToRedis().catch(() => {});
      await flushToPostgres().catch(() => {});
    },

    /**
     * A driver socket connected: it now speaks for the driver, status following duty and deliveries.
     * `sessionId` orders the driver's connections (newest greatest); null when a newer one already
     * speaks for the driver in PostgreSQL, and this one is to be closed.
     */
    async connect(driverId: string, sessionId: string): Promise<DriverSession | null> {
      // The delivery is read after the connect, and only when the driver row says one holds it: the
      // connect waited for any claim in flight, so this read sees what that claim committed. An
      // assignment committed later reaches the socket as a push (it already joined its room).
      const row = await drivers.connect(driverId, sessionId);
      if (!row) throw new HubError('NOT_FOUND', 'driver not found');
      if (row.sessionId !== sessionId) return null;
      const activeDelivery = row.currentDeliveryId ? await deps.activeAssignment(driverId) : null;
      // Two connections on this node may finish in either order: the newer one stays local.
      const current = local.get(driverId);
      if (current === undefined || current < sessionId) local.set(driverId, sessionId);
      await publishStatus(row, 'refresh');
      stored[storedSlotOf(driverId)].delete(driverId);
      return { driverId, status: row.status, activeDelivery, offer: null, locationConfirmation: 'cumulative' };
    },

    async disconnect(driverId: string, sessionId: string): Promise<void> {
      if (local.get(driverId) === sessionId) local.delete(driverId);
      // A newer connection on this node still speaks for the driver: its heartbeat and fixes stay.
      if (!local.has(driverId)) {
        beatAt.delete(driverId);
        toRedis.delete(driverId);
      }
      const work = (async () => {
        const row = await drivers.disconnect(driverId, sessionId);
        // A newer socket on this node already speaks for the driver: its status must not be overwritten.
        if (row && !local.has(driverId)) await publishStatus(row, 'drop');
      })();
      inflight.add(work);
      try {
        await work;
      } finally {
        inflight.delete(work);
      }
    },

    /** Validated fixes from the driver's own socket; the newest is kept until the next tick. */
    /**
     * Fixes in: the newest wins. `seq`, when the app numbers its fixes, is the highest number of the
     * batch; everything up to it counts as stored once this position (or a newer one) is.
     */
    acceptFixes(driverId: string, fixes: readonly LocationFix[], seq?: number): void {
      const fix = newestFix(fixes);
      const position: DriverPosition = {
        id: driverId,
        lat: fix.lat,
        lng: fix.lng,
        heading: fix.heading ?? null,
        speed: fix.speed ?? null,
        atMs: Date.now(),
      };
      if (seq !== undefined) position.seq = Math.max(seq, toRedis.get(driverId)?.seq ?? -1, toPostgres.get(driverId)?.seq ?? -1);
      toRedis.set(driverId, position);
      toPostgres.set(driverId, position);
      heardSinceTouch.add(driverId);
      scheduleGeoWrite();
      metrics.pingsReceived.inc(fixes.length);
    },

    /** Numbered fixes stored since this slot was last drained, per driver: what `location:stored` confirms. */
    drainStored(slot: number): Map<string, number> {
      const drained = stored[slot];
      stored[slot] = new Map();
      return drained;
    },

    async setDuty(driverId: string, status: 'AVAILABLE' | 'OFFLINE'): Promise<DriverStatus> {
      // The newest position goes first, so an AVAILABLE driver enters the GEO set where it is now.
      await flushToPostgres();
      const row = await drivers.setDuty(driverId, status === 'AVAILABLE');
      if (!row) throw new HubError('NOT_FOUND', 'driver not found');
      await publishStatus(row, 'refresh');
      return row.status;
    },

    /** After a delivery ended: the driver's new status goes to Redis and the map. */
    async released(row: DriverPresenceRow): Promise<void> {
      await publishStatus(row, 'keep');
    },

    /** A claim made BUSY in PostgreSQL: Redis follows so no node picks the driver again. */
    async claimed(driverId: string): Promise<void> {
      knownStatus.set(driverId, 'BUSY');
      await bestEffort('claimed', () => presence!.setStatus(driverId, 'BUSY'));
      events.emit('driver:status', { driverId, status: 'BUSY', position: null });
    },

    /** Positions that changed since the last call, for the live map. */
    drainMoves(): DriverMoved[] {
      if (moved.size === 0) return [];
      const out: DriverMoved[] = [];
      for (const p of moved.values()) out.push({ id: p.id, lat: p.lat, lng: p.lng, heading: p.heading, speed: p.speed, status: p.status, ts: p.atMs });
      moved = new Map();
      return out;
    },

    /** Nobody watches the map: forget what moved. */
    discardMoves(): void {
      if (moved.size > 0) moved = new Map();
    },

    redisUsable,
    redisHealthy,
    /** For tests and shutdown: push pending work now. */
    async flushNow(): Promise<void> {
      flushing = Promise.all([flushToRedis(), flushToPostgres()]).then(() => {});
      await flushing;
    },
    repairRedis,
    reconcile,
    sweep,
  };
}

export type PresenceService = ReturnType<typeof createPresenceService>;
