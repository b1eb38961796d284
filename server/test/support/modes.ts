import { Redis } from 'ioredis';
import { clusterPresenceKeys } from '../../src/presence/presence-cluster.store.js';
import { presenceKeys } from '../../src/presence/presence.store.js';
import { api, createTestDatabase, hasSharedPostgres, type TestDatabase, type TestHub } from './hub.js';
import { PrivateRedisCluster } from './redis-cluster.js';

/**
 * The two ways the hub runs: several nodes sharing Redis (and PostgreSQL), or a single node with
 * no Redis on embedded PGlite, where PostgreSQL alone holds the live picture. Suites whose
 * behaviour must not depend on it run once per mode (`describe.each(HUB_MODES)`).
 */
export interface HubMode {
  name: string;
  /** The single-Redis layout (tests that read its keys directly run with it only). */
  redis: boolean;
  /** The Redis Cluster layout (a three-master cluster of the suite's own, region-cell GEO sets). */
  cluster?: boolean;
  /** Several hubs (or a test's own connection) may share the database: a PostgreSQL server, not PGlite. */
  sharedDatabase: boolean;
  /** Configuration on top of testConfig's. */
  env: Record<string, string>;
  database(): Promise<TestDatabase>;
}

/**
 * The hub on a Redis Cluster of the suite's own: started with the suite's database (its env is
 * known only then) and stopped when the database is dropped.
 */
function clusterMode(): HubMode {
  const mode: HubMode = {
    name: 'on a Redis Cluster',
    redis: false,
    cluster: true,
    sharedDatabase: hasSharedPostgres(),
    env: {},
    async database() {
      const cluster = await new PrivateRedisCluster().start();
      mode.env = { REDIS_URL: '', REDIS_CLUSTER_NODES: cluster.seeds };
      const db = await createTestDatabase();
      return {
        ...db,
        async drop() {
          await db.drop();
          await cluster.stop();
        },
      };
    },
  };
  return mode;
}

export const HUB_MODES: HubMode[] = [
  { name: 'with Redis', redis: true, sharedDatabase: hasSharedPostgres(), env: {}, database: () => createTestDatabase() },
  { name: 'without Redis, on PGlite', redis: false, sharedDatabase: false, env: { REDIS_URL: '', DATABASE_URL: '' }, database: () => createTestDatabase({ embedded: true }) },
  clusterMode(),
];

/** The picture in the cluster layout: the driver's record in its bucket, the member in the cell the record names. */
function clusterPictureOf(hub: TestHub): PresencePicture {
  const nodes = hub.config.REDIS_CLUSTER_NODES!;
  const cluster = new Redis.Cluster(nodes, { redisOptions: { maxRetriesPerRequest: 1 } });
  const keys = clusterPresenceKeys(hub.config.REDIS_PREFIX);
  const cellOf = async (id: string) => (await cluster.hget(keys.place(keys.bucketOf(id)), id))?.split('|')[1] || null;
  const position = async (id: string) => {
    const cell = await cellOf(id);
    if (!cell) return null;
    const [pos] = await cluster.geopos(keys.cellGeo(cell), id);
    return pos ? { lng: Number(pos[0]), lat: Number(pos[1]) } : null;
  };
  return {
    status: (id) => cluster.hget(keys.status(keys.bucketOf(id)), id),
    inGeo: async (id) => (await position(id)) !== null,
    position,
    alive: async (id) => (await cluster.exists(keys.online(id))) === 1,
    close: () => cluster.disconnect(),
  };
}

/** The live picture the nearest-driver search reads, whichever store holds it. */
export interface PresencePicture {
  /** Redis's status hash, or PostgreSQL's driver row without Redis. */
  status(driverId: string): Promise<string | null>;
  /** A candidate for the search: in `drivers:geo`, or AVAILABLE at a known position with a live heartbeat in PostgreSQL. */
  inGeo(driverId: string): Promise<boolean>;
  /** The position the search uses: the GEO set's, or PostgreSQL's last known one. */
  position(driverId: string): Promise<{ lat: number; lng: number } | null>;
  /** The heartbeat: its key in Redis, or `last_seen_at` within the TTL in PostgreSQL. */
  alive(driverId: string): Promise<boolean>;
  close(): void;
}

export function pictureOf(hub: TestHub): PresencePicture {
  if (hub.config.REDIS_CLUSTER_NODES) return clusterPictureOf(hub);
  if (hub.config.REDIS_URL) {
    const redis = new Redis(hub.config.REDIS_URL, { lazyConnect: false, maxRetriesPerRequest: 1 });
    const keys = presenceKeys(hub.config.REDIS_PREFIX);
    const position = async (id: string) => {
      const [pos] = await redis.geopos(keys.geo, id);
      return pos ? { lng: Number(pos[0]), lat: Number(pos[1]) } : null;
    };
    return {
      status: (id) => redis.hget(keys.status, id),
      inGeo: async (id) => (await position(id)) !== null,
      position,
      alive: async (id) => (await redis.exists(keys.online(id))) === 1,
      close: () => redis.disconnect(),
    };
  }
  const ttlMs = hub.config.HEARTBEAT_TTL_SECONDS * 1000;
  const row = async (id: string) =>
    ((await api(hub, 'GET', '/admin/drivers')).body.drivers as { id: string; status: string; lat: number | null; lng: number | null; lastSeenAt: string | null }[]).find(
      (d) => d.id === id,
    );
  const alive = async (id: string) => {
    const seen = (await row(id))?.lastSeenAt;
    return seen !== null && seen !== undefined && Date.now() - Date.parse(seen) < ttlMs;
  };
  return {
    status: async (id) => (await row(id))?.status ?? null,
    inGeo: async (id) => {
      const d = await row(id);
      return d?.status === 'AVAILABLE' && d.lat !== null && (await alive(id));
    },
    position: async (id) => {
      const d = await row(id);
      return d && d.lat !== null && d.lng !== null ? { lat: d.lat, lng: d.lng } : null;
    },
    alive,
    close: () => {},
  };
}
