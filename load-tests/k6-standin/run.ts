import { MessageChannel, type MessagePort, Worker } from 'node:worker_threads';
import WebSocket from 'ws';

/**
 * A stand-in for `k6 run`, enough to run the scripts in load-tests/k6/ against a real hub in
 * `npm test`: the k6 APIs they use (see load-tests/k6/README.md), one worker thread per VU with
 * blocking calls, the constant-vus and constant-arrival-rate executors, built-in and custom
 * metrics, checks and thresholds. It is not k6: see the README for what it does not prove.
 */

type MetricType = 'counter' | 'rate' | 'trend' | 'gauge';

interface MetricData {
  type: MetricType;
  isTime: boolean;
  values: number[];
}

export interface ThresholdResult {
  metric: string;
  expression: string;
  ok: boolean;
  /** The aggregate compared (null when the metric got no samples, which k6 does not fail either). */
  value: number | null;
  samples: number;
}

export interface K6RunResult {
  thresholds: ThresholdResult[];
  /** Per check name: passes and fails. */
  checks: Record<string, { passes: number; fails: number }>;
  counters: Record<string, number>;
  /** Iterations that threw (fail(), an exception): k6 logs them and goes on. */
  iterationErrors: string[];
  iterations: number;
  droppedIterations: number;
  metric(name: string): { type: MetricType; values: number[] } | undefined;
}

export interface K6RunOptions {
  script: string;
  env: Record<string, string>;
  /** Called with worker stderr/stdout-free log lines (the scripts' console.warn go to the process's stderr). */
  onError?: (message: string) => void;
}

function durationMs(text: string | undefined, fallback: number): number {
  if (!text) return fallback;
  const re = /(\d+(?:\.\d+)?)(ms|h|m|s)/g;
  const unit: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };
  let total = 0;
  for (const m of String(text).matchAll(re)) total += Number(m[1]) * unit[m[2]];
  return total || fallback;
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const rank = (p / 100) * (sorted.length - 1);
  const low = Math.floor(rank);
  const high = Math.ceil(rank);
  return sorted[low] + (sorted[high] - sorted[low]) * (rank - low);
}

function aggregate(data: MetricData, stat: string, elapsedSeconds: number): number | null {
  if (data.values.length === 0) return null;
  const sum = data.values.reduce((a, b) => a + b, 0);
  if (data.type === 'rate') return stat === 'rate' ? sum / data.values.length : null;
  if (data.type === 'counter') return stat === 'count' ? sum : stat === 'rate' ? sum / elapsedSeconds : null;
  if (data.type === 'gauge') return data.values[data.values.length - 1];
  const sorted = [...data.values].sort((a, b) => a - b);
  if (stat === 'avg') return sum / sorted.length;
  if (stat === 'min') return sorted[0];
  if (stat === 'max') return sorted[sorted.length - 1];
  if (stat === 'med') return percentile(sorted, 50);
  const p = /^p\((\d+(?:\.\d+)?)\)$/.exec(stat);
  if (p) return percentile(sorted, Number(p[1]));
  throw new Error(`threshold statistic ${stat} is not supported by the stand-in`);
}

function compare(value: number, op: string, bound: number): boolean {
  switch (op) {
    case '<':
      return value < bound;
    case '<=':
      return value <= bound;
    case '>':
      return value > bound;
    case '>=':
      return value >= bound;
    case '==':
    case '===':
      return value === bound;
    case '!=':
      return value !== bound;
    default:
      throw new Error(`threshold operator ${op} is not supported`);
  }
}

/** The main-thread side of one VU: does its network I/O and wakes it up when an answer is in. */
class VuHost {
  readonly worker: Worker;
  private readonly port: MessagePort;
  private readonly signal = new Int32Array(new SharedArrayBuffer(4));
  private readonly sockets = new Map<number, WebSocket>();
  private waiting: ((message: any) => void) | null = null;
  busy = false;
  ready: Promise<{ options: any; hasSetup: boolean }>;

  constructor(
    script: string,
    env: Record<string, string>,
    readonly vuId: number,
    private readonly onMetrics: (batch: [string, MetricType, number, boolean][]) => void,
  ) {
    const { port1, port2 } = new MessageChannel();
    this.port = port1;
    this.worker = new Worker(new URL('./vu-worker.mjs', import.meta.url), {
      workerData: { script, env, vuId, port: port2, signal: this.signal.buffer },
      transferList: [port2],
      execArgv: [],
    });
    this.ready = new Promise((resolve, reject) => {
      this.waiting = resolve;
      this.worker.once('error', reject);
    });
    this.port.on('message', (message) => this.onMessage(message));
  }

  private send(message: unknown): void {
    this.port.postMessage(message);
    Atomics.add(this.signal, 0, 1);
    Atomics.notify(this.signal, 0);
  }

  private onMessage(message: any): void {
    if (message.type === 'ready' || message.type === 'done') {
      if (message.metrics) this.onMetrics(message.metrics);
      const waiter = this.waiting;
      this.waiting = null;
      waiter?.(message);
    } else if (message.type === 'request') {
      void this.http(message);
    } else if (message.type === 'ws-open') {
      this.openSocket(message.sid, message.url, message.headers);
    } else if (message.type === 'ws-send') {
      const socket = this.sockets.get(message.sid);
      if (socket?.readyState === WebSocket.OPEN) socket.send(message.data);
    } else if (message.type === 'ws-close') {
      this.sockets.get(message.sid)?.close();
    }
  }

  private async http(request: { id: number; method: string; url: string; body: string | null; headers: Record<string, string>; timeoutMs: number }) {
    const started = performance.now();
    try {
      const res = await fetch(request.url, { method: request.method, headers: request.headers, body: request.body ?? undefined, signal: AbortSignal.timeout(request.timeoutMs) });
      const body = await res.text();
      const headers: Record<string, string> = {};
      res.headers.forEach((value, name) => {
        headers[name] = value;
      });
      this.send({ type: 'reply', id: request.id, status: res.status, body, headers, durationMs: performance.now() - started });
    } catch (err) {
      this.send({ type: 'reply', id: request.id, status: 0, body: '', headers: {}, error: (err as Error).message, durationMs: performance.now() - started });
    }
  }

  private openSocket(sid: number, url: string, headers: Record<string, string>) {
    const socket = new WebSocket(url, { headers });
    this.sockets.set(sid, socket);
    let closed = false;
    const event = (payload: object) => this.send({ type: 'ws', sid, ...payload });
    socket.on('upgrade', () => {});
    socket.on('open', () => event({ event: 'open', status: 101 }));
    socket.on('message', (data) => event({ event: 'message', data: data.toString() }));
    socket.on('unexpected-response', (_req, res) => {
      event({ event: 'error', message: `unexpected response ${res.statusCode}`, status: res.statusCode });
      socket.terminate();
    });
    socket.on('error', (err) => event({ event: 'error', message: err.message }));
    socket.on('close', (code) => {
      if (closed) return;
      closed = true;
      this.sockets.delete(sid);
      event({ event: 'close', code });
    });
  }

  /** Runs one command in the VU and resolves with its `done` message. */
  run(command: object): Promise<any> {
    this.busy = true;
    return new Promise((resolve) => {
      this.waiting = (message) => {
        this.busy = false;
        resolve(message);
      };
      this.send({ type: 'command', ...command });
    });
  }

  async stop(): Promise<void> {
    for (const socket of this.sockets.values()) socket.terminate();
    await this.worker.terminate();
  }
}

export async function runK6Script(opts: K6RunOptions): Promise<K6RunResult> {
  const metrics = new Map<string, MetricData>();
  const record = (batch: [string, MetricType, number, boolean][]) => {
    for (const [name, type, value, isTime] of batch) {
      let data = metrics.get(name);
      if (!data) metrics.set(name, (data = { type, isTime, values: [] }));
      data.values.push(value);
    }
  };
  const iterationErrors: string[] = [];
  const hosts: VuHost[] = [];
  const newHost = (vuId: number) => {
    const host = new VuHost(opts.script, opts.env, vuId, record);
    hosts.push(host);
    return host;
  };

  try {
    // VU 0 reads the options and runs setup(), as k6's init and setup steps do.
    const init = newHost(0);
    const { options, hasSetup } = await init.ready;
    let data: unknown = null;
    if (hasSetup) {
      const setup = await init.run({ cmd: 'setup' });
      if (setup.error) throw new Error(`setup() failed: ${setup.error}`);
      data = setup.data;
    }

    const scenarios = Object.entries((options.scenarios ?? {}) as Record<string, any>);
    if (scenarios.length !== 1) throw new Error('the stand-in runs scripts with exactly one scenario');
    const [scenarioName, scenario] = scenarios[0];
    const duration = durationMs(scenario.duration, 60_000);
    const gracefulStop = durationMs(scenario.gracefulStop, 30_000);
    const startTime = Date.now();
    const endAt = startTime + duration;
    let iterationInTest = 0;
    let iterations = 0;
    let dropped = 0;
    const inFlight = new Set<Promise<void>>();

    const iterate = (host: VuHost): Promise<void> => {
      const run = host
        .run({ cmd: 'iterate', data, iterationInTest: iterationInTest++, scenarioStartTime: startTime, scenario: scenarioName })
        .then((done) => {
          iterations += 1;
          if (done.error) {
            iterationErrors.push(done.error);
            opts.onError?.(done.error);
          }
        });
      inFlight.add(run);
      void run.finally(() => inFlight.delete(run));
      return run;
    };

    if (scenario.executor === 'constant-vus') {
      const vus = await Promise.all(
        Array.from({ length: scenario.vus ?? 1 }, async (_, i) => {
          const host = newHost(i + 1);
          await host.ready;
          return host;
        }),
      );
      for (const host of vus) {
        void (async () => {
          while (Date.now() < endAt) await iterate(host);
        })();
      }
    } else if (scenario.executor === 'constant-arrival-rate') {
      const perSecond = (scenario.rate ?? 1) / (durationMs(scenario.timeUnit, 1000) / 1000);
      const maxVUs = Math.max(scenario.maxVUs ?? scenario.preAllocatedVUs ?? 1, scenario.preAllocatedVUs ?? 1);
      const pool = await Promise.all(
        Array.from({ length: scenario.preAllocatedVUs ?? 1 }, async (_, i) => {
          const host = newHost(i + 1);
          await host.ready;
          return host;
        }),
      );
      const gap = 1000 / perSecond;
      for (let at = startTime; at < endAt; at += gap) {
        const wait = at - Date.now();
        if (wait > 0) await new Promise((r) => setTimeout(r, wait));
        const free = pool.find((h) => !h.busy);
        if (free) void iterate(free);
        else {
          // k6 starts more VUs up to maxVUs in the background; the iteration that found none is dropped.
          dropped += 1;
          if (pool.length < maxVUs) {
            const host = newHost(pool.length + 1);
            void host.ready.then(() => pool.push(host));
          }
        }
      }
    } else {
      throw new Error(`executor ${scenario.executor} is not supported by the stand-in`);
    }

    await new Promise((r) => setTimeout(r, Math.max(0, endAt - Date.now())));
    // gracefulStop: running iterations get this long to finish, then are interrupted.
    await Promise.race([Promise.all([...inFlight]), new Promise((r) => setTimeout(r, gracefulStop))]);
    const elapsedSeconds = (Date.now() - startTime) / 1000;
    if (dropped > 0) record([['dropped_iterations', 'counter', dropped, false]]);
    record([['iterations', 'counter', iterations, false]]);

    const thresholds: ThresholdResult[] = [];
    for (const [metric, expressions] of Object.entries((options.thresholds ?? {}) as Record<string, (string | { threshold: string })[]>)) {
      for (const entry of expressions) {
        const expression = typeof entry === 'string' ? entry : entry.threshold;
        const m = /^\s*([a-z]+|p\(\d+(?:\.\d+)?\))\s*(<=|>=|<|>|===|==|!=)\s*(-?\d+(?:\.\d+)?)\s*$/.exec(expression);
        if (!m) throw new Error(`threshold ${metric}: ${expression} is not understood by the stand-in`);
        const data = metrics.get(metric) ?? { type: 'counter' as MetricType, isTime: false, values: [] };
        const value = aggregate(data, m[1], elapsedSeconds);
        thresholds.push({ metric, expression, value, samples: data.values.length, ok: value === null ? true : compare(value, m[2], Number(m[3])) });
      }
    }

    const checks: Record<string, { passes: number; fails: number }> = {};
    const counters: Record<string, number> = {};
    for (const [name, data] of metrics) {
      if (name.startsWith('check::')) {
        const passes = data.values.filter((v) => v === 1).length;
        checks[name.slice('check::'.length)] = { passes, fails: data.values.length - passes };
      } else if (data.type === 'counter') counters[name] = data.values.reduce((a, b) => a + b, 0);
    }
    return {
      thresholds,
      checks,
      counters,
      iterationErrors,
      iterations,
      droppedIterations: dropped,
      metric: (name) => metrics.get(name),
    };
  } finally {
    await Promise.all(hosts.map((h) => h.stop()));
  }
}
