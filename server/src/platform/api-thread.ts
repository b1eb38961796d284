import { type MessagePort, Worker } from 'node:worker_threads';
import { AggregatorRegistry, type Registry } from 'prom-client';
import type { Config } from './config.js';
import { type HubEventMap, HubEvents } from './hub-events.js';
import type { Logger } from './logger.js';

/**
 * The API thread: HTTP_PORT served by a worker thread with its own event loop, PostgreSQL pool and
 * Redis clients (API_THREAD=true). While the main thread takes a reconnect storm's handshakes in
 * turns of 100 ms and more, every await of a webhook on the main loop waits for one of those turns;
 * in its own thread it waits only for the stores. The thread is another hub node without sockets:
 * what it emits (a push for a driver, a delivery for the dispatchers' map) crosses to the main
 * thread, whose socket edges and push tracking take it as their own.
 */

/** What the main thread gives the API thread to start with. */
export interface ApiThreadData {
  config: Config;
  /** The main listener's port: tracking links name it when PUBLIC_URL is unset. */
  mainPort: number;
}

type ThreadMessage =
  | { kind: 'listening'; port: number }
  | { kind: 'event'; name: keyof HubEventMap; args: unknown[] }
  | { kind: 'metrics-request'; id: number }
  | { kind: 'metrics-reply'; id: number; json: MetricsJson };
type MainMessage = { kind: 'metrics-request'; id: number } | { kind: 'metrics-reply'; id: number; json: MetricsJson } | { kind: 'stop' };
type MetricsJson = Awaited<ReturnType<Registry['getMetricsAsJSON']>>;

/** How long /metrics waits for the other thread's part before answering with its own. */
const METRICS_WAIT_MS = 1000;
const RESTART_DELAYS_MS = [1000, 2000, 5000, 10_000];

export interface ApiThread {
  /** The port the thread listens on (a restarted thread listens there again). */
  port(): number;
  /** Both threads' metrics in one exposition. */
  metricsText(): Promise<string>;
  stop(): Promise<void>;
}

/** One side's half of the metrics exchange: asks the other side for its JSON, answers its requests. */
function metricsExchange(send: (message: MainMessage | ThreadMessage) => void, own: Registry) {
  const waiting = new Map<number, (json: MetricsJson | null) => void>();
  let nextId = 0;
  return {
    async combined(): Promise<string> {
      const id = nextId++;
      const theirs = await new Promise<MetricsJson | null>((resolve) => {
        const timer = setTimeout(() => {
          waiting.delete(id);
          resolve(null);
        }, METRICS_WAIT_MS);
        waiting.set(id, (json) => {
          clearTimeout(timer);
          resolve(json);
        });
        try {
          send({ kind: 'metrics-request', id });
        } catch {
          waiting.get(id)?.(null);
        }
      });
      const mine = await own.getMetricsAsJSON();
      // Series differ by their `thread` label, so merging adds none of them up.
      return theirs ? AggregatorRegistry.aggregate([mine, theirs]).metrics() : own.metrics();
    },
    async handle(message: MainMessage | ThreadMessage): Promise<void> {
      if (message.kind === 'metrics-request') {
        send({ kind: 'metrics-reply', id: message.id, json: await own.getMetricsAsJSON() });
      } else if (message.kind === 'metrics-reply') {
        waiting.get(message.id)?.(message.json);
        waiting.delete(message.id);
      }
    },
    cancelAll(): void {
      for (const resolve of waiting.values()) resolve(null);
      waiting.clear();
    },
  };
}

/**
 * Main thread: starts the API thread and resolves once it listens; restarts it (on the same port)
 * if it dies, since the sockets on this process must not go down with it.
 */
export async function startApiThread(deps: {
  entry: URL;
  data: ApiThreadData;
  logger: Logger;
  events: HubEvents;
  registry: Registry;
  /** Counts each restart of a thread that died. */
  restarted: () => void;
  shutdownTimeoutMs: number;
}): Promise<ApiThread> {
  const { entry, logger, events } = deps;
  let data = deps.data;
  let worker: Worker;
  let stopping = false;
  let restarts = 0;
  const metrics = metricsExchange((message) => worker.postMessage(message), deps.registry);

  const spawn = (): Promise<number> =>
    new Promise<number>((resolve, reject) => {
      let listening = false;
      worker = entry.pathname.endsWith('.ts')
        ? // Run from source (`npm start` under tsx): a worker's entry does not go through the loader
          // hooks its parent was started with, so the thread registers tsx's before importing it.
          new Worker(`import('tsx/esm/api').then(({ register }) => { register(); return import(${JSON.stringify(entry.href)}); })`, { eval: true, workerData: data })
        : new Worker(entry, { workerData: data });
      worker.on('message', (message: ThreadMessage) => {
        if (message.kind === 'event') {
          (events.emit as (name: string, ...args: unknown[]) => boolean)(message.name, ...message.args);
        } else if (message.kind === 'listening') {
          listening = true;
          restarts = 0;
          resolve(message.port);
        } else {
          metrics.handle(message).catch((err: unknown) => logger.warn({ err }, 'api thread: metrics exchange failed'));
        }
      });
      worker.on('error', (err) => logger.error({ err }, 'api thread failed'));
      worker.once('exit', (code) => {
        metrics.cancelAll();
        if (!listening) return reject(new Error(`the API thread exited with ${code} before it listened`));
        if (stopping) return;
        const delay = RESTART_DELAYS_MS[Math.min(restarts, RESTART_DELAYS_MS.length - 1)];
        restarts += 1;
        deps.restarted();
        logger.error({ code, restartInMs: delay }, 'api thread exited; restarting it');
        setTimeout(() => {
          if (stopping) return;
          spawn().catch((err: unknown) => logger.error({ err }, 'api thread did not restart'));
        }, delay).unref();
      });
    });

  const port = await spawn();
  // A restarted thread listens where the first one did, even when HTTP_PORT was 0.
  data = { ...data, config: { ...data.config, HTTP_PORT: port } };
  return {
    port: () => port,
    metricsText: () => metrics.combined(),
    async stop() {
      stopping = true;
      const exited = new Promise<void>((resolve) => {
        if (worker.threadId === -1) return resolve();
        worker.once('exit', () => resolve());
      });
      worker.postMessage({ kind: 'stop' } satisfies MainMessage);
      const bound = new Promise<'late'>((resolve) => setTimeout(() => resolve('late'), deps.shutdownTimeoutMs + 1000).unref());
      if ((await Promise.race([exited, bound])) === 'late') await worker.terminate();
    },
  };
}

/** API thread: its link to the main thread. */
export interface MainThreadLink {
  /** Events emitted in the API thread are handled by the main thread's listeners, not this thread's. */
  events: HubEvents;
  metricsText(): Promise<string>;
  listening(port: number): void;
  /** Resolves when the main thread asks this thread to stop. */
  stopRequested: Promise<void>;
}

export function connectToMainThread(port: MessagePort, registry: Registry): MainThreadLink {
  const events = new HubEvents();
  events.emit = ((name: keyof HubEventMap, ...args: unknown[]) => {
    port.postMessage({ kind: 'event', name, args } satisfies ThreadMessage);
    return true;
  }) as HubEvents['emit'];
  const metrics = metricsExchange((message) => port.postMessage(message), registry);
  let stopRequested!: () => void;
  const stopped = new Promise<void>((resolve) => (stopRequested = resolve));
  port.on('message', (message: MainMessage) => {
    if (message.kind === 'stop') return stopRequested();
    metrics.handle(message).catch(() => {});
  });
  return {
    events,
    metricsText: () => metrics.combined(),
    listening: (listeningPort) => port.postMessage({ kind: 'listening', port: listeningPort } satisfies ThreadMessage),
    stopRequested: stopped,
  };
}
