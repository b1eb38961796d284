import type { DriverMoved, DriverStatus, LocationFix } from '#shared/schemas.js';
import type { DriverPosition, DriversStore } from '../drivers/drivers.store.js';
import type { Logger } from '../platform/logger.js';
import type { Metrics } from '../platform/metrics.js';
import type { PresenceStore } from './presence.store.js';

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

/** A GEO write out this long (one round trip, usually milliseconds) means the writes are behind. */
const GEO_WRITE_BEHIND_MS = 1000;
/** A position flush running this long (usually tens of milliseconds) means the writes are behind. */
const POSITION_FLUSH_BEHIND_MS = 5000;

/** What a status change means for the driver's heartbeat key (the presence store's SET_STATUSES). */
export type HeartbeatChange = 'refresh' | 'keep' | 'drop';

/** Statuses this node knows of (its own drivers); Redis's answer wins when it has one. */
export type KnownStatuses = Map<string, DriverStatus>;

/**
 * Fixes in, positions out: the atomic GEO writes to Redis, the batched flush to PostgreSQL, the
 * positions the live map has not seen yet, and the confirmations of numbered fixes.
 */
export interface PositionPipeline {
  /**
   * Fixes in: the newest wins. `seq`, when the app numbers its fixes, is the highest number of the
   * batch; everything up to it counts as stored once this position (or a newer one) is.
   */
  acceptFixes(driverId: string, fixes: readonly LocationFix[], seq?: number): void;
  /** Numbered fixes stored since this slot was last drained, per driver: what `location:stored` confirms. */
  drainStored(slot: number): Map<string, number>;
  /** Positions that changed since the last call, for the live map. */
  drainMoves(): DriverMoved[];
  /** Nobody watches the map: forget what moved. */
  discardMoves(): void;
  /** The newest positions to PostgreSQL now; kept for the next flush when it fails. */
  flushToPostgres(): Promise<void>;
  /** A status write changed the driver's heartbeat key: the next fix rewrites it (drop) or need not for a while (refresh). */
  heartbeatChanged(driverId: string, change: HeartbeatChange): void;
  /**
   * A connect or a duty change wrote these drivers' heartbeats itself: PostgreSQL's in its
   * statement, Redis's in the status write sent at `redisSentAt` (null: that write failed). The
   * next heartbeat round leaves them alone, as it leaves drivers whose fixes were written (a
   * reconnect storm would otherwise write every returning driver's heartbeat twice).
   */
  heartbeatsWritten(driverIds: readonly string[], redisSentAt: number | null): void;
  /** No connection on this node speaks for the driver any more: its heartbeat and pending GEO write go. */
  forget(driverId: string): void;
  /** A new connection: it confirms only what it sends itself. */
  restartConfirmations(driverId: string): void;
  /**
   * Drivers whose heartbeat the position writes themselves refreshed, so the heartbeat round need
   * not: in PostgreSQL, those whose position was flushed since the last call; in Redis, those whose
   * heartbeat key a GEO write rewrote less than half the TTL ago. Only writes that succeeded
   * count: a driver whose fixes arrive but cannot be written (the hub behind, a store away) is kept
   * alive by the round, never left to expire while it pings.
   */
  takeKeptAlive(): { postgres: ReadonlySet<string>; redisFresh(driverId: string): boolean };
  /**
   * Writes are falling behind: a GEO write or a position flush has been out far longer than it
   * takes. Fixes accepted now would wait behind it; they are better refused until it catches up.
   */
  behind(): boolean;
  /** No more scheduled GEO writes; waits for the one in flight. */
  halt(): Promise<void>;
  /** Whatever is still pending goes out, to Redis and PostgreSQL (shutdown). */
  flushAll(): Promise<void>;
}

export interface PositionPipelineDeps {
  drivers: Pick<DriversStore, 'flushPositions'>;
  store: Pick<PresenceStore, 'available' | 'writeFixes'>;
  statuses: KnownStatuses;
  /** A Redis write failed (Redis repair decides what that means). */
  redisWriteFailed(what: string, err: unknown): void;
  logger: Logger;
  metrics: Pick<Metrics, 'geoWrites' | 'positionFlushes' | 'pingsReceived'>;
  config: { heartbeatTtlSeconds: number; locationTickMs: number };
}

export function createPositionPipeline(deps: PositionPipelineDeps): PositionPipeline {
  const { drivers, store, statuses, metrics } = deps;
  const log = deps.logger;
  let toRedis = new Map<string, DriverPosition>();
  let toPostgres = new Map<string, DriverPosition>();
  /** Positions that changed since the map last looked, with the status the GEO write saw. */
  let moved = new Map<string, DriverPosition & { status: DriverStatus }>();
  /** Drivers whose position reached PostgreSQL since the heartbeat round last asked. */
  let flushedSinceTouch = new Set<string>();
  /** When this node last sent a rewrite of each local driver's heartbeat key with a fix. */
  const beatAt = new Map<string, number>();
  /** When such a rewrite last succeeded. */
  const beatWrittenAt = new Map<string, number>();
  /** When the position flush in progress started (null: none running). */
  let pgFlushStartedAt: number | null = null;
  const beatEveryMs = (deps.config.heartbeatTtlSeconds * 1000) / 3;
  /** GEO writes: at most one script call in flight; fixes that arrive meanwhile ride the next one. */
  let geoWrite: Promise<void> | null = null;
  let geoTimer: NodeJS.Timeout | null = null;
  let geoWriteStartedAt = 0;
  let stopped = false;
  /**
   * Numbered fixes stored (GEO written, or flushed to PostgreSQL) since the edge last asked, per
   * driver the highest number, in STORED_SLOTS buckets by driver id: the edge drains one bucket per
   * slice of a second, so the confirmations of thousands of drivers do not all leave at once.
   */
  const stored = Array.from({ length: STORED_SLOTS }, () => new Map<string, number>());
  /**
   * The highest number already handed out for confirmation per driver: a fix stored twice (its GEO
   * write, then its PostgreSQL flush) is confirmed once, not again a moment later.
   */
  const confirmedUpTo = new Map<string, number>();

  async function flushToRedis(): Promise<void> {
    if (toRedis.size === 0) return;
    const batch = [...toRedis.values()];
    toRedis = new Map();
    let written: DriverStatus[] | null = null;
    if (store.available) {
      // A driver pinging every second needs its heartbeat key rewritten only every TTL/3, not on
      // every fix: most script steps are then a status read and a GEOADD.
      const now = Date.now();
      const fixes = batch.map((p) => {
        const beat = now - (beatAt.get(p.id) ?? 0) >= beatEveryMs;
        if (beat) beatAt.set(p.id, now);
        return { id: p.id, lng: p.lng, lat: p.lat, beat };
      });
      try {
        written = await store.writeFixes(fixes);
        metrics.geoWrites.inc();
        markStored(batch);
        for (const fix of fixes) if (fix.beat) beatWrittenAt.set(fix.id, now);
      } catch (err) {
        for (const fix of fixes) if (fix.beat) beatAt.delete(fix.id);
        deps.redisWriteFailed('geo batch', err);
      }
    }
    batch.forEach((p, i) => {
      const status = written?.[i] ?? statuses.get(p.id) ?? 'OFFLINE';
      if (written) statuses.set(p.id, status);
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
      if (p.seq === undefined || p.seq <= (confirmedUpTo.get(p.id) ?? -1)) continue;
      const bucket = stored[storedSlotOf(p.id)];
      if (p.seq > (bucket.get(p.id) ?? -1)) bucket.set(p.id, p.seq);
    }
  }

  /** The position flush in progress: flushes run one at a time, so an older batch never lands after a newer one. */
  let pgFlush: Promise<void> | null = null;

  /**
   * Writes every position accepted so far, including those of a flush already running: a caller
   * that goes on to read positions (a driver coming on duty enters the GEO set where PostgreSQL
   * says it is) then reads them all.
   */
  async function flushToPostgres(): Promise<void> {
    while (pgFlush) await pgFlush;
    if (toPostgres.size === 0) return;
    pgFlush = flushBatchToPostgres().finally(() => {
      pgFlush = null;
    });
    await pgFlush;
  }

  async function flushBatchToPostgres(): Promise<void> {
    const batch = [...toPostgres.values()];
    toPostgres = new Map();
    pgFlushStartedAt = performance.now();
    try {
      await drivers.flushPositions(batch);
      metrics.positionFlushes.inc();
      markStored(batch);
      for (const p of batch) flushedSinceTouch.add(p.id);
    } catch (err) {
      // Keep the newest positions for the next flush rather than lose them.
      for (const p of batch) if (!toPostgres.has(p.id)) toPostgres.set(p.id, p);
      log.warn({ err: (err as Error).message, positions: batch.length }, 'position flush failed');
    } finally {
      pgFlushStartedAt = null;
    }
  }

  return {
    acceptFixes(driverId, fixes, seq) {
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
      scheduleGeoWrite();
      metrics.pingsReceived.inc(fixes.length);
    },

    drainStored(slot) {
      const drained = stored[slot];
      stored[slot] = new Map();
      for (const [driverId, upTo] of drained) confirmedUpTo.set(driverId, upTo);
      return drained;
    },

    drainMoves() {
      if (moved.size === 0) return [];
      const out: DriverMoved[] = [];
      for (const p of moved.values()) out.push({ id: p.id, lat: p.lat, lng: p.lng, heading: p.heading, speed: p.speed, status: p.status, ts: p.atMs });
      moved = new Map();
      return out;
    },

    discardMoves() {
      if (moved.size > 0) moved = new Map();
    },

    flushToPostgres,

    heartbeatChanged(driverId, change) {
      // A dropped heartbeat must come back with the next fix; a refreshed one need not for a while.
      if (change === 'drop') {
        beatAt.delete(driverId);
        beatWrittenAt.delete(driverId);
      } else if (change === 'refresh') beatAt.set(driverId, Date.now());
    },

    heartbeatsWritten(driverIds, redisSentAt) {
      for (const driverId of driverIds) {
        flushedSinceTouch.add(driverId);
        if (redisSentAt !== null) beatWrittenAt.set(driverId, Math.max(redisSentAt, beatWrittenAt.get(driverId) ?? 0));
      }
    },

    forget(driverId) {
      beatAt.delete(driverId);
      beatWrittenAt.delete(driverId);
      toRedis.delete(driverId);
      confirmedUpTo.delete(driverId);
    },

    restartConfirmations(driverId) {
      stored[storedSlotOf(driverId)].delete(driverId);
      confirmedUpTo.delete(driverId);
    },

    takeKeptAlive() {
      const postgres = flushedSinceTouch;
      flushedSinceTouch = new Set();
      const now = Date.now();
      // A key written less than half its life ago outlives the next round (a third of its life away)
      // with time to spare; pinging drivers rewrite theirs every third of it, so only silenced ones go.
      return { postgres, redisFresh: (driverId: string) => now - (beatWrittenAt.get(driverId) ?? 0) < beatEveryMs * 1.5 };
    },

    behind() {
      const now = performance.now();
      return (geoWrite !== null && now - geoWriteStartedAt > GEO_WRITE_BEHIND_MS) || (pgFlushStartedAt !== null && now - pgFlushStartedAt > POSITION_FLUSH_BEHIND_MS);
    },

    async halt() {
      stopped = true;
      if (geoTimer) clearTimeout(geoTimer);
      geoTimer = null;
      await geoWrite;
    },

    async flushAll() {
      await flushToRedis().catch(() => {});
      await flushToPostgres().catch(() => {});
    },
  };
}
