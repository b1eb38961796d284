/**
 * connections: memory per idle driver socket. Each server (raw ws, bare Socket.IO, hub) starts in
 * its own process; after a forced GC its RSS is the base; N1 sockets connect (hub: each gets its
 * `session`), they sit idle, GC, RSS again; then up to N2 sockets, the same. Per socket =
 * (RSS - base RSS) / sockets. The default N2 is 19,500, not 20,000: the open-files limit on this
 * machine is 20,000 per process (hard limit, cannot be raised here) and the server needs a few
 * descriptors of its own.
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
  type ServerKind,
  type ServerProc,
  spawnServer,
} from '../infra.js';
import { ratio, round, sleep, table } from '../lib.js';
import type { RunContext, ScenarioOutput, TargetCheck } from '../context.js';

interface Level {
  sockets: number;
  connectSeconds: number;
  failed: number;
  rssMiB: number;
  heapUsedMiB: number;
  bytesPerSocket: number;
  heapBytesPerSocket: number;
}

interface Measured {
  kind: ServerKind;
  baseRssMiB: number;
  baseHeapMiB: number;
  levels: Level[];
}

const MiB = 2 ** 20;

async function settledMemory(server: ServerProc, settleMs: number) {
  await sleep(settleMs);
  await server.gc();
  await sleep(500);
  await server.gc();
  return server.stats();
}

export async function connections(ctx: RunContext): Promise<ScenarioOutput> {
  const n1 = ctx.num('sockets', 10_000, 2_000);
  const n2 = ctx.num('sockets2', 19_500, 4_000);
  const generators = ctx.num('generators', 2);
  const settleMs = ctx.num('settle-ms', 5000, 3000);
  const kinds = ctx.str('targets', 'ws,sio-bare,hub').split(',') as ServerKind[];
  const outer = new Cleanup();
  const results: Record<string, Measured> = {};
  try {
    const db = await createBenchDatabase(outer);
    const ids = await insertDrivers(db, n2);
    const tokens = await mintTokens('driver', ids);
    const positions = positionsAround(n2, 10);
    for (const kind of kinds) {
      const cleanup = new Cleanup();
      try {
        const prefix = redisPrefix();
        cleanup.add(`redis keys ${prefix}`, () => deletePrefix(SHARED_REDIS_URL, prefix));
        const env = kind === 'hub' ? hubEnv(db, prefix, { NODE_ID: 'bench-connections', ...ctx.hubEnv }) : { REDIS_URL: SHARED_REDIS_URL, REDIS_PREFIX: prefix };
        const server = await spawnServer(kind, cleanup, { name: `connections-${kind}-${ctx.runId}`, env, logDir: ctx.logDir });
        const base = await settledMemory(server, 2000);
        const measured: Measured = { kind, baseRssMiB: round(base.rssBytes / MiB, 1)!, baseHeapMiB: round(base.heapUsedBytes / MiB, 1)!, levels: [] };
        const group = await LoadGroup.start(cleanup, generators, `connections-${kind}`);
        await group.init({ mode: kind === 'ws' ? 'ws' : 'sio', url: server.url, waitSession: kind === 'hub' }, tokens, positions);
        let previous = 0;
        for (const target of [n1, n2]) {
          const c = await group.connect(100, [previous / n2, target / n2]);
          previous = target;
          const s = await settledMemory(server, settleMs);
          const level: Level = {
            sockets: c.connected,
            connectSeconds: round(c.seconds, 1)!,
            failed: c.failed,
            rssMiB: round(s.rssBytes / MiB, 1)!,
            heapUsedMiB: round(s.heapUsedBytes / MiB, 1)!,
            bytesPerSocket: Math.round((s.rssBytes - base.rssBytes) / Math.max(1, c.connected)),
            heapBytesPerSocket: Math.round((s.heapUsedBytes - base.heapUsedBytes) / Math.max(1, c.connected)),
          };
          measured.levels.push(level);
          ctx.log(
            `[${kind}] ${level.sockets} sockets (${level.failed} failed, ${level.connectSeconds} s): RSS ${level.rssMiB} MiB (base ${measured.baseRssMiB}), ${level.bytesPerSocket} B/socket, heap ${level.heapBytesPerSocket} B/socket${Object.keys(c.errors).length ? ` errors ${JSON.stringify(c.errors)}` : ''}`,
          );
        }
        results[kind] = measured;
        await group.close();
      } finally {
        await cleanup.runAll();
      }
    }
  } finally {
    await outer.runAll();
  }

  const sio = results['sio-bare'] ?? results.sio;
  const hub = results.hub;
  const checks: TargetCheck[] = [];
  if (hub && sio) {
    hub.levels.forEach((level, i) => {
      const r = ratio(level.bytesPerSocket, sio.levels[i]?.bytesPerSocket);
      checks.push({
        name: `RSS per socket at ${level.sockets} vs bare Socket.IO`,
        target: '<= 1.2x',
        measured: `${r}x (${level.bytesPerSocket} vs ${sio.levels[i]?.bytesPerSocket} B)`,
        met: r === null ? null : r <= 1.2,
      });
    });
  }
  const rows: unknown[][] = [['server', 'sockets', 'RSS MiB', 'B/socket', 'heap B/socket', 'vs bare Socket.IO', 'vs ws', 'connect s']];
  for (const m of Object.values(results)) {
    m.levels.forEach((level, i) => {
      rows.push([
        m.kind,
        level.sockets,
        level.rssMiB,
        level.bytesPerSocket,
        level.heapBytesPerSocket,
        ratio(level.bytesPerSocket, sio?.levels[i]?.bytesPerSocket),
        ratio(level.bytesPerSocket, results.ws?.levels[i]?.bytesPerSocket),
        level.connectSeconds,
      ]);
    });
  }
  return { results: { n1, n2, generators, settleMs, servers: results }, checks, table: table(rows) };
}
