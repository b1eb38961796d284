/**
 * Preloaded (`--import`) into every server process the bench starts: the hub and both baselines.
 * It measures the same things the same way in each of them and answers the parent over IPC:
 * event-loop delay (perf_hooks, 10 ms resolution as prom-client's default metrics use; the
 * resolution is subtracted so 0 means "on time"), CPU time, RSS, and a forced GC on request
 * (the process is started with --expose-gc), and a V8 CPU profile of a chosen window.
 */
import { writeFileSync } from 'node:fs';
import { Session } from 'node:inspector/promises';
import { Socket } from 'node:net';
import { constants, monitorEventLoopDelay, PerformanceObserver } from 'node:perf_hooks';
import { getHeapSpaceStatistics } from 'node:v8';
import { serveRpc, wallMs } from './lib.js';

const RESOLUTION_MS = 10;
const histogram = monitorEventLoopDelay({ resolution: RESOLUTION_MS });
histogram.enable();
let cpuAt = process.cpuUsage();
let wallAt = performance.now();
/** The old generation's used bytes: grown by what scavenges promote, shrunk only by a full collection. */
const oldGenerationBytes = () =>
  getHeapSpaceStatistics().reduce((sum, space) => (space.space_name === 'old_space' || space.space_name === 'large_object_space' ? sum + space.space_used_size : sum), 0);
let oldGenerationAt = oldGenerationBytes();

/** GC pauses in the current window: count, total and longest, by kind (minor = scavenge). */
let gc = { minorCount: 0, minorMs: 0, majorCount: 0, majorMs: 0, maxPauseMs: 0 };
new PerformanceObserver((list) => {
  for (const entry of list.getEntries()) {
    const kind = (entry as unknown as { detail?: { kind?: number } }).detail?.kind;
    if (kind === constants.NODE_PERFORMANCE_GC_MINOR) {
      gc.minorCount += 1;
      gc.minorMs += entry.duration;
    } else {
      gc.majorCount += 1;
      gc.majorMs += entry.duration;
    }
    gc.maxPauseMs = Math.max(gc.maxPauseMs, entry.duration);
  }
}).observe({ entryTypes: ['gc'] });

const lagMs = (nanos: number) => Math.max(0, nanos / 1e6 - RESOLUTION_MS);

function stats() {
  const cpu = process.cpuUsage(cpuAt);
  const elapsedMs = performance.now() - wallAt;
  const memory = process.memoryUsage();
  return {
    pid: process.pid,
    lagP50Ms: lagMs(histogram.percentile(50)),
    lagP99Ms: lagMs(histogram.percentile(99)),
    lagMaxMs: lagMs(histogram.max),
    lagSamples: histogram.count,
    cpuPercent: elapsedMs > 0 ? ((cpu.user + cpu.system) / 1000 / elapsedMs) * 100 : 0,
    /** The kernel's share (syscalls: socket reads and writes). */
    sysPercent: elapsedMs > 0 ? (cpu.system / 1000 / elapsedMs) * 100 : 0,
    windowMs: elapsedMs,
    gc: { ...gc, minorMs: Math.round(gc.minorMs), majorMs: Math.round(gc.majorMs), maxPauseMs: Math.round(gc.maxPauseMs) },
    /**
     * What the window moved into the old generation (objects that outlived two scavenges, and
     * the few allocated there directly); null when a full collection ran in it and freed some.
     */
    oldGenerationGrowthBytes: gc.majorCount === 0 ? oldGenerationBytes() - oldGenerationAt : null,
    rssBytes: memory.rss,
    heapUsedBytes: memory.heapUsed,
    externalBytes: memory.external,
    /** Baselines count what they have done with the pings here; the hub reports its own count on /metrics. */
    received: (globalThis as { __benchReceived?: number }).__benchReceived ?? null,
    extra: (globalThis as { __benchExtra?: () => Record<string, number> }).__benchExtra?.() ?? null,
    /** When the counters were read, on this process's clock. */
    at: wallMs(),
  };
}

export type ServerStats = ReturnType<typeof stats>;

/**
 * Round trips to PostgreSQL and Redis, counted on the wire of this process (installed on request:
 * it wraps every socket write). PostgreSQL: statements are Sync and simple Query messages, parsed
 * from the frontend protocol's type+length framing; Redis: commands are the top-level arrays of
 * RESP. A write is one round trip's worth of requests (a pipeline, or pipelined statements).
 */
const wire = { pgStatements: 0, pgWrites: 0, redisCommands: 0, redisWrites: 0 };
let wirePorts: { pg: number; redis: number } | null = null;
const socketKind = new WeakMap<Socket, { kind: 'pg' | 'redis' | 'other'; skip: number }>();
/**
 * The port each socket this process opened connects to, noted from the start: the count tells
 * PostgreSQL's and Redis's sockets by it without a `getpeername` on every socket a server accepted
 * (one per driver in a storm, a cost the bare baselines never paid).
 */
const outgoingPort = new WeakMap<Socket, number>();
const connect = Socket.prototype.connect;
Socket.prototype.connect = function notedConnect(this: Socket, ...args: unknown[]) {
  // net.createConnection hands over its normalized arguments as one array: [options, callback].
  const first = Array.isArray(args[0]) ? (args[0] as unknown[])[0] : args[0];
  const port = Number(first !== null && typeof first === 'object' ? (first as { port?: unknown }).port : first);
  if (Number.isInteger(port) && port > 0) outgoingPort.set(this, port);
  return (connect as (...a: unknown[]) => Socket).apply(this, args);
} as typeof Socket.prototype.connect;

function pgMessages(state: { skip: number }, buf: Buffer): void {
  let i = state.skip;
  while (i + 5 <= buf.length) {
    const type = buf[i];
    const length = buf.readInt32BE(i + 1);
    // The startup message has no type byte: its first byte is 0 (a length).
    if (type === 0 || length < 4) return;
    if (type === 0x53 /* Sync */ || type === 0x51 /* Query */) wire.pgStatements += 1;
    if (countStatements && i + 1 + length <= buf.length) countStatement(type, buf, i + 5, i + 1 + length);
    i += 1 + length;
  }
  state.skip = Math.max(0, i - buf.length);
}

/**
 * Executions by statement (its text's first words), from Parse (name -> text), Bind (name) and Query
 * messages; and Redis commands by name (`redis: GET`, `redis: EVALSHA 1a2b3c4d`).
 */
const pgByStatement: Record<string, number> = {};
let countStatements = false;
const statementText = new Map<string, string>();
const shortText = (text: string) => text.replace(/\s+/g, ' ').trim().slice(0, 90);
// Helpers at module level, not closures per call: under tsx every closure is named at creation
// (esbuild's keepNames), a cost the hub's measured CPU would carry per write.
function cstringAt(buf: Buffer, from: number, end: number): { text: string; next: number } | null {
  const zero = buf.indexOf(0, from);
  return zero < 0 || zero > end ? null : { text: buf.toString('utf8', from, zero), next: zero + 1 };
}

function countStatement(type: number, buf: Buffer, start: number, end: number): void {
  if (type === 0x50 /* Parse */) {
    const name = cstringAt(buf, start, end);
    const query = name && cstringAt(buf, name.next, end);
    if (name && query) statementText.set(name.text, shortText(query.text));
  } else if (type === 0x42 /* Bind */) {
    const portal = cstringAt(buf, start, end);
    const name = portal && cstringAt(buf, portal.next, end);
    if (name) {
      const text = statementText.get(name.text) ?? `(statement ${name.text})`;
      pgByStatement[text] = (pgByStatement[text] ?? 0) + 1;
    }
  } else if (type === 0x51 /* Query */) {
    const query = cstringAt(buf, start, end);
    if (query) pgByStatement[shortText(query.text)] = (pgByStatement[shortText(query.text)] ?? 0) + 1;
  }
}

function redisCommands(buf: Buffer): void {
  let i = 0;
  while (i < buf.length && buf[i] === 0x2a /* '*' */) {
    const eol = buf.indexOf(13, i);
    if (eol < 0) return;
    const items = Number(buf.toString('latin1', i + 1, eol));
    wire.redisCommands += 1;
    i = eol + 2;
    let name = '';
    for (let k = 0; k < items && i < buf.length; k++) {
      const end = buf.indexOf(13, i);
      if (end < 0) return;
      const length = Number(buf.toString('latin1', i + 1, end));
      // The command, and for a script its hash's first characters (which script is told by the hub's own counts).
      if (countStatements && k === 0) name = buf.toString('latin1', end + 2, end + 2 + length).toUpperCase();
      else if (countStatements && k === 1 && name === 'EVALSHA') name += ` ${buf.toString('latin1', end + 2, end + 2 + Math.min(length, 8))}`;
      i = end + 2 + length + 2;
    }
    if (countStatements) pgByStatement[`redis: ${name}`] = (pgByStatement[`redis: ${name}`] ?? 0) + 1;
  }
}

function countWire(ports: { pg: number; redis: number }): void {
  if (wirePorts) {
    wirePorts = ports;
    return;
  }
  wirePorts = ports;
  const write = Socket.prototype.write;
  Socket.prototype.write = function countedWrite(this: Socket, chunk: unknown, ...rest: unknown[]) {
    let state = socketKind.get(this);
    if (!state) {
      const port = outgoingPort.get(this);
      if (port === undefined) return (write as (...args: unknown[]) => boolean).call(this, chunk, ...rest);
      state = { kind: port === wirePorts!.pg ? 'pg' : port === wirePorts!.redis ? 'redis' : 'other', skip: 0 };
      socketKind.set(this, state);
    }
    if (state && state.kind !== 'other') {
      const buf = typeof chunk === 'string' ? Buffer.from(chunk, 'latin1') : Buffer.isBuffer(chunk) ? chunk : null;
      if (state.kind === 'pg') {
        wire.pgWrites += 1;
        if (buf) pgMessages(state, buf);
      } else {
        wire.redisWrites += 1;
        if (buf) redisCommands(buf);
      }
    }
    return (write as (...args: unknown[]) => boolean).call(this, chunk, ...rest);
  } as typeof Socket.prototype.write;
}

/** V8's CPU profiler (what --cpu-prof uses), started and stopped for one measured window. */
let profiler: Session | null = null;

serveRpc({
  profileStart: async ({ intervalUs = 1000, allocations = false }: { intervalUs?: number; allocations?: boolean } = {}) => {
    profiler = new Session();
    profiler.connect();
    await profiler.post('Profiler.enable');
    await profiler.post('Profiler.setSamplingInterval', { interval: intervalUs });
    if (allocations) {
      // Objects the collector has already freed are kept in the samples: what is allocated, not what survives.
      await profiler.post('HeapProfiler.enable');
      await profiler.post('HeapProfiler.startSampling', { samplingInterval: 16384, includeObjectsCollectedByMajorGC: true, includeObjectsCollectedByMinorGC: true });
    }
    await profiler.post('Profiler.start');
    return true;
  },
  profileStop: async ({ path, allocationsPath }: { path: string; allocationsPath?: string }) => {
    if (!profiler) return false;
    const { profile } = await profiler.post('Profiler.stop');
    if (allocationsPath) {
      const { profile: allocated } = await profiler.post('HeapProfiler.stopSampling');
      writeFileSync(allocationsPath, JSON.stringify(allocated));
    }
    profiler.disconnect();
    profiler = null;
    writeFileSync(path, JSON.stringify(profile));
    return true;
  },
  stats: () => stats(),
  /** Starts counting PostgreSQL and Redis round trips on the wire (see countWire); answers the totals so far. */
  countWire: (ports: { pg: number; redis: number; statements?: boolean }) => {
    countWire(ports);
    if (ports.statements) countStatements = true;
    return { ...wire };
  },
  wire: () => ({ ...wire }),
  /** Executions so far by statement text (see countWire). */
  pgByStatement: () => ({ ...pgByStatement }),
  /** Starts a new measurement window for lag and CPU. */
  reset: () => {
    histogram.reset();
    gc = { minorCount: 0, minorMs: 0, majorCount: 0, majorMs: 0, maxPauseMs: 0 };
    cpuAt = process.cpuUsage();
    wallAt = performance.now();
    oldGenerationAt = oldGenerationBytes();
    return true;
  },
  gc: async () => {
    const gc = (globalThis as { gc?: () => void }).gc;
    if (!gc) return false;
    for (let i = 0; i < 3; i++) {
      gc();
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    return true;
  },
});
