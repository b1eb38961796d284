/**
 * The latency prober, a child process of its own with a few sample drivers (socket.io-client):
 *
 * - mode `geo`: a sample driver sends a position that differs from its previous one by ~110 m,
 *   and the prober polls GEOPOS for the outstanding samples (one pipelined call every ~1 ms) until
 *   Redis shows the new position: ping -> visible in `drivers:geo`.
 * - mode `moved`: sample drivers on some nodes, a dispatcher on another; each probe position is
 *   unique, and the latency is from the emit to the `drivers:moved` entry carrying it at the
 *   dispatcher. The entry's `ts` (server receive time) splits it into client->node and node->map.
 *
 * Probes per sample driver are spaced `intervalMs` apart (random phase), and a driver never has
 * two probes outstanding, so the hub's "newest fix per tick" coalescing never hides one.
 */
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { Redis } from 'ioredis';
import { io, type Socket } from 'socket.io-client';
import { serveRpc, wallMs } from './lib.js';

export interface ProberInit {
  mode: 'geo' | 'moved';
  /** Per sample driver: the node URL it connects to, its token, its driver id (GEO member). */
  samples: { url: string; token: string; id: string; lat: number; lng: number }[];
  /** Hub: wait for `session`, then go AVAILABLE. Baseline: plain connect. */
  hub: boolean;
  redisUrl?: string;
  geoKey?: string;
  dispatcher?: { url: string; token: string };
}

interface Sample {
  id: string;
  socket: Socket;
  baseLat: number;
  lng: number;
  seq: number;
  pending: { lat: number; t0: number } | null;
}

const lag = monitorEventLoopDelay({ resolution: 10 });
lag.enable();

let config: ProberInit;
let samples: Sample[] = [];
let dispatcher: Socket | null = null;
let redis: Redis | null = null;
let latencies: number[] = [];
let nodeLegs: number[] = [];
let mapLegs: number[] = [];
let timeouts = 0;
let movedMessages = 0;
let movedEntries = 0;
let running = false;

function connectSocket(url: string, namespace: string, token: string, waitFor: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = io(`${url}${namespace}`, { transports: ['websocket'], auth: { token }, reconnection: false, forceNew: true, timeout: 20_000 });
    const timer = setTimeout(() => reject(new Error(`no ${waitFor} within 20 s`)), 20_000);
    socket.once(waitFor, () => {
      clearTimeout(timer);
      resolve(socket);
    });
    socket.once('connect_error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

function onMoved(moves: { id: string; lat: number; ts: number }[]): void {
  const at = wallMs();
  movedMessages += 1;
  movedEntries += moves.length;
  if (!running) return;
  for (const move of moves) {
    const sample = byId.get(move.id);
    if (!sample?.pending || sample.pending.lat !== move.lat) continue;
    latencies.push(at - sample.pending.t0);
    nodeLegs.push(move.ts - sample.pending.t0);
    mapLegs.push(at - move.ts);
    sample.pending = null;
  }
}

const byId = new Map<string, Sample>();

async function pollGeo(): Promise<void> {
  for (;;) {
    const waiting = samples.filter((s) => s.pending);
    if (!running && waiting.length === 0) return;
    if (waiting.length > 0 && redis) {
      const reply = (await redis.geopos(config.geoKey!, ...waiting.map((s) => s.id))) as ([string, string] | null)[];
      const at = wallMs();
      waiting.forEach((sample, i) => {
        const pos = reply[i];
        const pending = sample.pending;
        if (!pending) return;
        if (pos && Math.abs(Number(pos[1]) - pending.lat) < 0.0002) {
          latencies.push(at - pending.t0);
          sample.pending = null;
        } else if (at - pending.t0 > 3000) {
          timeouts += 1;
          sample.pending = null;
        }
      });
    }
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
}

function probe(sample: Sample): void {
  if (sample.pending) {
    if (config.mode === 'moved' && wallMs() - sample.pending.t0 > 5000) {
      timeouts += 1;
      sample.pending = null;
    } else return;
  }
  sample.seq += 1;
  const lat =
    config.mode === 'geo'
      ? Number((sample.baseLat + (sample.seq % 2) * 0.001).toFixed(6))
      : Number((sample.baseLat + (sample.seq % 500) * 0.00001).toFixed(6));
  sample.pending = { lat, t0: wallMs() };
  sample.socket.emit('location', { lat, lng: sample.lng });
}

serveRpc({
  async init(args: ProberInit) {
    config = args;
    if (args.redisUrl) redis = new Redis(args.redisUrl, { enableAutoPipelining: false });
    const sockets = await Promise.all(args.samples.map((s) => connectSocket(s.url, '/drivers', s.token, args.hub ? 'session' : 'connect')));
    samples = sockets.map((socket, i) => ({ id: args.samples[i].id, socket, baseLat: args.samples[i].lat, lng: args.samples[i].lng, seq: 0, pending: null }));
    for (const s of samples) byId.set(s.id, s);
    if (args.hub) {
      for (const s of samples) {
        const reply = await s.socket.timeout(20_000).emitWithAck('status', { status: 'AVAILABLE' });
        if (!reply?.ok) throw new Error(`status refused: ${JSON.stringify(reply)}`);
      }
    }
    for (const s of samples) {
      const reply = await s.socket.timeout(20_000).emitWithAck('location', { lat: s.baseLat, lng: s.lng });
      if (!reply?.ok) throw new Error(`location refused: ${JSON.stringify(reply)}`);
    }
    if (args.dispatcher) {
      dispatcher = await connectSocket(args.dispatcher.url, '/dispatch', args.dispatcher.token, 'snapshot');
      dispatcher.on('drivers:moved', onMoved);
    }
    return { samples: samples.length };
  },

  /** Runs probes for `durationMs`; returns the raw latencies (ms) and what went missing. */
  async run({ durationMs, intervalMs }: { durationMs: number; intervalMs: number }) {
    latencies = [];
    nodeLegs = [];
    mapLegs = [];
    timeouts = 0;
    movedMessages = 0;
    movedEntries = 0;
    lag.reset();
    running = true;
    const poller = config.mode === 'geo' ? pollGeo() : Promise.resolve();
    const timers: NodeJS.Timeout[] = [];
    for (const sample of samples) {
      const start = setTimeout(() => {
        probe(sample);
        timers.push(setInterval(() => probe(sample), intervalMs));
      }, Math.random() * intervalMs);
      timers.push(start);
    }
    await new Promise((resolve) => setTimeout(resolve, durationMs));
    for (const t of timers) clearTimeout(t);
    // Let outstanding probes finish (bounded).
    const deadline = wallMs() + 5000;
    while (samples.some((s) => s.pending) && wallMs() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
    running = false;
    await poller;
    const unanswered = samples.filter((s) => s.pending).length;
    for (const s of samples) s.pending = null;
    return {
      latencies,
      nodeLegs,
      mapLegs,
      timeouts: timeouts + unanswered,
      movedMessages,
      movedEntries,
      proberLagP99Ms: Math.max(0, lag.percentile(99) / 1e6 - 10),
    };
  },

  close() {
    for (const s of samples) s.socket.disconnect();
    dispatcher?.disconnect();
    redis?.disconnect();
    return true;
  },
});
