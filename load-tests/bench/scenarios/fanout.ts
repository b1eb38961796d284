/**
 * fan-out: three hub processes on one PostgreSQL database and one Redis prefix, as a cluster.
 * Drivers are connected to nodes A and B (half each) and ping at `--ping-hz`; a dispatcher map
 * is connected to node C. Sample drivers (split over A and B) send unique positions, and the
 * prober times each one from the emit to the `drivers:moved` entry that carries it at C.
 */
import {
  Cleanup,
  createBenchDatabase,
  deletePrefix,
  hubEnv,
  insertDrivers,
  LoadGroup,
  mintTokens,
  positionsAround,
  redisPrefix,
  SHARED_REDIS_URL,
  type ServerProc,
  spawnServer,
} from '../infra.js';
import { round, sleep, summarize, table } from '../lib.js';
import { type RunContext, type ScenarioOutput, spawnProber, type TargetCheck } from '../context.js';

export async function fanout(ctx: RunContext): Promise<ScenarioOutput> {
  const drivers = ctx.num('drivers', 10_000, 2_000);
  const pingHz = ctx.num('ping-hz', 1);
  const probes = ctx.num('probes', 40, 20);
  const seconds = ctx.num('seconds', 20, 10);
  const cleanup = new Cleanup();
  try {
    const db = await createBenchDatabase(cleanup);
    const prefix = redisPrefix();
    cleanup.add(`redis keys ${prefix}`, () => deletePrefix(SHARED_REDIS_URL, prefix));
    const nodes: ServerProc[] = [];
    for (const name of ['a', 'b', 'c']) {
      nodes.push(
        await spawnServer('hub', cleanup, { name: `fanout-hub-${name}-${ctx.runId}`, env: hubEnv(db, prefix, { NODE_ID: `bench-node-${name}`, ...ctx.hubEnv }), logDir: ctx.logDir }),
      );
    }
    const [a, b, c] = nodes;
    const ids = await insertDrivers(db, drivers + probes);
    const tokens = await mintTokens('driver', ids);
    const positions = positionsAround(ids.length, 10);
    const half = Math.floor(drivers / 2);
    const groups: LoadGroup[] = [];
    for (const [node, from, to] of [
      [a, 0, half],
      [b, half, drivers],
    ] as const) {
      const group = await LoadGroup.start(cleanup, 1, `fanout-${node.name}`);
      await group.init({ mode: 'sio', url: node.url, waitSession: true }, tokens.slice(from, to), positions.slice(from, to));
      const connected = await group.connect(100);
      ctx.log(`${connected.connected} drivers on ${node.name} in ${connected.seconds.toFixed(1)} s (${connected.failed} failed)`);
      await group.all('goAvailable', { concurrency: 50 });
      await group.all('placeAll', { concurrency: 100 });
      groups.push(group);
    }
    const [dispatcherToken] = await mintTokens('dispatcher', ['bench-dispatcher']);
    const prober = spawnProber(cleanup, 'fanout-prober');
    const samples = ids.slice(drivers).map((id, i) => ({
      url: i % 2 === 0 ? a.url : b.url,
      token: tokens[drivers + i],
      id,
      lat: positions[drivers + i][0],
      lng: positions[drivers + i][1],
    }));
    await prober.call('init', { mode: 'moved', samples, hub: true, dispatcher: { url: c.url, token: dispatcherToken } });
    for (const group of groups) await group.setRate(half * pingHz);
    ctx.log(`pinging: ${Math.round(drivers * pingHz)}/s in total; probing ${probes} sample drivers for ${seconds} s`);
    await sleep(3000);
    await Promise.all(nodes.map((n) => n.reset()));
    const run = await prober.call('run', { durationMs: seconds * 1000, intervalMs: 1000 }, seconds * 1000 + 60_000);
    const nodeStats = await Promise.all(nodes.map(async (n) => {
      const s = await n.stats();
      return { node: n.name, lagP99Ms: round(s.lagP99Ms), lagMaxMs: round(s.lagMaxMs), cpuPercent: round(s.cpuPercent, 0), rssMiB: Math.round(s.rssBytes / 2 ** 20) };
    }));
    const gen = await Promise.all(groups.map((g) => g.counters()));
    for (const group of groups) await group.close();
    const result = {
      drivers,
      pingsPerSec: Math.round(drivers * pingHz),
      probes,
      seconds,
      pingToMapMs: summarize(run.latencies),
      pingToNodeMs: summarize(run.nodeLegs),
      nodeToMapMs: summarize(run.mapLegs),
      lostProbes: run.timeouts,
      movedMessagesAtDispatcher: run.movedMessages,
      movedEntriesAtDispatcher: run.movedEntries,
      proberLagP99Ms: round(run.proberLagP99Ms),
      nodes: nodeStats,
      generatorDisconnects: gen.reduce((s, g) => s + g.disconnects, 0),
    };
    ctx.log(`fan-out: ${JSON.stringify(result)}`);
    const p99 = result.pingToMapMs.p99;
    const checks: TargetCheck[] = [
      {
        name: 'fan-out ping -> drivers:moved p99',
        target: '<= 100 ms',
        measured: `${p99} ms (p50 ${result.pingToMapMs.p50} ms, ${result.pingToMapMs.count} probes, ${result.lostProbes} lost)`,
        met: p99 === null ? null : p99 <= 100,
      },
    ];
    const rows = [
      ['leg', 'count', 'p50 ms', 'p90 ms', 'p99 ms', 'max ms'],
      ...(
        [
          ['ping -> map (total)', result.pingToMapMs],
          ['ping -> node (ts)', result.pingToNodeMs],
          ['node -> map', result.nodeToMapMs],
        ] as const
      ).map(([leg, s]) => [leg, s.count, s.p50, s.p90, s.p99, s.max]),
    ];
    return { results: result, checks, table: table(rows) };
  } finally {
    await cleanup.runAll();
  }
}
