import type { Redis } from 'ioredis';
import type { DriverStatus } from '../../../shared/src/schemas.js';
import { type CircuitBreaker, RedisUnavailableError } from '../platform/redis.js';

/**
 * The only module that knows Redis key names, Lua scripts and TTLs for presence.
 *
 * Keys (all behind the configurable prefix):
 *   drivers:geo             GEO set, AVAILABLE drivers with a live heartbeat only
 *   drivers:status          hash driverId -> AVAILABLE | BUSY | OFFLINE
 *   driver:online:{id}      heartbeat string with a TTL
 *   presence:built          marker set by a rebuild; its absence means Redis lost our picture
 */
export interface PresenceKeys {
  geo: string;
  status: string;
  onlinePrefix: string;
  built: string;
}

export function presenceKeys(prefix: string): PresenceKeys {
  return { geo: `${prefix}drivers:geo`, status: `${prefix}drivers:status`, onlinePrefix: `${prefix}driver:online:`, built: `${prefix}presence:built` };
}

/**
 * Heartbeats and GEO positions for many drivers in one call. The status check and the GEOADD are
 * one atomic step, so a late ping can never put a BUSY or OFFLINE driver back into the GEO set.
 * ARGV: ttlSeconds, then (id, lng, lat) triples. Returns each driver's status, in order.
 */
const WRITE_FIXES = `
local ttl = tonumber(ARGV[1])
local statuses = {}
for i = 2, #ARGV, 3 do
  local id = ARGV[i]
  redis.call('SET', KEYS[3] .. id, '1', 'EX', ttl)
  local status = redis.call('HGET', KEYS[2], id)
  if status == 'AVAILABLE' then
    redis.call('GEOADD', KEYS[1], ARGV[i + 1], ARGV[i + 2], id)
  else
    redis.call('ZREM', KEYS[1], id)
  end
  statuses[#statuses + 1] = status or 'OFFLINE'
end
return statuses`;

/**
 * Sets a driver's status; only an AVAILABLE driver with a live heartbeat and a known position
 * enters the GEO set. ARGV: id, status, ttlSeconds, heartbeat (refresh | keep | drop), [lng, lat].
 */
const SET_STATUS = `
local id = ARGV[1]
local status = ARGV[2]
redis.call('HSET', KEYS[2], id, status)
if ARGV[4] == 'drop' then
  redis.call('DEL', KEYS[3] .. id)
elseif ARGV[4] == 'refresh' then
  redis.call('SET', KEYS[3] .. id, '1', 'EX', tonumber(ARGV[3]))
end
if status == 'AVAILABLE' and ARGV[5] and redis.call('EXISTS', KEYS[3] .. id) == 1 then
  redis.call('GEOADD', KEYS[1], ARGV[5], ARGV[6], id)
else
  redis.call('ZREM', KEYS[1], id)
end
return 1`;

/** Drivers the hash calls live whose heartbeat is gone; they also leave the GEO set at once. */
const EXPIRED = `
local expired = {}
local all = redis.call('HGETALL', KEYS[2])
for i = 1, #all, 2 do
  if all[i + 1] ~= 'OFFLINE' and redis.call('EXISTS', KEYS[3] .. all[i]) == 0 then
    redis.call('ZREM', KEYS[1], all[i])
    expired[#expired + 1] = all[i]
  end
end
return expired`;

export interface Fix {
  id: string;
  lng: number;
  lat: number;
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

const FIXES_PER_CALL = 2000;

export function createPresenceStore(deps: { redis: Redis; breaker: CircuitBreaker; prefix: string; heartbeatTtlSeconds: number }) {
  const { redis, breaker, heartbeatTtlSeconds: ttl } = deps;
  const keys = presenceKeys(deps.prefix);
  const keyArgs = [keys.geo, keys.status, keys.onlinePrefix];

  redis.defineCommand('hubWriteFixes', { numberOfKeys: 3, lua: WRITE_FIXES });
  redis.defineCommand('hubSetStatus', { numberOfKeys: 3, lua: SET_STATUS });
  redis.defineCommand('hubExpired', { numberOfKeys: 3, lua: EXPIRED });
  type Scripted = Redis & {
    hubWriteFixes(...args: (string | number)[]): Promise<DriverStatus[]>;
    hubSetStatus(...args: (string | number)[]): Promise<number>;
    hubExpired(...args: string[]): Promise<string[]>;
  };
  const scripted = redis as Scripted;

  const guarded = <T>(call: () => Promise<T>) => breaker.run(call);

  return {
    keys,
    /** Worth calling now: connected, and the circuit is closed or due for a probe. */
    get available(): boolean {
      return redis.status === 'ready' && breaker.canTry();
    },

    /** Healthy: connected and the circuit closed. */
    get healthy(): boolean {
      return redis.status === 'ready' && breaker.state === 'closed';
    },

    /** One script call per chunk of fixes: heartbeat + GEOADD when AVAILABLE; returns the statuses, in order. */
    async writeFixes(fixes: readonly Fix[]): Promise<DriverStatus[]> {
      const statuses: DriverStatus[] = [];
      for (let start = 0; start < fixes.length; start += FIXES_PER_CALL) {
        const args: (string | number)[] = [...keyArgs, ttl];
        for (const fix of fixes.slice(start, start + FIXES_PER_CALL)) args.push(fix.id, fix.lng, fix.lat);
        statuses.push(...(await guarded(() => scripted.hubWriteFixes(...args))));
      }
      return statuses;
    },

    /** Only one node rebuilds at a time. */
    async tryRebuildLock(ms: number): Promise<boolean> {
      return guarded(async () => (await redis.set(`${keys.built}:lock`, '1', 'PX', String(ms), 'NX')) === 'OK');
    },

    async setStatus(
      id: string,
      status: DriverStatus,
      opts: { position?: { lat: number; lng: number } | null; heartbeat?: 'refresh' | 'keep' | 'drop' } = {},
    ): Promise<void> {
      const args: (string | number)[] = [...keyArgs, id, status, ttl, opts.heartbeat ?? 'keep'];
      if (opts.position) args.push(opts.position.lng, opts.position.lat);
      await guarded(() => scripted.hubSetStatus(...args));
    },

    /** Refreshes heartbeats of connected drivers that are quiet (no pings). */
    async touch(ids: readonly string[]): Promise<void> {
      if (ids.length === 0) return;
      await guarded(async () => {
        const pipeline = redis.pipeline();
        for (const id of ids) pipeline.set(`${keys.onlinePrefix}${id}`, '1', 'EX', ttl);
        const results = await pipeline.exec();
        const failed = results?.find(([err]) => err);
        if (failed?.[0]) throw failed[0];
      });
    },

    async nearest(point: { lat: number; lng: number }, radiusMeters: number, count: number): Promise<NearbyDriver[]> {
      const reply = (await guarded(() =>
        redis.call('GEOSEARCH', keys.geo, 'FROMLONLAT', point.lng, point.lat, 'BYRADIUS', Math.ceil(radiusMeters), 'm', 'ASC', 'COUNT', count, 'WITHDIST'),
      )) as [string, string][];
      return reply.map(([driverId, dist]) => ({ driverId, distanceMeters: Number(dist) }));
    },

    async geoMembers(): Promise<string[]> {
      return guarded(() => redis.zrange(keys.geo, '0', '-1'));
    },

    async statuses(): Promise<Record<string, string>> {
      return guarded(() => redis.hgetall(keys.status));
    },

    /** Ids whose heartbeat expired while the hash still calls them live; they leave the GEO set here. */
    async expiredDrivers(): Promise<string[]> {
      return guarded(() => scripted.hubExpired(...keyArgs));
    },

    /** Replaces the whole presence picture in one MULTI (after Redis was wiped or came back). */
    async rebuild(entries: readonly RebuildEntry[]): Promise<void> {
      await guarded(async () => {
        const multi = redis.multi();
        multi.del(keys.geo, keys.status);
        multi.set(keys.built, String(Date.now()));
        for (const entry of entries) {
          multi.hset(keys.status, entry.id, entry.status);
          if (entry.online) multi.set(`${keys.onlinePrefix}${entry.id}`, '1', 'EX', ttl);
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

export type PresenceStore = ReturnType<typeof createPresenceStore>;
