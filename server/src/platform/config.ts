import { isIP } from 'node:net';
import { hostname } from 'node:os';
import { z } from 'zod';

const optionalString = z
  .string()
  .optional()
  .transform((v) => (v === undefined || v.trim() === '' ? undefined : v.trim()));

const intFromEnv = (def: number, min: number, max: number) =>
  z.preprocess((v) => (v === undefined || v === '' ? def : Number(v)), z.number().int().min(min).max(max));

/** How the hub reads an on/off variable: `true` or `1` is on, unset or empty is `def`, anything else off. */
export function envFlag(value: unknown, def: boolean): boolean {
  return value === undefined || value === '' ? def : value === 'true' || value === '1';
}

const boolFromEnv = (def: boolean) => z.preprocess((v) => envFlag(v, def), z.boolean());

/**
 * A secret an attacker must not guess: 32 characters or more, and not a short pattern repeated
 * (`aaaa...`, `0123456789...`). A human phrase of that length passes; the docs say to generate one.
 */
const secret = (what: string) =>
  z
    .string()
    .min(32, `must be at least 32 random characters (${what}; e.g. openssl rand -hex 32)`)
    .refine((v) => new Set(v).size >= 10, `looks like a pattern, not random characters (${what}; e.g. openssl rand -hex 32)`);

function isAddressOrRange(entry: string): boolean {
  const [address, bits, extra] = entry.split('/');
  const family = isIP(address);
  if (family === 0 || extra !== undefined) return false;
  if (bits === undefined) return true;
  const n = Number(bits);
  return /^\d+$/.test(bits) && n >= 0 && n <= (family === 4 ? 32 : 128);
}

const webhookSecret = z
  .string()
  .regex(/^whsec_[A-Za-z0-9+/=]+$/, 'must look like whsec_<base64>');

const envSchema = z.object({
  PORT: intFromEnv(3000, 0, 65535),
  /**
   * A second port serving the HTTP API and pages only (no Socket.IO): webhooks and admin calls sent
   * there never wait in the accept queue behind a reconnect storm's websocket connects on PORT.
   */
  HTTP_PORT: z.preprocess((v) => (v === undefined || v === '' ? undefined : Number(v)), z.number().int().min(0).max(65535).optional()),
  /**
   * HTTP_PORT served from a thread of its own, with its own event loop and its own PostgreSQL and
   * Redis connections: webhooks then never wait for turns of a loop busy with a reconnect storm.
   */
  API_THREAD: boolFromEnv(false),
  HOST: z.string().default('0.0.0.0'),
  DATABASE_URL: optionalString.pipe(z.string().url().startsWith('postgres').optional()),
  DATA_DIR: z.string().default('./data'),
  REDIS_URL: optionalString.pipe(z.string().url().startsWith('redis').optional()),
  /**
   * A Redis Cluster instead of one Redis: a comma-separated seed list of `host:port` (any masters;
   * the rest is discovered). Selects the cluster layout (region-cell GEO sets, hash-tagged scripts,
   * the sharded adapter); `REDIS_URL` must then be unset.
   */
  REDIS_CLUSTER_NODES: optionalString.pipe(
    z
      .string()
      .transform((v) => v.split(',').map((n) => n.trim()).filter(Boolean))
      .pipe(
        z
          .array(
            z
              .string()
              .regex(/^(?:redis:\/\/)?[^\s:/]+:\d{1,5}$/, 'must be host:port')
              .transform((n) => {
                const [host, port] = n.replace(/^redis:\/\//, '').split(':');
                return { host, port: Number(port) };
              }),
          )
          .min(1),
      )
      .optional(),
  ),
  /**
   * Cluster layout: the side of a region cell in degrees of latitude and longitude. Each cell is one
   * GEO set on one shard; 0.25 (about 28 km north-south) makes a city a few cells.
   */
  REDIS_CELL_DEGREES: z.preprocess((v) => (v === undefined || v === '' ? 0.25 : Number(v)), z.number().finite().min(0.01).max(10)),
  REDIS_PREFIX: z.string().max(100).default(''),
  REDIS_COMMAND_TIMEOUT_MS: intFromEnv(500, 10, 60_000),
  ADMIN_TOKEN: optionalString.pipe(secret('the admin bearer token').optional()),
  JWT_SECRET: optionalString.pipe(secret('the HS256 key of every token').optional()),
  /** Several secrets, space-separated, are accepted during a rotation. */
  WEBHOOK_SECRET: optionalString.pipe(
    z
      .string()
      .transform((s) => s.split(/\s+/))
      .pipe(z.array(webhookSecret).min(1))
      .optional(),
  ),
  VENDURE_WEBHOOK_URL: optionalString.pipe(z.string().url().optional()),
  VENDURE_WEBHOOK_SECRET: optionalString.pipe(webhookSecret.optional()),
  HEARTBEAT_TTL_SECONDS: intFromEnv(30, 1, 3600),
  NODE_ID: optionalString,
  LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  ASSIGN_MAX_RADIUS_KM: intFromEnv(20, 1, 500),
  POSITION_FLUSH_MS: intFromEnv(1000, 50, 60_000),
  RECONCILE_MS: intFromEnv(30_000, 500, 3_600_000),
  LOCATION_TICK_MS: intFromEnv(5, 0, 5_000),
  MAP_TICK_MS: intFromEnv(50, 20, 10_000),
  SHUTDOWN_TIMEOUT_MS: intFromEnv(10_000, 100, 120_000),
  MAX_BODY_BYTES: intFromEnv(64 * 1024, 1024, 10 * 1024 * 1024),
  OUTBOX_POLL_MS: intFromEnv(1000, 20, 60_000),
  OUTBOX_MAX_AGE_SECONDS: intFromEnv(24 * 3600, 1, 30 * 24 * 3600),
  OUTBOX_REQUEST_TIMEOUT_MS: intFromEnv(5000, 50, 120_000),
  ALLOWED_ORIGINS: optionalString.transform((v) => (v ? v.split(',').map((o) => o.trim()) : [])),
  /** Proxies whose X-Forwarded-For names the client (addresses or CIDR ranges); empty: the peer is the client. */
  TRUSTED_PROXIES: optionalString.pipe(
    z
      .string()
      .transform((v) => v.split(',').map((p) => p.trim()).filter(Boolean))
      .pipe(z.array(z.string().refine(isAddressOrRange, 'must be an IP address or a CIDR range')))
      .optional(),
  ),
  /** Failed authentications (bad admin bearer, webhook signature or socket token) one client address may make per window. */
  AUTH_FAILURE_LIMIT: intFromEnv(20, 1, 100_000),
  AUTH_FAILURE_WINDOW_SECONDS: intFromEnv(60, 1, 86_400),
  MAP_TILE_URL: z.string().default('https://tile.openstreetmap.org/{z}/{x}/{y}.png'),
  RUN_MIGRATIONS: boolFromEnv(true),
  PUSH_RETRY_MS: intFromEnv(3000, 100, 600_000),
  /** How often each driver hears `location:stored` at most; well under the client's 10 s re-send. */
  LOCATION_CONFIRM_MS: intFromEnv(3000, 200, 9000),
  PUSH_MAX_RESENDS: intFromEnv(10, 1, 1000),
  /**
   * Event-loop lag p99 (ms, over a quarter second) past which location fixes are refused with a
   * RATE_LIMITED answer until the hub catches up; 0 never refuses. A loop that keeps up shows a few
   * milliseconds, tens while a batch or a GC runs; hundreds mean it is falling behind.
   */
  SHED_LAG_MS: intFromEnv(200, 0, 60_000),
  /** `assign`: the best driver is claimed at once; `offer`: reserved and asked, with a deadline (docs/api.md). */
  DISPATCH_MODE: z.enum(['assign', 'offer']).default('assign'),
  OFFER_TIMEOUT_SECONDS: intFromEnv(20, 1, 3600),
  OFFER_MAX_ATTEMPTS: intFromEnv(5, 1, 100),
  /** Candidates this close to the nearest compete on idle time, then deliveries today. */
  FAIRNESS_BAND_METERS: intFromEnv(500, 0, 100_000),
  /** How often each node tries PENDING deliveries again (and, in offer mode, how often it looks for expired offers: a quarter of this, at most 500 ms). */
  PENDING_RETRY_MS: intFromEnv(2000, 100, 600_000),
  /** The hub's address as customers and apps reach it (tracking links); unset: http://localhost:<the port it listens on>. */
  PUBLIC_URL: optionalString.pipe(
    z
      .string()
      .url()
      .regex(/^https?:\/\//i, 'must be an http(s) URL')
      .refine((v) => !/[?#]/.test(v), 'must not carry a query or fragment')
      .transform((v) => v.replace(/\/+$/, ''))
      .optional(),
  ),
  /** How long a tracking link keeps working after its delivery ended; fractions allowed (0.5: half an hour). */
  TRACKING_TTL_HOURS: z.preprocess((v) => (v === undefined || v === '' ? 24 : Number(v)), z.number().finite().positive().max(24 * 366)),
  /** Only `production` changes behaviour: no generated webhook secret, JSON logs even on a terminal. */
  NODE_ENV: optionalString,
});

export type Env = z.infer<typeof envSchema>;

export interface Config extends Omit<Env, 'NODE_ID' | 'WEBHOOK_SECRET' | 'ADMIN_TOKEN' | 'JWT_SECRET' | 'NODE_ENV' | 'TRUSTED_PROXIES'> {
  TRUSTED_PROXIES: string[];
  NODE_ID: string;
  ADMIN_TOKEN: string;
  JWT_SECRET: string;
  WEBHOOK_SECRETS: string[];
  /** NODE_ENV=production. */
  production: boolean;
  /** True when the operator did not set ADMIN_TOKEN and the hub generated one. */
  adminTokenGenerated: boolean;
  jwtSecretGenerated: boolean;
  /** True when WEBHOOK_SECRET was unset outside production and the hub generated one. */
  webhookSecretGenerated: boolean;
}

export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(`invalid configuration:\n${problems.map((p) => `  - ${p}`).join('\n')}`);
  }
}

/** Parses the environment once; throws ConfigError naming every bad field. */
export function parseConfig(env: Record<string, string | undefined>, generate: () => string): Config {
  const parsed = envSchema.safeParse(env);
  if (!parsed.success) {
    throw new ConfigError(parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`));
  }
  if (parsed.data.REDIS_CLUSTER_NODES && parsed.data.REDIS_URL) {
    throw new ConfigError(['REDIS_CLUSTER_NODES: set either REDIS_URL (one Redis) or REDIS_CLUSTER_NODES (a Redis Cluster), not both']);
  }
  if (parsed.data.REDIS_CLUSTER_NODES && /[{}]/.test(parsed.data.REDIS_PREFIX)) {
    throw new ConfigError(['REDIS_PREFIX: must not contain { or } with REDIS_CLUSTER_NODES (the hub places its own hash tags)']);
  }
  if (parsed.data.API_THREAD && (parsed.data.HTTP_PORT === undefined || !parsed.data.DATABASE_URL)) {
    throw new ConfigError(['API_THREAD: needs HTTP_PORT (the port it serves) and DATABASE_URL (two threads cannot share the embedded PGlite)']);
  }
  if (parsed.data.VENDURE_WEBHOOK_URL && !parsed.data.VENDURE_WEBHOOK_SECRET) {
    throw new ConfigError(['VENDURE_WEBHOOK_SECRET: required when VENDURE_WEBHOOK_URL is set (events are never sent unsigned)']);
  }
  const { NODE_ID, WEBHOOK_SECRET, ADMIN_TOKEN, JWT_SECRET, NODE_ENV, TRUSTED_PROXIES, ...rest } = parsed.data;
  const production = NODE_ENV === 'production';
  // A newcomer can sign a webhook at once; in production a missing secret stays missing (refused
  // webhooks and a loud start) rather than a random one nobody configured on the Vendure side.
  const generateWebhookSecret = !production && WEBHOOK_SECRET === undefined;
  return {
    ...rest,
    TRUSTED_PROXIES: TRUSTED_PROXIES ?? [],
    NODE_ID: NODE_ID ?? `${hostname()}-${process.pid}`,
    WEBHOOK_SECRETS: WEBHOOK_SECRET ?? (generateWebhookSecret ? [`whsec_${Buffer.from(generate(), 'base64url').toString('base64')}`] : []),
    ADMIN_TOKEN: ADMIN_TOKEN ?? generate(),
    JWT_SECRET: JWT_SECRET ?? generate(),
    production,
    adminTokenGenerated: ADMIN_TOKEN === undefined,
    jwtSecretGenerated: JWT_SECRET === undefined,
    webhookSecretGenerated: generateWebhookSecret,
  };
}
