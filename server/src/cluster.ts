import cluster, { type Worker } from 'node:cluster';
import { randomBytes } from 'node:crypto';
import { availableParallelism, hostname } from 'node:os';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { type Config, ConfigError, envFlag, parseConfig } from './platform/config.js';
import { openDatabase } from './platform/db.js';
import { createLogger, wantsPrettyLogs } from './platform/logger.js';
import { logStartupNotes } from './platform/startup-notes.js';

/**
 * `npm run cluster`: several hub processes on one machine sharing one port. The primary only
 * supervises; each worker runs main.ts as its own entry point, exactly as `npm start` would.
 *
 * No sticky sessions are needed: every client uses the websocket transport, so a connection never
 * spans two workers, and the Redis adapter carries events between them.
 */

const MIN_BACKOFF_MS = 500;
const MAX_BACKOFF_MS = 30_000;
/** A worker that lived this long is considered healthy again: its next crash restarts it quickly. */
const STABLE_AFTER_MS = 30_000;

export function workerCount(env: Record<string, string | undefined>): number {
  const raw = env.WORKERS?.trim();
  if (!raw) return availableParallelism();
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 1 || n > 256) throw new ConfigError([`WORKERS: must be a whole number from 1 to 256, got "${raw}"`]);
  return n;
}

/** Why this environment cannot run `count` workers, or null when it can. */
export function clusterProblems(env: Record<string, string | undefined>, count: number): string[] {
  if (count <= 1) return [];
  const problems: string[] = [];
  // Embedded PGlite is a single-process database; without Redis the workers could not see each other's sockets.
  if (!env.DATABASE_URL?.trim()) problems.push('DATABASE_URL: required for more than one worker (the embedded PGlite database is single-process)');
  if (!env.REDIS_URL?.trim() && !env.REDIS_CLUSTER_NODES?.trim()) problems.push('REDIS_URL: required for more than one worker (the Socket.IO Redis adapter connects them)');
  // node:cluster shares a port between worker processes, not with their threads: the second
  // worker's API thread would find HTTP_PORT taken.
  if (envFlag(env.API_THREAD, false)) problems.push('API_THREAD: not with more than one worker (their API threads cannot share HTTP_PORT); unset it, or run one process per hub');
  return problems;
}

/** The heap sizes among a process's flags: workers get those the cluster was started with (the image's young and old generation sizes). */
export function heapFlagsOf(execArgv: readonly string[]): string[] {
  return execArgv.filter((flag) => /^--(max-semi|max-old|initial-old)-space-size=/.test(flag));
}

export function backoffMs(consecutiveCrashes: number): number {
  return Math.min(MAX_BACKOFF_MS, MIN_BACKOFF_MS * 2 ** Math.max(0, consecutiveCrashes - 1));
}

async function runPrimary(): Promise<void> {
  let config: Config;
  let count: number;
  try {
    count = workerCount(process.env);
    const problems = clusterProblems(process.env, count);
    if (problems.length > 0) throw new ConfigError(problems);
    config = parseConfig(process.env, () => randomBytes(32).toString('base64url'));
  } catch (err) {
    if (err instanceof ConfigError) {
      console.error(`${err.message}\n(set WORKERS=1 to run a single worker without them)`);
      process.exit(2);
    }
    throw err;
  }
  const baseId = process.env.NODE_ID?.trim() || hostname();
  const logger = createLogger({
    level: config.LOG_LEVEL,
    nodeId: `${baseId}-primary`,
    pretty: wantsPrettyLogs({ production: config.production, isTTY: process.stdout.isTTY }),
  });

  // Secrets must be the same in every worker: a token minted by one is checked by another, and a
  // webhook signed for one is verified by whichever worker takes the request.
  const shared: Record<string, string> = { ADMIN_TOKEN: config.ADMIN_TOKEN, JWT_SECRET: config.JWT_SECRET };
  if (config.webhookSecretGenerated) shared.WEBHOOK_SECRET = config.WEBHOOK_SECRETS[0];
  logStartupNotes(config, logger, `http://localhost:${config.PORT}`, 'this cluster');

  // Migrations run once, here: workers starting together would otherwise race to apply the same ones.
  if (config.RUN_MIGRATIONS && config.DATABASE_URL) {
    const database = openDatabase({ url: config.DATABASE_URL, dataDir: config.DATA_DIR });
    try {
      await database.migrate();
    } catch (err) {
      logger.fatal({ reason: (err as Error).message }, 'migrations failed; no worker started');
      process.exit(1);
    } finally {
      await database.close().catch(() => {});
    }
    shared.RUN_MIGRATIONS = 'false';
  }

  // Compiled (npm run build), this file is main.js's neighbour and workers need no loader.
  const compiled = import.meta.url.endsWith('.js');
  const heapFlags = heapFlagsOf(process.execArgv);
  cluster.setupPrimary({
    exec: fileURLToPath(new URL(compiled ? './main.js' : './main.ts', import.meta.url)),
    // An absolute loader URL, so workers start whatever the current directory is.
    execArgv: compiled ? heapFlags : [...heapFlags, '--import', import.meta.resolve('tsx')],
  });

  const slots = new Map<Worker, { index: number; startedAt: number }>();
  const crashes = new Array<number>(count).fill(0);
  let stopping = false;

  function fork(index: number): void {
    const worker = cluster.fork({ ...shared, NODE_ID: `${baseId}-w${index}` });
    slots.set(worker, { index, startedAt: Date.now() });
  }

  cluster.on('exit', (worker, code, signal) => {
    const slot = slots.get(worker);
    slots.delete(worker);
    if (!slot) return;
    if (stopping) {
      logger.info({ worker: slot.index, code, signal }, 'worker stopped');
      if (slots.size === 0) process.exit(0);
      return;
    }
    if (code === 2) {
      // Configuration errors do not heal by restarting.
      logger.fatal({ worker: slot.index }, 'worker refused its configuration; stopping the cluster');
      shutdown('config');
      return;
    }
    crashes[slot.index] = Date.now() - slot.startedAt > STABLE_AFTER_MS ? 1 : crashes[slot.index] + 1;
    const delay = backoffMs(crashes[slot.index]);
    logger.error({ worker: slot.index, code, signal, restartInMs: delay }, 'worker died; restarting');
    setTimeout(() => {
      if (!stopping) fork(slot.index);
    }, delay);
  });

  function shutdown(reason: string): void {
    if (stopping) return;
    stopping = true;
    logger.info({ reason, workers: slots.size }, 'stopping workers');
    if (slots.size === 0) process.exit(0);
    for (const worker of slots.keys()) worker.process.kill('SIGTERM');
    // Workers bound their own shutdown; this only catches one that hangs anyway.
    setTimeout(() => {
      for (const worker of slots.keys()) worker.process.kill('SIGKILL');
      process.exit(1);
    }, config.SHUTDOWN_TIMEOUT_MS + 5000).unref();
  }

  process.on('SIGTERM', () => shutdown('SIGTERM'));
  process.on('SIGINT', () => shutdown('SIGINT'));

  logger.info({ workers: count, port: config.PORT }, `starting ${count} hub worker${count === 1 ? '' : 's'}`);
  for (let i = 0; i < count; i++) fork(i);
}

if (cluster.isPrimary && process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  await runPrimary();
}
