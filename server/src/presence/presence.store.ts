import type { Redis } from 'ioredis';
import type { DriverStatus } from '#shared/schemas.js';
import { type CircuitBreaker, RedisUnavailableError } from '../platform/redis.js';
import { slicesOf } from '../platform/slices.js';

/** Work one node does for all, for as long as it holds the lease. */
export type PresenceLease = 'rebuild' | 'reconcile';

export const leaseKeys = (prefix: string): Record<PresenceLease, string> => ({
  rebuild: `${prefix}presence:built:lock`,
  reconcile: `${prefix}presence:reconcile:turn`,
});

/**
 * The only module that knows Redis key names, Lua scripts and TTLs for presence.
 *
 * Keys (all behind the configurable prefix):
 *   drivers:geo             GEO set, AVAILABLE drivers with a live heartbeat only
 *   drivers:status          hash driverId -> AVAILABLE | BUSY | OFFLINE
 *   driver:online:{id}      heartbeat string with a TTL
 *   presence:built          marker set by a rebuild; its absence means Redis lost our picture
 *   presence:built:lock     lease: the node rebuilding Redis now
 *   presence:reconcile:turn lease: the node that runs this period's reconcile pass
 */
export interface PresenceKeys {
  geo: string;
  status: string;
  onlinePrefix: string;
  /** A driver's heartbeat key. */
  online(driverId: string): string;
  built: string;
  lease: Record<PresenceLease, string>;
}

export function presenceKeys(prefix: string): PresenceKeys {
  const onlinePrefix = `${prefix}driver:online:`;
  return {
    geo: `${prefix}drivers:geo`,
    status: `${prefix}drivers:status`,
    onlinePrefix,
    online: (driverId) => `${onlinePrefix}${driverId}`,
    built: `${prefix}presence:built`,
    lease: leaseKeys(prefix),
  };
}

/**
 * Heartbeats and GEO positions for many drivers in one call. The status check and the GEOADD are
 * one atomic step, so a late ping can never put a BUSY or OFFLINE driver back into the GEO set.
 * ARGV: ttlSeconds, then the fixes as one JSON array of [id, lng, lat, beat] (one argument to
 * encode rather than three per fix); beat 1 refreshes the heartbeat key. Returns each driver's
 * status initial (A, B, O), in order, as one string.
 */
const WRITE_FIXES = `
local ttl = tonumber(ARGV[1])
local fixes = cjson.decode(ARGV[2])
local statuses = {}
for i = 1, #fixes do
  local id = fixes[i][1]
  if fixes[i][4] == 1 then redis.call('SET', KEYS[3] .. id, '1', 'EX', ttl) end
  local status = redis.call('HGET', KEYS[2], id)
  if status == 'AVAILABLE' then
    redis.call('GEOADD', KEYS[1], fixes[i][2], fixes[i][3], id)
  else
    redis.call('ZREM', KEYS[1], id)
  end
  statuses[i] = string.sub(status or 'OFFLINE', 1, 1)
end
return table.concat(statuses)`;

const STATUS_BY_INITIAL: Record<string, DriverStatus> = { A: 'AVAILABLE', B: 'BUSY', O: 'OFFLINE' };

/**
 * Sets drivers' statuses; only an AVAILABLE driver with a live heartbeat and a known position
 * enters the GEO set. ARGV: ttlSeconds, then the changes as one JSON array of
 * [id, status, heartbeat (refresh | keep | drop), lng?, lat?]: a batch of connects is one call.
 */
const SET_STATUSES = `
local ttl = tonumber(ARGV[1])
local changes = cjson.decode(ARGV[2])
for i = 1, #changes do
  local id = changes[i][1]
  local status = changes[i][2]
  local heartbeat = changes[i][3]
  redis.call('HSET', KEYS[2], id, status)
  if heartbeat == 'drop' then
    redis.call('DEL', KEYS[3] .. id)
  elseif heartbeat == 'refresh' then
    redis.call('SET', KEYS[3] .. id, '1', 'EX', ttl)
  end
  if status == 'AVAILABLE' and changes[i][4] and redis.call('EXISTS', KEYS[3] .. id) == 1 then
    redis.call('GEOADD', KEYS[1], changes[i][4], changes[i][5], id)
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return #changes`;

/**
 * Heartbeats of many quiet drivers. ARGV: ttlSeconds, then the ids as one JSON array: a round of
 * thousands is a few script calls for the hub to encode, not a pipeline command per driver.
 */
const TOUCH = `
local ttl = tonumber(ARGV[1])
local ids = cjson.decode(ARGV[2])
for i = 1, #ids do
  redis.call('SET', KEYS[3] .. ids[i], '1', 'EX', ttl)
end
return #ids`;

/**
 * GEO members whose heartbeat is gone leave the GEO set. One slice of the set per call, so Redis is
 * never blocked for a scan of every driver. ARGV: first index, count. Returns the next index (0 when
 * the set was walked to its end), then the ids removed.
 */
const EXPIRED = `
local first = tonumber(ARGV[1])
local members = redis.call('ZRANGE', KEYS[1], first, first + tonumber(ARGV[2]) - 1)
local expired = {}
for i = 1, #members do
  if redis.call('EXISTS', KEYS[3] .. members[i]) == 0 then
    expired[#expired + 1] = members[i]
  end
end
for i = 1, #expired do
  redis.call('ZREM', KEYS[1], expired[i])
end
local nextIndex = 0
if #members == tonumber(ARGV[2]) then nextIndex = first + #members - #expired end
return { nextIndex, expired }`;

/** GEO members one sweep step reads (and heartbeats it checks) at a time, in either layout. */
export const EXPIRED_SLICE = 1000;

export interface Fix {
  id: string;
  lng: number;
  lat: number;
  /** Refresh the heartbeat key with this fix (the caller spaces refreshes well inside the TTL). */
  beat?: boolean;
}

/** One driver's new status, and what it means for its heartbeat and GEO entry. */
export interface StatusChange {
  id: string;
  status: DriverStatus;
  /** Where an AVAILABLE driver enters the GEO set (it stays out without one). */
  position?: { lat: number; lng: number } | null;
  /** The heartbeat key: refreshed (a connect, a duty change), dropped (a disconnect), or left alone (default). */
  heartbeat?: 'refresh' | 'keep' | 'drop';
}

export interface NearbyDriver {
  driverId: string;
  distanceMeters: number;
}

export interface RebuildEntry {
  id: string;
  status: DriverStatus;
  lat: number | null;
  lng: number | null;
  online: boolean;
}

/** Drivers per script call (both layouts): Redis is free between calls, and the hub encodes one slice per turn. */
export const DRIVERS_PER_CALL = 2000;

/** Presence in Redis, as the presence service uses it; see the keys above. */
export interface PresenceStore {
  /** False for single-node mode's store, which keeps nothing (PostgreSQL alone holds the picture). */
  readonly enabled: boolean;
  /** Worth calling now: connected, and the circuit is closed or due for a probe. */
  readonly available: boolean;
  /** Healthy: connected and the circuit closed. */
  readonly healthy: boolean;
  /**
   * The connection is up (whatever the circuit says): a command that failed meanwhile timed out on
   * a Redis that still holds our picture, not on one that went away.
   */
  readonly connected: boolean;
  /** One script call per chunk of fixes: heartbeat + GEOADD when AVAILABLE; returns the statuses, in order. */
  writeFixes(fixes: readonly Fix[]): Promise<DriverStatus[]>;
  /**
   * True when this node takes the lease for the next `ms`: only one node rebuilds at a time, and
   * the periodic reconcile (which compares the whole fleet) runs on one node per period.
   */
  tryLease(lease: PresenceLease, ms: number): Promise<boolean>;
  setStatus(id: string, status: DriverStatus, opts?: Omit<StatusChange, 'id' | 'status'>): Promise<void>;
  /** Many drivers' statuses at once, as `setStatus` each (one script call where the layout allows). */
  setStatuses(changes: readonly StatusChange[]): Promise<void>;
  /** Refreshes heartbeats of connected drivers that are quiet (no pings). */
  touch(ids: readonly string[]): Promise<void>;
  nearest(point: { lat: number; lng: number }, radiusMeters: number, count: number): Promise<NearbyDriver[]>;
  /** Each driver's status in the hash (null when absent) and whether it is in the GEO set, in order. */
  lookup(ids: readonly string[]): Promise<{ statuses: (string | null)[]; inGeo: boolean[] }>;
  /** One step of a walk over the status hash: the next cursor ('0' at the end) and id/status pairs. */
  scanStatuses(cursor: string, count: number): Promise<[string, [string, string][]]>;
  /** One step of a walk over the GEO set: the next cursor ('0' at the end) and member ids. */
  scanGeo(cursor: string, count: number): Promise<[string, string[]]>;
  /** GEO members whose heartbeat expired leave the set here; a slice per call, Redis free in between. */
  expiredDrivers(): Promise<string[]>;
  /** Replaces the whole presence picture in one MULTI (after Redis was wiped or came back). */
  rebuild(entries: readonly RebuildEntry[]): Promise<void>;
  /** A marker that says this Redis holds our picture; gone after a restart or a flush. */
  hasPicture(): Promise<boolean>;
}

/**
 * Single-node mode (no REDIS_URL): a store that keeps nothing and is never worth calling, so the
 * presence service has no Redis-less branches of its own.
 */
export function createNoopPresenceStore(): PresenceStore {
  return {
    enabled: false,
    available: false,
    healthy: false,
    connected: false,
    writeFixes: async (fixes) => fixes.map(() => 'OFFLINE' as const),
    tryLease: async () => false,
    setStatus: async () => {},
    setStatuses: async () => {},
    touch: async () => {},
    nearest: async () => [],
    lookup: async (ids) => ({ statuses: ids.map(() => null), inGeo: ids.map(() => false) }),
    scanStatuses: async () => ['0', []],
    scanGeo: async () => ['0', []],
    expiredDrivers: async () => [],
    rebuild: async () => {},
    hasPicture: async () => false,
  };
}

export function createPresenceStore(deps: { redis: Redis; breaker: CircuitBreaker; prefix: string; heartbeatTtlSeconds: number }): PresenceStore & { keys: PresenceKeys } {
  const { redis, breaker, heartbeatTtlSeconds: ttl } = deps;
  const keys = presenceKeys(deps.prefix);
  const keyArgs = [keys.geo, keys.status, keys.onlinePrefix];

  redis.defineCommand('hubWriteFixes', { numberOfKeys: 3, lua: WRITE_FIXES });
  redis.defineCommand('hubSetStatuses', { numberOfKeys: 3, lua: SET_STATUSES });
  redis.defineCommand('hubExpired', { numberOfKeys: 3, lua: EXPIRED });
  redis.defineCommand('hubTouch', { numberOfKeys: 3, lua: TOUCH });
  type Scripted = Redis & {
    hubTouch(...args: (string | number)[]): Promise<number>;
    hubWriteFixes(...args: (string | number)[]): Promise<string>;
    hubSetStatuses(...args: (string | number)[]): Promise<number>;
    hubExpired(...args: (string | number)[]): Promise<[number, string[]]>;
  };
  const scripted = redis as Scripted;

  const guarded = <T>(call: () => Promise<T>) => breaker.run(call);

  async function setStatuses(changes: readonly StatusChange[]): Promise<void> {
    if (changes.length === 0) return;
    const packed = JSON.stringify(changes.map(({ id, status, position, heartbeat }) => (position ? [id, status, heartbeat ?? 'keep', position.lng, position.lat] : [id, status, heartbeat ?? 'keep'])));
    await guarded(() => scripted.hubSetStatuses(...keyArgs, ttl, packed));
  }

  return {
    keys,
    enabled: true,
    /** Worth calling now: connected, and the circuit is closed or due for a probe. */
    get available(): boolean {
      return redis.status === 'ready' && breaker.canTry();
    },

    /** Healthy: connected and the circuit closed. */
    get healthy(): boolean {
      return redis.status === 'ready' && breaker.state === 'closed';
    },

    get connected(): boolean {
      return redis.status === 'ready';
    },

    /** One script call per chunk of fixes: heartbeat + GEOADD when AVAILABLE; returns the statuses, in order. */
    async writeFixes(fixes: readonly Fix[]): Promise<DriverStatus[]> {
      const statuses: DriverStatus[] = [];
      for (const slice of slicesOf(fixes, DRIVERS_PER_CALL)) {
        const packed = JSON.stringify(slice.map((fix) => [fix.id, fix.lng, fix.lat, fix.beat === false ? 0 : 1]));
        const initials = await guarded(() => scripted.hubWriteFixes(...keyArgs, ttl, packed));
        for (const initial of initials) statuses.push(STATUS_BY_INITIAL[initial] ?? 'OFFLINE');
      }
      return statuses;
    },

    async tryLease(lease, ms): Promise<boolean> {
      return guarded(async () => (await redis.set(keys.lease[lease], '1', 'PX', String(ms), 'NX')) === 'OK');
    },

    setStatus: (id, status, opts = {}) => setStatuses([{ id, status, ...opts }]),
    setStatuses,

    /**
     * Refreshes heartbeats of connected drivers that are quiet (no pings). A slice per call, each
     * awaited: a node of 10,000 quiet drivers built one pipeline of 10,000 commands in one turn of
     * its event loop, a 70 ms stall every heartbeat round that every webhook in it waited out.
     */
    async touch(ids: readonly string[]): Promise<void> {
      for (const slice of slicesOf(ids, DRIVERS_PER_CALL)) {
        const packed = JSON.stringify(slice);
        await guarded(() => scripted.hubTouch(...keyArgs, ttl, packed));
      }
    },

    async nearest(point: { lat: number; lng: number }, radiusMeters: number, count: number): Promise<NearbyDriver[]> {
      const reply = (await guarded(() =>
        redis.call('GEOSEARCH', keys.geo, 'FROMLONLAT', point.lng, point.lat, 'BYRADIUS', Math.ceil(radiusMeters), 'm', 'ASC', 'COUNT', count, 'WITHDIST'),
      )) as [string, string][];
      return reply.map(([driverId, dist]) => ({ driverId, distanceMeters: Number(dist) }));
    },

    /** Each driver's status in the hash (null when absent) and whether it is in the GEO set, in order. */
    async lookup(ids: readonly string[]): Promise<{ statuses: (string | null)[]; inGeo: boolean[] }> {
      if (ids.length === 0) return { statuses: [], inGeo: [] };
      return guarded(async () => {
        const [statuses, scores] = await Promise.all([redis.hmget(keys.status, ...ids), redis.call('ZMSCORE', keys.geo, ...ids) as Promise<(string | null)[]>]);
        return { statuses, inGeo: scores.map((score) => score !== null) };
      });
    },

    /** One step of a walk over the status hash: the next cursor ('0' at the end) and id/status pairs. */
    async scanStatuses(cursor: string, count: number): Promise<[string, [string, string][]]> {
      const [next, flat] = await guarded(() => redis.hscan(keys.status, cursor, 'COUNT', count));
      const pairs: [string, string][] = [];
      for (let i = 0; i < flat.length; i += 2) pairs.push([flat[i], flat[i + 1]]);
      return [next, pairs];
    },

    /** One step of a walk over the GEO set: the next cursor ('0' at the end) and member ids. */
    async scanGeo(cursor: string, count: number): Promise<[string, string[]]> {
      const [next, flat] = await guarded(() => redis.zscan(keys.geo, cursor, 'COUNT', count));
      return [next, flat.filter((_, i) => i % 2 === 0)];
    },

    /** GEO members whose heartbeat expired leave the set here; a slice per call, Redis free in between. */
    async expiredDrivers(): Promise<string[]> {
      const expired: string[] = [];
      let next = 0;
      do {
        const [after, ids] = await guarded(() => scripted.hubExpired(...keyArgs, next, EXPIRED_SLICE));
        expired.push(...ids);
        next = Number(after);
      } while (next > 0);
      return expired;
    },

    /** Replaces the whole presence picture in one MULTI (after Redis was wiped or came back). */
    async rebuild(entries: readonly RebuildEntry[]): Promise<void> {
      await guarded(async () => {
        const multi = redis.multi();
        multi.del(keys.geo, keys.status);
        multi.set(keys.built, String(Date.now()));
        for (const entry of entries) {
          multi.hset(keys.status, entry.id, entry.status);
          if (entry.online) multi.set(keys.online(entry.id), '1', 'EX', ttl);
          if (entry.online && entry.status === 'AVAILABLE' && entry.lat !== null && entry.lng !== null) {
            multi.geoadd(keys.geo, entry.lng, entry.lat, entry.id);
          }
        }
        const results = await multi.exec();
        if (!results) throw new RedisUnavailableError('rebuild aborted');
      });
    },

    /** A marker that says this Redis holds our picture; gone after a restart or a flush. */
    async hasPicture(): Promise<boolean> {
      return guarded(async () => (await redis.exists(keys.built)) === 1);
    },
  };
}

