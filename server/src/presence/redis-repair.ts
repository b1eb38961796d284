import type { DriverStatus } from '#shared/schemas.js';
import type { DriverPresenceRow, DriversStore } from '../drivers/drivers.store.js';
import type { HubEvents } from '../platform/hub-events.js';
import type { Logger } from '../platform/logger.js';
import type { Metrics } from '../platform/metrics.js';
import type { PresenceStore } from './presence.store.js';
import { slicesOf } from '../platform/slices.js';

/** Drivers per step of the reconcile walk. */
const RECONCILE_PAGE = 1000;

/**
 * Keeping Redis's picture true to PostgreSQL: writes that fail are noted, a Redis that lost the
 * picture is rebuilt, disagreements are reconciled, and heartbeats are kept (this node's quiet
 * drivers) and judged (silent drivers go OFFLINE, expired GEO members leave the set).
 */
export interface RedisRepair {
  /** Worth calling Redis now. */
  redisUsable(): boolean;
  /** Redis is connected, its circuit closed, and it holds our picture (health's `redis: "up"`). */
  redisHealthy(): boolean;
  /** A Redis write failed; PostgreSQL already holds the truth. */
  redisWriteFailed(what: string, err: unknown): void;
  /** A Redis write that may fail without failing the caller: true when it went through. */
  bestEffort(what: string, call: () => Promise<unknown>): Promise<boolean>;
  /** Rebuilds Redis from PostgreSQL after it came back (possibly empty) or lost our keys. */
  repairRedis(): Promise<void>;
  reconcile(): Promise<void>;
  /**
   * The periodic reconcile, every `periodMs` on every node: the node that takes the period's turn
   * runs it for the whole deployment, the others skip it.
   */
  reconcileInTurn(periodMs: number): Promise<void>;
  /** Takes drivers whose heartbeat went silent OFFLINE, and expired GEO members out of the set. */
  sweep(): Promise<void>;
  /** Refreshes the heartbeats of this node's connected drivers that no position write refreshed since the last round. */
  keepLocalAlive(): Promise<void>;
}

export interface RedisRepairDeps {
  drivers: Pick<DriversStore, 'touch' | 'sweepSilent' | 'livePage' | 'presenceOf' | 'live'>;
  store: PresenceStore;
  events: HubEvents;
  logger: Logger;
  metrics: Pick<Metrics, 'driversSwept' | 'redisRebuilds' | 'presenceReconciles'>;
  config: { heartbeatTtlSeconds: number };
  /** Drivers whose socket lives on this node. */
  localDrivers(): Iterable<string>;
  /** Drivers whose heartbeat the position writes refreshed (see PositionPipeline.takeKeptAlive). */
  takeKeptAlive(): { postgres: ReadonlySet<string>; redisFresh(driverId: string): boolean };
  /** A swept driver's new status goes to Redis and the map. */
  sweptOffline(row: DriverPresenceRow): Promise<void>;
}

export function createRedisRepair(deps: RedisRepairDeps): RedisRepair {
  const { drivers, store, events, metrics } = deps;
  const log = deps.logger;
  let redisLost = false;
  let reconcileSoon = false;

  const redisUsable = () => store.available;

  /**
   * A Redis write failed. PostgreSQL already holds the truth: a Redis that went away is rebuilt
   * when it returns; a failure on a connection still up (timeouts, however many, and the circuit
   * they open) only needs the next reconcile pass. Such timeouts are often this process's own: an
   * event loop that ran late fires a command's timer before reading the reply already waiting, so
   * under a reconnect storm they came in bursts, and each burst rebuilt all of Redis and sent every
   * local driver's open pushes again.
   */
  function redisWriteFailed(what: string, err: unknown): void {
    if (store.connected) reconcileSoon = true;
    else redisLost = true;
    log.debug({ what, err: (err as Error).message }, 'redis write skipped');
  }

  async function bestEffort(what: string, call: () => Promise<unknown>): Promise<boolean> {
    try {
      await call();
      return true;
    } catch (err) {
      redisWriteFailed(what, err);
      return false;
    }
  }

  async function keepLocalAlive(): Promise<void> {
    // A connected driver is alive, whatever became of its fixes: this node writes the heartbeat of
    // every one of its drivers that the position writes did not refresh (quiet drivers, and those
    // whose fixes were refused or could not be written because the hub fell behind). Those the
    // writes did refresh need nothing here, which keeps this round small at scale.
    const kept = deps.takeKeptAlive();
    const local = [...deps.localDrivers()];
    const postgres = local.filter((id) => !kept.postgres.has(id));
    const redis = local.filter((id) => !kept.redisFresh(id));
    await Promise.allSettled([
      postgres.length > 0 ? drivers.touch(postgres) : null,
      redis.length > 0 ? bestEffort('touch', () => store.touch(redis)) : null,
    ]);
  }

  async function sweep(): Promise<void> {
    const swept = await drivers.sweepSilent(deps.config.heartbeatTtlSeconds);
    for (const row of swept) {
      metrics.driversSwept.inc();
      log.info({ driver: row.id }, 'driver heartbeat expired; offline');
      await deps.sweptOffline(row);
    }
    if (redisUsable()) await bestEffort('expired', () => store.expiredDrivers());
  }

  /**
   * Self-healing, both ways: Redis entries that disagree with PostgreSQL are put right (a write
   * skipped during a Redis hiccup, a rebuild racing a status change). Mismatches are read again
   * from PostgreSQL just before the fix, so a change made meanwhile is not overwritten with an old
   * read. A stale GEO member can at worst cost a refused claim, never a double assignment.
   */
  async function reconcile(): Promise<void> {
    if (!redisUsable()) return;
    metrics.presenceReconciles.inc();
    // Walked a page at a time, with a round trip between pages: at tens of thousands of drivers a
    // single read of everything blocked the event loop for hundreds of milliseconds.
    /** Drivers that look wrong, with the PostgreSQL status they had when they were looked at. */
    const suspects = new Map<string, DriverStatus>();
    // PostgreSQL -> Redis: every live driver has the right status, and is in GEO exactly when AVAILABLE.
    for (let after: string | null = null; ; ) {
      const page = await drivers.livePage(after, RECONCILE_PAGE);
      if (page.length === 0) break;
      after = page[page.length - 1].id;
      const { statuses, inGeo } = await store.lookup(page.map((row) => row.id));
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
      const [next, pairs] = await store.scanStatuses(cursor, RECONCILE_PAGE);
      await checkAgainstPostgres(pairs.filter(([, status]) => status !== 'OFFLINE'));
      cursor = next;
    } while (cursor !== '0');
    do {
      const [next, members] = await store.scanGeo(cursor, RECONCILE_PAGE);
      await checkAgainstPostgres(members.map((id) => [id, null]));
      cursor = next;
    } while (cursor !== '0');
    if (suspects.size === 0) return;
    const ids = [...suspects.keys()];
    for (const slice of slicesOf(ids, RECONCILE_PAGE)) {
      for (const row of await drivers.presenceOf(slice)) {
        if (row.status !== suspects.get(row.id)) continue; // changed since: its own write wins
        const position = row.lat !== null && row.lng !== null ? { lat: row.lat, lng: row.lng } : null;
        await bestEffort('reconcile', () => store.setStatus(row.id, row.status, { position }));
      }
    }
    log.info({ fixed: suspects.size }, 'redis presence reconciled with postgres');
  }

  async function reconcileInTurn(periodMs: number): Promise<void> {
    if (!redisUsable()) return;
    // The turn lapses before the period ends, so whichever node asks first in the next period
    // takes it: a pass per period at most, and a node that died holding the turn misses one.
    if (!(await store.tryLease('reconcile', Math.max(1, Math.floor(periodMs * 0.8))))) return;
    await reconcile();
  }

  function redisRestored(): void {
    const wasLost = redisLost;
    redisLost = false;
    if (wasLost) events.emit('redis:restored');
  }

  async function repairRedis(): Promise<void> {
    // Single node: no Redis, nothing to repair.
    if (!store.enabled) return;
    if (!store.available) {
      if (!redisLost) log.warn('redis unavailable; assigning from postgres until it returns');
      redisLost = true;
      return;
    }
    try {
      const needed = redisLost || !(await store.hasPicture());
      if (!needed) {
        if (reconcileSoon) {
          reconcileSoon = false;
          await reconcile();
        }
        return;
      }
      if (!(await store.tryLease('rebuild', 5000))) {
        // Another node is rebuilding right now.
        redisRestored();
        return;
      }
      const live = await drivers.live();
      await store.rebuild(live.map((row) => ({ ...row, online: true })));
      redisRestored();
      metrics.redisRebuilds.inc();
      log.info({ drivers: live.length }, 'redis presence rebuilt from postgres');
      // Changes that landed between the read and the rebuild: put them right at once.
      await reconcile();
    } catch (err) {
      // A command of this round timing out while Redis stays connected is a passing failure, like
      // a failed write: the next round looks again (a Redis that lost our picture says so then).
      redisWriteFailed('repair', err);
      throw err;
    }
  }

  return {
    redisUsable,
    redisHealthy: () => store.healthy && !redisLost,
    redisWriteFailed,
    bestEffort,
    repairRedis,
    reconcile,
    reconcileInTurn,
    sweep,
    keepLocalAlive,
  };
}
