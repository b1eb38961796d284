/**
 * handshakes: what one reconnect costs the machine, hub against bare Socket.IO, without a storm's
 * noise. One server; N drivers (hub: on duty and placed once) connect all at once, disconnect, and
 * connect again, R rounds. Per handshake of each round: the server's CPU, PostgreSQL's and
 * Redis's, and the wall time until the last one was back (hub: its `session`, so its bookkeeping
 * is done). The storm scenario's time until assignable is bounded by this cost times the sockets
 * a survivor takes, over the CPU it gets. Hub: the same for the disconnects between rounds, until
 * every driver is OFFLINE in PostgreSQL (all sockets closed at once, as a shutdown or a cut
 * network closes them).
 */
import postgres from 'postgres';
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
  type ServerKind,
  spawnServer,
  type Wire,
  WIRE_PORTS,
} from '../infra.js';
import { cpuByGroup, ratio, round, sampleProcesses, sleep, summarize, table, waitFor } from '../lib.js';
import { profiled, type RunContext, type ScenarioOutput, type TargetCheck } from '../context.js';
import type { ProfileSummary } from '../profile-top.js';

interface Round {
  seconds: number;
  connected: number;
  /** CPU milliseconds per handshake, by process group. */
  cpuMsPerHandshake: Record<string, number>;
  /** Hub: PostgreSQL statements and Redis commands sent, and socket writes to each, per handshake. */
  wirePerHandshake?: Record<string, number>;
  /** Hub: the disconnects after the round, until every driver was OFFLINE, and their CPU per socket. */
  disconnect?: { seconds: number; cpuMsPerSocket: Record<string, number> };
}

/** Each group's CPU (percent of a core over `seconds`) as milliseconds per socket, for `count` sockets. */
function cpuMsEach(percent: Record<string, number>, seconds: number, count: number): Record<string, number> {
  return Object.fromEntries(Object.entries(percent).map(([group, p]) => [group, round(((p / 100) * seconds * 1000) / Math.max(1, count), 3)!]));
}

export async function handshakes(ctx: RunContext): Promise<ScenarioOutput> {
  const drivers = ctx.num('drivers', 6_000, 2_000);
  const rounds = ctx.num('rounds', 3, 2);
  const generators = ctx.num('generators', 2);
  const concurrency = ctx.num('concurrency', 500);
  const targets = ctx.str('targets', 'sio-bare,hub').split(',') as ServerKind[];
  const results: Record<string, Round[]> = {};
  const profiles: Record<string, ProfileSummary> = {};
  const outer = new Cleanup();
  try {
    const db = targets.includes('hub') ? await createBenchDatabase(outer) : null;
    const ids = db ? await insertDrivers(db, drivers) : [];
    const tokens = await mintTokens('driver', ids.length ? ids : Array.from({ length: drivers }, () => crypto.randomUUID()));
    const positions = positionsAround(drivers, 10);
    for (const target of targets) {
      const cleanup = new Cleanup();
      try {
        const prefix = redisPrefix();
        cleanup.add(`redis keys ${prefix}`, () => deletePrefix(SHARED_REDIS_URL, prefix));
        const hub = target === 'hub';
        const env = hub ? hubEnv(db!, prefix, { NODE_ID: 'bench-handshakes', ...ctx.hubEnv }) : { REDIS_URL: SHARED_REDIS_URL, REDIS_PREFIX: prefix };
        const server = await spawnServer(target, cleanup, { name: `handshakes-${target}-${ctx.runId}`, env, logDir: ctx.logDir });
        const groups = {
          server: (pid: number) => pid === server.pid,
          postgres: (_: number, comm: string) => comm.startsWith('postgres'),
          redis: (_: number, comm: string) => comm.startsWith('redis-server'),
        };
        const list: Round[] = [];
        for (let r = 0; r <= rounds; r++) {
          const group = await LoadGroup.start(cleanup, generators, `handshakes-${target}-${r}`);
          await group.init({ mode: 'sio', url: server.url, waitSession: hub }, tokens, positions);
          const wireBefore = hub ? await server.rpc.call<Wire>('countWire', WIRE_PORTS) : null;
          const before = sampleProcesses();
          const c = await (r === rounds ? profiled(ctx, server, `handshakes-${target}`, () => group.connect(concurrency), profiles) : group.connect(concurrency));
          const after = sampleProcesses();
          const wireAfter = hub ? await server.rpc.call<Wire>('wire') : null;
          if (r === 0 && hub) {
            // The first round puts every driver on duty and on the map; the measured rounds reconnect them.
            ctx.log(`[${target}] status ${JSON.stringify(await group.all('goAvailable', { concurrency: 100 }))}, positions ${JSON.stringify(await group.all('placeAll', { concurrency: 100 }))}`);
          }
          const beforeClose = sampleProcesses();
          const closedAt = performance.now();
          await group.close();
          let disconnect: Round['disconnect'];
          if (hub) {
            const sql = postgres(db!.url, { max: 1, onnotice: () => {} });
            try {
              await waitFor(
                'every driver offline',
                async () => ((await sql<{ n: number }[]>`select count(*)::int as n from drivers where id = any(${ids}::uuid[]) and status <> 'OFFLINE'`)[0].n === 0 ? true : undefined),
                60_000,
                50,
              );
            } finally {
              await sql.end();
            }
            const seconds = (performance.now() - closedAt) / 1000;
            const percent = cpuByGroup(beforeClose, sampleProcesses(), groups);
            disconnect = { seconds: round(seconds, 2)!, cpuMsPerSocket: cpuMsEach(percent, seconds, c.connected) };
          }
          // What is left of the disconnects (Redis, the map) settles before the next round.
          await sleep(1500);
          if (r === 0) continue;
          const percent = cpuByGroup(before, after, groups);
          const round_: Round = {
            seconds: round(c.seconds, 2)!,
            connected: c.connected,
            cpuMsPerHandshake: cpuMsEach(percent, c.seconds, c.connected),
            ...(disconnect ? { disconnect } : {}),
          };
          if (wireBefore && wireAfter) {
            round_.wirePerHandshake = Object.fromEntries(Object.entries(wireAfter).map(([k, v]) => [k, round((v - wireBefore[k as keyof Wire]) / Math.max(1, c.connected), 2)!]));
          }
          list.push(round_);
          ctx.log(`[${target}] round ${r}: ${c.connected} back in ${round_.seconds} s (${c.failed} failed); CPU ms per handshake ${JSON.stringify(round_.cpuMsPerHandshake)}${round_.wirePerHandshake ? `; wire per handshake ${JSON.stringify(round_.wirePerHandshake)}` : ''}${disconnect ? `; all offline ${disconnect.seconds} s after the close, CPU ms per socket ${JSON.stringify(disconnect.cpuMsPerSocket)}` : ''}`);
        }
        results[target] = list;
      } finally {
        await cleanup.runAll();
      }
    }
  } finally {
    await outer.runAll();
  }

  const median = (values: number[]) => summarize(values).p50;
  const serverMs = (target: string) => median((results[target] ?? []).map((r) => r.cpuMsPerHandshake.server));
  const checks: TargetCheck[] = [];
  if (results.hub && results['sio-bare']) {
    const r = ratio(serverMs('hub'), serverMs('sio-bare'));
    checks.push({ name: 'server CPU per handshake, hub vs bare Socket.IO (median round)', target: 'report', measured: `${r}x (${serverMs('hub')} vs ${serverMs('sio-bare')} ms)`, met: null });
  }
  const rows: unknown[][] = [['target', 'round', 'sockets', 'seconds', 'server ms/hs', 'postgres ms/hs', 'redis ms/hs', 'other ms/hs', 'PG stmts/writes per hs', 'Redis cmds/writes per hs', 'offline s', 'server/postgres ms per close']];
  for (const [target, list] of Object.entries(results)) {
    list.forEach((r, i) =>
      rows.push([
        target,
        i + 1,
        r.connected,
        r.seconds,
        r.cpuMsPerHandshake.server,
        r.cpuMsPerHandshake.postgres,
        r.cpuMsPerHandshake.redis,
        r.cpuMsPerHandshake.other,
        r.wirePerHandshake ? `${r.wirePerHandshake.pgStatements}/${r.wirePerHandshake.pgWrites}` : null,
        r.wirePerHandshake ? `${r.wirePerHandshake.redisCommands}/${r.wirePerHandshake.redisWrites}` : null,
        r.disconnect?.seconds ?? null,
        r.disconnect ? `${r.disconnect.cpuMsPerSocket.server}/${r.disconnect.cpuMsPerSocket.postgres}` : null,
      ]),
    );
  }
  return { results: { drivers, rounds, concurrency, runs: results }, checks, table: table(rows), profiles };
}
