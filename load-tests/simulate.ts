/**
 * Driver simulator, for demos and load:
 *
 *   npm run simulate -- --drivers 50 [--url http://127.0.0.1:3000] [--admin-token T]
 *     [--orders-per-minute 30 --webhook-secret whsec_...] [--duration-s 60]
 *     [--centre 52.52,13.405] [--radius-km 3] [--speed 10] [--ping-ms 1000]
 *
 * Creates drivers through the admin API, connects each like a driver app (Socket.IO, websocket
 * transport), puts them on duty and drives them between random waypoints around the centre. An
 * assignment is played through: drive to the pickup, PICKED_UP, drive to the dropoff, DELIVERED.
 * With a webhook secret it also posts signed "seller order ready" webhooks at the given rate.
 * Stops by itself after --duration-s (or on Ctrl+C) and prints a summary.
 */
import { randomUUID } from 'node:crypto';
import { parseArgs } from 'node:util';
import { io, type Socket } from 'socket.io-client';
import { signWebhook } from '../shared/src/webhooks.js';

interface Point {
  lat: number;
  lng: number;
}

interface Options {
  drivers: number;
  url: string;
  adminToken: string;
  ordersPerMinute: number;
  webhookSecret: string | undefined;
  durationS: number;
  centre: Point;
  radiusKm: number;
  speed: number;
  pingMs: number;
}

const EARTH_M_PER_DEG_LAT = 111_320;

function fail(message: string): never {
  console.error(`simulate: ${message}`);
  process.exit(2);
}

function positiveNumber(name: string, raw: string | undefined, fallback: number, { integer = false, allowZero = false } = {}): number {
  if (raw === undefined) return fallback;
  const n = Number(raw);
  if (!Number.isFinite(n) || n < 0 || (!allowZero && n === 0) || (integer && !Number.isInteger(n))) {
    fail(`--${name} must be a ${integer ? 'whole ' : ''}number${allowZero ? '' : ' above 0'}, got "${raw}"`);
  }
  return n;
}

function parseOptions(argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    options: {
      drivers: { type: 'string' },
      url: { type: 'string' },
      'admin-token': { type: 'string' },
      'orders-per-minute': { type: 'string' },
      'webhook-secret': { type: 'string' },
      'duration-s': { type: 'string' },
      centre: { type: 'string' },
      center: { type: 'string' },
      'radius-km': { type: 'string' },
      speed: { type: 'string' },
      'ping-ms': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help) {
    console.log('usage: npm run simulate -- --drivers N [--url URL] [--admin-token T] [--orders-per-minute M --webhook-secret whsec_...] [--duration-s S] [--centre lat,lng] [--radius-km R] [--speed m/s] [--ping-ms MS]');
    process.exit(0);
  }
  const adminToken = values['admin-token'] ?? process.env.ADMIN_TOKEN;
  if (!adminToken) fail('an admin token is needed to create drivers: --admin-token or ADMIN_TOKEN');
  const webhookSecret = values['webhook-secret'] ?? process.env.WEBHOOK_SECRET?.split(/\s+/)[0];
  const ordersPerMinute = positiveNumber('orders-per-minute', values['orders-per-minute'], 0, { allowZero: true });
  if (ordersPerMinute > 0 && !webhookSecret) fail('--orders-per-minute needs --webhook-secret (or WEBHOOK_SECRET) to sign the webhooks');
  const centreRaw = values.centre ?? values.center ?? '52.52,13.405';
  const [lat, lng] = centreRaw.split(',').map(Number);
  if (!Number.isFinite(lat) || !Number.isFinite(lng) || Math.abs(lat) > 85 || Math.abs(lng) > 180) fail(`--centre must be "lat,lng", got "${centreRaw}"`);
  return {
    drivers: positiveNumber('drivers', values.drivers, 10, { integer: true }),
    url: (values.url ?? process.env.HUB_URL ?? 'http://127.0.0.1:3000').replace(/\/+$/, ''),
    adminToken,
    ordersPerMinute,
    webhookSecret,
    durationS: positiveNumber('duration-s', values['duration-s'], 60),
    centre: { lat, lng },
    radiusKm: positiveNumber('radius-km', values['radius-km'], 3),
    speed: positiveNumber('speed', values.speed, 10),
    pingMs: positiveNumber('ping-ms', values['ping-ms'], 1000, { integer: true }),
  };
}

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
function randomPoint(centre: Point, radiusKm: number): Point {
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

const stats = {
  driversCreated: 0,
  driversConnected: 0,
  connectErrors: 0,
  reconnects: 0,
  pingsSent: 0,
  pingsAcked: 0,
  pingsRefused: 0,
  assignments: 0,
  pickedUp: 0,
  delivered: 0,
  cancelled: 0,
  updatesRefused: 0,
  orders: { sent: 0, assigned: 0, pending: 0, failed: 0 },
};
const refusalCodes = new Map<string, number>();
function refused(code: string | undefined): void {
  const key = code ?? 'TIMEOUT';
  refusalCodes.set(key, (refusalCodes.get(key) ?? 0) + 1);
}

type Ack = { ok: true; [k: string]: unknown } | { ok: false; error: { code: string; message: string } };

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
  private readonly seenAssignments = new Set<string>();
  private timer: NodeJS.Timeout | null = null;
  private readonly speed: number;
  private busyUpdating = false;
  socket: Socket | null = null;

  constructor(
    readonly id: string,
    private readonly token: string,
    private readonly opts: Options,
  ) {
    this.position = randomPoint(opts.centre, opts.radiusKm);
    // Not every driver keeps the same pace.
    this.speed = opts.speed * (0.8 + Math.random() * 0.4);
  }

  connect(): Promise<void> {
    return new Promise((resolve) => {
      const socket = io(`${this.opts.url}/drivers`, {
        transports: ['websocket'],
        auth: { token: this.token },
        reconnectionDelay: 500,
        reconnectionDelayMax: 5000,
      });
      this.socket = socket;
      let first = true;
      socket.on('session', async (session: { status: string; activeDelivery: (Job & Record<string, unknown>) | null }) => {
        if (first) {
          first = false;
          stats.driversConnected += 1;
          resolve();
        } else {
          stats.reconnects += 1;
        }
        if (session.activeDelivery) this.assign(session.activeDelivery as never);
        // The hub places an AVAILABLE driver where it last was, so report the position before going on duty.
        this.emit('location', this.fix());
        if (session.status === 'OFFLINE') {
          const reply = await this.emit('status', { status: 'AVAILABLE' });
          if (!reply.ok) refused(reply.error.code);
        }
      });
      socket.on('assignment', (a: { deliveryId: string; pickup: Point; dropoff: Point }) => this.assign(a));
      socket.on('delivery:cancelled', ({ deliveryId }: { deliveryId: string }) => {
        if (this.job?.deliveryId !== deliveryId) return;
        stats.cancelled += 1;
        this.job = null;
        this.waypoints = [];
      });
      socket.on('connect_error', (err: Error & { data?: { code?: string } }) => {
        stats.connectErrors += 1;
        // A refused handshake is final; a network error is retried by the client.
        if (!socket.active) {
          refused(err.data?.code ?? err.message);
          resolve();
        }
      });
    });
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
    if (this.socket?.connected) await this.emit('status', { status: 'OFFLINE' }, 2000);
    this.socket?.disconnect();
  }

  private assign(a: { deliveryId: string; pickup: Point; dropoff: Point }): void {
    if (this.job?.deliveryId === a.deliveryId) return;
    if (!this.seenAssignments.has(a.deliveryId)) {
      this.seenAssignments.add(a.deliveryId);
      stats.assignments += 1;
    }
    this.job = { deliveryId: a.deliveryId, pickup: a.pickup, dropoff: a.dropoff, phase: 'TO_PICKUP' };
    this.waypoints = route(this.position, a.pickup);
  }

  private fix() {
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

  private emit(event: string, payload: unknown, timeoutMs = 5000): Promise<Ack> {
    return new Promise((resolve) => {
      if (!this.socket) return resolve({ ok: false, error: { code: 'NOT_CONNECTED', message: 'no socket' } });
      this.socket.timeout(timeoutMs).emit(event, payload, (err: Error | null, reply: Ack) => {
        resolve(err ? { ok: false, error: { code: 'TIMEOUT', message: err.message } } : reply);
      });
    });
  }

  private tick(): void {
    if (!this.socket?.connected) return;
    if (this.waypoints.length === 0 && !this.job) this.waypoints = route(this.position, randomPoint(this.opts.centre, this.opts.radiusKm));
    let budget = (this.speed * this.opts.pingMs) / 1000;
    while (budget > 0 && this.waypoints.length > 0) {
      const target = this.waypoints[0];
      const distance = metresBetween(this.position, target);
      this.position = stepTowards(this.position, target, budget);
      budget -= distance;
      if (budget >= 0) this.waypoints.shift();
    }
    stats.pingsSent += 1;
    this.emit('location', this.fix()).then((reply) => {
      if (reply.ok) stats.pingsAcked += 1;
      else {
        stats.pingsRefused += 1;
        refused(reply.error.code);
      }
    });
    if (this.job && this.waypoints.length === 0 && !this.busyUpdating) void this.arrived(this.job);
  }

  private async arrived(job: Job): Promise<void> {
    this.busyUpdating = true;
    try {
      const status = job.phase === 'TO_PICKUP' ? 'PICKED_UP' : 'DELIVERED';
      const reply = await this.emit('delivery:update', { deliveryId: job.deliveryId, status });
      if (this.job !== job) return; // cancelled meanwhile
      if (!reply.ok) {
        stats.updatesRefused += 1;
        refused(reply.error.code);
        // Cancelled or finished elsewhere: drop it and go back to cruising.
        if (reply.error.code !== 'TIMEOUT') this.job = null;
        return;
      }
      if (status === 'PICKED_UP') {
        stats.pickedUp += 1;
        job.phase = 'TO_DROPOFF';
        this.waypoints = route(this.position, job.dropoff);
      } else {
        stats.delivered += 1;
        this.job = null;
      }
    } finally {
      this.busyUpdating = false;
    }
  }
}

// ---------- hub calls ----------

async function adminCall<T>(opts: Options, method: string, path: string, body?: unknown): Promise<T> {
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

async function postOrder(opts: Options, runId: string, n: number): Promise<void> {
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
    const reply = (await res.json().catch(() => null)) as { status?: string; error?: { code: string } } | null;
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

async function main(): Promise<void> {
  const opts = parseOptions(process.argv.slice(2));
  const runId = randomUUID().slice(0, 8);
  const began = Date.now();

  const health = await fetch(`${opts.url}/health`, { signal: AbortSignal.timeout(5000) }).catch((err: Error) => fail(`hub not reachable at ${opts.url}: ${err.message}`));
  if (!health.ok) fail(`hub at ${opts.url} is unhealthy: ${health.status} ${await health.text()}`);

  console.log(`simulate: ${opts.drivers} drivers around ${opts.centre.lat},${opts.centre.lng} (r=${opts.radiusKm} km) for ${opts.durationS} s against ${opts.url}`);
  const created = await inBatches(Array.from({ length: opts.drivers }, (_, i) => i), 20, (i) =>
    adminCall<{ id: string; token: string }>(opts, 'POST', '/admin/drivers', { name: `Sim ${runId} ${String(i + 1).padStart(3, '0')}`, vehicle: 'bike' }),
  );
  const failures = created.filter((r) => r.status === 'rejected');
  if (failures.length === created.length) fail(`no driver could be created: ${(failures[0] as PromiseRejectedResult).reason.message}`);
  const drivers = created.flatMap((r) => (r.status === 'fulfilled' ? [new SimDriver(r.value.id, r.value.token, opts)] : []));
  stats.driversCreated = drivers.length;
  if (failures.length > 0) console.warn(`simulate: ${failures.length} drivers not created (${(failures[0] as PromiseRejectedResult).reason.message})`);

  await inBatches(drivers, 50, (d) => d.connect());
  for (const d of drivers) d.start();
  console.log(`simulate: ${stats.driversConnected}/${drivers.length} drivers connected in ${Date.now() - began} ms`);

  let orderTimer: NodeJS.Timeout | null = null;
  if (opts.ordersPerMinute > 0) {
    let n = 0;
    orderTimer = setInterval(() => void postOrder(opts, runId, ++n), 60_000 / opts.ordersPerMinute);
  }
  const progress = setInterval(() => {
    const elapsed = Math.round((Date.now() - began) / 1000);
    console.log(
      `simulate: ${elapsed}s pings ${stats.pingsAcked}/${stats.pingsSent} assignments ${stats.assignments} delivered ${stats.delivered} orders ${stats.orders.sent}`,
    );
  }, 10_000);

  await new Promise<void>((resolve) => {
    const done = setTimeout(resolve, opts.durationS * 1000);
    const early = () => {
      clearTimeout(done);
      resolve();
    };
    process.once('SIGINT', early);
    process.once('SIGTERM', early);
  });

  if (orderTimer) clearInterval(orderTimer);
  clearInterval(progress);
  await inBatches(drivers, 100, (d) => d.stop());

  const seconds = (Date.now() - began) / 1000;
  const summary = {
    seconds: Math.round(seconds),
    drivers: { created: stats.driversCreated, connected: stats.driversConnected, connectErrors: stats.connectErrors, reconnects: stats.reconnects },
    pings: { sent: stats.pingsSent, acked: stats.pingsAcked, refused: stats.pingsRefused, perSecond: Math.round(stats.pingsSent / seconds) },
    deliveries: { assignments: stats.assignments, pickedUp: stats.pickedUp, delivered: stats.delivered, cancelled: stats.cancelled, updatesRefused: stats.updatesRefused },
    orders: stats.orders,
    refusals: Object.fromEntries(refusalCodes),
  };
  console.log(JSON.stringify(summary, null, 2));
  process.exit(stats.driversConnected === 0 ? 1 : 0);
}

await main();
