/**
 * The driver simulation behind `npm run simulate` and `npm run demo`: drivers created through the
 * admin API, each one a driver client (createDriverClient, as a real app would use it), on duty and
 * driving between random waypoints around a centre; an assignment is played through (drive to the
 * pickup, PICKED_UP, drive to the dropoff, DELIVERED). With a webhook secret it also posts signed
 * "seller order ready" webhooks at the given rate.
 */
import { randomUUID } from 'node:crypto';
import { type ActiveDelivery, type DriverClient, type LocationInput, createDriverClient } from '#shared/driver-client/index.js';
import { DriverClientError } from '#shared/driver-client/index.js';
import { signWebhook } from '#shared/webhooks.js';

export interface Point {
  lat: number;
  lng: number;
}

export interface SimulationOptions {
  drivers: number;
  url: string;
  adminToken: string;
  /** 0: no orders. */
  ordersPerMinute: number;
  /** Needed when ordersPerMinute > 0: the secret the webhooks are signed with. */
  webhookSecret: string | undefined;
  centre: Point;
  radiusKm: number;
  /** Metres per second (each driver varies it by ±20 %). */
  speed: number;
  pingMs: number;
  /** Prefix of the created drivers' names. */
  namePrefix?: string;
}

export interface SimulationStats {
  driversCreated: number;
  driversConnected: number;
  connectErrors: number;
  reconnects: number;
  pingsSent: number;
  pingsConfirmed: number;
  pingsDropped: number;
  assignments: number;
  pickedUp: number;
  delivered: number;
  cancelled: number;
  updatesRefused: number;
  orders: { sent: number; assigned: number; pending: number; failed: number };
  /** Refusals and failures by code: hub error codes, TIMEOUT, DISCONNECTED, HTTP_<status>, NETWORK. */
  refusals: Record<string, number>;
}

export interface SimulationSummary {
  seconds: number;
  drivers: { created: number; connected: number; connectErrors: number; reconnects: number };
  pings: { sent: number; confirmed: number; dropped: number; perSecond: number };
  deliveries: { assignments: number; pickedUp: number; delivered: number; cancelled: number; updatesRefused: number };
  orders: SimulationStats['orders'];
  refusals: Record<string, number>;
}

export interface Simulation {
  /** Live counters; read them at any time. */
  readonly stats: SimulationStats;
  /** Stops the orders, takes every driver off duty, closes every client. Safe to call twice. */
  stop(): Promise<SimulationSummary>;
}

const EARTH_M_PER_DEG_LAT = 111_320;

// ---------- geometry (equirectangular: plenty at city scale) ----------

function metresBetween(a: Point, b: Point): number {
  const dLat = (b.lat - a.lat) * EARTH_M_PER_DEG_LAT;
  const dLng = (b.lng - a.lng) * EARTH_M_PER_DEG_LAT * Math.cos((a.lat * Math.PI) / 180);
  return Math.hypot(dLat, dLng);
}

function bearingDeg(a: Point, b: Point): number {
  const dLat = b.lat - a.lat;
  const dLng = (b.lng - a.lng) * Math.cos((a.lat * Math.PI) / 180);
  return ((Math.atan2(dLng, dLat) * 180) / Math.PI + 360) % 360;
}

function stepTowards(from: Point, to: Point, metres: number): Point {
  const total = metresBetween(from, to);
  if (total <= metres || total === 0) return { ...to };
  const f = metres / total;
  return { lat: from.lat + (to.lat - from.lat) * f, lng: from.lng + (to.lng - from.lng) * f };
}

/** Uniform over the disc, not clustered at the centre. */
export function randomPoint(centre: Point, radiusKm: number): Point {
  const r = radiusKm * 1000 * Math.sqrt(Math.random());
  const theta = Math.random() * 2 * Math.PI;
  return {
    lat: centre.lat + (r * Math.cos(theta)) / EARTH_M_PER_DEG_LAT,
    lng: centre.lng + (r * Math.sin(theta)) / (EARTH_M_PER_DEG_LAT * Math.cos((centre.lat * Math.PI) / 180)),
  };
}

/**
 * A city-like path to a destination: along one axis first, then the other, like a street grid,
 * rather than as the crow flies.
 */
function route(from: Point, to: Point): Point[] {
  return Math.random() < 0.5 ? [{ lat: to.lat, lng: from.lng }, to] : [{ lat: from.lat, lng: to.lng }, to];
}

// ---------- bookkeeping ----------

function emptyStats(): SimulationStats {
  return {
    driversCreated: 0,
    driversConnected: 0,
    connectErrors: 0,
    reconnects: 0,
    pingsSent: 0,
    pingsConfirmed: 0,
    pingsDropped: 0,
    assignments: 0,
    pickedUp: 0,
    delivered: 0,
    cancelled: 0,
    updatesRefused: 0,
    orders: { sent: 0, assigned: 0, pending: 0, failed: 0 },
    refusals: {},
  };
}

function codeOf(err: unknown): string {
  return err instanceof DriverClientError ? err.code : 'INTERNAL';
}

interface Job {
  deliveryId: string;
  pickup: Point;
  dropoff: Point;
  phase: 'TO_PICKUP' | 'TO_DROPOFF';
}

// ---------- one simulated driver ----------

class SimDriver {
  position: Point;
  private waypoints: Point[] = [];
  private job: Job | null = null;
  private timer: NodeJS.Timeout | null = null;
  private readonly speed: number;
  private busyUpdating = false;
  private everConnected = false;
  readonly client: DriverClient;

  constructor(
    readonly id: string,
    token: string,
    private readonly opts: SimulationOptions,
    private readonly stats: SimulationStats,
    private readonly refused: (code: string) => void,
  ) {
    this.position = randomPoint(opts.centre, opts.radiusKm);
    // Not every driver keeps the same pace.
    this.speed = opts.speed * (0.8 + Math.random() * 0.4);
    this.client = createDriverClient({ url: opts.url, token, backoff: { baseMs: 500, capMs: 5000 } });
    this.client.on('connection', (change) => {
      if (change.state !== 'connected') return;
      if (this.everConnected) stats.reconnects += 1;
      else stats.driversConnected += 1;
      this.everConnected = true;
    });
    this.client.on('session', (session) => void this.onSession(session.status));
    // The client acknowledges a push once these return; a re-sent one does not reach them again.
    this.client.on('assignment', (job) => this.assign(job));
    this.client.on('cancelled', ({ deliveryId }) => {
      if (this.job?.deliveryId !== deliveryId) return;
      stats.cancelled += 1;
      this.dropJob();
    });
    this.client.on('locations', ({ confirmed, dropped }) => {
      stats.pingsConfirmed += confirmed;
      stats.pingsDropped += dropped;
    });
    this.client.on('error', (err) => {
      // Refused handshakes come here; a refused token ends the client.
      if (err.code !== 'HANDLER_FAILED') stats.connectErrors += 1;
      refused(err.code);
    });
  }

  /** Resolves once connected (or when the hub refused for good, or after `timeoutMs`). */
  ready(timeoutMs: number): Promise<void> {
    return this.client.ready({ timeoutMs }).then(
      () => {},
      (err) => this.refused(codeOf(err)),
    );
  }

  start(): void {
    // Spread the pings over the interval instead of all drivers pinging in the same millisecond.
    const offset = Math.random() * this.opts.pingMs;
    this.timer = setTimeout(() => {
      this.tick();
      this.timer = setInterval(() => this.tick(), this.opts.pingMs);
    }, offset);
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    if (this.client.state.connection === 'connected') await this.client.setStatus('OFFLINE', { timeoutMs: 2000 }).catch(() => {});
    this.client.close();
  }

  /** After every (re)connect the hub's session is the truth: its job replaces ours, its duty ours. */
  private async onSession(status: string): Promise<void> {
    const active = this.client.state.activeDelivery;
    if (active) this.assign(active);
    else if (this.job) this.dropJob();
    // The hub places an AVAILABLE driver where it last was, so report the position before going on duty.
    this.client.sendLocation(this.fix());
    this.stats.pingsSent += 1;
    if (status === 'OFFLINE') {
      await this.client.setStatus('AVAILABLE').catch((err) => this.refused(codeOf(err)));
    }
  }

  private assign(a: ActiveDelivery): void {
    if (this.job?.deliveryId === a.deliveryId) return;
    this.stats.assignments += 1;
    const phase = a.status === 'PICKED_UP' ? 'TO_DROPOFF' : 'TO_PICKUP';
    this.job = { deliveryId: a.deliveryId, pickup: a.pickup, dropoff: a.dropoff, phase };
    this.waypoints = route(this.position, phase === 'TO_PICKUP' ? a.pickup : a.dropoff);
  }

  private dropJob(): void {
    this.job = null;
    this.waypoints = [];
  }

  private fix(): LocationInput {
    const next = this.waypoints[0];
    return {
      lat: this.position.lat,
      lng: this.position.lng,
      heading: next ? Math.round(bearingDeg(this.position, next)) : 0,
      speed: next ? Math.round(this.speed * 10) / 10 : 0,
      accuracy: 5 + Math.round(Math.random() * 10),
      ts: Date.now(),
    };
  }

  private tick(): void {
    const connection = this.client.state.connection;
    if (connection === 'closed') return;
    if (this.waypoints.length === 0 && !this.job) this.waypoints = route(this.position, randomPoint(this.opts.centre, this.opts.radiusKm));
    let budget = (this.speed * this.opts.pingMs) / 1000;
    while (budget > 0 && this.waypoints.length > 0) {
      const target = this.waypoints[0];
      const distance = metresBetween(this.position, target);
      this.position = stepTowards(this.position, target, budget);
      budget -= distance;
      if (budget >= 0) this.waypoints.shift();
    }
    // Kept by the client across a disconnect and sent when it is back.
    this.client.sendLocation(this.fix());
    this.stats.pingsSent += 1;
    if (connection === 'connected' && this.job && this.waypoints.length === 0 && !this.busyUpdating) void this.arrived(this.job);
  }

  private async arrived(job: Job): Promise<void> {
    this.busyUpdating = true;
    const status = job.phase === 'TO_PICKUP' ? 'PICKED_UP' : 'DELIVERED';
    try {
      await this.client.updateDelivery({ deliveryId: job.deliveryId, status });
      if (this.job !== job) return; // cancelled meanwhile
      if (status === 'PICKED_UP') {
        this.stats.pickedUp += 1;
        job.phase = 'TO_DROPOFF';
        this.waypoints = route(this.position, job.dropoff);
      } else {
        this.stats.delivered += 1;
        this.dropJob();
      }
    } catch (err) {
      this.stats.updatesRefused += 1;
      const code = codeOf(err);
      this.refused(code);
      // Unknown whether it arrived: the next tick sends it again (updates are safe to repeat).
      // Otherwise it was cancelled or finished elsewhere: drop it and go back to cruising.
      if (this.job === job && code !== 'TIMEOUT' && code !== 'DISCONNECTED') this.dropJob();
    } finally {
      this.busyUpdating = false;
    }
  }
}

// ---------- hub calls ----------

async function adminCall<T>(opts: SimulationOptions, method: string, path: string, body?: unknown): Promise<T> {
  const res = await fetch(`${opts.url}${path}`, {
    method,
    headers: { authorization: `Bearer ${opts.adminToken}`, ...(body ? { 'content-type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
    signal: AbortSignal.timeout(10_000),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${text.slice(0, 200)}`);
  return JSON.parse(text) as T;
}

async function postOrder(opts: SimulationOptions, stats: SimulationStats, refused: (code: string) => void, runId: string, n: number): Promise<void> {
  const body = JSON.stringify({
    sellerOrderId: `sim-${runId}-${n}`,
    orderCode: `SIM${runId.slice(0, 4).toUpperCase()}${n}`,
    pickup: { ...randomPoint(opts.centre, opts.radiusKm), address: `Shop ${n}` },
    dropoff: { ...randomPoint(opts.centre, opts.radiusKm), address: `Customer ${n}` },
    customer: { name: `Customer ${n}` },
  });
  stats.orders.sent += 1;
  try {
    const res = await fetch(`${opts.url}/events/seller-order-ready`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...signWebhook(opts.webhookSecret!, `msg_${randomUUID()}`, Date.now() / 1000, body) },
      body,
      signal: AbortSignal.timeout(10_000),
    });
    const reply = (await res.json().catch(() => null)) as { error?: { code: string } } | null;
    if (res.status === 200) stats.orders.assigned += 1;
    else if (res.status === 202) stats.orders.pending += 1;
    else {
      stats.orders.failed += 1;
      refused(reply?.error?.code ?? `HTTP_${res.status}`);
    }
  } catch (err) {
    stats.orders.failed += 1;
    refused((err as Error).name === 'TimeoutError' ? 'TIMEOUT' : 'NETWORK');
  }
}

/** Runs `task` over `items` with at most `limit` at once: a thousand drivers must not be one burst. */
async function inBatches<T, R>(items: T[], limit: number, task: (item: T, index: number) => Promise<R>): Promise<PromiseSettledResult<R>[]> {
  const results: PromiseSettledResult<R>[] = new Array(items.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(limit, items.length) }, async () => {
      while (next < items.length) {
        const i = next++;
        results[i] = await task(items[i], i).then(
          (value) => ({ status: 'fulfilled', value }) as const,
          (reason) => ({ status: 'rejected', reason }) as const,
        );
      }
    }),
  );
  return results;
}

export class SimulationError extends Error {}

/**
 * Creates the drivers, connects them, puts them on duty and starts the orders. Resolves once every
 * driver is connected (or gave up); rejects with SimulationError when no driver could be created.
 */
export async function startSimulation(opts: SimulationOptions, { log = () => {} }: { log?: (line: string) => void } = {}): Promise<Simulation> {
  if (opts.ordersPerMinute > 0 && !opts.webhookSecret) throw new SimulationError('orders need a webhook secret to sign them');
  const stats = emptyStats();
  const refused = (code: string) => {
    stats.refusals[code] = (stats.refusals[code] ?? 0) + 1;
  };
  const runId = randomUUID().slice(0, 8);
  const began = Date.now();
  const prefix = opts.namePrefix ?? `Sim ${runId}`;

  const created = await inBatches(Array.from({ length: opts.drivers }, (_, i) => i), 20, (i) =>
    adminCall<{ id: string; token: string }>(opts, 'POST', '/admin/drivers', { name: `${prefix} ${String(i + 1).padStart(3, '0')}`, vehicle: 'bike' }),
  );
  const failures = created.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failures.length === created.length) throw new SimulationError(`no driver could be created: ${(failures[0]?.reason as Error)?.message}`);
  if (failures.length > 0) log(`${failures.length} drivers not created (${(failures[0].reason as Error).message})`);
  const drivers = created.flatMap((r) => (r.status === 'fulfilled' ? [new SimDriver(r.value.id, r.value.token, opts, stats, refused)] : []));
  stats.driversCreated = drivers.length;

  await Promise.all(drivers.map((d) => d.ready(20_000)));
  for (const d of drivers) d.start();
  log(`${stats.driversConnected}/${drivers.length} drivers connected in ${Date.now() - began} ms`);

  let orderTimer: NodeJS.Timeout | null = null;
  if (opts.ordersPerMinute > 0) {
    let n = 0;
    orderTimer = setInterval(() => void postOrder(opts, stats, refused, runId, ++n), 60_000 / opts.ordersPerMinute);
  }

  let stopping: Promise<SimulationSummary> | null = null;
  return {
    stats,
    stop() {
      stopping ??= (async () => {
        if (orderTimer) clearInterval(orderTimer);
        await inBatches(drivers, 100, (d) => d.stop());
        return summarize(stats, (Date.now() - began) / 1000);
      })();
      return stopping;
    },
  };
}

export function summarize(stats: SimulationStats, seconds: number): SimulationSummary {
  return {
    seconds: Math.round(seconds),
    drivers: { created: stats.driversCreated, connected: stats.driversConnected, connectErrors: stats.connectErrors, reconnects: stats.reconnects },
    pings: { sent: stats.pingsSent, confirmed: stats.pingsConfirmed, dropped: stats.pingsDropped, perSecond: Math.round(stats.pingsSent / Math.max(seconds, 0.001)) },
    deliveries: {
      assignments: stats.assignments,
      pickedUp: stats.pickedUp,
      delivered: stats.delivered,
      cancelled: stats.cancelled,
      updatesRefused: stats.updatesRefused,
    },
    orders: { ...stats.orders },
    refusals: { ...stats.refusals },
  };
}

/**
 * Runs a simulation until `durationS` passes or `signal` aborts, logging progress every
 * `progressMs`; resolves with the summary once every client is closed.
 */
export async function runSimulation(
  opts: SimulationOptions & { durationS: number },
  { signal, log = () => {}, progressMs = 10_000 }: { signal?: AbortSignal; log?: (line: string) => void; progressMs?: number } = {},
): Promise<SimulationSummary> {
  const began = Date.now();
  const simulation = await startSimulation(opts, { log });
  const { stats } = simulation;
  const progress = setInterval(() => {
    const elapsed = Math.round((Date.now() - began) / 1000);
    log(`${elapsed}s pings ${stats.pingsConfirmed}/${stats.pingsSent} assignments ${stats.assignments} delivered ${stats.delivered} orders ${stats.orders.sent}`);
  }, progressMs);
  await new Promise<void>((resolve) => {
    if (signal?.aborted) return resolve();
    const done = setTimeout(finish, opts.durationS * 1000);
    function finish() {
      clearTimeout(done);
      signal?.removeEventListener('abort', finish);
      resolve();
    }
    signal?.addEventListener('abort', finish, { once: true });
  });
  clearInterval(progress);
  return simulation.stop();
}
