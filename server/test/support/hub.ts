import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import postgres from 'postgres';
import { type Socket, io as connect } from 'socket.io-client';
import { afterAll, beforeAll, inject } from 'vitest';
import type { AckReply } from '#shared/errors.js';
import type { DriverSession } from '#shared/events.js';
import { createDriverClient, type DriverClient as DriverApp, socketIoConnector } from '#shared/driver-client/index.js';
import { signWebhook } from '#shared/webhooks.js';
import { type Config, parseConfig } from '../../src/platform/config.js';
import { createLogger } from '../../src/platform/logger.js';
import { type HubExtensions, type RunningHub, startHub } from '../../src/main.js';
import type { LogSink } from './log-sink.js';
import { isSharedRedisUrl, rememberTestPrefix } from './test-prefixes.js';

export const WEBHOOK_SECRET = `whsec_${Buffer.from('test-webhook-secret-0123456789').toString('base64')}`;
export const ADMIN_TOKEN = 'test-admin-token-0123456789-abcdefghij';
export const JWT_SECRET = 'test-jwt-secret-0123456789-0123456789-abcdef';

/** Multi-process and multi-node tests need a PostgreSQL server; PGlite is one process's alone. */
export const hasSharedPostgres = (): boolean => Boolean(inject('pgAdminUrl'));

export interface TestDatabase {
  url: string | undefined;
  dataDir: string;
  drop(): Promise<void>;
}

/**
 * A database of the test's own: a fresh PostgreSQL database, or a PGlite folder when PostgreSQL is
 * absent or `embedded` asks for one.
 */
export async function createTestDatabase(opts: { embedded?: boolean } = {}): Promise<TestDatabase> {
  const adminUrl = opts.embedded ? '' : inject('pgAdminUrl');
  const dataDir = mkdtempSync(join(tmpdir(), 'hub-test-'));
  if (!adminUrl) {
    return { url: undefined, dataDir, drop: async () => rmSync(dataDir, { recursive: true, force: true }) };
  }
  const name = `hub_test_${randomBytes(6).toString('hex')}`;
  const admin = postgres(adminUrl, { max: 1, onnotice: () => {} });
  await admin.unsafe(`create database ${name}`);
  await admin.end();
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  return {
    url: url.toString(),
    dataDir,
    async drop() {
      const sql = postgres(adminUrl, { max: 1, onnotice: () => {} });
      await sql.unsafe(`drop database if exists ${name} with (force)`).catch(() => {});
      await sql.end();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

export function testConfig(db: TestDatabase, env: Record<string, string | undefined> = {}): Config {
  const config = parseConfig(
    {
      PORT: '0',
      HOST: '127.0.0.1',
      DATABASE_URL: db.url,
      DATA_DIR: db.dataDir,
      REDIS_URL: inject('redisUrl'),
      REDIS_PREFIX: `t${randomBytes(4).toString('hex')}:`,
      ADMIN_TOKEN,
      JWT_SECRET,
      WEBHOOK_SECRET,
      LOG_LEVEL: process.env.TEST_LOG_LEVEL ?? 'silent',
      LOCATION_TICK_MS: '20',
      POSITION_FLUSH_MS: '200',
      RECONCILE_MS: '2000',
      MAP_TICK_MS: '100',
      // Several hubs and their clients share one test process: a busy event loop must not read as a Redis timeout.
      REDIS_COMMAND_TIMEOUT_MS: '2000',
      // The same: only a test about shedding load sets a lag limit of its own.
      SHED_LAG_MS: '60000',
      SHUTDOWN_TIMEOUT_MS: '2000',
      // Every test client comes from 127.0.0.1 and many tests fail authentication on purpose; the
      // throttle's own tests set a small budget and use addresses of their own.
      AUTH_FAILURE_LIMIT: '100000',
      ...env,
    },
    () => randomBytes(32).toString('base64url'),
  );
  // Only the shared Redis, directly or through a proxy (`proxyToSharedRedis`): a private
  // redis-server or cluster goes away with its test.
  if (config.REDIS_URL && (config.REDIS_URL === inject('redisUrl') || isSharedRedisUrl(config.REDIS_URL))) rememberTestPrefix(config.REDIS_PREFIX);
  return config;
}

export interface TestHub extends RunningHub {
  url: string;
}

export interface TestHubOptions extends HubExtensions {
  /** Every log line at `trace` goes here (the config's level is ignored then). */
  sink?: LogSink;
}

export async function startTestHub(config: Config, opts: TestHubOptions = {}): Promise<TestHub> {
  const { sink, ...extensions } = opts;
  const logger = createLogger({ level: sink ? 'trace' : config.LOG_LEVEL, nodeId: config.NODE_ID }, sink?.stream);
  const hub = await startHub(config, logger, extensions);
  return { ...hub, url: `http://127.0.0.1:${hub.port}` };
}

/** Several hubs sharing one database and one Redis prefix, as a cluster would. */
export async function startCluster(db: TestDatabase, count: number, env: Record<string, string | undefined> = {}, opts: TestHubOptions = {}): Promise<TestHub[]> {
  const prefix = `t${randomBytes(4).toString('hex')}:`;
  const hubs: TestHub[] = [];
  for (let i = 0; i < count; i++) {
    hubs.push(await startTestHub(testConfig(db, { REDIS_PREFIX: prefix, NODE_ID: `node-${i}`, ...env }), opts));
  }
  return hubs;
}

/**
 * A database of its own and `count` hubs sharing a Redis prefix, started before the enclosing
 * describe's tests and stopped after them; read `hubs` and `db` inside the tests.
 */
export function useCluster(count: number, env: Record<string, string | undefined> = {}): { readonly hubs: TestHub[]; readonly db: TestDatabase } {
  const state: { hubs: TestHub[]; db: TestDatabase | null } = { hubs: [], db: null };
  beforeAll(async () => {
    state.db = await createTestDatabase();
    state.hubs = await startCluster(state.db, count, env);
  });
  afterAll(async () => {
    await Promise.all(state.hubs.map((h) => h.stop()));
    await state.db?.drop();
  });
  return {
    get hubs() {
      return state.hubs;
    },
    get db() {
      if (!state.db) throw new Error('the cluster starts in beforeAll');
      return state.db;
    },
  };
}

/** A metric's value on a hub's /metrics: the first series of `name` whose labels contain `labels`; 0 when there is none. */
export async function metricOf(hub: { url: string }, name: string, labels = ''): Promise<number> {
  const text = await (await fetch(`${hub.url}/metrics`)).text();
  const line = text.split('\n').find((l) => (l.startsWith(`${name}{`) || l.startsWith(`${name} `)) && l.includes(labels));
  return line ? Number(line.slice(line.lastIndexOf(' ') + 1)) : 0;
}

export async function api<T = any>(
  hub: { url: string },
  method: string,
  path: string,
  body?: unknown,
  token: string | null = ADMIN_TOKEN,
): Promise<{ status: number; body: T }> {
  const res = await fetch(`${hub.url}${path}`, {
    method,
    headers: {
      ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
      ...(token ? { authorization: `Bearer ${token}` } : {}),
    },
    body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, body: (text ? JSON.parse(text) : null) as T };
}

export async function createDriver(hub: { url: string }, name = 'Driver'): Promise<{ id: string; token: string }> {
  const res = await api<{ id: string; token: string }>(hub, 'POST', '/admin/drivers', { name });
  if (res.status !== 201) throw new Error(`driver not created: ${res.status} ${JSON.stringify(res.body)}`);
  return res.body;
}

export async function postWebhook(
  hub: { url: string },
  path: string,
  payload: unknown,
  opts: { secret?: string; id?: string; timestamp?: number; mutate?: (headers: Record<string, string>, body: string) => { headers: Record<string, string>; body: string } } = {},
): Promise<{ status: number; body: any }> {
  let body = JSON.stringify(payload);
  let headers: Record<string, string> = {
    'content-type': 'application/json',
    ...signWebhook(opts.secret ?? WEBHOOK_SECRET, opts.id ?? `msg_${randomUUID()}`, opts.timestamp ?? Date.now() / 1000, body),
  };
  if (opts.mutate) ({ headers, body } = opts.mutate(headers, body));
  const res = await fetch(`${hub.url}${path}`, { method: 'POST', headers, body });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : null };
}

export function order(overrides: Partial<{ sellerOrderId: string; pickup: { lat: number; lng: number }; dropoff: { lat: number; lng: number } }> = {}) {
  return {
    sellerOrderId: overrides.sellerOrderId ?? `so-${randomUUID()}`,
    orderCode: `T${randomBytes(3).toString('hex').toUpperCase()}`,
    pickup: overrides.pickup ?? { lat: 52.52, lng: 13.405, address: 'Shop' },
    dropoff: overrides.dropoff ?? { lat: 52.53, lng: 13.41 },
  };
}

export interface DriverClient {
  socket: Socket;
  session: DriverSession;
  assignments: any[];
  cancellations: any[];
  emitAck<T = any>(event: string, payload: unknown): Promise<AckReply<T & object>>;
  close(): void;
}

export function connectSocket(hub: { url: string }, namespace: string, auth: Record<string, unknown>, extra: Record<string, unknown> = {}): Socket {
  return connect(`${hub.url}${namespace}`, { transports: ['websocket'], auth, reconnection: false, forceNew: true, ...extra });
}

export function connectError(socket: Socket): Promise<{ message: string; data?: any }> {
  return new Promise((resolve, reject) => {
    socket.once('connect_error', (err: any) => resolve({ message: err.message, data: err.data }));
    socket.once('connect', () => reject(new Error('connected, expected a connect_error')));
  });
}

/** The first `event` a freshly connecting socket receives; a refused handshake rejects. */
export function firstEvent<T>(socket: Socket, event: string, timeoutMs = 10_000): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${event} within ${timeoutMs} ms`)), timeoutMs);
    socket.once(event, (payload: T) => {
      clearTimeout(timer);
      resolve(payload);
    });
    socket.once('connect_error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

/**
 * A bare socket.io client speaking for a driver, as a minimal app does: pushes are recorded and
 * acknowledged (`ackPushes: false` plays an app that never answers). Tests of the typed client
 * in shared/ use `createDriverClient` instead.
 */
export async function connectDriver(hub: { url: string }, token: string, extra: Record<string, unknown> & { ackPushes?: boolean } = {}): Promise<DriverClient> {
  const { ackPushes = true, ...options } = extra;
  const socket = connectSocket(hub, '/drivers', { token }, options);
  const assignments: any[] = [];
  const cancellations: any[] = [];
  const taken = (list: any[]) => (push: unknown, ack?: (reply: unknown) => void) => {
    list.push(push);
    if (ackPushes) ack?.({ ok: true });
  };
  socket.on('assignment', taken(assignments));
  socket.on('delivery:cancelled', taken(cancellations));
  const session = await firstEvent<DriverSession>(socket, 'session');
  return {
    socket,
    session,
    assignments,
    cancellations,
    emitAck: (event, payload) => socket.timeout(10_000).emitWithAck(event, payload),
    close: () => socket.disconnect(),
  };
}

/**
 * A driver that is connected, on duty, and placed on the map, through the driver client apps use
 * (`createDriverClient` in shared/): its pushes are taken and acknowledged by the client, which
 * also reconnects by itself. `socket` is the client's current socket, for raw events.
 */
export async function onDutyDriver(hub: TestHub, at: { lat: number; lng: number }, name = 'Driver'): Promise<DriverClient & { id: string; token: string; app: DriverApp }> {
  const { id, token } = await createDriver(hub, name);
  let socket: Socket | null = null;
  const app = createDriverClient({
    url: hub.url,
    token,
    backoff: { baseMs: 200, capMs: 1000 },
    // Tests wait for each fix: a per-batch acknowledgement rather than a confirmation a second later.
    locationConfirmation: 'ack',
    connect: (target) => {
      const made = socketIoConnector(target);
      socket = made as unknown as Socket;
      return made;
    },
  });
  const assignments: any[] = [];
  const cancellations: any[] = [];
  let session: DriverSession | null = null;
  app.on('session', (s) => {
    session = s;
  });
  app.on('assignment', (a) => void assignments.push(a));
  app.on('cancelled', (c) => void cancellations.push(c));
  try {
    await app.ready({ timeoutMs: 15_000 });
    const placed = new Promise<void>((resolve, reject) => {
      const stop = app.on('locations', (progress) => {
        if (progress.confirmed > 0 || app.pendingFixes === 0) {
          stop();
          resolve();
        } else if (progress.dropped > 0) {
          stop();
          reject(new Error('location refused'));
        }
      });
    });
    app.sendLocation(at);
    await placed;
    await app.setStatus('AVAILABLE');
  } catch (err) {
    app.close();
    throw err;
  }
  return {
    get socket() {
      return socket!;
    },
    get session() {
      return session!;
    },
    assignments,
    cancellations,
    emitAck: (event, payload) => socket!.timeout(10_000).emitWithAck(event, payload),
    close: () => app.close(),
    id,
    token,
    app,
  };
}

export function redisFor(hub: { config: Config }): Redis {
  return new Redis(hub.config.REDIS_URL!, { lazyConnect: false, maxRetriesPerRequest: 1 });
}
