import type { Cluster } from 'ioredis';
import type { DriverStatus } from '#shared/schemas.js';
import { type CircuitBreaker, RedisUnavailableError, type ShardBreakers } from '../platform/redis.js';
import { type CellId, cellIdOf, cellsAround } from './cells.js';
import { DRIVERS_PER_CALL, EXPIRED_SLICE, type Fix, leaseKeys, type NearbyDriver, type PresenceLease, type PresenceStore, type RebuildEntry } from './presence.store.js';
import { slicesOf } from '../platform/slices.js';

/**
 * Presence on a Redis Cluster (`REDIS_CLUSTER_NODES`), behind the same PresenceStore as the one-Redis
 * layout. A script may only touch keys of one hash slot, and one GEO set cannot span shards, so:
 *
 *   {d:<bucket>}:status        hash driverId -> AVAILABLE | BUSY | OFFLINE (drivers spread over DRIVER_BUCKETS slots)
 *   {d:<bucket>}:place         hash driverId -> "<version>|<cell>": the one cell the driver may be in ('' none)
 *   {d:<bucket>}:fence         hash driverId -> "<cell>=<version>,...": earlier cells not yet known to be cleared
 *   {d:<bucket>}:online:<id>   heartbeat string with a TTL
 *   {c:<cell>}:geo             GEO set of one region cell: AVAILABLE drivers placed in that cell
 *   {c:<cell>}:ver             hash driverId -> the highest placement version this cell has seen
 *   {m:<n>}:built              one marker per master: its absence means that shard lost our picture
 *
 * A move between cells cannot be one script (the cells live on different shards). It is three steps:
 * the driver's record (its own slot) is written first: status, the new cell and a new placement
 * version (the Redis server's clock in microseconds, so it also grows across a wiped shard), with
 * the cell it leaves added to the fence; then every fenced cell removes the member with that version,
 * and only then the new cell adds it. Each cell keeps the highest version it has seen per driver and
 * refuses a write with a lower one, so a late or reordered write for an old placement never adds
 * the member back, and a driver is never in two cell sets at once. A cell set may hold a BUSY
 * driver for one round trip (the record already says BUSY): the search takes nobody from a cell set
 * unless the record says AVAILABLE and names that very cell, so such a member is never proposed;
 * the sweep removes any member its record does not place there.
 */

/**
 * Driver records are spread over this many hash slots: a batch of fixes costs one script call per
 * bucket it touches, so fewer buckets mean fewer calls per large batch, more mean a finer spread
 * over many shards (64 slots are about 21 per master of three). 256 measured no different at
 * moderate load (docs/scaling.md). Every hub of a deployment must use the same number.
 */
export const DRIVER_BUCKETS = 64;

export interface ClusterPresenceKeys {
  buckets: number;
  bucketOf(driverId: string): number;
  status(bucket: number): string;
  place(bucket: number): string;
  fence(bucket: number): string;
  /** The heartbeat key prefix of a bucket (the driver id follows). */
  onlinePrefix(bucket: number): string;
  online(driverId: string): string;
  cellGeo(cell: CellId): string;
  cellVersions(cell: CellId): string;
  /** SCAN pattern that matches every cell GEO set. */
  cellGeoPattern: string;
  cellOfGeoKey(key: string): CellId;
  marker(n: number): string;
  lease: Record<PresenceLease, string>;
}

/** FNV-1a: a stable, even spread of driver ids over the buckets. */
function bucketOf(id: string, buckets: number): number {
  let hash = 0x811c9dc5;
  for (let i = 0; i < id.length; i++) {
    hash ^= id.charCodeAt(i);
    hash = Math.imul(hash, 0x01000193);
  }
  return (hash >>> 0) % buckets;
}

function escapeGlob(text: string): string {
  return text.replace(/[*?[\]\\]/g, (c) => `\\${c}`);
}

/** `buckets`: every hub of a deployment must use the same number (the default; others are for measurements). */
export function clusterPresenceKeys(prefix: string, buckets = DRIVER_BUCKETS): ClusterPresenceKeys {
  const bucket = (b: number) => `${prefix}{d:${b}}`;
  const cellTagStart = `${prefix}{c:`;
  const bucketOfId = (id: string) => bucketOf(id, buckets);
  return {
    buckets,
    bucketOf: bucketOfId,
    status: (b) => `${bucket(b)}:status`,
    place: (b) => `${bucket(b)}:place`,
    fence: (b) => `${bucket(b)}:fence`,
    onlinePrefix: (b) => `${bucket(b)}:online:`,
    online: (id) => `${bucket(bucketOfId(id))}:online:${id}`,
    cellGeo: (cell) => `${cellTagStart}${cell}}:geo`,
    cellVersions: (cell) => `${cellTagStart}${cell}}:ver`,
    cellGeoPattern: `${escapeGlob(cellTagStart)}*}:geo`,
    cellOfGeoKey: (key) => key.slice(cellTagStart.length, key.length - '}:geo'.length),
    marker: (n) => `${prefix}{m:${n}}:built`,
    lease: leaseKeys(prefix),
  };
}

/**
 * Shared by the driver scripts. KEYS: status, place, fence hashes of one bucket. `place` moves the
 * driver's record to `target` ('' for none): a new version when the cell changes, the cell left
 * added to the fence. Returns "<version>|<cell>|<fence>".
 */
const DRIVER_LIB = `
local function fmt(v) return string.format('%.0f', v) end
local function newVersion(old)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  if now > old then return now end
  return old + 1
end
local function place(id, target)
  local cur = redis.call('HGET', KEYS[2], id)
  local fence = redis.call('HGET', KEYS[3], id) or ''
  -- The common case, a fix inside the cell the driver is in: the record stays as it is.
  if cur and string.sub(cur, -(#target + 1)) == '|' .. target then return cur .. '|' .. fence end
  local ver, cell = 0, ''
  if cur then
    local sep = string.find(cur, '|', 1, true)
    ver = tonumber(string.sub(cur, 1, sep - 1))
    cell = string.sub(cur, sep + 1)
  end
  if cell ~= '' then
    fence = fence .. cell .. '=' .. fmt(ver) .. ','
    redis.call('HSET', KEYS[3], id, fence)
  end
  ver = newVersion(ver)
  redis.call('HSET', KEYS[2], id, fmt(ver) .. '|' .. target)
  return fmt(ver) .. '|' .. target .. '|' .. fence
end
`;

/** ARGV: online prefix, ttl, JSON [[id, cell, beat]]. Returns per fix "<status initial>|<place>". */
const DRIVER_FIXES = `${DRIVER_LIB}
local ttl = tonumber(ARGV[2])
local fixes = cjson.decode(ARGV[3])
local out = {}
for i = 1, #fixes do
  local id = fixes[i][1]
  if fixes[i][3] == 1 then redis.call('SET', ARGV[1] .. id, '1', 'EX', ttl) end
  local status = redis.call('HGET', KEYS[1], id)
  local target = ''
  if status == 'AVAILABLE' then target = fixes[i][2] end
  out[i] = string.sub(status or 'OFFLINE', 1, 1) .. '|' .. place(id, target)
end
return out`;

/** ARGV: online prefix, ttl, id, status, heartbeat (refresh | keep | drop), cell ('' without a position). */
const DRIVER_STATUS = `${DRIVER_LIB}
local id = ARGV[3]
local status = ARGV[4]
redis.call('HSET', KEYS[1], id, status)
if ARGV[5] == 'drop' then
  redis.call('DEL', ARGV[1] .. id)
elseif ARGV[5] == 'refresh' then
  redis.call('SET', ARGV[1] .. id, '1', 'EX', tonumber(ARGV[2]))
end
local target = ''
if status == 'AVAILABLE' and ARGV[6] ~= '' and redis.call('EXISTS', ARGV[1] .. id) == 1 then target = ARGV[6] end
return place(id, target)`;

/** ARGV: online prefix, ttl, JSON [[id, status, online 0/1, cell]]. Returns per entry the place. */
const DRIVER_REBUILD = `${DRIVER_LIB}
local ttl = tonumber(ARGV[2])
local entries = cjson.decode(ARGV[3])
local out = {}
for i = 1, #entries do
  local e = entries[i]
  redis.call('HSET', KEYS[1], e[1], e[2])
  if e[3] == 1 then redis.call('SET', ARGV[1] .. e[1], '1', 'EX', ttl) end
  local target = ''
  if e[3] == 1 and e[2] == 'AVAILABLE' then target = e[4] end
  out[i] = place(e[1], target)
end
return out`;

/**
 * Members found in a cell, judged against their records. ARGV: online prefix, cell, JSON [ids].
 * Returns per id: "K" (belongs there), "S|<version>" (a stray: the record places it elsewhere or
 * nowhere; remove it with that version), "L|<place>" (its heartbeat is gone or it is not AVAILABLE:
 * it leaves, and the place says which cells to clear).
 */
const DRIVER_CHECK = `${DRIVER_LIB}
local cellHere = ARGV[2]
local ids = cjson.decode(ARGV[3])
local out = {}
for i = 1, #ids do
  local id = ids[i]
  local cur = redis.call('HGET', KEYS[2], id)
  local cell = ''
  if cur then cell = string.sub(cur, string.find(cur, '|', 1, true) + 1) end
  if not cur then
    local ver = newVersion(0)
    redis.call('HSET', KEYS[2], id, fmt(ver) .. '|')
    out[i] = 'S|' .. fmt(ver)
  elseif cell ~= cellHere then
    out[i] = 'S|' .. string.sub(cur, 1, string.find(cur, '|', 1, true) - 1)
  elseif redis.call('EXISTS', ARGV[1] .. id) == 0 or redis.call('HGET', KEYS[1], id) ~= 'AVAILABLE' then
    out[i] = 'L|' .. place(id, '')
  else
    out[i] = 'K'
  end
end
return out`;

/** The fenced cells of each driver were cleared with `version`: entries older than it go. ARGV: JSON [[id, version]]. */
const DRIVER_CONFIRM = `
local done = cjson.decode(ARGV[1])
for i = 1, #done do
  local id = done[i][1]
  local ver = tonumber(done[i][2])
  local fence = redis.call('HGET', KEYS[1], id)
  if fence then
    local kept = ''
    for cell, v in string.gmatch(fence, '([^=,]+)=([^,]+),') do
      if tonumber(v) >= ver then kept = kept .. cell .. '=' .. v .. ',' end
    end
    if kept == '' then redis.call('HDEL', KEYS[1], id) else redis.call('HSET', KEYS[1], id, kept) end
  end
end
return 1`;

/**
 * GEOADDs into one cell, each only when its placement version is not older than what the cell has
 * seen for that driver. KEYS: geo, versions. ARGV: JSON [[id, version, lng, lat]].
 */
const CELL_PUT = `
local puts = cjson.decode(ARGV[1])
for i = 1, #puts do
  local p = puts[i]
  local seen = tonumber(redis.call('HGET', KEYS[2], p[1]))
  local v = tonumber(p[2])
  if not seen or v >= seen then
    redis.pcall('GEOADD', KEYS[1], p[3], p[4], p[1])
    if seen ~= v then redis.call('HSET', KEYS[2], p[1], p[2]) end
  end
end
return 1`;

/** ZREMs from one cell, fencing off every older placement. KEYS: geo, versions. ARGV: JSON [[id, version]]. */
const CELL_DEL = `
local dels = cjson.decode(ARGV[1])
for i = 1, #dels do
  local d = dels[i]
  local seen = tonumber(redis.call('HGET', KEYS[2], d[1]))
  if not seen or tonumber(d[2]) >= seen then
    redis.call('ZREM', KEYS[1], d[1])
    redis.call('HSET', KEYS[2], d[1], d[2])
  end
end
return 1`;

/** Versions (microseconds) older than this no late write can still carry: their fences may go. */
const FENCE_KEEP_US = 10 * 60 * 1_000_000;

/** Fence entries of drivers no longer in the cell, older than ARGV[1] (microseconds). KEYS: geo, versions. ARGV: cutoff, JSON [ids]. */
const CELL_PRUNE = `
local cutoff = tonumber(ARGV[1])
local ids = cjson.decode(ARGV[2])
local pruned = 0
for i = 1, #ids do
  local v = tonumber(redis.call('HGET', KEYS[2], ids[i]))
  if v and v < cutoff and not redis.call('ZSCORE', KEYS[1], ids[i]) then
    redis.call('HDEL', KEYS[2], ids[i])
    pruned = pruned + 1
  end
end
return pruned`;

const STATUS_BY_INITIAL: Record<string, DriverStatus> = { A: 'AVAILABLE', B: 'BUSY', O: 'OFFLINE' };

type Scripted = Cluster & {
  hubDriverFixes(status: string, place: string, fence: string, onlinePrefix: string, ttl: number, json: string): Promise<string[]>;
  hubDriverStatus(status: string, place: string, fence: string, onlinePrefix: string, ttl: number, id: string, st: string, beat: string, cell: string): Promise<string>;
  hubDriverRebuild(status: string, place: string, fence: string, onlinePrefix: string, ttl: number, json: string): Promise<string[]>;
  hubDriverCheck(status: string, place: string, fence: string, onlinePrefix: string, cell: string, json: string): Promise<string[]>;
  hubDriverConfirm(fence: string, json: string): Promise<number>;
  hubCellPut(geo: string, versions: string, json: string): Promise<number>;
  hubCellDel(geo: string, versions: string, json: string): Promise<number>;
  hubCellPrune(geo: string, versions: string, cutoff: string, json: string): Promise<number>;
};

/** A driver's record after a driver script: where it may be, with which version, and which cells to clear first. */
interface Placement {
  id: string;
  version: string;
  cell: CellId;
  fence: { cell: CellId; version: string }[];
  position: { lat: number; lng: number } | null;
}

function parsePlacement(id: string, text: string, position: { lat: number; lng: number } | null): Placement {
  const [version, cell, fenceText] = text.split('|');
  const fence = (fenceText ?? '')
    .split(',')
    .filter(Boolean)
    .map((entry) => {
      const at = entry.lastIndexOf('=');
      return { cell: entry.slice(0, at), version: entry.slice(at + 1) };
    });
  return { id, version, cell, fence, position };
}

function groupBy<T, K>(items: readonly T[], keyOf: (item: T) => K): Map<K, T[]> {
  const groups = new Map<K, T[]>();
  for (const item of items) {
    const key = keyOf(item);
    const group = groups.get(key);
    if (group) group.push(item);
    else groups.set(key, [item]);
  }
  return groups;
}

/** Settles every call; throws the first failure once all are done (the rest still happened). */
async function allOrFirstError<T>(calls: Promise<T>[]): Promise<T[]> {
  const settled = await Promise.allSettled(calls);
  const failed = settled.find((s): s is PromiseRejectedResult => s.status === 'rejected');
  if (failed) throw failed.reason;
  return settled.map((s) => (s as PromiseFulfilledResult<T>).value);
}

export interface ClusterPresenceDeps {
  cluster: Cluster;
  /** The whole cluster's breaker: open while no shard can be reached. */
  breaker: CircuitBreaker;
  shards: ShardBreakers;
  prefix: string;
  heartbeatTtlSeconds: number;
  cellDegrees: number;
  commandTimeoutMs: number;
  /**
   * Tests only: awaited between the steps of a placement (after the driver records, after the
   * removals from fenced cells), so a test can reorder the steps of concurrent writers.
   */
  interleave?: (step: 'recorded' | 'fenced', ids: readonly string[]) => Promise<void>;
  /** Measurements only: another number of driver buckets (all hubs must agree; see DRIVER_BUCKETS). */
  driverBuckets?: number;
}

export type ClusterPresenceStore = PresenceStore & { keys: ClusterPresenceKeys; cellOf(point: { lat: number; lng: number }): CellId };

export function createClusterPresenceStore(deps: ClusterPresenceDeps): ClusterPresenceStore {
  const { cluster, shards, heartbeatTtlSeconds: ttl } = deps;
  const keys = clusterPresenceKeys(deps.prefix, deps.driverBuckets);
  const cellOf = (point: { lat: number; lng: number }) => cellIdOf(point, deps.cellDegrees);

  cluster.defineCommand('hubDriverFixes', { numberOfKeys: 3, lua: DRIVER_FIXES });
  cluster.defineCommand('hubDriverStatus', { numberOfKeys: 3, lua: DRIVER_STATUS });
  cluster.defineCommand('hubDriverRebuild', { numberOfKeys: 3, lua: DRIVER_REBUILD });
  cluster.defineCommand('hubDriverCheck', { numberOfKeys: 3, lua: DRIVER_CHECK });
  cluster.defineCommand('hubDriverConfirm', { numberOfKeys: 1, lua: DRIVER_CONFIRM });
  cluster.defineCommand('hubCellPut', { numberOfKeys: 2, lua: CELL_PUT });
  cluster.defineCommand('hubCellDel', { numberOfKeys: 2, lua: CELL_DEL });
  cluster.defineCommand('hubCellPrune', { numberOfKeys: 2, lua: CELL_PRUNE });
  const scripted = cluster as Scripted;
  const bucketKeys = (b: number) => [keys.status(b), keys.place(b), keys.fence(b)] as const;


  /** One command on the shard of `key`: through that shard's breaker, never longer than the command timeout. */
  function onShard<T>(key: string, call: () => Promise<T>): Promise<T> {
    if (cluster.status !== 'ready') return Promise.reject(new RedisUnavailableError('redis cluster not ready'));
    return shards.forKey(key).run(() => {
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new RedisUnavailableError('redis shard timed out')), deps.commandTimeoutMs);
      });
      return Promise.race([call(), timeout]).finally(() => clearTimeout(timer));
    });
  }

  /** A shard worth reading for answers: it holds our picture and its circuit lets a call through. */
  function usableFor(key: string): boolean {
    const master = shards.masterOf(key);
    return master !== null && shards.isVerified(master) && shards.forNode(master).canTry();
  }

  /**
   * Carries placements out on the cells: first the fenced cells drop the member (with the new
   * version), then the placed cell adds it, then the records forget the cleared fences. A driver
   * whose removal failed is not added anywhere this round (never two sets); its fence stays and the
   * next write or the sweep clears it.
   */
  async function applyPlacements(placements: readonly Placement[]): Promise<void> {
    if (placements.length === 0) return;
    let firstError: unknown = null;
    const failed = new Set<string>();
    const dels = placements.flatMap((p) => p.fence.filter((f) => f.cell !== p.cell).map((f) => ({ id: p.id, cell: f.cell, version: p.version })));
    if (deps.interleave) await deps.interleave('recorded', placements.map((p) => p.id));
    if (dels.length > 0) {
      const results = await Promise.allSettled(
        [...groupBy(dels, (d) => d.cell)].map(async ([cell, group]) => {
          try {
            await onShard(keys.cellGeo(cell), () => scripted.hubCellDel(keys.cellGeo(cell), keys.cellVersions(cell), JSON.stringify(group.map((d) => [d.id, d.version]))));
          } catch (err) {
            for (const d of group) failed.add(d.id);
            throw err;
          }
        }),
      );
      firstError = results.find((r): r is PromiseRejectedResult => r.status === 'rejected')?.reason ?? null;
      if (deps.interleave) await deps.interleave('fenced', placements.map((p) => p.id));
    }
    const puts = placements.filter((p) => p.cell !== '' && p.position && !failed.has(p.id));
    const putResults = await Promise.allSettled(
      [...groupBy(puts, (p) => p.cell)].map(([cell, group]) =>
        onShard(keys.cellGeo(cell), () =>
          scripted.hubCellPut(keys.cellGeo(cell), keys.cellVersions(cell), JSON.stringify(group.map((p) => [p.id, p.version, p.position!.lng, p.position!.lat]))),
        ),
      ),
    );
    firstError ??= putResults.find((r): r is PromiseRejectedResult => r.status === 'rejected')?.reason ?? null;
    const cleared = placements.filter((p) => p.fence.length > 0 && !failed.has(p.id));
    const confirms = await Promise.allSettled(
      [...groupBy(cleared, (p) => keys.bucketOf(p.id))].map(([b, group]) =>
        onShard(keys.fence(b), () => scripted.hubDriverConfirm(keys.fence(b), JSON.stringify(group.map((p) => [p.id, p.version])))),
      ),
    );
    firstError ??= confirms.find((r): r is PromiseRejectedResult => r.status === 'rejected')?.reason ?? null;
    if (firstError) throw firstError;
  }

  /** Every cell GEO key on every master, one SCAN page at a time. */
  async function* cellKeys(): AsyncGenerator<string[]> {
    for (const node of cluster.nodes('master')) {
      const name = `${node.options.host}:${node.options.port}`;
      let cursor = '0';
      do {
        const [next, found] = await shards.forNode(name).run(() => node.scan(cursor, 'MATCH', keys.cellGeoPattern, 'COUNT', 1000));
        cursor = next;
        if (found.length > 0) yield found;
      } while (cursor !== '0');
    }
  }

  /** For each master, a marker key whose slot it serves (found anew after the slots moved). */
  function markerKeys(): Map<string, string> {
    const markers = new Map<string, string>();
    const masters = shards.masters();
    for (let n = 0; markers.size < masters.length && n < 100_000; n++) {
      const key = keys.marker(n);
      const master = shards.masterOf(key);
      if (master && !markers.has(master)) markers.set(master, key);
    }
    return markers;
  }

  /** Judges the members of one cell against their records; returns the ids that left for a dead heartbeat. */
  async function checkCell(cell: CellId, members: string[]): Promise<string[]> {
    const expired: string[] = [];
    const strays: { id: string; version: string }[] = [];
    const leaving: Placement[] = [];
    await allOrFirstError(
      [...groupBy(members, (id) => keys.bucketOf(id))].map(async ([b, ids]) => {
        const verdicts = await onShard(keys.status(b), () => scripted.hubDriverCheck(...bucketKeys(b), keys.onlinePrefix(b), cell, JSON.stringify(ids)));
        verdicts.forEach((verdict, i) => {
          if (verdict.startsWith('S|')) strays.push({ id: ids[i], version: verdict.slice(2) });
          else if (verdict.startsWith('L|')) {
            expired.push(ids[i]);
            leaving.push(parsePlacement(ids[i], verdict.slice(2), null));
          }
        });
      }),
    );
    if (strays.length > 0) {
      await onShard(keys.cellGeo(cell), () => scripted.hubCellDel(keys.cellGeo(cell), keys.cellVersions(cell), JSON.stringify(strays.map((s) => [s.id, s.version]))));
    }
    await applyPlacements(leaving);
    return expired;
  }

  const store: ClusterPresenceStore = {
    keys,
    cellOf,
    enabled: true,
    get available(): boolean {
      return cluster.status === 'ready' && deps.breaker.canTry();
    },
    get healthy(): boolean {
      return cluster.status === 'ready' && deps.breaker.state === 'closed' && !shards.anyOpen() && shards.masters().every((m) => shards.isVerified(m));
    },
    get connected(): boolean {
      return cluster.status === 'ready';
    },

    async writeFixes(fixes: readonly Fix[]): Promise<DriverStatus[]> {
      const statuses = new Array<DriverStatus>(fixes.length);
      const placements: Placement[] = [];
      const indexed = fixes.map((fix, index) => ({ fix, index, cell: cellOf(fix) }));
      let firstError: unknown = null;
      await Promise.allSettled(
        [...groupBy(indexed, (f) => keys.bucketOf(f.fix.id))].map(async ([b, group]) => {
          for (const slice of slicesOf(group, DRIVERS_PER_CALL)) {
            const packed = JSON.stringify(slice.map((f) => [f.fix.id, f.cell, f.fix.beat === false ? 0 : 1]));
            try {
              const replies = await onShard(keys.status(b), () => scripted.hubDriverFixes(...bucketKeys(b), keys.onlinePrefix(b), ttl, packed));
              replies.forEach((reply, i) => {
                const { fix, index } = slice[i];
                statuses[index] = STATUS_BY_INITIAL[reply[0]] ?? 'OFFLINE';
                placements.push(parsePlacement(fix.id, reply.slice(2), { lat: fix.lat, lng: fix.lng }));
              });
            } catch (err) {
              firstError ??= err;
            }
          }
        }),
      );
      try {
        await applyPlacements(placements);
      } catch (err) {
        firstError ??= err;
      }
      if (firstError) throw firstError;
      return statuses;
    },

    async tryLease(lease, ms): Promise<boolean> {
      const key = keys.lease[lease];
      return onShard(key, async () => (await cluster.set(key, '1', 'PX', String(ms), 'NX')) === 'OK');
    },

    async setStatus(id, status, opts = {}): Promise<void> {
      const b = keys.bucketOf(id);
      const position = opts.position ?? null;
      const reply = await onShard(keys.status(b), () =>
        scripted.hubDriverStatus(...bucketKeys(b), keys.onlinePrefix(b), ttl, id, status, opts.heartbeat ?? 'keep', position ? cellOf(position) : ''),
      );
      await applyPlacements([parsePlacement(id, reply, position)]);
    },

    async setStatuses(changes): Promise<void> {
      // A driver's keys live in its bucket's slot: one script call per driver, sent together.
      await allOrFirstError(changes.map(({ id, status, ...opts }) => store.setStatus(id, status, opts)));
    },

    async touch(ids: readonly string[]): Promise<void> {
      // A slice at a time: thousands of quiet drivers are not thousands of commands built in one turn.
      for (const slice of slicesOf(ids, DRIVERS_PER_CALL)) {
        await allOrFirstError(slice.map((id) => onShard(keys.online(id), () => cluster.set(keys.online(id), '1', 'EX', ttl))));
      }
    },

    /**
     * Every cell the circle touches, searched at once and merged by distance: the nearest driver
     * across a cell border is found like one in the pickup's own cell. Candidates are proposed only
     * when their record says AVAILABLE and places them in the cell they were found in. A cell or a
     * record on a shard that is down or lost our picture makes the whole search fail, so the
     * caller asks PostgreSQL instead of missing the drivers that lived there.
     */
    async nearest(point, radiusMeters, count): Promise<NearbyDriver[]> {
      const cells = cellsAround(point, radiusMeters, deps.cellDegrees);
      for (const cell of cells) if (!usableFor(keys.cellGeo(cell))) throw new RedisUnavailableError('a shard of this search is unavailable');
      const perCell = count * 2 + 2;
      const found = (
        await allOrFirstError(
          cells.map(async (cell) => {
            const reply = (await onShard(keys.cellGeo(cell), () =>
              cluster.call('GEOSEARCH', keys.cellGeo(cell), 'FROMLONLAT', point.lng, point.lat, 'BYRADIUS', Math.ceil(radiusMeters), 'm', 'ASC', 'COUNT', perCell, 'WITHDIST'),
            )) as [string, string][];
            return reply.map(([driverId, dist]) => ({ driverId, distanceMeters: Number(dist), cell }));
          }),
        )
      ).flat();
      if (found.length === 0) return [];
      found.sort((a, b) => a.distanceMeters - b.distanceMeters);
      const records = new Map<string, { status: string | null; cell: string | null }>();
      await allOrFirstError(
        [...groupBy([...new Set(found.map((f) => f.driverId))], (id) => keys.bucketOf(id))].map(async ([b, ids]) => {
          if (!usableFor(keys.status(b))) throw new RedisUnavailableError('a shard of this search is unavailable');
          const [statuses, places] = await onShard(keys.status(b), () => Promise.all([cluster.hmget(keys.status(b), ...ids), cluster.hmget(keys.place(b), ...ids)]));
          ids.forEach((id, i) => records.set(id, { status: statuses[i], cell: places[i]?.split('|')[1] ?? null }));
        }),
      );
      const taken = new Set<string>();
      const nearby: NearbyDriver[] = [];
      for (const f of found) {
        const record = records.get(f.driverId);
        if (taken.has(f.driverId) || record?.status !== 'AVAILABLE' || record.cell !== f.cell) continue;
        taken.add(f.driverId);
        nearby.push({ driverId: f.driverId, distanceMeters: f.distanceMeters });
        if (nearby.length === count) break;
      }
      return nearby;
    },

    async lookup(ids: readonly string[]): Promise<{ statuses: (string | null)[]; inGeo: boolean[] }> {
      if (ids.length === 0) return { statuses: [], inGeo: [] };
      const statusOf = new Map<string, string | null>();
      const cellOfId = new Map<string, string>();
      await allOrFirstError(
        [...groupBy(ids, (id) => keys.bucketOf(id))].map(async ([b, group]) => {
          const [statuses, places] = await onShard(keys.status(b), () => Promise.all([cluster.hmget(keys.status(b), ...group), cluster.hmget(keys.place(b), ...group)]));
          group.forEach((id, i) => {
            statusOf.set(id, statuses[i]);
            const cell = places[i]?.split('|')[1];
            if (cell) cellOfId.set(id, cell);
          });
        }),
      );
      const present = new Set<string>();
      await allOrFirstError(
        [...groupBy([...cellOfId.keys()], (id) => cellOfId.get(id)!)].map(async ([cell, group]) => {
          const scores = (await onShard(keys.cellGeo(cell), () => cluster.call('ZMSCORE', keys.cellGeo(cell), ...group))) as (string | null)[];
          group.forEach((id, i) => scores[i] !== null && present.add(id));
        }),
      );
      return { statuses: ids.map((id) => statusOf.get(id) ?? null), inGeo: ids.map((id) => present.has(id)) };
    },

    /** Cursor "<bucket>:<hscan cursor>" over the buckets' status hashes. */
    async scanStatuses(cursor: string, count: number): Promise<[string, [string, string][]]> {
      const [bucketText, inner] = cursor === '0' ? ['0', '0'] : cursor.split(':');
      const b = Number(bucketText);
      const [next, flat] = await onShard(keys.status(b), () => cluster.hscan(keys.status(b), inner, 'COUNT', count));
      const pairs: [string, string][] = [];
      for (let i = 0; i < flat.length; i += 2) pairs.push([flat[i], flat[i + 1]]);
      if (next !== '0') return [`${b}:${next}`, pairs];
      return [b + 1 < keys.buckets ? `${b + 1}:0` : '0', pairs];
    },

    /** Cursor: JSON of the master walked, its SCAN cursor, the cell keys still to read and the ZSCAN cursor in the first. */
    async scanGeo(cursor: string, count: number): Promise<[string, string[]]> {
      const masters = cluster.nodes('master').sort((a, b) => `${a.options.host}:${a.options.port}`.localeCompare(`${b.options.host}:${b.options.port}`));
      const state: { n: number; s: string; k: string[]; z: string } = cursor === '0' ? { n: 0, s: '0', k: [], z: '0' } : JSON.parse(cursor);
      const encode = () => (state.k.length === 0 && state.n >= masters.length ? '0' : JSON.stringify(state));
      while (state.k.length === 0) {
        if (state.n >= masters.length) return ['0', []];
        const node = masters[state.n];
        const name = `${node.options.host}:${node.options.port}`;
        const [next, found] = await shards.forNode(name).run(() => node.scan(state.s, 'MATCH', keys.cellGeoPattern, 'COUNT', 1000));
        state.k = found;
        state.s = next;
        if (next === '0') state.n += 1;
      }
      const key = state.k[0];
      const [next, flat] = await onShard(key, () => cluster.zscan(key, state.z, 'COUNT', count));
      state.z = next;
      if (next === '0') state.k.shift();
      return [encode(), flat.filter((_, i) => i % 2 === 0)];
    },

    /**
     * Walks every cell: members whose heartbeat is gone (or who are not AVAILABLE) leave, strays
     * their record does not place there are removed, and old fence entries of drivers long gone
     * from a cell are pruned.
     */
    async expiredDrivers(): Promise<string[]> {
      const expired: string[] = [];
      const cutoff = String(Date.now() * 1000 - FENCE_KEEP_US);
      for await (const page of cellKeys()) {
        for (const geoKey of page) {
          const cell = keys.cellOfGeoKey(geoKey);
          let first = 0;
          for (;;) {
            const members = await onShard(geoKey, () => cluster.zrange(geoKey, String(first), String(first + EXPIRED_SLICE - 1)));
            if (members.length === 0) break;
            const gone = await checkCell(cell, members);
            expired.push(...gone);
            if (members.length < EXPIRED_SLICE) break;
            first += EXPIRED_SLICE - gone.length;
          }
          let cursor = '0';
          do {
            const [next, flat] = await onShard(geoKey, () => cluster.hscan(keys.cellVersions(cell), cursor, 'COUNT', EXPIRED_SLICE));
            cursor = next;
            const ids = flat.filter((_, i) => i % 2 === 0);
            if (ids.length > 0) await onShard(geoKey, () => scripted.hubCellPrune(geoKey, keys.cellVersions(cell), cutoff, JSON.stringify(ids)));
          } while (cursor !== '0');
        }
      }
      return expired;
    },

    /**
     * Writes every live driver's record and placement again (per bucket, per cell), removes what
     * no record places, and marks every master as holding our picture. Idempotent: the shards that
     * kept their data are rewritten with what they hold.
     */
    async rebuild(entries: readonly RebuildEntry[]): Promise<void> {
      const placements: Placement[] = [];
      await allOrFirstError(
        [...groupBy(entries, (e) => keys.bucketOf(e.id))].map(async ([b, group]) => {
          for (const slice of slicesOf(group, DRIVERS_PER_CALL)) {
            const packed = JSON.stringify(
              slice.map((e) => [e.id, e.status, e.online ? 1 : 0, e.lat !== null && e.lng !== null ? cellOf({ lat: e.lat, lng: e.lng }) : '']),
            );
            const replies = await onShard(keys.status(b), () => scripted.hubDriverRebuild(...bucketKeys(b), keys.onlinePrefix(b), ttl, packed));
            replies.forEach((reply, i) => {
              const e = slice[i];
              placements.push(parsePlacement(e.id, reply, e.lat !== null && e.lng !== null ? { lat: e.lat, lng: e.lng } : null));
            });
          }
        }),
      );
      await applyPlacements(placements);
      await store.expiredDrivers();
      const markers = markerKeys();
      await allOrFirstError([...markers].map(([, key]) => onShard(key, () => cluster.set(key, String(Date.now())))));
      for (const master of markers.keys()) shards.setVerified(master, true);
    },

    /** Every master holds its marker; a master seen without one is not read for answers until rebuilt. */
    async hasPicture(): Promise<boolean> {
      const markers = markerKeys();
      if (markers.size === 0) return false;
      const present = await allOrFirstError(
        [...markers].map(async ([master, key]) => {
          const here = (await onShard(key, () => cluster.exists(key))) === 1;
          shards.setVerified(master, here);
          return here;
        }),
      );
      return present.every(Boolean);
    },
  };
  return store;
}
