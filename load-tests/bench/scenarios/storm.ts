/**
 * storm: a node dies with the fleet on it. Three server processes; every driver socket on the
 * first (A), AVAILABLE, placed and pinging; signed orders at a steady rate on the other two (B, C,
 * hub only). A is SIGKILLed (no shutdown work, as in a crash or an OOM kill); its sockets come
 * back to B and C (split by driver, as a load balancer would), either at once (`none`: no client
 * jitter, a refusal retried after its retryAfterMs or a fixed second) or as the driver client does
 * (`client`: full jitter, 5 s then doubling up to 30 s). Measured from the kill:
 *
 * - every socket connected again (namespace connect), every `session` (hub: its bookkeeping done),
 *   every on-duty driver assignable again (AVAILABLE and in `drivers:geo`, or BUSY with its job,
 *   in Redis and PostgreSQL);
 * - handshake latency per successful attempt (websocket open -> connect, -> session), attempts
 *   refused by reason and drivers that needed a retry, drivers never back (lost);
 * - the survivors' event-loop lag and CPU during the storm;
 * - PostgreSQL statements and Redis commands (and socket writes to each) per handshake on the
 *   survivors, net of what the calm window before the kill cost per second;
 * - the webhook's p99 during the storm against its p99 in the calm window before.
 *
 * The same storm runs against bare Socket.IO servers (no auth, no bookkeeping) in the same run:
 * the hub's time until assignable is compared with their time until connected.
 */
import { randomUUID } from 'node:crypto';
import { Agent } from 'node:http';
import { Redis } from 'ioredis';
import postgres from 'postgres';
import type { ServerStats } from '../instrument.js';
import type { StormJitter, StormReport } from '../loadgen.js';
import {
  CENTRE,
  Cleanup,
  createBenchDatabase,
  deletePrefix,
  hubEnv,
  insertDrivers,
  LoadGroup,
  metricValue,
  mintTokens,
  PG_ADMIN_URL,
  positionsAround,
  redisPrefix,
  SHARED_REDIS_URL,
  type ServerKind,
  type ServerProc,
  spawnServer,
  type Wire,
  WIRE_KEYS,
  WIRE_PORTS,
} from '../infra.js';
import { cpuByGroup, freePort, machineBusyPercent, ratio, readCpuTimes, round, sampleProcesses, sampleThreads, sleep, summarize, table, threadCpuMs, waitFor, wallMs } from '../lib.js';
import { profiled, type RunContext, type ScenarioOutput, type TargetCheck } from '../context.js';
import type { ProfileSummary } from '../profile-top.js';
import { type Posted, postOrder } from './assignment.js';


interface StormResult {
  target: string;
  jitter: StormJitter;
  drivers: number;
  initialConnectSeconds: number;
  /**
   * Seconds from the kill until the apps had seen their last socket close, and until the last app
   * began its first attempt (with jitter, its drawn delay later): what passes before any server works.
   */
  closesSeenSeconds: number | null;
  attemptsStartedSeconds: number | null;
  /** Seconds from the kill until every socket was connected again (namespace connect). */
  connectedSeconds: number | null;
  /** Hub: until every `session` arrived. */
  sessionSeconds: number | null;
  /** Hub: until every on-duty driver was assignable again (bare Socket.IO: connected). */
  assignableSeconds: number | null;
  lost: number;
  attempts: number;
  retried: number;
  refused: Record<string, number>;
  handshakeConnectMs: ReturnType<typeof summarize>;
  handshakeSessionMs: ReturnType<typeof summarize> | null;
  survivors: {
    node: string;
    lagP99Ms: number | null;
    lagMaxMs: number | null;
    cpuPercent: number | null;
    /** CPU each survivor's threads used from the kill until every driver was back: the event loop, the API thread, V8's and libuv's helpers. */
    threadsCpuMs?: { main: number; api: number; other: number };
    handshakes?: number;
    gc?: ServerStats['gc'];
  }[];
  machineBusyPercent: number | null;
  /** CPU (% of one core) by process group in the calm window and during the storm. */
  cpu: { calm: Record<string, number>; storm: Record<string, number> };
  geoMinDuringStorm?: number;
  roundTripsPerHandshake?: Record<string, { gross: number | null; net: number | null }>;
  webhook?: {
    calm: ReturnType<typeof summarize> & { outcomes: Record<string, number> };
    storm: ReturnType<typeof summarize> & { outcomes: Record<string, number> };
    p99Ratio: number | null;
  };
  hubCounters?: Record<string, number>;
  statementsDuringStorm?: Record<string, number>;
  statementsPerSecondCalm?: Record<string, number>;
  storesDuringStorm?: StoreSamples;
}

interface StoreSamples {
  /** Samples of the bench database's backends: how many were in each state / wait event, summed over samples. */
  postgresSamples: number;
  postgresActiveMean: number;
  postgresWaits: Record<string, number>;
  redisPingMs: ReturnType<typeof summarize>;
}

/** Samples pg_stat_activity of one database and Redis PING latency every 100 ms until stopped. */
function sampleStores(database: string, appName: string): { stop(): Promise<StoreSamples> } {
  const sql = postgres(PG_ADMIN_URL, { max: 1, onnotice: () => {}, connection: { application_name: appName } });
  const redis = new Redis(SHARED_REDIS_URL, { enableAutoPipelining: false });
  const waits: Record<string, number> = {};
  const pings: number[] = [];
  let samples = 0;
  let active = 0;
  let running = true;
  const loop = (async () => {
    while (running) {
      const started = performance.now();
      const [rows] = await Promise.all([
        // Lock waits and open transactions name their statement: which of the hub's writes queue behind which.
        sql<{ state: string | null; wait: string | null }[]>`
          select state, coalesce(wait_event_type || ':' || wait_event, 'cpu')
            || case when wait_event_type = 'Lock' or state = 'idle in transaction' then ' ' || left(regexp_replace(query, '\\s+', ' ', 'g'), 70) else '' end as wait
          from pg_stat_activity
          where datname = ${database} and application_name = 'dispatch-hub' and state <> 'idle'`.catch(() => []),
        redis.ping().then(() => pings.push(performance.now() - started)).catch(() => {}),
      ]);
      samples += 1;
      active += rows.length;
      for (const row of rows) waits[`${row.state}:${row.wait}`] = (waits[`${row.state}:${row.wait}`] ?? 0) + 1;
      await sleep(Math.max(0, 100 - (performance.now() - started)));
    }
  })();
  return {
    async stop() {
      running = false;
      await loop;
      await sql.end();
      redis.disconnect();
      return { postgresSamples: samples, postgresActiveMean: round(active / Math.max(1, samples), 2)!, postgresWaits: waits, redisPingMs: summarize(pings) };
    },
  };
}


function outcomesOf(posted: readonly Posted[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const p of posted) out[p.outcome] = (out[p.outcome] ?? 0) + 1;
  return out;
}

export async function storm(ctx: RunContext): Promise<ScenarioOutput> {
  const drivers = ctx.num('drivers', 10_000, 2_000);
  const generators = ctx.num('generators', 2);
  const pingHz = ctx.num('ping-hz', 0.2);
  const orderRate = ctx.num('order-rate', 20);
  const calmSeconds = ctx.num('calm-seconds', 10, 5);
  const timeoutSeconds = ctx.num('storm-timeout-s', 120, 60);
  const jitters = ctx.str('jitter', 'none,client').split(',') as StormJitter[];
  const targets = ctx.str('targets', 'sio-bare,hub').split(',') as ServerKind[];
  // --api-port 1: the hubs take webhooks on a port of their own (HTTP_PORT), away from the sockets' accept queue.
  // --api-thread 1: and serve that port from the hub's API thread (API_THREAD=true; implies --api-port 1).
  const apiThread = ctx.num('api-thread', 0) !== 0;
  const apiPort = apiThread || ctx.num('api-port', 0) !== 0;
  // --statements 1: which statements the survivors ran during the storm (parses every PostgreSQL message they send: costs them CPU).
  const statements = ctx.num('statements', 0) !== 0;
  const options = { drivers, generators, pingHz, orderRate, calmSeconds, timeoutSeconds, apiPort, apiThread, statements };

  const results: StormResult[] = [];
  const profiles: Record<string, ProfileSummary> = {};
  for (const jitter of jitters) {
    for (const target of targets) {
      results.push(await runStorm(ctx, target, jitter, options, profiles));
    }
  }

  const checks: TargetCheck[] = [];
  for (const jitter of jitters) {
    const hub = results.find((r) => r.target === 'hub' && r.jitter === jitter);
    const bare = results.find((r) => r.target !== 'hub' && r.jitter === jitter);
    if (!hub) continue;
    if (bare) {
      const r = ratio(hub.assignableSeconds, bare.connectedSeconds);
      checks.push({
        name: `[${jitter} jitter] every driver back and assignable vs bare Socket.IO reconnected`,
        target: '<= 1.5x',
        measured: `${r}x (${hub.assignableSeconds} s vs ${bare.connectedSeconds} s)`,
        met: r === null ? false : r <= 1.5,
      });
    }
    checks.push({
      name: `[${jitter} jitter] handshakes lost (refused ones must succeed on retry)`,
      target: '0',
      measured: `${hub.lost} lost; ${hub.retried} drivers retried, refusals ${JSON.stringify(hub.refused)}`,
      met: hub.lost === 0,
    });
    if (hub.webhook) {
      checks.push({
        name: `[${jitter} jitter] webhook p99 during the storm vs calm`,
        target: '<= 2x',
        measured: `${hub.webhook.p99Ratio}x (${hub.webhook.storm.p99} ms over ${hub.webhook.storm.count} orders vs ${hub.webhook.calm.p99} ms)`,
        met: hub.webhook.p99Ratio === null ? null : hub.webhook.p99Ratio <= 2,
      });
    }
    const worstLag = Math.max(...hub.survivors.map((s) => s.lagP99Ms ?? Infinity));
    checks.push({
      name: `[${jitter} jitter] survivors' event-loop lag p99 during the storm`,
      target: '< 100 ms',
      measured: `${hub.survivors.map((s) => `${s.node} ${s.lagP99Ms} ms (max ${s.lagMaxMs})`).join(', ')}`,
      met: worstLag < 100,
    });
  }

  const rows: unknown[][] = [
    ['target', 'jitter', 'drivers', 'connected s', 'session s', 'assignable s', 'lost', 'retried', 'hs p50 ms', 'hs p99 ms', 'lag p99 B/C ms', 'webhook p99 calm/storm ms', 'PG/Redis per hs (net)'],
  ];
  for (const r of results) {
    const hs = r.handshakeSessionMs ?? r.handshakeConnectMs;
    rows.push([
      r.target,
      r.jitter,
      r.drivers,
      r.connectedSeconds,
      r.sessionSeconds,
      r.assignableSeconds,
      r.lost,
      r.retried,
      hs.p50,
      hs.p99,
      r.survivors.map((s) => s.lagP99Ms).join('/'),
      r.webhook ? `${r.webhook.calm.p99}/${r.webhook.storm.p99}` : null,
      r.roundTripsPerHandshake ? `${r.roundTripsPerHandshake.pgStatements.net}/${r.roundTripsPerHandshake.redisCommands.net}` : null,
    ]);
  }
  return { results: { options, runs: results }, checks, table: table(rows), profiles };
}

async function runStorm(
  ctx: RunContext,
  target: ServerKind,
  jitter: StormJitter,
  o: { drivers: number; generators: number; pingHz: number; orderRate: number; calmSeconds: number; timeoutSeconds: number; apiPort: boolean; apiThread: boolean; statements: boolean },
  profiles: Record<string, ProfileSummary>,
): Promise<StormResult> {
  const label = `${target}/${jitter}`;
  const hubRun = target === 'hub';
  const cleanup = new Cleanup();
  const agent = new Agent({ keepAlive: true, maxSockets: 64 });
  try {
    const prefix = redisPrefix();
    cleanup.add(`redis keys ${prefix}`, () => deletePrefix(SHARED_REDIS_URL, prefix));
    const db = hubRun ? await createBenchDatabase(cleanup) : null;
    const nodes: ServerProc[] = [];
    /** Where each hub takes webhooks: its API-only port with --api-port 1 (HTTP_PORT), else the socket port. */
    const webhookUrls = new Map<ServerProc, string>();
    for (const name of ['a', 'b', 'c']) {
      const apiPort = db && o.apiPort ? await freePort() : null;
      const env = db
        ? hubEnv(db, prefix, { NODE_ID: `storm-${name}`, ...(apiPort ? { HTTP_PORT: String(apiPort) } : {}), ...(o.apiThread ? { API_THREAD: 'true' } : {}), ...ctx.hubEnv })
        : { REDIS_URL: SHARED_REDIS_URL, REDIS_PREFIX: prefix };
      const node = await spawnServer(target, cleanup, { name: `storm-${target}-${jitter}-${name}-${ctx.runId}`, env, logDir: ctx.logDir });
      nodes.push(node);
      webhookUrls.set(node, apiPort ? `http://127.0.0.1:${apiPort}` : node.url);
    }
    const [a, b, c] = nodes;
    const ids = db ? await insertDrivers(db, o.drivers) : Array.from({ length: o.drivers }, () => randomUUID());
    const tokens = await mintTokens('driver', ids);
    const positions = positionsAround(ids.length, 10);
    const group = await LoadGroup.start(cleanup, o.generators, `storm-${target}-${jitter}`);
    await group.init({ mode: 'sio', url: a.url, waitSession: hubRun }, tokens, positions);
    const initial = await group.connect(100);
    ctx.log(`[${label}] ${initial.connected} sockets on ${a.name} in ${initial.seconds.toFixed(1)} s (${initial.failed} failed)`);
    const redis = new Redis(SHARED_REDIS_URL);
    cleanup.add('redis client', () => redis.disconnect());
    const geoKey = `${prefix}drivers:geo`;
    if (hubRun) {
      ctx.log(`[${label}] status: ${JSON.stringify(await group.all('goAvailable', { concurrency: 50 }))}; positions: ${JSON.stringify(await group.all('placeAll', { concurrency: 100 }))}`);
      await waitFor('every driver in drivers:geo', async () => ((await redis.zcard(geoKey)) >= initial.connected ? true : undefined), 60_000, 250);
    }
    await group.setRate(initial.connected * o.pingHz);

    // Orders at a steady rate on the survivors-to-be, open loop, for the whole run.
    const posted: Posted[] = [];
    const inflight = new Set<Promise<void>>();
    let ordersOn = hubRun && o.orderRate > 0;
    const orderLoop = (async () => {
      if (!ordersOn) return;
      const started = performance.now();
      let sent = 0;
      while (ordersOn) {
        const due = Math.floor(((performance.now() - started) * o.orderRate) / 1000);
        while (sent < due) {
          const node = sent % 2 === 0 ? b : c;
          const pickup = positionsAround(1, 8)[0];
          const dropoff = positionsAround(1, 3, { lat: CENTRE.lat + 0.02, lng: CENTRE.lng })[0];
          const work = postOrder(agent, webhookUrls.get(node)!, `storm-${sent}-${randomUUID().slice(0, 8)}`, pickup, dropoff).then((p) => {
            posted.push(p);
          });
          inflight.add(work);
          void work.finally(() => inflight.delete(work));
          sent += 1;
        }
        await sleep(5);
      }
    })();

    const survivors = [b, c];
    const readWire = async (): Promise<Wire> => {
      const all = await Promise.all(survivors.map((s) => s.rpc.call<Wire>(hubRun ? 'countWire' : 'wire', { ...WIRE_PORTS, statements: o.statements })));
      const sum = { pgStatements: 0, pgWrites: 0, redisCommands: 0, redisWrites: 0 };
      for (const w of all) for (const k of WIRE_KEYS) sum[k] += w[k];
      return sum;
    };
    const groups = {
      survivors: (pid: number) => pid === b.pid || pid === c.pid,
      killedNode: (pid: number) => pid === a.pid,
      loadGenerators: (pid: number) => group.gens.some((g) => g.proc.pid === pid),
      bench: (pid: number) => pid === process.pid,
      postgres: (_: number, comm: string) => comm.startsWith('postgres'),
      redis: (_: number, comm: string) => comm.startsWith('redis-server'),
    };
    const readStatements = async (): Promise<Record<string, number>> => {
      const sum: Record<string, number> = {};
      if (!hubRun || !o.statements) return sum;
      for (const s of survivors) for (const [k, v] of Object.entries(await s.rpc.call<Record<string, number>>('pgByStatement'))) sum[k] = (sum[k] ?? 0) + v;
      return sum;
    };
    const calmWire = await readWire();
    const calmStatements = await readStatements();
    const calmProcs = sampleProcesses();
    const calmStartedAt = wallMs();
    ctx.log(`[${label}] calm: ${Math.round(initial.connected * o.pingHz)} pings/s${hubRun ? `, ${o.orderRate} orders/s on B and C` : ''} for ${o.calmSeconds} s`);
    // What a survivor spends before it has a single driver (orders, what the loaded node shares).
    const calm = () => sleep(o.calmSeconds * 1000);
    await (hubRun ? profiled(ctx, b, `storm-${jitter}-b-calm`, calm, profiles) : calm());

    await group.stormArm(jitter, survivors.map((s) => s.url), 30_000);
    await Promise.all(survivors.map((s) => s.reset()));
    const killWire = await readWire();
    const killStatements = await readStatements();
    const killProcs = sampleProcesses();
    const calmCpu = cpuByGroup(calmProcs, killProcs, groups);
    const cpuAtKill = readCpuTimes();
    const threadsAtKill = survivors.map((s) => sampleThreads(s.pid));
    const killedAt = wallMs();
    // The bare servers are profiled too: what a survivor pays per handshake beyond theirs.
    const profileKey = hubRun ? `storm-${jitter}-b` : `storm-${target}-${jitter}-b`;
    const deadline = killedAt + o.timeoutSeconds * 1000;
    const { report, geoMin, backAt, stores, threadsAtBack, survivorStats } = await profiled(ctx, b, profileKey, async () => {
      await a.kill();
      ctx.log(`[${label}] ${a.name} killed (SIGKILL); ${initial.connected} sockets coming back to ${b.name} and ${c.name}`);

      // What the stores were doing meanwhile: the hub's PostgreSQL backends by wait event (sampled
      // every 100 ms), and Redis's answer time to a PING (every 100 ms) from outside the hub.
      const sampler = hubRun ? sampleStores(db!.name, `storm-${label}`) : null;
      let geoMin = Number.POSITIVE_INFINITY;
      let report: StormReport;
      let lastLog = 0;
      for (;;) {
        report = await group.stormReport();
        if (hubRun) geoMin = Math.min(geoMin, await redis.zcard(geoKey));
        if (report.waiting === 0 && report.back >= initial.connected) break;
        if (wallMs() > deadline) break;
        if (wallMs() - lastLog > 5000) {
          lastLog = wallMs();
          ctx.log(`[${label}] ${((wallMs() - killedAt) / 1000).toFixed(1)} s: ${report.back} back, ${report.waiting} waiting, ${report.attempts} attempts, refused ${JSON.stringify(report.refused)}`);
        }
        await sleep(100);
      }
      const backAt = wallMs();
      const stores = sampler ? await sampler.stop() : null;
      const threadsAtBack = survivors.map((s) => sampleThreads(s.pid));
      const survivorStats = await Promise.all(survivors.map((s) => s.stats()));
      return { report, geoMin, backAt, stores, threadsAtBack, survivorStats };
    }, profiles);
    const endWire = await readWire();
    const endStatements = await readStatements();
    const busy = machineBusyPercent(cpuAtKill, readCpuTimes());
    const stormCpu = cpuByGroup(killProcs, sampleProcesses(), groups);
    const lost = Math.max(0, report.waiting, initial.connected - report.back);
    const since = (at: number | null) => (at === null ? null : round((at - killedAt) / 1000, 2));

    // Hub: every on-duty driver assignable again, in Redis (what dispatch searches) and PostgreSQL
    // (what judges the claim). A `session` is sent after the driver's status is written, so this is
    // checked from the last session on; if it holds at the first look, the session time stands.
    let assignableAt: number | null = report.lastConnectedAt;
    let notAssignable: Record<string, number> | undefined;
    if (hubRun) {
      assignableAt = null;
      const sql = postgres(db!.url, { max: 1, onnotice: () => {} });
      cleanup.add('postgres client', () => sql.end());
      const check = async () => {
        const wrong: Record<string, number> = {};
        for (let i = 0; i < ids.length; i += 1000) {
          const slice = ids.slice(i, i + 1000);
          const [statuses, scores] = await Promise.all([redis.hmget(`${prefix}drivers:status`, ...slice), redis.call('ZMSCORE', geoKey, ...slice) as Promise<(string | null)[]>]);
          slice.forEach((_, k) => {
            const ok = statuses[k] === 'BUSY' || (statuses[k] === 'AVAILABLE' && scores[k] !== null);
            if (!ok) wrong[`redis:${statuses[k]}${scores[k] === null ? '' : '+geo'}`] = (wrong[`redis:${statuses[k]}${scores[k] === null ? '' : '+geo'}`] ?? 0) + 1;
          });
        }
        for (const row of await sql<{ status: string; n: number }[]>`select status, count(*)::int as n from drivers where status not in ('AVAILABLE', 'BUSY') group by status`) {
          wrong[`postgres:${row.status}`] = row.n;
        }
        return wrong;
      };
      let first = true;
      await waitFor(
        'every on-duty driver assignable',
        async () => {
          notAssignable = await check();
          if (Object.keys(notAssignable).length === 0) {
            assignableAt = first ? Math.max(report.lastSessionAt ?? backAt, report.lastConnectedAt ?? 0) : wallMs();
            return true;
          }
          first = false;
          return undefined;
        },
        Math.max(1000, deadline - wallMs()),
        100,
      ).catch(() => {});
    }
    const full = await group.stormReport(true);
    ordersOn = false;
    await orderLoop;
    await Promise.all([...inflight]);

    const result: StormResult = {
      target,
      jitter,
      drivers: initial.connected,
      initialConnectSeconds: round(initial.seconds, 1)!,
      closesSeenSeconds: since(full.lastClosedAt),
      attemptsStartedSeconds: since(full.lastFirstAttemptAt),
      connectedSeconds: report.waiting === 0 ? since(report.lastConnectedAt) : null,
      sessionSeconds: hubRun && report.waiting === 0 ? since(report.lastSessionAt) : null,
      assignableSeconds: since(assignableAt),
      lost,
      attempts: full.attempts,
      retried: full.retried,
      refused: full.refused,
      handshakeConnectMs: summarize(full.connectMs),
      handshakeSessionMs: hubRun ? summarize(full.sessionMs) : null,
      survivors: survivorStats.map((s, i) => ({ node: survivors[i].name.split('-').slice(0, 4).join('-'), lagP99Ms: round(s.lagP99Ms), lagMaxMs: round(s.lagMaxMs), cpuPercent: round(s.cpuPercent, 0), threadsCpuMs: threadCpuMs(threadsAtKill[i], threadsAtBack[i]), gc: s.gc })),
      machineBusyPercent: busy,
      cpu: { calm: calmCpu, storm: stormCpu },
    };
    if (hubRun) {
      result.geoMinDuringStorm = geoMin;
      const calmSeconds = (killedAt - calmStartedAt) / 1000;
      const stormSeconds = (backAt - killedAt) / 1000;
      const handshakes = Math.max(1, full.back);
      result.roundTripsPerHandshake = Object.fromEntries(
        WIRE_KEYS.map((k) => {
          const stormDelta = endWire[k] - killWire[k];
          const calmPerSecond = (killWire[k] - calmWire[k]) / calmSeconds;
          return [k, { gross: round(stormDelta / handshakes, 2), net: round((stormDelta - calmPerSecond * stormSeconds) / handshakes, 2) }];
        }),
      );
      const end = assignableAt ?? backAt;
      const calm = posted.filter((p) => p.t0 >= calmStartedAt && p.t0 < killedAt);
      const during = posted.filter((p) => p.t0 >= killedAt && p.t0 <= end);
      const calmMs = { ...summarize(calm.map((p) => p.t1 - p.t0)), outcomes: outcomesOf(calm) };
      const stormMs = { ...summarize(during.map((p) => p.t1 - p.t0)), outcomes: outcomesOf(during) };
      result.webhook = { calm: calmMs, storm: stormMs, p99Ratio: ratio(stormMs.p99, calmMs.p99) };
      const counters: Record<string, number> = {};
      for (const s of survivors) {
        const text = (await s.metricsText())!;
        counters.connectRateLimited = (counters.connectRateLimited ?? 0) + metricValue(text, 'hub_rate_limited_total', 'event="connect"');
        counters.handshakeRejected = (counters.handshakeRejected ?? 0) + metricValue(text, 'hub_input_rejected_total', 'event="handshake"');
        counters.driversSwept = (counters.driversSwept ?? 0) + metricValue(text, 'hub_drivers_swept_total');
        // The hub's own time for the webhooks it answered (from the request's arrival), against what the bench saw.
        counters.webhookHubSecondsSum = (counters.webhookHubSecondsSum ?? 0) + metricValue(text, 'hub_assignment_seconds_sum');
        counters.webhookHubCount = (counters.webhookHubCount ?? 0) + metricValue(text, 'hub_assignment_seconds_count');
        counters.webhookHubOver1s = (counters.webhookHubOver1s ?? 0) + metricValue(text, 'hub_assignment_seconds_count') - metricValue(text, 'hub_assignment_seconds_bucket', 'le="1"');
        // The same webhooks from the moment the hub read each request (body, signature, dispatch, answer):
        // what the bench saw beyond this waited before the hub read the request.
        const route = 'route="/events/seller-order-ready"';
        counters.webhookHttpSecondsSum = (counters.webhookHttpSecondsSum ?? 0) + metricValue(text, 'hub_http_request_seconds_sum', route);
        counters.webhookHttpCount = (counters.webhookHttpCount ?? 0) + metricValue(text, 'hub_http_request_seconds_count', route);
        counters.webhookHttpOver250ms = (counters.webhookHttpOver250ms ?? 0) + metricValue(text, 'hub_http_request_seconds_count', route) - metricValue(text, 'hub_http_request_seconds_bucket', route, 'le="0.25"');
        for (const stage of ['auth', 'door', 'session']) {
          counters[`${stage}SecondsSum`] = (counters[`${stage}SecondsSum`] ?? 0) + metricValue(text, 'hub_handshake_seconds_sum', `stage="${stage}"`);
          counters[`${stage}Count`] = (counters[`${stage}Count`] ?? 0) + metricValue(text, 'hub_handshake_seconds_count', `stage="${stage}"`);
        }
      }
      result.hubCounters = counters;
      // Which statements and Redis commands the survivors sent, most frequent first: during the storm
      // (what a handshake costs the stores), and per second in the calm window (what they cost with no driver).
      const between = (from: Record<string, number>, to: Record<string, number>, per = 1) =>
        Object.fromEntries(
          Object.entries(to)
            .map(([k, v]) => [k, Math.round((10 * (v - (from[k] ?? 0))) / per) / 10] as const)
            .filter(([, n]) => n > 0)
            .sort((a, b) => b[1] - a[1])
            .slice(0, 20),
        );
      result.statementsDuringStorm = between(killStatements, endStatements);
      if (o.statements) result.statementsPerSecondCalm = between(calmStatements, killStatements, calmSeconds);
      result.storesDuringStorm = stores ?? undefined;
      if (notAssignable && Object.keys(notAssignable).length > 0) (result as unknown as Record<string, unknown>).notAssignableAtEnd = notAssignable;
    }
    ctx.log(`[${label}] ${JSON.stringify({ ...result, refused: result.refused })}`);
    await group.close();
    return result;
  } finally {
    agent.destroy();
    await cleanup.runAll();
  }
}
