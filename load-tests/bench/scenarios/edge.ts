/**
 * edge: what the HTTP edge costs the hub per request, without the work behind it. One hub; keep-alive
 * requests from the bench process, `concurrency` in flight, in rounds of `requests`; per round the
 * hub's CPU (user + system) divided by the requests answered. Two paths: an unknown one (the
 * middlewares, routing and a JSON error answer: the edge alone) and /health (the same plus a
 * PostgreSQL ping). Every webhook pays the first.
 */
import { Agent } from 'node:http';
import { Cleanup, createBenchDatabase, deletePrefix, hubEnv, redisPrefix, SHARED_REDIS_URL, spawnServer } from '../infra.js';
import { getMany, round, summarize, table } from '../lib.js';
import { profiled, type RunContext, type ScenarioOutput } from '../context.js';
import type { ProfileSummary } from '../profile-top.js';

interface PathResult {
  path: string;
  status: number;
  /** Hub CPU microseconds per request, one value per measured round. */
  cpuUsPerRequest: number[];
  requestsPerSecond: number[];
}

export async function edge(ctx: RunContext): Promise<ScenarioOutput> {
  const requests = ctx.num('requests', 10_000, 3_000);
  const rounds = ctx.num('rounds', 5, 3);
  const concurrency = ctx.num('concurrency', 32);
  const paths = ctx.str('paths', '/no-such-path,/health').split(',');
  const results: PathResult[] = [];
  const profiles: Record<string, ProfileSummary> = {};
  const cleanup = new Cleanup();
  try {
    const db = await createBenchDatabase(cleanup);
    const prefix = redisPrefix();
    cleanup.add(`redis keys ${prefix}`, () => deletePrefix(SHARED_REDIS_URL, prefix));
    const hub = await spawnServer('hub', cleanup, { name: `edge-hub-${ctx.runId}`, env: hubEnv(db, prefix, { NODE_ID: 'bench-edge', ...ctx.hubEnv }), logDir: ctx.logDir });
    const agent = new Agent({ keepAlive: true, maxSockets: concurrency });
    cleanup.add('http agent', () => agent.destroy());
    for (const path of paths) {
      const result: PathResult = { path, status: 0, cpuUsPerRequest: [], requestsPerSecond: [] };
      await getMany(agent, `${hub.url}${path}`, Math.min(2_000, requests), concurrency);
      for (let r = 0; r < rounds; r++) {
        await hub.reset();
        const started = performance.now();
        const run = () => getMany(agent, `${hub.url}${path}`, requests, concurrency);
        result.status = await (r === rounds - 1 ? profiled(ctx, hub, `edge${path.replace(/\W+/g, '-')}`, run, profiles) : run());
        const seconds = (performance.now() - started) / 1000;
        const stats = await hub.stats();
        result.cpuUsPerRequest.push(round(((stats.cpuPercent / 100) * stats.windowMs * 1000) / requests, 1)!);
        result.requestsPerSecond.push(Math.round(requests / seconds));
      }
      ctx.log(`${path}: ${result.status}, hub CPU us per request ${result.cpuUsPerRequest.join(', ')}; requests/s ${result.requestsPerSecond.join(', ')}`);
      results.push(result);
    }
  } finally {
    await cleanup.runAll();
  }
  const rows: unknown[][] = [['path', 'status', 'hub CPU us/request p50', 'min', 'max', 'requests/s p50']];
  for (const r of results) {
    const cpu = summarize(r.cpuUsPerRequest);
    rows.push([r.path, r.status, cpu.p50, Math.min(...r.cpuUsPerRequest), Math.max(...r.cpuUsPerRequest), summarize(r.requestsPerSecond).p50]);
  }
  return {
    results: { requests, rounds, concurrency, paths: results },
    checks: results.map((r) => ({ name: `hub CPU per request, ${r.path} (median round)`, target: 'report', measured: `${summarize(r.cpuUsPerRequest).p50} us`, met: null })),
    table: table(rows),
    profiles,
  };
}
