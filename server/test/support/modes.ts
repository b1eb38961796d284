import { Redis } from 'ioredis';
import { presenceKeys } from '../../src/presence/presence.store.js';
import { api, createTestDatabase, hasSharedPostgres, type TestDatabase, type TestHub } from './hub.js';

/**
 * The two ways the hub runs: several nodes sharing Redis (and PostgreSQL), or a single node with
 * no Redis on embedded PGlite, where PostgreSQL alone holds the live picture. Suites whose
 * behaviour must not depend on it run once per mode (`describe.each(HUB_MODES)`).
 */
export interface HubMode {
  name: string;
  redis: boolean;
  /** Several hubs (or a test's own connection) may share the database: a PostgreSQL server, not PGlite. */
  sharedDatabase: boolean;
  /** Configuration on top of testConfig's. */
  env: Record<string, string>;
  database(): Promise<TestDatabase>;
}

export const HUB_MODES: HubMode[] = [
  { name: 'with Redis', redis: true, sharedDatabase: hasSharedPostgres(), env: {}, database: () => createTestDatabase() },
  { name: 'without Redis, on PGlite', redis: false, sharedDatabase: false, env: { REDIS_URL: '', DATABASE_URL: '' }, database: () => createTestDatabase({ embedded: true }) },
];

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
