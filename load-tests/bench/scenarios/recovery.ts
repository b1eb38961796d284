/**
 * recovery: the hub runs against a private redis-server (no persistence) with N drivers
 * connected, AVAILABLE and pinging. The redis-server is killed (SIGKILL) and started again, empty,
 * on the same port; the clock runs until `drivers:geo` holds every AVAILABLE driver again
 * (ZCARD polled every 10 ms). Repeated `--trials` times.
 */
import { Redis } from 'ioredis';
import { presenceKeys } from '../../../server/src/presence/presence.store.js';
import {
  Cleanup,
  createBenchDatabase,
  hubEnv,
  insertDrivers,
  LoadGroup,
  metricValue,
  mintTokens,
  positionsAround,
  redisPrefix,
  spawnServer,
  startPrivateRedis,
} from '../infra.js';
import { round, sleep, summarize, table, waitFor, wallMs } from '../lib.js';
import type { RunContext, ScenarioOutput, TargetCheck } from '../context.js';

export async function recovery(ctx: RunContext): Promise<ScenarioOutput> {
  const drivers = ctx.num('drivers', 10_000, 2_000);
  const pingHz = ctx.num('ping-hz', 1);
  const trials = ctx.num('trials', 3, 1);
  const downMs = ctx.num('down-ms', 0);
  const generators = ctx.num('generators', 2);
  const cleanup = new Cleanup();
  try {
    const redisServer = await startPrivateRedis(cleanup);
    const db = await createBenchDatabase(cleanup);
    const prefix = redisPrefix();
    const geoKey = presenceKeys(prefix).geo;
    const hub = await spawnServer('hub', cleanup, {
      name: `recovery-hub-${ctx.runId}`,
      env: hubEnv(db, prefix, { NODE_ID: 'bench-recovery', ...ctx.hubEnv }, redisServer.url),
      logDir: ctx.logDir,
    });
    const ids = await insertDrivers(db, drivers);
    const tokens = await mintTokens('driver', ids);
    const group = await LoadGroup.start(cleanup, generators, 'recovery');
    await group.init({ mode: 'sio', url: hub.url, waitSession: true }, tokens, positionsAround(drivers, 10));
    const connected = await group.connect(100);
    await group.all('goAvailable', { concurrency: 50 });
    await group.all('placeAll', { concurrency: 100 });
    await group.setRate(connected.connected * pingHz);
    ctx.log(`recovery: ${connected.connected} drivers connected in ${connected.seconds.toFixed(1)} s, pinging ${Math.round(connected.connected * pingHz)}/s; redis-server on port ${redisServer.port}`);

    // A watcher that reconnects at once, so it sees the new server as soon as it answers.
    const watcher = new Redis(redisServer.url, { maxRetriesPerRequest: 0, enableOfflineQueue: false, retryStrategy: () => 5, connectTimeout: 500 });
    watcher.on('error', () => {});
    cleanup.add('watcher', () => watcher.disconnect());
    const zcard = () => watcher.zcard(geoKey).catch(() => -1);
    const expected = connected.connected;
    await waitFor('drivers:geo complete before the first kill', async () => ((await zcard()) >= expected ? true : undefined), 60_000, 100);
    await sleep(3000);

    const runs: { downMs: number; fromRestartMs: number | null; fromKillMs: number | null; firstNonEmptyMs: number | null }[] = [];
    for (let trial = 1; trial <= trials; trial++) {
      await waitFor('drivers:geo complete', async () => ((await zcard()) >= expected ? true : undefined), 30_000, 100);
      const killedAt = wallMs();
      await redisServer.kill();
      if (downMs > 0) await sleep(downMs);
      await redisServer.start();
      const upAt = wallMs();
      let firstNonEmpty: number | null = null;
      const doneAt = await waitFor(
        'drivers:geo complete after the restart',
        async () => {
          const n = await zcard();
          if (n > 0 && firstNonEmpty === null) firstNonEmpty = wallMs();
          return n >= expected ? wallMs() : undefined;
        },
        30_000,
        10,
      ).catch(() => null);
      const run = {
        downMs: round(upAt - killedAt, 0)!,
        fromRestartMs: doneAt === null ? null : round(doneAt - upAt, 0),
        fromKillMs: doneAt === null ? null : round(doneAt - killedAt, 0),
        firstNonEmptyMs: firstNonEmpty === null ? null : round((firstNonEmpty as number) - upAt, 0),
      };
      runs.push(run);
      ctx.log(`trial ${trial}: ${JSON.stringify(run)} (zcard now ${await zcard()})`);
      await sleep(3000);
    }
    const metrics = (await hub.metricsText())!;
    const health = await (await fetch(`${hub.url}/health`)).json();
    const gen = await group.counters();
    await group.close();

    const fromRestart = runs.map((r) => r.fromRestartMs).filter((v): v is number => v !== null);
    const worst = fromRestart.length === runs.length ? Math.max(...fromRestart) : null;
    const checks: TargetCheck[] = [
      {
        name: `recovery of drivers:geo, ${expected} drivers`,
        target: '<= 2 s',
        measured: worst === null ? 'did not complete within 30 s' : `${(worst / 1000).toFixed(2)} s worst of ${runs.length} (from restart)`,
        met: worst === null ? false : worst <= 2000,
      },
    ];
    const rows = [['trial', 'redis down ms', 'restart -> first GEO entry ms', 'restart -> complete ms', 'kill -> complete ms'], ...runs.map((r, i) => [i + 1, r.downMs, r.firstNonEmptyMs, r.fromRestartMs, r.fromKillMs])];
    return {
      results: {
        drivers: expected,
        pingsPerSec: Math.round(expected * pingHz),
        trials: runs,
        fromRestartMs: summarize(fromRestart, 0),
        redisRebuilds: metricValue(metrics, 'hub_redis_rebuilds_total'),
        healthAfter: health,
        generatorDisconnects: gen.disconnects,
      },
      checks,
      table: table(rows),
    };
  } finally {
    await cleanup.runAll();
  }
}
