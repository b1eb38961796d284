/**
 * The Node benchmark harness: `npm run bench -- <scenario> [--quick] [options]`.
 *
 * Scenarios: ingest, connections, assignment, fanout, recovery, storm, all; handshakes (CPU per
 * reconnect, hub vs bare Socket.IO); edge (the hub's CPU per HTTP request at its edge); and shards (ingest and
 * assignment once per Redis layout, `--layouts 0,3`; `--shards N` runs either one on an N-master
 * Redis Cluster). Each starts what it measures in child processes (hub, baselines, load generators,
 * prober), is bounded in time, prints progress on stderr, then a JSON result and a short table on
 * stdout; the JSON is also written to load-tests/results/<scenario>-<time>.json. See docs/performance.md for what each measures.
 *
 * Common options:
 *   --quick                smaller and shorter (smoke run)
 *   --profile              CPU-profile the hub during the measured window (load-tests/results/profiles)
 *   --allocations          with --profile, also sample what the hub allocates in the same window
 *                          (a .heapprofile, collected objects included: what feeds the collector)
 *   --env KEY=VALUE        extra hub environment, repeatable (e.g. --env LOCATION_TICK_MS=10)
 *   --sockets N, --drivers N, --generators N, ...  scenario knobs (see each scenario file)
 */
import { execSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, freemem, totalmem } from 'node:os';
import { join } from 'node:path';
import type { RunContext, Scenario, ScenarioOutput } from './bench/context.js';
import { Cleanup, RESULTS_DIR, ROOT } from './bench/infra.js';
import { foreignCpuPercent, machineBusyPercent, readCpuTimes, sampleProcesses, sleep, table } from './bench/lib.js';
import { assignment } from './bench/scenarios/assignment.js';
import { connections } from './bench/scenarios/connections.js';
import { edge } from './bench/scenarios/edge.js';
import { fanout } from './bench/scenarios/fanout.js';
import { ingest } from './bench/scenarios/ingest.js';
import { recovery } from './bench/scenarios/recovery.js';
import { handshakes } from './bench/scenarios/handshakes.js';
import { shards } from './bench/scenarios/shards.js';
import { storm } from './bench/scenarios/storm.js';

const SCENARIOS: Record<string, Scenario> = { ingest, connections, assignment, fanout, recovery, storm, shards, handshakes, edge };
/** `all` runs these; `shards` repeats ingest and assignment per Redis layout and is run by name. */
const ALL = ['ingest', 'connections', 'assignment', 'fanout', 'recovery', 'storm'];

function usage(): never {
  console.error(`usage: npm run bench -- <${[...Object.keys(SCENARIOS), 'all'].join('|')}> [--quick] [--profile [--allocations]] [--env KEY=VALUE ...] [--<knob> N ...]`);
  process.exit(2);
}

function shell(command: string): string | null {
  try {
    return execSync(command, { cwd: ROOT, stdio: ['ignore', 'pipe', 'ignore'] }).toString().trim();
  } catch {
    return null;
  }
}

function machine() {
  return {
    nproc: Number(shell('nproc')) || cpus().length,
    cpuModel: cpus()[0]?.model ?? null,
    memoryGiB: Number((totalmem() / 2 ** 30).toFixed(1)),
    freeMemoryGiB: Number((freemem() / 2 ** 30).toFixed(1)),
    node: process.version,
    kernel: shell('uname -sr'),
    openFilesLimit: shell('ulimit -n'),
    redis: shell('redis-server --version'),
    postgres: shell("psql -At 'postgres://postgres@127.0.0.1:5432/postgres' -c 'show server_version'"),
  };
}

function gitState() {
  return {
    head: shell('git rev-parse --short HEAD'),
    /** Uncommitted server changes: the numbers are for the working tree, not only HEAD. */
    dirty: shell('git status --porcelain -- server shared')?.split('\n').filter(Boolean) ?? [],
  };
}

/** One bench at a time on this machine: two runs would measure each other. */
const LOCK = join(RESULTS_DIR, '.bench.lock');

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function acquireLock(log: (m: string) => void): Promise<void> {
  const deadline = Date.now() + 30 * 60_000;
  let told = false;
  for (;;) {
    try {
      writeFileSync(LOCK, String(process.pid), { flag: 'wx' });
      process.once('exit', () => {
        if (readFileSync(LOCK, 'utf8') === String(process.pid)) rmSync(LOCK, { force: true });
      });
      return;
    } catch {
      const holder = Number(readFileSync(LOCK, 'utf8'));
      if (!pidAlive(holder)) {
        rmSync(LOCK, { force: true });
        continue;
      }
      if (Date.now() > deadline) throw new Error(`another bench (pid ${holder}) has held ${LOCK} for 30 min`);
      if (!told) log(`another bench (pid ${holder}) is running; waiting for it to finish`);
      told = true;
      await sleep(2000);
    }
  }
}

/** Waits (bounded) until other processes leave the machine alone; returns how busy it was then. */
async function waitForQuiet(log: (m: string) => void, maxWaitMs: number): Promise<{ machineBusyPercent: number | null; foreignCpuPercent: number }> {
  const deadline = Date.now() + maxWaitMs;
  let told = false;
  for (;;) {
    const a = readCpuTimes();
    const pa = sampleProcesses();
    await sleep(2000);
    const busy = machineBusyPercent(a, readCpuTimes());
    const foreign = foreignCpuPercent(pa, sampleProcesses());
    if (foreign <= 10 || Date.now() > deadline) {
      if (foreign > 10) log(`other processes still use ${foreign}% CPU after ${maxWaitMs / 1000} s; starting anyway (noted in the result)`);
      return { machineBusyPercent: busy, foreignCpuPercent: foreign };
    }
    if (!told) log(`other processes use ${foreign}% CPU (machine ${busy}% busy); waiting up to ${maxWaitMs / 1000} s`);
    told = true;
  }
}

const BOOLEAN_FLAGS = new Set(['quick', 'profile', 'allocations', 'help']);

/** `--name value`, `--name=value`, boolean flags, `--env K=V` repeatable; the rest are positionals. */
function parseCli(argv: string[]): { values: Record<string, string | boolean | string[] | undefined>; positionals: string[] } {
  const values: Record<string, string | boolean | string[] | undefined> = {};
  const positionals: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '-h') {
      values.help = true;
      continue;
    }
    if (!arg.startsWith('--')) {
      positionals.push(arg);
      continue;
    }
    const eq = arg.indexOf('=');
    const name = eq > 0 ? arg.slice(2, eq) : arg.slice(2);
    let value: string | boolean;
    if (BOOLEAN_FLAGS.has(name)) value = true;
    else if (eq > 0) value = arg.slice(eq + 1);
    else if (i + 1 < argv.length) value = argv[++i];
    else usage();
    if (name === 'env') values.env = [...((values.env as string[] | undefined) ?? []), value as string];
    else values[name] = value;
  }
  return { values, positionals };
}

async function main(): Promise<void> {
  const { values, positionals } = parseCli(process.argv.slice(2));
  const name = positionals[0];
  if (values.help || !name || (name !== 'all' && !SCENARIOS[name])) usage();
  const quick = values.quick === true;
  const hubEnv: Record<string, string> = {};
  for (const pair of (values.env as string[] | undefined) ?? []) {
    const eq = pair.indexOf('=');
    if (eq <= 0) usage();
    hubEnv[pair.slice(0, eq)] = pair.slice(eq + 1);
  }
  const names = name === 'all' ? ALL : [name];
  mkdirSync(RESULTS_DIR, { recursive: true });

  const say = (m: string) => console.error(`${new Date().toISOString().slice(11, 23)} ${m}`);
  await acquireLock(say);
  for (const scenario of names) {
    const busyBefore = await waitForQuiet(say, Number(values['quiet-wait-s'] ?? 120) * 1000);
    const cpuAtStart = readCpuTimes();
    const procsAtStart = sampleProcesses();
    const stamp = new Date().toISOString().replace(/[:.]/g, '-');
    const runId = `${scenario}-${stamp}-${randomBytes(2).toString('hex')}`;
    const logDir = join(RESULTS_DIR, 'logs', runId);
    const profileDir = values.profile ? join(RESULTS_DIR, 'profiles') : null;
    if (profileDir) mkdirSync(profileDir, { recursive: true });
    const ctx: RunContext = {
      scenario,
      quick,
      runId,
      logDir,
      profileDir,
      allocations: values.allocations === true,
      hubEnv,
      num(option, full, quickValue) {
        const raw = values[option];
        if (typeof raw === 'string') {
          const n = Number(raw);
          if (!Number.isFinite(n)) throw new Error(`--${option} must be a number`);
          return n;
        }
        return quick && quickValue !== undefined ? quickValue : full;
      },
      flag: (option) => values[option] === true,
      str(option, fallback) {
        const raw = values[option];
        return typeof raw === 'string' ? raw : fallback;
      },
      log: say,
    };
    ctx.log(`== ${scenario}${quick ? ' (quick)' : ''}: run ${runId}`);
    const started = Date.now();
    let output: ScenarioOutput;
    try {
      output = await SCENARIOS[scenario](ctx);
    } catch (err) {
      ctx.log(`${scenario} failed: ${(err as Error).stack ?? err}`);
      process.exitCode = 1;
      continue;
    }
    const report = {
      scenario,
      quick,
      runId,
      startedAt: new Date(started).toISOString(),
      durationSeconds: Math.round((Date.now() - started) / 1000),
      machine: machine(),
      /** Whole-machine CPU busy (all cores): just before the scenario, and on average during it. */
      machineBusyPercent: { before: busyBefore.machineBusyPercent, during: machineBusyPercent(cpuAtStart, readCpuTimes()) },
      /** CPU (% of one core) of processes outside this bench, PostgreSQL and Redis: other work on the machine. */
      foreignCpuPercent: { before: busyBefore.foreignCpuPercent, during: foreignCpuPercent(procsAtStart, sampleProcesses()) },
      git: gitState(),
      hubEnv,
      results: output.results,
      checks: output.checks,
      profiles: output.profiles && Object.keys(output.profiles).length ? output.profiles : undefined,
    };
    const file = join(RESULTS_DIR, `${runId}.json`);
    writeFileSync(file, `${JSON.stringify(report, null, 2)}\n`);
    console.log(JSON.stringify(report, null, 2));
    console.log(`\n${scenario}${quick ? ' (quick)' : ''} — ${report.durationSeconds} s, written to ${file}\n`);
    console.log(output.table);
    if ((report.foreignCpuPercent.during ?? 0) > 15) {
      console.log(`\nWARNING: processes outside the bench used ${report.foreignCpuPercent.during}% of a core on average during this run; its figures are disturbed.`);
    }
    if (output.checks.length) {
      console.log('');
      console.log(table([['target', 'goal', 'measured', 'met'], ...output.checks.map((c) => [c.name, c.target, c.measured, c.met === null ? 'n/a' : c.met ? 'yes' : 'NO'])]));
    }
    console.log('');
  }
  // Children are gone; do not wait on stray handles.
  process.exit(process.exitCode ?? 0);
}

process.once('SIGINT', async () => {
  console.error('interrupted: stopping children, dropping the bench database and Redis keys');
  // Newest first: a scenario's inner cleanups before its outer ones.
  for (const cleanup of [...Cleanup.active].reverse()) await cleanup.runAll();
  process.exit(130);
});

await main();
