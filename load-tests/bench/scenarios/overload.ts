/**
 * The ingest scenario's overload step: every connected driver is AVAILABLE, and the sockets ping
 * past what the hub sustains (each ping with an acknowledgement, so what the hub refuses is seen)
 * for longer than the heartbeat lives. A hub that falls behind without shedding acknowledges pings
 * it has not written and, when heartbeats expire, marks drivers that are still pinging OFFLINE.
 * Checked every second and after the step, for every driver: its status in Redis and PostgreSQL,
 * its place in `drivers:geo`; with the hub's sweep counter, the generators' disconnects, the
 * acknowledgements (ok or refused, by code) and ping -> GEO latency from the prober.
 */
import { Redis } from 'ioredis';
import postgres from 'postgres';
import type { RpcChild } from '../lib.js';
import { type BenchDatabase, type LoadGroup, metricValue, SHARED_REDIS_URL, type ServerProc } from '../infra.js';
import { round, sleep, summarize, wallMs } from '../lib.js';
import type { RunContext, TargetCheck } from '../context.js';

export interface OverloadResult {
  targetRate: number;
  seconds: number;
  sentPerSec: number;
  /** Fixes the hub took in (hub_location_fixes_total) per second. */
  takenPerSec: number;
  acknowledged: number;
  refused: number;
  refusedByCode: Record<string, number>;
  /** The worst moment: drivers not AVAILABLE in Redis, out of `drivers:geo`, not AVAILABLE in PostgreSQL. */
  worst: { redisNotAvailable: number; notInGeo: number; postgresNotAvailable: number; atSecond: number | null };
  after: { redisNotAvailable: number; notInGeo: number; postgresNotAvailable: number };
  swept: number;
  disconnects: number;
  pingToGeoMs: ReturnType<typeof summarize> | null;
  probeTimeouts: number | null;
  serverLagP99Ms: number | null;
  serverCpuPercent: number | null;
  hubCounters: Record<string, number>;
}

async function look(redis: Redis, sql: postgres.Sql, prefix: string, ids: readonly string[]) {
  let redisNotAvailable = 0;
  let notInGeo = 0;
  for (let i = 0; i < ids.length; i += 1000) {
    const slice = ids.slice(i, i + 1000);
    const [statuses, scores] = await Promise.all([redis.hmget(`${prefix}drivers:status`, ...slice), redis.call('ZMSCORE', `${prefix}drivers:geo`, ...slice) as Promise<(string | null)[]>]);
    for (const s of statuses) if (s !== 'AVAILABLE') redisNotAvailable += 1;
    for (const s of scores) if (s === null) notInGeo += 1;
  }
  const [{ n }] = await sql<{ n: number }[]>`select count(*)::int as n from drivers where id = any(${ids as string[]}::uuid[]) and status <> 'AVAILABLE'`;
  return { redisNotAvailable, notInGeo, postgresNotAvailable: n };
}

/** The hub's metrics once it answers again (bounded: two minutes). */
async function waitForMetrics(server: ServerProc): Promise<string> {
  const deadline = Date.now() + 120_000;
  for (;;) {
    try {
      return (await Promise.race([server.metricsText(), sleep(10_000).then(() => Promise.reject(new Error('no answer in 10 s')))]))!;
    } catch (err) {
      if (Date.now() > deadline) throw err;
    }
  }
}

function hubCounters(text: string): Record<string, number> {
  return {
    fixes: metricValue(text, 'hub_location_fixes_total'),
    swept: metricValue(text, 'hub_drivers_swept_total'),
    rateLimited: metricValue(text, 'hub_rate_limited_total'),
    shed: metricValue(text, 'hub_location_fixes_shed_total'),
  };
}

export async function overloadStep(
  ctx: RunContext,
  server: ServerProc,
  group: LoadGroup,
  prober: RpcChild | null,
  db: BenchDatabase,
  prefix: string,
  ids: readonly string[],
  o: { rate: number; seconds: number; label: string },
): Promise<OverloadResult> {
  const redis = new Redis(SHARED_REDIS_URL);
  const sql = postgres(db.url, { max: 1, onnotice: () => {} });
  try {
    const start = await look(redis, sql, prefix, ids);
    if (start.redisNotAvailable + start.notInGeo + start.postgresNotAvailable > 0) ctx.log(`[${o.label}] overload: before the step already ${JSON.stringify(start)}`);
    await group.all('setProtocol', { protocol: 'ack' });
    await group.all('drainRefusedPings');
    const countersBefore = await group.counters();
    const metricsBefore = hubCounters((await server.metricsText())!);
    ctx.log(`[${o.label}] overload: ${o.rate} pings/s (each acknowledged) on ${countersBefore.connected} sockets for ${o.seconds} s`);
    await group.setRate(o.rate);
    await server.reset();
    const startedAt = wallMs();
    const probing = prober ? prober.call('run', { durationMs: o.seconds * 1000, intervalMs: 1000 }, o.seconds * 1000 + 60_000) : Promise.resolve(null);
    const worst = { redisNotAvailable: 0, notInGeo: 0, postgresNotAvailable: 0, atSecond: null as number | null };
    while (wallMs() - startedAt < o.seconds * 1000) {
      const seen = await look(redis, sql, prefix, ids);
      const bad = seen.redisNotAvailable + seen.notInGeo + seen.postgresNotAvailable;
      if (bad > worst.redisNotAvailable + worst.notInGeo + worst.postgresNotAvailable) {
        Object.assign(worst, seen, { atSecond: round((wallMs() - startedAt) / 1000, 1) });
        ctx.log(`[${o.label}] overload at ${worst.atSecond} s: ${JSON.stringify(seen)} not live`);
      }
      await sleep(1000);
    }
    // An overwhelmed hub may not answer its instrument for a while: that is a finding, not a bench failure.
    const stats = await server.rpc.call<Awaited<ReturnType<ServerProc['stats']>>>('stats', undefined, 30_000).catch(() => null);
    const countersAtEnd = await group.counters();
    await group.setRate(0);
    const run = (await probing) as { latencies: number[]; timeouts: number } | null;
    // What the hub still had queued lands now; then nobody may be left behind.
    await sleep(5000);
    const after = await look(redis, sql, prefix, ids);
    const countersAfter = await group.counters();
    const metricsAfter = hubCounters((await waitForMetrics(server))!);
    const refusedByCode = await group.all('drainRefusedPings');
    await group.all('setProtocol', { protocol: 'plain' });
    const seconds = (countersAtEnd.at - countersBefore.at) / 1000;
    const delta = Object.fromEntries(Object.keys(metricsAfter).map((k) => [k, metricsAfter[k] - metricsBefore[k]]));
    const result: OverloadResult = {
      targetRate: o.rate,
      seconds: o.seconds,
      sentPerSec: Math.round((countersAtEnd.sent - countersBefore.sent) / seconds),
      takenPerSec: Math.round(delta.fixes / ((wallMs() - startedAt) / 1000)),
      acknowledged: countersAfter.pingAcks - countersBefore.pingAcks,
      refused: countersAfter.pingRefused - countersBefore.pingRefused,
      refusedByCode,
      worst,
      after,
      swept: delta.swept,
      disconnects: countersAfter.disconnects - countersBefore.disconnects,
      pingToGeoMs: run ? summarize(run.latencies) : null,
      probeTimeouts: run ? run.timeouts : null,
      serverLagP99Ms: stats ? round(stats.lagP99Ms) : null,
      serverCpuPercent: stats ? round(stats.cpuPercent, 0) : null,
      hubCounters: delta,
    };
    ctx.log(`[${o.label}] overload: ${JSON.stringify(result)}`);
    return result;
  } finally {
    redis.disconnect();
    await sql.end();
  }
}

export function overloadCheck(result: OverloadResult): TargetCheck {
  const falseOffline = Math.max(result.worst.redisNotAvailable, result.worst.notInGeo, result.worst.postgresNotAvailable, result.after.redisNotAvailable, result.after.notInGeo, result.after.postgresNotAvailable);
  return {
    name: `overload: no live driver marked OFFLINE at ${result.sentPerSec} pings/s sent for ${result.seconds} s`,
    target: '0 drivers out, 0 swept',
    measured: `worst ${JSON.stringify(result.worst)}, after ${JSON.stringify(result.after)}, swept ${result.swept}, disconnects ${result.disconnects}; taken ${result.takenPerSec}/s, refused ${result.refused} ${JSON.stringify(result.refusedByCode)}`,
    met: falseOffline === 0 && result.swept === 0 && result.disconnects === 0,
  };
}
