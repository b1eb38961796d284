/**
 * What every scenario needs around the processes it measures: a fresh PostgreSQL database, a
 * unique Redis prefix (the shared Redis is never flushed, only our own keys are removed), driver
 * rows and tokens made in bulk, server children (hub or baseline) with the instrument preloaded,
 * load-generator children, and a private redis-server for the recovery scenario.
 */
import { type ChildProcess, fork, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, mkdirSync, mkdtempSync, openSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Redis } from 'ioredis';
import { SignJWT } from 'jose';
import postgres from 'postgres';
import { openDatabase } from '../../server/src/platform/db.js';
import { TOKEN_AUDIENCE, TOKEN_ISSUER } from '../../server/src/platform/tokens.js';
import { clusterPresenceKeys } from '../../server/src/presence/presence-cluster.store.js';
import type { ServerStats } from './instrument.js';
import { freePort, RpcChild, sleep, waitFor } from './lib.js';
import type { LoadgenInit, StormJitter, StormReport } from './loadgen.js';

export const ROOT = fileURLToPath(new URL('../..', import.meta.url));
export const RESULTS_DIR = join(ROOT, 'load-tests', 'results');
export const PG_ADMIN_URL = process.env.BENCH_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
export const SHARED_REDIS_URL = process.env.BENCH_REDIS_URL ?? 'redis://127.0.0.1:6379';

export const JWT_SECRET = `bench-jwt-${randomBytes(24).toString('hex')}`;
export const ADMIN_TOKEN = `bench-admin-${randomBytes(12).toString('hex')}`;
export const WEBHOOK_SECRET = `whsec_${randomBytes(24).toString('base64')}`;

const here = (file: string) => fileURLToPath(new URL(file, import.meta.url));

/** Cleanups run in reverse order at the end of a scenario, also when it failed or was interrupted. */
export class Cleanup {
  /** Every cleanup not yet run, for an interrupted bench (Ctrl+C). */
  static readonly active = new Set<Cleanup>();
  private readonly tasks: { name: string; run: () => Promise<unknown> | unknown }[] = [];
  constructor() {
    Cleanup.active.add(this);
  }
  add(name: string, run: () => Promise<unknown> | unknown): void {
    this.tasks.push({ name, run });
  }
  async runAll(): Promise<void> {
    Cleanup.active.delete(this);
    while (this.tasks.length > 0) {
      const task = this.tasks.pop()!;
      try {
        await task.run();
      } catch (err) {
        console.error(`cleanup ${task.name} failed: ${(err as Error).message}`);
      }
    }
  }
}

// --- PostgreSQL ----------------------------------------------------------------------------------

export interface BenchDatabase {
  name: string;
  url: string;
  dataDir: string;
}

/** CREATE DATABASE bench_<random>, migrated with the hub's own migrations; dropped by the cleanup. */
export async function createBenchDatabase(cleanup: Cleanup): Promise<BenchDatabase> {
  const name = `bench_${randomBytes(6).toString('hex')}`;
  const admin = postgres(PG_ADMIN_URL, { max: 1, onnotice: () => {} });
  await admin.unsafe(`create database ${name}`);
  await admin.end();
  const dataDir = mkdtempSync(join(tmpdir(), 'hub-bench-'));
  cleanup.add(`drop database ${name}`, async () => {
    const sql = postgres(PG_ADMIN_URL, { max: 1, onnotice: () => {} });
    await sql.unsafe(`drop database if exists ${name} with (force)`);
    await sql.end();
    rmSync(dataDir, { recursive: true, force: true });
  });
  const url = new URL(PG_ADMIN_URL);
  url.pathname = `/${name}`;
  const database = openDatabase({ url: url.toString(), dataDir, poolSize: 2 });
  await database.migrate();
  await database.close();
  return { name, url: url.toString(), dataDir };
}

/** N driver rows in one statement; returns their ids in order. */
export async function insertDrivers(db: BenchDatabase, count: number, label = 'bench'): Promise<string[]> {
  const sql = postgres(db.url, { max: 1, onnotice: () => {} });
  try {
    const rows = await sql<{ id: string }[]>`
      insert into drivers (name) select ${label} || '-' || g from generate_series(1, ${count}::int) g returning id`;
    return rows.map((r) => r.id);
  } finally {
    await sql.end();
  }
}

export async function mintTokens(role: 'driver' | 'dispatcher' | 'admin', subjects: readonly string[]): Promise<string[]> {
  const key = new TextEncoder().encode(JWT_SECRET);
  const exp = Math.floor(Date.now() / 1000) + 24 * 3600;
  return Promise.all(
    subjects.map((sub) => new SignJWT({ role }).setProtectedHeader({ alg: 'HS256' }).setIssuer(TOKEN_ISSUER).setAudience(TOKEN_AUDIENCE).setSubject(sub).setIssuedAt().setExpirationTime(exp).sign(key)),
  );
}

// --- Redis ---------------------------------------------------------------------------------------

export function redisPrefix(): string {
  return `bench${randomBytes(4).toString('hex')}:`;
}

// A run's keys leave the shared Redis by prefix (SCAN + UNLINK); the tests tidy theirs the same way.
export { deletePrefix } from './redis-keys.js';

export interface PrivateRedis {
  url: string;
  port: number;
  /** SIGKILL: the data is gone (no persistence). */
  kill(): Promise<void>;
  /** Starts an empty redis-server on the same port; resolves when it answers PING. */
  start(): Promise<void>;
}

/** A redis-server of our own on a free port, without persistence, for the recovery scenario. */
export async function startPrivateRedis(cleanup: Cleanup): Promise<PrivateRedis> {
  const port = await freePort();
  let proc: ChildProcess | null = null;
  const url = `redis://127.0.0.1:${port}`;
  const ping = async () => {
    const client = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null, connectTimeout: 200 });
    client.on('error', () => {});
    try {
      await client.connect();
      return (await client.ping()) === 'PONG';
    } catch {
      return false;
    } finally {
      client.disconnect();
    }
  };
  const handle: PrivateRedis = {
    url,
    port,
    async start() {
      proc = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--loglevel', 'warning'], {
        stdio: 'ignore',
      });
      await waitFor('private redis-server', ping, 10_000, 5);
    },
    async kill() {
      const current = proc;
      if (!current || current.exitCode !== null || current.signalCode !== null) return;
      const gone = new Promise<void>((resolve) => current.once('exit', () => resolve()));
      current.kill('SIGKILL');
      await gone;
    },
  };
  await handle.start();
  cleanup.add('private redis-server', () => handle.kill());
  return handle;
}

/**
 * A private Redis Cluster of `shards` masters on free ports (the tests' own helper), for the
 * cluster runs (`--shards N`); stopped by the cleanup.
 */
export async function startBenchCluster(cleanup: Cleanup, shards: number): Promise<{ seeds: string; countCells(prefix: string): Promise<number> }> {
  const { PrivateRedisCluster } = await import('../../server/test/support/redis-cluster.js');
  const cluster = await new PrivateRedisCluster().start(shards);
  cleanup.add('private redis cluster', () => cluster.stop());
  const client = cluster.client();
  cleanup.add('redis cluster client', () => client.disconnect());
  return {
    seeds: cluster.seeds,
    /** Members of every region-cell GEO set under the prefix (all shards). */
    async countCells(prefix: string) {
      const keys = clusterPresenceKeys(prefix);
      let total = 0;
      for (const node of client.nodes('master')) {
        let cursor = '0';
        do {
          const [next, found] = await node.scan(cursor, 'MATCH', keys.cellGeoPattern, 'COUNT', 1000);
          cursor = next;
          for (const key of found) total += await node.zcard(key);
        } while (cursor !== '0');
      }
      return total;
    },
  };
}

/** Hub environment for a cluster run: the seeds instead of the shared Redis. */
export function clusterEnv(seeds: string | null): Record<string, string> {
  return seeds ? { REDIS_URL: '', REDIS_CLUSTER_NODES: seeds } : {};
}

// --- Server children -----------------------------------------------------------------------------

/** hub; Socket.IO + GEOADD baseline; bare Socket.IO (no Redis); raw ws baseline. */
/** Round trips a hub sent to PostgreSQL and Redis, counted on its wire (instrument.ts `countWire`). */
export const WIRE_KEYS = ['pgStatements', 'pgWrites', 'redisCommands', 'redisWrites'] as const;
export type Wire = Record<(typeof WIRE_KEYS)[number], number>;

/** The ports a hub's writes to PostgreSQL and Redis go to, so `countWire` can tell them apart. */
export const WIRE_PORTS = { pg: Number(new URL(PG_ADMIN_URL).port || 5432), redis: Number(new URL(SHARED_REDIS_URL).port || 6379) };

export type ServerKind = 'hub' | 'sio' | 'sio-bare' | 'ws';

export interface ServerProc {
  kind: ServerKind;
  name: string;
  url: string;
  port: number;
  pid: number;
  rpc: RpcChild;
  stats(): Promise<ServerStats>;
  /** New lag/CPU window. */
  reset(): Promise<void>;
  gc(): Promise<boolean>;
  /** Location pings the server has taken in (hub: hub_location_fixes_total; baselines: their counter). */
  received(): Promise<number>;
  /** The hub's Prometheus text (null for baselines). */
  metricsText(): Promise<string | null>;
  stop(): Promise<void>;
  /** SIGKILL: no shutdown work at all, as when a node crashes or is OOM-killed. */
  kill(): Promise<void>;
}

export interface SpawnOptions {
  name: string;
  env?: Record<string, string>;
  logDir: string;
  /** Directory for a V8 CPU profile (`--cpu-prof`), written when the process exits normally. */
  profileDir?: string;
}

/** Sums a metric's samples in Prometheus text, optionally only those whose labels contain `labelFilter`. */
export function metricValue(text: string, name: string, ...labelFilters: string[]): number {
  let total = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const rest = line.slice(name.length);
    if (rest[0] !== '{' && rest[0] !== ' ') continue;
    if (!labelFilters.every((filter) => rest.includes(filter))) continue;
    const value = Number(line.slice(line.lastIndexOf(' ') + 1));
    if (Number.isFinite(value)) total += value;
  }
  return total;
}

export function hubEnv(db: BenchDatabase, prefix: string, extra: Record<string, string> = {}, redisUrl = SHARED_REDIS_URL): Record<string, string> {
  return {
    HOST: '127.0.0.1',
    DATABASE_URL: db.url,
    DATA_DIR: db.dataDir,
    REDIS_URL: redisUrl,
    REDIS_PREFIX: prefix,
    ADMIN_TOKEN,
    JWT_SECRET,
    WEBHOOK_SECRET,
    LOG_LEVEL: 'info',
    ...extra,
  };
}

/**
 * The V8 flags `npm start` and the Docker image give the hub, given to every server the bench
 * starts: the hub is measured as it runs, and the bare baselines get the same collector
 * (`server/test/runtime-flags.test.ts` fails when package.json or the Dockerfile says otherwise).
 */
export const SERVER_NODE_FLAGS = ['--max-semi-space-size=32', '--initial-old-space-size=256'];

export async function spawnServer(kind: ServerKind, cleanup: Cleanup, opts: SpawnOptions): Promise<ServerProc> {
  const port = await freePort();
  const modulePath = kind === 'hub' ? join(ROOT, 'server/src/main.ts') : here(kind === 'ws' ? './ws-baseline.ts' : './sio-baseline.ts');
  mkdirSync(opts.logDir, { recursive: true });
  const logPath = join(opts.logDir, `${opts.name}.log`);
  const logFd = openSync(logPath, 'a');
  const execArgv = [...SERVER_NODE_FLAGS, '--import', 'tsx', '--import', pathToFileURL(here('./instrument.ts')).href, '--expose-gc'];
  if (opts.profileDir) {
    mkdirSync(opts.profileDir, { recursive: true });
    execArgv.push('--cpu-prof', '--cpu-prof-dir', opts.profileDir, '--cpu-prof-name', `${opts.name}-${Date.now()}.cpuprofile`);
  }
  const proc = fork(modulePath, [], {
    cwd: ROOT,
    execArgv,
    env: { ...process.env, NODE_ENV: 'production', PORT: String(port), ...(kind === 'sio-bare' ? { BASELINE_REDIS: '0' } : {}), ...opts.env },
    stdio: ['ignore', logFd, logFd, 'ipc'],
  });
  closeSync(logFd);
  let readyPort: number | null = null;
  const rpc = new RpcChild(opts.name, proc, (event) => {
    if (event.event === 'ready') readyPort = (event.data as { port: number }).port;
  });
  let exited: string | null = null;
  proc.once('exit', (code, signal) => {
    exited = `exited with ${code ?? signal}; see ${logPath}`;
  });
  cleanup.add(`stop ${opts.name}`, () => rpc.stop('SIGTERM'));
  const url = `http://127.0.0.1:${port}`;

  await waitFor(
    `${opts.name} to listen`,
    async () => {
      if (exited) throw new Error(`${opts.name} ${exited}`);
      if (kind !== 'hub') return readyPort !== null;
      const res = await fetch(`${url}/health`).catch(() => null);
      return res?.status === 200;
    },
    60_000,
    100,
  ).catch((err) => {
    throw new Error(exited ? `${opts.name} ${exited}` : (err as Error).message);
  });

  const metricsText = async () => (kind === 'hub' ? await (await fetch(`${url}/metrics`)).text() : null);
  return {
    kind,
    name: opts.name,
    url,
    port,
    pid: proc.pid!,
    rpc,
    stats: () => rpc.call<ServerStats>('stats'),
    reset: async () => {
      await rpc.call('reset');
    },
    gc: () => rpc.call<boolean>('gc'),
    async received() {
      if (kind === 'hub') return metricValue((await metricsText())!, 'hub_location_fixes_total');
      return (await rpc.call<ServerStats>('stats')).received ?? 0;
    },
    metricsText,
    stop: () => rpc.stop('SIGTERM'),
    kill: () => rpc.stop('SIGKILL', 1000),
  };
}

// --- Load generators -----------------------------------------------------------------------------

export interface GenCounters {
  sent: number;
  skipped: number;
  missed: number;
  disconnects: number;
  connectErrors: number;
  assignments: number;
  pushes: number;
  pingAcks: number;
  pingRefused: number;
  connected: number;
  lagP99Ms: number;
  cpuPercent: number;
  at: number;
}

/** Several load-generator children sharing one set of sockets, driven as one. */
export class LoadGroup {
  readonly gens: RpcChild[] = [];
  private sizes: number[] = [];

  private constructor() {}

  static async start(cleanup: Cleanup, count: number, label: string): Promise<LoadGroup> {
    const group = new LoadGroup();
    for (let i = 0; i < count; i++) {
      const proc = fork(here('./loadgen.ts'), [], { cwd: ROOT, execArgv: ['--import', 'tsx'], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
      const rpc = new RpcChild(`${label}-gen${i}`, proc);
      cleanup.add(`stop ${label}-gen${i}`, () => rpc.stop('SIGTERM', 5000));
      group.gens.push(rpc);
    }
    return group;
  }

  /** Splits the sockets over the children in contiguous slices. */
  async init(base: Omit<LoadgenInit, 'tokens' | 'positions' | 'label'>, tokens: string[], positions: [number, number][]): Promise<void> {
    const n = this.gens.length;
    this.sizes = [];
    await Promise.all(
      this.gens.map((gen, i) => {
        const from = Math.floor((tokens.length * i) / n);
        const to = Math.floor((tokens.length * (i + 1)) / n);
        this.sizes.push(to - from);
        return gen.call('init', { ...base, label: gen.name, tokens: tokens.slice(from, to), positions: positions.slice(from, to) } satisfies LoadgenInit);
      }),
    );
  }

  /** Connects each child's sockets; `fraction` [from, to) of each child's slice (default all). */
  async connect(
    concurrencyPerGen = 100,
    fraction: [number, number] = [0, 1],
  ): Promise<{ connected: number; failed: number; errors: Record<string, number>; seconds: number }> {
    const started = performance.now();
    const results = await Promise.all(
      this.gens.map((g, i) =>
        g.call('connect', { concurrency: concurrencyPerGen, from: Math.floor(this.sizes[i] * fraction[0]), to: Math.floor(this.sizes[i] * fraction[1]) }, 600_000),
      ),
    );
    const errors: Record<string, number> = {};
    for (const r of results) for (const [k, v] of Object.entries(r.errors as Record<string, number>)) errors[k] = (errors[k] ?? 0) + v;
    return {
      connected: results.reduce((s, r) => s + r.connected, 0),
      failed: results.reduce((s, r) => s + r.failed, 0),
      errors,
      seconds: (performance.now() - started) / 1000,
    };
  }

  async all(cmd: string, args?: unknown): Promise<Record<string, number>> {
    const results = await Promise.all(this.gens.map((g) => g.call<Record<string, number>>(cmd, args, 600_000)));
    const merged: Record<string, number> = {};
    for (const r of results) for (const [k, v] of Object.entries(r)) merged[k] = (merged[k] ?? 0) + v;
    return merged;
  }

  /** Total pings/s across the children, split by their socket counts. */
  async setRate(total: number): Promise<void> {
    const sockets = this.sizes.reduce((s, v) => s + v, 0) || 1;
    await Promise.all(this.gens.map((g, i) => g.call('setRate', { rate: (total * this.sizes[i]) / sockets })));
  }

  async counters(): Promise<GenCounters> {
    const all = await Promise.all(this.gens.map((g) => g.call<GenCounters>('counters')));
    const sum = (k: keyof GenCounters) => all.reduce((s, c) => s + c[k], 0);
    return {
      sent: sum('sent'),
      skipped: sum('skipped'),
      missed: sum('missed'),
      disconnects: sum('disconnects'),
      connectErrors: sum('connectErrors'),
      assignments: sum('assignments'),
      pushes: sum('pushes'),
      pingAcks: sum('pingAcks'),
      pingRefused: sum('pingRefused'),
      connected: sum('connected'),
      lagP99Ms: Math.max(...all.map((c) => c.lagP99Ms)),
      cpuPercent: sum('cpuPercent'),
      at: Math.max(...all.map((c) => c.at)),
    };
  }

  async resetWindow(): Promise<void> {
    await Promise.all(this.gens.map((g) => g.call('resetWindow')));
  }

  /** From now on each socket whose node dies comes back to one of `survivors`, with `jitter`. */
  async stormArm(jitter: StormJitter, survivors: string[], timeoutMs?: number): Promise<void> {
    await Promise.all(this.gens.map((g) => g.call('stormArm', { jitter, survivors, timeoutMs })));
  }

  /** The generators' storm reports as one (latencies only with `full`). */
  async stormReport(full = false): Promise<StormReport> {
    const all = await Promise.all(this.gens.map((g) => g.call<StormReport>('stormReport', { full }, 60_000)));
    const latest = (k: 'lastConnectedAt' | 'lastSessionAt' | 'lastClosedAt' | 'lastFirstAttemptAt') => {
      const values = all.map((r) => r[k]).filter((v): v is number => v !== null);
      return values.length ? Math.max(...values) : null;
    };
    const refused: Record<string, number> = {};
    for (const r of all) for (const [k, v] of Object.entries(r.refused)) refused[k] = (refused[k] ?? 0) + v;
    return {
      back: all.reduce((s, r) => s + r.back, 0),
      waiting: all.reduce((s, r) => s + r.waiting, 0),
      lastConnectedAt: latest('lastConnectedAt'),
      lastSessionAt: latest('lastSessionAt'),
      lastClosedAt: latest('lastClosedAt'),
      lastFirstAttemptAt: latest('lastFirstAttemptAt'),
      connectMs: all.flatMap((r) => r.connectMs),
      sessionMs: all.flatMap((r) => r.sessionMs),
      attempts: all.reduce((s, r) => s + r.attempts, 0),
      refused,
      retried: all.reduce((s, r) => s + r.retried, 0),
    };
  }

  async drainAssignments(): Promise<[string, number][]> {
    const all = await Promise.all(this.gens.map((g) => g.call<[string, number][]>('drainAssignments')));
    return all.flat();
  }

  async close(): Promise<void> {
    await Promise.all(this.gens.map((g) => g.call('close').catch(() => {})));
    await Promise.all(this.gens.map((g) => g.stop('SIGTERM', 5000)));
  }
}

// --- Geography -----------------------------------------------------------------------------------

export const CENTRE = { lat: 52.52, lng: 13.405 };

/** Uniform points in a disc of `radiusKm` around the centre. */
export function positionsAround(count: number, radiusKm: number, centre = CENTRE): [number, number][] {
  const out: [number, number][] = [];
  for (let i = 0; i < count; i++) {
    const r = radiusKm * 1000 * Math.sqrt(Math.random());
    const theta = Math.random() * 2 * Math.PI;
    const lat = centre.lat + (r * Math.cos(theta)) / 111_320;
    const lng = centre.lng + (r * Math.sin(theta)) / (111_320 * Math.cos((centre.lat * Math.PI) / 180));
    out.push([Number(lat.toFixed(6)), Number(lng.toFixed(6))]);
  }
  return out;
}

export { sleep };
