/**
 * Small helpers shared by the bench parent and its child processes: time, statistics, a table
 * printer, and a request/reply protocol over Node's IPC channel.
 */
import type { ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { type Agent, request } from 'node:http';
import { createServer } from 'node:net';

/** Wall-clock milliseconds with sub-millisecond resolution, comparable across processes on one machine. */
export const wallMs = (): number => performance.timeOrigin + performance.now();

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * `count` GETs of `url` on `agent`, at most `concurrency` in flight (default: all at once), each
 * answer read to its end so its connection goes back to the pool; resolves with the last status.
 */
export async function getMany(agent: Agent, url: string, count: number, concurrency = count): Promise<number> {
  let started = 0;
  let status = 0;
  const one = () =>
    new Promise<void>((resolve, reject) => {
      const req = request(url, { agent, timeout: 30_000 }, (res) => {
        status = res.statusCode ?? 0;
        res.resume();
        res.on('end', () => resolve());
      });
      req.on('timeout', () => req.destroy(new Error(`timeout on GET ${url}`)));
      req.on('error', reject);
      req.end();
    });
  const worker = async () => {
    while (started < count) {
      started += 1;
      await one();
    }
  };
  await Promise.all(Array.from({ length: Math.min(count, concurrency) }, worker));
  return status;
}

export function percentile(sorted: readonly number[], p: number): number | null {
  if (sorted.length === 0) return null;
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[rank];
}

export interface Summary {
  count: number;
  p50: number | null;
  p90: number | null;
  p99: number | null;
  max: number | null;
  mean: number | null;
}

export function summarize(values: readonly number[], digits = 2): Summary {
  const sorted = [...values].sort((a, b) => a - b);
  const round = (v: number | null) => (v === null ? null : Number(v.toFixed(digits)));
  const mean = sorted.length ? sorted.reduce((s, v) => s + v, 0) / sorted.length : null;
  return {
    count: sorted.length,
    p50: round(percentile(sorted, 50)),
    p90: round(percentile(sorted, 90)),
    p99: round(percentile(sorted, 99)),
    max: round(sorted.length ? sorted[sorted.length - 1] : null),
    mean: round(mean),
  };
}

export const round = (v: number | null | undefined, digits = 2): number | null =>
  v === null || v === undefined || !Number.isFinite(v) ? null : Number(v.toFixed(digits));

export function ratio(a: number | null | undefined, b: number | null | undefined, digits = 2): number | null {
  if (a === null || a === undefined || b === null || b === undefined || b === 0) return null;
  return round(a / b, digits);
}

/** A free TCP port on 127.0.0.1 (released before use: a small race, acceptable for a bench). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

export function table(rows: readonly (readonly unknown[])[]): string {
  const text = rows.map((row) => row.map((cell) => (cell === null || cell === undefined ? '-' : String(cell))));
  const widths: number[] = [];
  for (const row of text) {
    row.forEach((cell, i) => {
      widths[i] = Math.max(widths[i] ?? 0, cell.length);
    });
  }
  return text.map((row) => row.map((cell, i) => cell.padEnd(widths[i])).join('  ').trimEnd()).join('\n');
}

/** Polls `check` until it returns a value other than undefined/false, or throws after `timeoutMs`. */
export async function waitFor<T>(what: string, check: () => Promise<T | undefined | false> | T | undefined | false, timeoutMs: number, everyMs = 50): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  while (Date.now() < deadline) {
    try {
      const value = await check();
      if (value !== undefined && value !== false) return value as T;
    } catch (err) {
      lastError = err;
    }
    await sleep(everyMs);
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${lastError ? ` (${(lastError as Error).message})` : ''}`);
}

// ---------------------------------------------------------------------------------------------
// IPC: the parent calls a child's commands; children answer and may push events.

interface RpcRequest {
  rpc: number;
  cmd: string;
  args?: unknown;
}

interface RpcReply {
  rpc: number;
  ok: boolean;
  result?: unknown;
  error?: string;
}

export interface RpcEvent {
  event: string;
  data: unknown;
}

/** Parent side of a child that serves commands (see `serveRpc`). */
export class RpcChild {
  private next = 1;
  private readonly pending = new Map<number, { resolve: (v: any) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }>();
  private exited = false;

  constructor(
    readonly name: string,
    readonly proc: ChildProcess,
    onEvent?: (event: RpcEvent) => void,
  ) {
    proc.on('message', (message: any) => {
      if (message && typeof message.rpc === 'number') {
        const waiter = this.pending.get(message.rpc);
        if (!waiter) return;
        this.pending.delete(message.rpc);
        clearTimeout(waiter.timer);
        const reply = message as RpcReply;
        if (reply.ok) waiter.resolve(reply.result);
        else waiter.reject(new Error(`${name}: ${reply.error}`));
      } else if (message && typeof message.event === 'string') {
        onEvent?.(message as RpcEvent);
      }
    });
    proc.once('exit', (code, signal) => {
      this.exited = true;
      for (const [, waiter] of this.pending) {
        clearTimeout(waiter.timer);
        waiter.reject(new Error(`${name} exited (${code ?? signal}) with a call pending`));
      }
      this.pending.clear();
    });
  }

  get alive(): boolean {
    return !this.exited;
  }

  call<T = any>(cmd: string, args?: unknown, timeoutMs = 120_000): Promise<T> {
    if (this.exited) return Promise.reject(new Error(`${this.name} has exited`));
    const rpc = this.next++;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(rpc);
        reject(new Error(`${this.name}: ${cmd} timed out after ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(rpc, { resolve, reject, timer });
      this.proc.send({ rpc, cmd, args } satisfies RpcRequest);
    });
  }

  /** Asks politely, then kills; resolves when the process is gone. */
  async stop(signal: NodeJS.Signals = 'SIGTERM', graceMs = 15_000): Promise<void> {
    if (this.exited) return;
    const gone = new Promise<void>((resolve) => this.proc.once('exit', () => resolve()));
    this.proc.kill(signal);
    const timer = setTimeout(() => this.proc.kill('SIGKILL'), graceMs);
    await gone;
    clearTimeout(timer);
  }
}

/** Child side: answers the parent's calls with the named handlers. */
export function serveRpc(handlers: Record<string, (args: any) => unknown>): void {
  process.on('message', async (message: any) => {
    if (!message || typeof message.rpc !== 'number' || typeof message.cmd !== 'string') return;
    const handler = handlers[message.cmd];
    let reply: RpcReply;
    try {
      if (!handler) throw new Error(`unknown command ${message.cmd}`);
      reply = { rpc: message.rpc, ok: true, result: await handler(message.args) };
    } catch (err) {
      reply = { rpc: message.rpc, ok: false, error: (err as Error).stack ?? String(err) };
    }
    process.send?.(reply);
  });
  // The parent going away ends the child: no orphaned load generators.
  process.on('disconnect', () => process.exit(0));
}

export function emitEvent(event: string, data: unknown): void {
  process.send?.({ event, data } satisfies RpcEvent);
}

// ---------------------------------------------------------------------------------------------
// Whole-machine CPU, from /proc/stat: other work on the machine (a test run, another bench) skews
// every figure here, so each scenario records how busy the machine was.

export interface CpuTimes {
  idle: number;
  total: number;
}

export function readCpuTimes(): CpuTimes | null {
  try {
    const line = readFileSync('/proc/stat', 'utf8').split('\n')[0];
    const fields = line.trim().split(/\s+/).slice(1).map(Number);
    const idle = (fields[3] ?? 0) + (fields[4] ?? 0);
    return { idle, total: fields.reduce((a, b) => a + b, 0) };
  } catch {
    return null;
  }
}

/** Percent of all cores busy between two readings. */
export function machineBusyPercent(a: CpuTimes | null, b: CpuTimes | null): number | null {
  if (!a || !b || b.total === a.total) return null;
  return round((1 - (b.idle - a.idle) / (b.total - a.total)) * 100, 0);
}

// ---------------------------------------------------------------------------------------------
// CPU used by processes that are neither this bench's (descendants of this process) nor the
// shared PostgreSQL and Redis servers: a test suite or another bench running at the same time.

const CLOCK_TICKS = 100;

interface ProcSample {
  at: number;
  ticks: Map<number, { ticks: number; ppid: number; comm: string }>;
}

/** A process's or thread's `stat` line: CPU ticks (user + system), parent pid, name; null once it is gone. */
function readStat(path: string): { ticks: number; ppid: number; comm: string } | null {
  try {
    const stat = readFileSync(path, 'utf8');
    // The name is in parentheses and may hold spaces and parentheses itself: the fields follow the last `)`.
    const close = stat.lastIndexOf(')');
    const fields = stat.slice(close + 2).split(' ');
    return { ticks: Number(fields[11]) + Number(fields[12]), ppid: Number(fields[1]), comm: stat.slice(stat.indexOf('(') + 1, close) };
  } catch {
    return null;
  }
}

export function sampleProcesses(): ProcSample {
  const ticks = new Map<number, { ticks: number; ppid: number; comm: string }>();
  let entries: string[] = [];
  try {
    entries = readdirSync('/proc');
  } catch {}
  for (const entry of entries) {
    const pid = Number(entry);
    if (!Number.isInteger(pid)) continue;
    const stat = readStat(`/proc/${pid}/stat`);
    if (stat) ticks.set(pid, stat);
  }
  return { at: performance.now(), ticks };
}

/** CPU ticks of each thread of one process, by thread id, with the thread's name. */
export interface ThreadSample {
  pid: number;
  threads: Map<number, { ticks: number; comm: string }>;
}

export function sampleThreads(pid: number): ThreadSample {
  const threads = new Map<number, { ticks: number; comm: string }>();
  let tids: string[] = [];
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {}
  for (const tid of tids) {
    const stat = readStat(`/proc/${pid}/task/${tid}/stat`);
    if (stat) threads.set(Number(tid), { ticks: stat.ticks, comm: stat.comm });
  }
  return { pid, threads };
}

/**
 * CPU milliseconds a process's threads used between two samples: its main thread (the event loop),
 * the hub's API thread (named `hub-api`), and the rest (V8's compiler and collector helpers, libuv's pool).
 */
export function threadCpuMs(a: ThreadSample, b: ThreadSample): { main: number; api: number; other: number } {
  const out = { main: 0, api: 0, other: 0 };
  for (const [tid, t] of b.threads) {
    const used = ((t.ticks - (a.threads.get(tid)?.ticks ?? 0)) * 1000) / CLOCK_TICKS;
    if (used <= 0) continue;
    if (tid === b.pid) out.main += used;
    else if (t.comm === 'hub-api') out.api += used;
    else out.other += used;
  }
  return out;
}

/** Percent of one core used between two samples by processes outside this bench and outside PostgreSQL/Redis. */
export function foreignCpuPercent(a: ProcSample, b: ProcSample): number {
  const ours = new Set<number>([process.pid]);
  let grew = true;
  while (grew) {
    grew = false;
    for (const [pid, p] of b.ticks) {
      if (!ours.has(pid) && ours.has(p.ppid)) {
        ours.add(pid);
        grew = true;
      }
    }
  }
  let used = 0;
  for (const [pid, p] of b.ticks) {
    if (ours.has(pid) || p.comm.startsWith('postgres') || p.comm.startsWith('redis-server') || pid <= 2) continue;
    used += p.ticks - (a.ticks.get(pid)?.ticks ?? p.ticks);
  }
  const seconds = (b.at - a.at) / 1000;
  return seconds > 0 ? round((used / CLOCK_TICKS / seconds) * 100, 0)! : 0;
}

/**
 * CPU (% of one core) between two samples, per named group of processes (first matching group
 * wins; the rest is `other`): who used the machine during a window.
 */
export function cpuByGroup(a: ProcSample, b: ProcSample, groups: Record<string, (pid: number, comm: string) => boolean>): Record<string, number> {
  const seconds = (b.at - a.at) / 1000;
  const out: Record<string, number> = Object.fromEntries([...Object.keys(groups), 'other'].map((k) => [k, 0]));
  if (seconds <= 0) return out;
  for (const [pid, p] of b.ticks) {
    const used = p.ticks - (a.ticks.get(pid)?.ticks ?? p.ticks);
    if (used <= 0) continue;
    const group = Object.keys(groups).find((name) => groups[name](pid, p.comm)) ?? 'other';
    out[group] += (used / CLOCK_TICKS / seconds) * 100;
  }
  for (const k of Object.keys(out)) out[k] = round(out[k], 0)!;
  return out;
}
