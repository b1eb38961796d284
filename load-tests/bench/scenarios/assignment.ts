/**
 * assignment: K drivers online, AVAILABLE and placed around a city centre (10 km disc), pinging
 * in the background; "seller order ready" webhooks, signed like Vendure signs them, come in
 *   1. at a fixed rate (open loop: a request is sent on schedule whether or not earlier ones have
 *      answered) for a few seconds: latency from the request's start to the `assignment` event
 *      arriving at the chosen driver's socket (the load generator timestamps it);
 *   2. then as fast as the hub answers (many requests in flight): assignments per second.
 * Every order's pickup is a random point in an 8 km disc, so nearby drivers exist for each.
 *
 * Run once per dispatch mode (`--modes assign,offer`, both by default), each on a hub, database and
 * Redis prefix of its own: `assign` (the default: the job is claimed and pushed), then `offer`
 * (DISPATCH_MODE=offer: the driver is reserved and gets an `offer`, which the load generator
 * accepts at once). In offer mode "to driver" is the webhook -> `offer` push latency and the rate
 * is offers per second.
 */
import { randomUUID } from 'node:crypto';
import { Agent, request } from 'node:http';
import { Redis } from 'ioredis';
import { signWebhook } from '#shared/webhooks.js';
import { presenceKeys } from '../../../server/src/presence/presence.store.js';
import {
  CENTRE,
  Cleanup,
  clusterEnv,
  createBenchDatabase,
  deletePrefix,
  hubEnv,
  insertDrivers,
  LoadGroup,
  metricValue,
  mintTokens,
  positionsAround,
  redisPrefix,
  SHARED_REDIS_URL,
  spawnServer,
  startBenchCluster,
  WEBHOOK_SECRET,
  type Wire,
  WIRE_KEYS,
  WIRE_PORTS,
} from '../infra.js';
import { foreignCpuPercent, freePort, getMany, machineBusyPercent, readCpuTimes, round, sampleProcesses, sleep, summarize, table, waitFor, wallMs } from '../lib.js';
import type { ProfileSummary } from '../profile-top.js';
import { profiled, type RunContext, type ScenarioOutput, type TargetCheck } from '../context.js';

interface WireWindow {
  wire: Wire;
  statements: Record<string, number>;
  seconds: number;
}

function wireDelta(from: Wire, to: Wire): Wire {
  return Object.fromEntries(WIRE_KEYS.map((k) => [k, to[k] - from[k]])) as unknown as Wire;
}

function statementDelta(from: Record<string, number>, to: Record<string, number>): Record<string, number> {
  return Object.fromEntries(Object.entries(to).map(([k, v]) => [k, v - (from[k] ?? 0)]).filter(([, v]) => (v as number) > 0));
}

/**
 * Kilobytes the hub's old generation grew by per order (or per second) during a window, null if a
 * full collection ran in it: what outlived two scavenges, copied twice and kept until the next full one.
 */
function promotedKbPer(stats: { oldGenerationGrowthBytes: number | null }, units: number): number | null {
  return stats.oldGenerationGrowthBytes === null || units === 0 ? null : round(stats.oldGenerationGrowthBytes / 1024 / units, 1);
}

/**
 * Milliseconds of hub CPU each order cost on top of the background pings, from the hub's CPU share
 * (percent of one core) in a window and with the pings alone.
 */
function cpuMsPerOrder(cpuPercent: number, idleCpuPercent: number, ordersPerSecond: number): number | null {
  return ordersPerSecond > 0 ? round(((cpuPercent - idleCpuPercent) * 10) / ordersPerSecond, 2) : null;
}

/** Round trips per order: the fixed phase's counts less what the background pings alone sent in as long. */
function perOrderWire(idle: WireWindow, busy: WireWindow, orders: number) {
  const scale = busy.seconds / idle.seconds;
  const net = (busyCount: number, idleCount: number) => round((busyCount - idleCount * scale) / orders, 2) ?? 0;
  const statements = Object.entries(busy.statements)
    .map(([text, n]) => [text, net(n, idle.statements[text] ?? 0)] as const)
    .filter(([, n]) => n >= 0.05)
    .sort((a, b) => b[1] - a[1]);
  return {
    ...(Object.fromEntries(WIRE_KEYS.map((k) => [k, net(busy.wire[k], idle.wire[k])])) as unknown as Wire),
    ...(statements.length > 0 ? { statements: Object.fromEntries(statements) } : {}),
  };
}

export interface Posted {
  sellerOrderId: string;
  t0: number;
  t1: number;
  status: number;
  outcome: string;
}

export function postOrder(agent: Agent, url: string, sellerOrderId: string, pickup: [number, number], dropoff: [number, number]): Promise<Posted> {
  const body = JSON.stringify({
    sellerOrderId,
    orderCode: sellerOrderId.slice(-10).toUpperCase(),
    pickup: { lat: pickup[0], lng: pickup[1], address: 'Bench shop' },
    dropoff: { lat: dropoff[0], lng: dropoff[1] },
  });
  const t0 = wallMs();
  const headers = {
    'content-type': 'application/json',
    'content-length': String(Buffer.byteLength(body)),
    ...signWebhook(WEBHOOK_SECRET, `msg_${randomUUID()}`, Date.now() / 1000, body),
  };
  return new Promise((resolve) => {
    const req = request(`${url}/events/seller-order-ready`, { method: 'POST', headers, agent, timeout: 30_000 }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        let outcome = `http-${res.statusCode}`;
        try {
          const parsed = JSON.parse(Buffer.concat(chunks).toString());
          outcome = parsed.status ?? parsed.error?.code ?? outcome;
        } catch {}
        resolve({ sellerOrderId, t0, t1: wallMs(), status: res.statusCode ?? 0, outcome });
      });
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', (err) => resolve({ sellerOrderId, t0, t1: wallMs(), status: 0, outcome: `error:${err.message}` }));
    req.end(body);
  });
}

/**
 * Opens `count` kept-alive connections on `agent` (one GET /health each, all at once) and waits
 * until they are idle in its pool. Node 20's libuv accepts one connection per turn of the event
 * loop (libuv#3696), so connections opened in a burst against a saturated hub wait in its accept
 * queue for seconds; a webhook sender keeps its pool warm, and the max phase measures the hub's
 * throughput, not that queue.
 */
function warmConnections(agent: Agent, url: string, count: number): Promise<number> {
  return getMany(agent, `${url}/health`, count);
}

type DispatchMode = 'assign' | 'offer';

/** The webhook answer that means the job went to a driver: ASSIGNED, or OFFERED in offer mode. */
const served = (mode: DispatchMode) => (mode === 'offer' ? 'OFFERED' : 'ASSIGNED');

function analyse(posted: Posted[], pushes: Map<string, number>, seconds: number, mode: DispatchMode) {
  const outcomes: Record<string, number> = {};
  for (const p of posted) outcomes[p.outcome] = (outcomes[p.outcome] ?? 0) + 1;
  const assigned = posted.filter((p) => p.outcome === served(mode));
  const toDriver: number[] = [];
  let missingPush = 0;
  for (const p of assigned) {
    const at = pushes.get(p.sellerOrderId);
    if (at === undefined) missingPush += 1;
    else toDriver.push(at - p.t0);
  }
  const first = Math.min(...posted.map((p) => p.t0));
  const last = Math.max(...posted.map((p) => p.t1));
  /** When the slowest requests were sent and how they ended: a tail that starts with the run is start-up, one spread out is stalls. */
  const slowest = [...posted]
    .sort((a, b) => b.t1 - b.t0 - (a.t1 - a.t0))
    .slice(0, 10)
    .map((p) => ({ sentAtMs: round(p.t0 - first, 0), tookMs: round(p.t1 - p.t0, 0), outcome: p.outcome }));
  return {
    orders: posted.length,
    outcomes,
    assigned: assigned.length,
    missingPush,
    requestToDriverMs: summarize(toDriver),
    requestToResponseMs: summarize(posted.map((p) => p.t1 - p.t0)),
    offeredPerSec: round(posted.length / seconds, 1),
    assignedPerSec: round((assigned.length / Math.max(1, last - first)) * 1000, 1),
    elapsedSeconds: round((last - first) / 1000, 2),
    slowest,
  };
}

export async function assignment(ctx: RunContext): Promise<ScenarioOutput> {
  const modes = ctx
    .str('modes', 'assign,offer')
    .split(',')
    .map((m) => m.trim())
    .filter((m): m is DispatchMode => m === 'assign' || m === 'offer');
  const runs: [DispatchMode, ScenarioOutput][] = [];
  for (const mode of modes) runs.push([mode, await runMode(ctx, mode)]);
  const byMode = new Map(runs);
  return {
    // The assign run's results stay where they always were; the offer run's sit beside them.
    results: { ...(byMode.get('assign')?.results ?? {}), ...(byMode.has('offer') ? { offerMode: byMode.get('offer')!.results } : {}) },
    checks: runs.flatMap(([, out]) => out.checks),
    table: runs.map(([mode, out]) => `${mode} mode\n${out.table}`).join('\n'),
    profiles: Object.assign({}, ...runs.map(([, out]) => out.profiles ?? {})),
  };
}

async function runMode(ctx: RunContext, mode: DispatchMode): Promise<ScenarioOutput> {
  const drivers = ctx.num('drivers', 10_000, 3_000);
  const rate = ctx.num('rate', 200);
  const seconds = ctx.num('seconds', 10, 5);
  const warmupSeconds = ctx.num('warmup-seconds', 2, 1);
  const maxOrders = ctx.num('max-orders', 3000, 800);
  const concurrency = ctx.num('concurrency', 256, 128);
  const pingHz = ctx.num('ping-hz', 0.5);
  const generators = ctx.num('generators', 2);
  // --shards N: the hub on a private N-master Redis Cluster instead of the shared single Redis.
  const shards = ctx.num('shards', 0);
  // --wire 1: PostgreSQL statements and Redis commands per order in the fixed phase, net of the
  // background pings (counting every write costs the hub a little CPU, so it is off by default);
  // --statements 1 adds which statements they were.
  const statements = ctx.num('statements', 0) !== 0;
  const countingWire = statements || ctx.num('wire', 0) !== 0;
  // --api-thread 1: the webhooks go to HTTP_PORT, served by the hub's API thread (API_THREAD=true).
  const apiThread = ctx.num('api-thread', 0) !== 0;
  const cleanup = new Cleanup();
  const profiles: Record<string, ProfileSummary> = {};
  const agent = new Agent({ keepAlive: true, maxSockets: concurrency, maxFreeSockets: concurrency });
  try {
    const db = await createBenchDatabase(cleanup);
    const prefix = redisPrefix();
    cleanup.add(`redis keys ${prefix}`, () => deletePrefix(SHARED_REDIS_URL, prefix));
    const benchCluster = shards > 0 ? await startBenchCluster(cleanup, shards) : null;
    if (benchCluster) ctx.log(`assignment: the hub on a private ${shards}-master Redis Cluster`);
    const apiPort = apiThread ? await freePort() : null;
    const hub = await spawnServer('hub', cleanup, {
      name: `${mode}-hub-${ctx.runId}`,
      env: hubEnv(db, prefix, {
        NODE_ID: `bench-${mode}`,
        ...(mode === 'offer' ? { DISPATCH_MODE: 'offer' } : {}),
        ...(apiPort ? { HTTP_PORT: String(apiPort), API_THREAD: 'true' } : {}),
        ...clusterEnv(benchCluster?.seeds ?? null),
        ...ctx.hubEnv,
      }),
      logDir: ctx.logDir,
    });
    /** Where the webhooks go: the API thread's port with --api-thread 1, else the hub's one port. */
    const webhookUrl = apiPort ? `http://127.0.0.1:${apiPort}` : hub.url;
    const ids = await insertDrivers(db, drivers);
    const tokens = await mintTokens('driver', ids);
    const positions = positionsAround(drivers, 10);
    const group = await LoadGroup.start(cleanup, generators, 'assignment');
    await group.init({ mode: 'sio', url: hub.url, waitSession: true, acceptOffers: mode === 'offer' }, tokens, positions);
    const connected = await group.connect(100);
    ctx.log(`${mode} mode: ${connected.connected} drivers connected in ${connected.seconds.toFixed(1)} s (${connected.failed} failed)`);
    ctx.log(`status: ${JSON.stringify(await group.all('goAvailable', { concurrency: 50 }))}; positions: ${JSON.stringify(await group.all('placeAll', { concurrency: 100 }))}`);
    const redis = new Redis(SHARED_REDIS_URL);
    cleanup.add('redis client', () => redis.disconnect());
    const onMapNow = () => (benchCluster ? benchCluster.countCells(prefix) : redis.zcard(presenceKeys(prefix).geo));
    const onMap = await waitFor(
      'every driver in drivers:geo',
      async () => {
        const n = await onMapNow();
        return n >= connected.connected ? n : undefined;
      },
      60_000,
      250,
    ).catch(onMapNow);
    ctx.log(`${onMap} drivers in drivers:geo; background pings ${Math.round(connected.connected * pingHz)}/s`);
    await group.setRate(connected.connected * pingHz);
    await sleep(3000);
    // The hub's CPU with the background pings alone, so the share the orders add can be told apart.
    const readWire = () => hub.rpc.call<Wire>('countWire', { ...WIRE_PORTS, statements });
    const readStatements = () => hub.rpc.call<Record<string, number>>('pgByStatement');
    const idleWireFrom = countingWire ? await readWire() : null;
    const idleStatementsFrom = statements ? await readStatements() : {};
    const idleStarted = performance.now();
    await hub.reset();
    await profiled(ctx, hub, `${mode}-idle`, () => sleep(3000), profiles);
    const idleStats = await hub.stats();
    const idleCpuPercent = idleStats.cpuPercent;
    const idleWire = idleWireFrom ? { wire: wireDelta(idleWireFrom, await readWire()), statements: statementDelta(idleStatementsFrom, await readStatements()), seconds: (performance.now() - idleStarted) / 1000 } : null;
    // What the drivers' sockets and the background rounds promote with no order at all, per second.
    const idlePromotedKbPerSecond = promotedKbPer(idleStats, idleStats.windowMs / 1000);
    ctx.log(`hub CPU with background pings only: ${round(idleCpuPercent, 0)}%, GC ${JSON.stringify(idleStats.gc)} over ${round(idleStats.windowMs / 1000, 1)} s, promoted ${idlePromotedKbPerSecond} KB/s, heap ${round(idleStats.heapUsedBytes / 2 ** 20, 0)} MB`);

    const randomOrder = (): [[number, number], [number, number]] => [positionsAround(1, 8)[0], positionsAround(1, 3, { lat: CENTRE.lat + 0.02, lng: CENTRE.lng })[0]];
    const pushes = new Map<string, number>();
    const collectPushes = async (expected: number) => {
      await waitFor(
        'assignment pushes',
        async () => {
          for (const [id, at] of await group.drainAssignments()) if (!pushes.has(id)) pushes.set(id, at);
          return pushes.size >= expected ? true : undefined;
        },
        10_000,
        200,
      ).catch(() => {});
    };

    /** Orders at `rate`/s for `forSeconds`, open loop: each is sent on schedule whether or not earlier ones answered. */
    const openLoop = async (label: string, forSeconds: number): Promise<Posted[]> => {
      const total = Math.round(rate * forSeconds);
      const inflight: Promise<Posted>[] = [];
      const started = performance.now();
      await new Promise<void>((resolve) => {
        const timer = setInterval(() => {
          const due = Math.min(total, Math.floor(((performance.now() - started) * rate) / 1000));
          while (inflight.length < due) {
            const [pickup, dropoff] = randomOrder();
            inflight.push(postOrder(agent, webhookUrl, `bench-${label}-${inflight.length}-${randomUUID().slice(0, 8)}`, pickup, dropoff));
          }
          if (inflight.length >= total) {
            clearInterval(timer);
            resolve();
          }
        }, 2);
      });
      return Promise.all(inflight);
    };

    // 0. Warm-up at the same rate, not counted: the HTTP connections, each pooled PostgreSQL
    // connection's prepared statement and the JIT are first-minute costs, not the steady state.
    ctx.log(`warm-up: ${rate} orders/s for ${warmupSeconds} s (not counted)`);
    await openLoop('warmup', warmupSeconds);
    await sleep(1000);

    // 1. Fixed rate, open loop.
    ctx.log(`fixed rate: ${rate} orders/s for ${seconds} s`);
    await hub.reset();
    const fixedCpu = readCpuTimes();
    const fixedProcs = sampleProcesses();
    const fixedWireFrom = countingWire ? await readWire() : null;
    const fixedStatementsFrom = statements ? await readStatements() : {};
    const fixedStarted = performance.now();
    const fixedPosted = await profiled(ctx, hub, `${mode}-fixed`, () => openLoop('fixed', seconds), profiles);
    const fixedStats = await hub.stats();
    const perOrder =
      idleWire && fixedWireFrom
        ? perOrderWire(idleWire, { wire: wireDelta(fixedWireFrom, await readWire()), statements: statementDelta(fixedStatementsFrom, await readStatements()), seconds: (performance.now() - fixedStarted) / 1000 }, fixedPosted.length)
        : null;
    if (perOrder) ctx.log(`fixed rate, per order net of the background pings: ${JSON.stringify(perOrder)}`);
    await collectPushes(fixedPosted.filter((p) => p.outcome === served(mode)).length);
    const fixed = { ...analyse(fixedPosted, pushes, seconds, mode), machineBusyPercent: machineBusyPercent(fixedCpu, readCpuTimes()), foreignCpuPercent: foreignCpuPercent(fixedProcs, sampleProcesses()), hubLagP99Ms: round(fixedStats.lagP99Ms), hubCpuPercent: round(fixedStats.cpuPercent, 0), hubSysPercent: round(fixedStats.sysPercent, 0), hubGc: fixedStats.gc, hubPromotedKbPerOrder: promotedKbPer(fixedStats, fixedPosted.length), hubHeapUsedMb: round(fixedStats.heapUsedBytes / 2 ** 20, 0),
      // An order handled among few costs the hub several times what it does among many (docs/performance.md, eleventh pass).
      hubCpuMsPerOrder: cpuMsPerOrder(fixedStats.cpuPercent, idleCpuPercent, fixedPosted.length / seconds) };
    ctx.log(`fixed rate: ${JSON.stringify(fixed)}`);
    await sleep(2000);

    // 2. As fast as the hub goes: `concurrency` requests in flight.
    ctx.log(`max throughput: ${maxOrders} orders, ${concurrency} in flight`);
    await hub.reset();
    await warmConnections(agent, webhookUrl, concurrency);
    const maxCpu = readCpuTimes();
    const maxProcs = sampleProcesses();
    const maxPosted: Posted[] = [];
    const maxStarted = performance.now();
    await profiled(
      ctx,
      hub,
      mode === 'offer' ? 'offer-max' : 'assignment-max',
      async () => {
        let next = 0;
        await Promise.all(
          Array.from({ length: concurrency }, async () => {
            while (next < maxOrders) {
              const i = next++;
              const [pickup, dropoff] = randomOrder();
              maxPosted.push(await postOrder(agent, webhookUrl, `bench-max-${i}-${randomUUID().slice(0, 8)}`, pickup, dropoff));
            }
          }),
        );
      },
      profiles,
    );
    const maxSeconds = (performance.now() - maxStarted) / 1000;
    const maxStats = await hub.stats();
    await collectPushes(pushes.size + maxPosted.filter((p) => p.outcome === served(mode)).length);
    const max = { ...analyse(maxPosted, pushes, maxSeconds, mode), concurrency, machineBusyPercent: machineBusyPercent(maxCpu, readCpuTimes()), foreignCpuPercent: foreignCpuPercent(maxProcs, sampleProcesses()), hubLagP99Ms: round(maxStats.lagP99Ms), hubCpuPercent: round(maxStats.cpuPercent, 0), hubSysPercent: round(maxStats.sysPercent, 0), hubGc: maxStats.gc, hubPromotedKbPerOrder: promotedKbPer(maxStats, maxPosted.length), hubHeapUsedMb: round(maxStats.heapUsedBytes / 2 ** 20, 0) };
    /** Hub CPU time each assignment costs on top of the background pings: what one core would sustain. */
    const hubCpuMsPerAssignment = cpuMsPerOrder(maxStats.cpuPercent, idleCpuPercent, max.assignedPerSec ?? 0);
    const perCoreEstimate = hubCpuMsPerAssignment ? Math.round(1000 / hubCpuMsPerAssignment) : null;
    ctx.log(`max throughput: ${JSON.stringify(max)}; hub CPU per assignment ${hubCpuMsPerAssignment} ms (one free core: ~${perCoreEstimate}/s)`);
    const metrics = (await hub.metricsText())!;
    await group.close();

    const checks: TargetCheck[] =
      mode === 'offer'
        ? [
            {
              name: `offer mode: webhook -> offer push p99 at ${rate}/s, ${connected.connected} drivers`,
              target: 'reported beside assign mode',
              measured: `${fixed.requestToDriverMs.p99} ms (p50 ${fixed.requestToDriverMs.p50} ms)`,
              met: null,
            },
            { name: 'offer mode: offers per second per node', target: 'reported beside assign mode', measured: `${max.assignedPerSec}/s`, met: null },
          ]
        : [
      {
        name: `assignment p99 at ${rate}/s, ${connected.connected} drivers`,
        target: '<= 25 ms',
        measured: `${fixed.requestToDriverMs.p99} ms (p50 ${fixed.requestToDriverMs.p50} ms)`,
        met: fixed.requestToDriverMs.p99 === null ? null : fixed.requestToDriverMs.p99 <= 25 && fixed.missingPush === 0,
      },
      {
        name: 'assignments per second per node',
        target: '>= 1000/s',
        measured: `${max.assignedPerSec}/s (machine ${max.machineBusyPercent}% busy; hub ${hubCpuMsPerAssignment} ms CPU each, ~${perCoreEstimate}/s on a free core)`,
        met: max.assignedPerSec === null ? null : max.assignedPerSec >= 1000,
      },
    ];
    const rows = [
      ['phase', 'orders', mode === 'offer' ? 'offered' : 'assigned', 'other outcomes', 'req->driver p50', 'p99', 'max', 'req->response p99', mode === 'offer' ? 'offered/s' : 'assigned/s', 'hub CPU %'],
      ['fixed', fixed.orders, fixed.assigned, JSON.stringify(fixed.outcomes), fixed.requestToDriverMs.p50, fixed.requestToDriverMs.p99, fixed.requestToDriverMs.max, fixed.requestToResponseMs.p99, fixed.assignedPerSec, fixed.hubCpuPercent],
      ['max', max.orders, max.assigned, JSON.stringify(max.outcomes), max.requestToDriverMs.p50, max.requestToDriverMs.p99, max.requestToDriverMs.max, max.requestToResponseMs.p99, max.assignedPerSec, max.hubCpuPercent],
    ];
    return {
      results: {
        layout: shards > 0 ? `redis cluster, ${shards} masters` : 'single redis',
        drivers: connected.connected,
        connectSeconds: round(connected.seconds, 1),
        backgroundPingsPerSec: Math.round(connected.connected * pingHz),
        fixedRate: { rate, seconds, ...fixed },
        maxThroughput: max,
        hubAssignmentsTotal: metricValue(metrics, 'hub_assignments_total'),
        hubIdleCpuPercent: round(idleCpuPercent, 0),
        hubIdlePromotedKbPerSecond: idlePromotedKbPerSecond,
        hubCpuMsPerAssignment,
        assignmentsPerHubCoreEstimate: perCoreEstimate,
        ...(perOrder ? { wirePerOrder: perOrder } : {}),
      },
      checks,
      table: table(rows),
      profiles,
    };
  } finally {
    agent.destroy();
    await cleanup.runAll();
  }
}
