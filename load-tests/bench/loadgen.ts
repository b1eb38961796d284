/**
 * A load-generator child process: holds thousands of driver sockets and sends location pings at
 * the rate the parent sets. It speaks Socket.IO's wire protocol directly over `ws` (Engine.IO v4:
 * `40/drivers,{auth}` to join, `42/drivers,[...]` events, `43` acks, answers `2` with `3`), which
 * costs a fraction of socket.io-client's CPU, so more of the two cores is left to the server under
 * test. Mode `ws` talks to the raw-ws baseline: one JSON text message per ping, no protocol.
 */
import { monitorEventLoopDelay } from 'node:perf_hooks';
import WebSocket from 'ws';
import { emitEvent, serveRpc, wallMs } from './lib.js';

export interface LoadgenInit {
  label: string;
  mode: 'sio' | 'ws';
  /** http://host:port of the server under test. */
  url: string;
  namespace?: string;
  tokens: string[];
  /** One [lat, lng] per token. */
  positions: [number, number][];
  /** Hub: a socket is ready when the `session` event arrives (presence bookkeeping done). */
  waitSession: boolean;
  /**
   * How pings are sent: `plain` without an acknowledgement; `ack` each with one (a naive app and
   * server: one reply per ping); `seq` numbered and without one, confirmed by `location:stored`
   * now and then (the driver client's cumulative protocol).
   */
  protocol?: 'plain' | 'ack' | 'seq';
}

interface Conn {
  index: number;
  ws: WebSocket;
  ready: boolean;
  frames: [Buffer, Buffer];
  flip: number;
  nextAck: number;
  acks: Map<number, (reply: unknown) => void>;
}

const TEXT = { binary: false } as const;
const zeroMask = (mask: Buffer) => mask.fill(0);
const lag = monitorEventLoopDelay({ resolution: 10 });
lag.enable();

let init: LoadgenInit;
let prefix = '';
const conns: Conn[] = [];
let ready: Conn[] = [];
let closing = false;

const counters = { sent: 0, skipped: 0, missed: 0, disconnects: 0, connectErrors: 0, assignments: 0, pushes: 0, pingAcks: 0, storedConfirmations: 0 };
let assignments: [string, number][] = [];
let cpuAt = process.cpuUsage();
let wallAt = performance.now();

function locationFrame(lat: number, lng: number, ackId?: number): string {
  const body = `{"lat":${lat.toFixed(6)},"lng":${lng.toFixed(6)}}`;
  if (init.mode === 'ws') return body;
  return `42${prefix}${ackId ?? ''}["location",${body}]`;
}

/** A ping with an ack id (`ack`) or a fix number (`seq`): built per send, as the number changes. */
function numberedFrame(conn: Conn): string {
  const [lat, lng] = init.positions[conn.index];
  const d = conn.flip * 0.00001;
  const n = conn.nextAck++;
  const fix = `{"lat":${(lat + d).toFixed(6)},"lng":${(lng + d).toFixed(6)}${init.protocol === 'seq' ? `,"seq":${n}` : ''}}`;
  return init.protocol === 'ack' ? `42${prefix}${n}["location",${fix}]` : `42${prefix}["location",${fix}]`;
}

function handleText(conn: Conn, text: string, onReady: () => void, onError: (err: Error) => void): void {
  if (text === '2') {
    conn.ws.send('3');
    return;
  }
  if (text.charCodeAt(0) === 48 /* '0' */) {
    // Engine.IO open: join the namespace with the token.
    conn.ws.send(`40${prefix}${JSON.stringify({ token: init.tokens[conn.index] })}`);
    return;
  }
  if (text.startsWith(`42${prefix}`)) {
    let rest = text.slice(2 + prefix.length);
    // A push that asks for an acknowledgement carries its id before the array: answer it as an app does.
    const bracket = rest.indexOf('[');
    if (bracket > 0) {
      conn.ws.send(`43${prefix}${rest.slice(0, bracket)}[{"ok":true}]`);
      rest = rest.slice(bracket);
    }
    if (rest.startsWith('["location:stored"')) {
      counters.storedConfirmations += 1;
    } else if (rest.startsWith('["session"')) {
      if (init.waitSession) onReady();
    } else if (rest.startsWith('["assignment"')) {
      const at = wallMs();
      counters.pushes += 1;
      const [, payload] = JSON.parse(rest) as [string, { sellerOrderId: string }];
      counters.assignments += 1;
      assignments.push([payload.sellerOrderId, at]);
    }
    return;
  }
  if (text.startsWith(`43${prefix}`)) {
    const rest = text.slice(2 + prefix.length);
    const bracket = rest.indexOf('[');
    const id = Number(rest.slice(0, bracket));
    const waiter = conn.acks.get(id);
    if (waiter) {
      conn.acks.delete(id);
      waiter((JSON.parse(rest.slice(bracket)) as unknown[])[0]);
    } else counters.pingAcks += 1;
    return;
  }
  if (text.startsWith(`40${prefix}`)) {
    if (!init.waitSession) onReady();
    return;
  }
  if (text.startsWith(`44${prefix}`)) {
    onError(new Error(`connect_error ${text.slice(2 + prefix.length, 200)}`));
    return;
  }
  if (text.startsWith(`41${prefix}`)) conn.ws.terminate();
}

function open(index: number, timeoutMs: number): Promise<Conn> {
  const [lat, lng] = init.positions[index];
  const url =
    init.mode === 'sio'
      ? `${init.url.replace(/^http/, 'ws')}/socket.io/?EIO=4&transport=websocket`
      : init.url.replace(/^http/, 'ws');
  const ws = new WebSocket(url, { perMessageDeflate: false, generateMask: zeroMask, handshakeTimeout: timeoutMs });
  const conn: Conn = {
    index,
    ws,
    ready: false,
    frames: [Buffer.from(locationFrame(lat, lng)), Buffer.from(locationFrame(lat + 0.00001, lng + 0.00001))],
    flip: 0,
    nextAck: 1,
    acks: new Map(),
  };
  return new Promise<Conn>((resolve, reject) => {
    let settled = false;
    const timer = setTimeout(() => fail(new Error('timeout')), timeoutMs);
    const done = () => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      conn.ready = true;
      resolve(conn);
    };
    function fail(err: Error) {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      ws.terminate();
      reject(err);
    }
    ws.on('open', () => {
      if (init.mode === 'ws') done();
    });
    ws.on('message', (data: Buffer, isBinary: boolean) => {
      if (isBinary) return;
      if (data.length === 1 && data[0] === 0x32) {
        ws.send('3');
        return;
      }
      handleText(conn, data.toString(), done, fail);
    });
    ws.on('error', (err) => fail(err));
    ws.on('close', () => {
      if (!settled) fail(new Error('closed before ready'));
      else if (conn.ready) {
        conn.ready = false;
        if (!closing) counters.disconnects += 1;
      }
    });
  });
}

/** Emits an event with an ack; resolves with the ack body (or an error object on timeout). */
function emitWithAck(conn: Conn, event: string, payload: unknown, timeoutMs = 20_000): Promise<any> {
  return new Promise((resolve) => {
    const id = conn.nextAck++;
    const timer = setTimeout(() => {
      conn.acks.delete(id);
      resolve({ ok: false, error: { code: 'ACK_TIMEOUT' } });
    }, timeoutMs);
    conn.acks.set(id, (reply) => {
      clearTimeout(timer);
      resolve(reply);
    });
    conn.ws.send(`42${prefix}${id}${JSON.stringify([event, payload])}`);
  });
}

async function forEachLimited<T>(items: readonly T[], concurrency: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const workers = Array.from({ length: Math.min(concurrency, items.length) }, async () => {
    while (next < items.length) {
      const item = items[next++];
      await fn(item);
    }
  });
  await Promise.all(workers);
}

// --- pacing -------------------------------------------------------------------------------------

let rate = 0;
let rateStartedAt = 0;
let issuedSinceStart = 0;
let cursor = 0;
let pacer: NodeJS.Timeout | undefined;

function setRate(next: number): void {
  rate = Math.max(0, next);
  rateStartedAt = performance.now();
  issuedSinceStart = 0;
  if (rate > 0 && !pacer) pacer = setInterval(tick, 5);
  if (rate === 0 && pacer) {
    clearInterval(pacer);
    pacer = undefined;
  }
}

function tick(): void {
  if (rate <= 0 || ready.length === 0) return;
  const target = Math.floor((rate * (performance.now() - rateStartedAt)) / 1000);
  let due = target - issuedSinceStart;
  // A generator that fell behind (its own loop was late) does not burst to catch up: that is "missed".
  const maxBurst = Math.max(1, Math.ceil(rate * 0.05));
  if (due > maxBurst) {
    counters.missed += due - maxBurst;
    issuedSinceStart += due - maxBurst;
    due = maxBurst;
  }
  for (let i = 0; i < due; i++) {
    const conn = ready[cursor];
    cursor = (cursor + 1) % ready.length;
    issuedSinceStart += 1;
    if (!conn.ready) continue;
    if (conn.ws.bufferedAmount > 64 * 1024) {
      counters.skipped += 1;
      continue;
    }
    conn.flip ^= 1;
    if (init.protocol === 'ack' || init.protocol === 'seq') conn.ws.send(numberedFrame(conn), TEXT);
    else conn.ws.send(conn.frames[conn.flip], TEXT);
    counters.sent += 1;
  }
}

serveRpc({
  init(args: LoadgenInit) {
    init = args;
    const namespace = args.namespace ?? '/drivers';
    prefix = namespace === '/' ? '' : `${namespace},`;
    return { sockets: args.tokens.length };
  },

  async connect({ concurrency = 100, timeoutMs = 30_000, from = 0, to }: { concurrency?: number; timeoutMs?: number; from?: number; to?: number }) {
    const started = performance.now();
    const errors: Record<string, number> = {};
    let failed = 0;
    const indexes: number[] = [];
    for (let i = from; i < (to ?? init.tokens.length); i++) indexes.push(i);
    await forEachLimited(indexes, concurrency, async (index) => {
      try {
        const conn = await open(index, timeoutMs);
        conns.push(conn);
      } catch (err) {
        counters.connectErrors += 1;
        failed += 1;
        const key = (err as Error).message.slice(0, 120);
        errors[key] = (errors[key] ?? 0) + 1;
      }
    });
    ready = conns.filter((c) => c.ready);
    return { connected: ready.length, failed, errors, ms: performance.now() - started };
  },

  /** Hub only: `status` AVAILABLE on every socket, with acks. */
  async goAvailable({ concurrency = 100 }: { concurrency?: number }) {
    const outcome: Record<string, number> = {};
    await forEachLimited(ready, concurrency, async (conn) => {
      const reply = await emitWithAck(conn, 'status', { status: 'AVAILABLE' });
      const key = reply?.ok ? `ok:${reply.status}` : `error:${reply?.error?.code}`;
      outcome[key] = (outcome[key] ?? 0) + 1;
    });
    return outcome;
  },

  /** One acknowledged location per socket (its own position), so every driver is on the map. */
  async placeAll({ concurrency = 100 }: { concurrency?: number }) {
    const outcome: Record<string, number> = {};
    await forEachLimited(ready, concurrency, async (conn) => {
      const [lat, lng] = init.positions[conn.index];
      if (init.mode === 'ws') {
        conn.ws.send(locationFrame(lat, lng));
        outcome.sent = (outcome.sent ?? 0) + 1;
        return;
      }
      const reply = await emitWithAck(conn, 'location', { lat: Number(lat.toFixed(6)), lng: Number(lng.toFixed(6)) });
      const key = reply?.ok ? 'ok' : `error:${reply?.error?.code}`;
      outcome[key] = (outcome[key] ?? 0) + 1;
    });
    return outcome;
  },

  setRate({ rate: next }: { rate: number }) {
    setRate(next);
    return true;
  },

  counters() {
    const cpu = process.cpuUsage(cpuAt);
    const elapsed = performance.now() - wallAt;
    const out = {
      ...counters,
      connected: ready.filter((c) => c.ready).length,
      lagP99Ms: Math.max(0, lag.percentile(99) / 1e6 - 10),
      cpuPercent: elapsed > 0 ? ((cpu.user + cpu.system) / 1000 / elapsed) * 100 : 0,
      at: wallMs(),
    };
    return out;
  },

  resetWindow() {
    lag.reset();
    cpuAt = process.cpuUsage();
    wallAt = performance.now();
    return true;
  },

  drainAssignments() {
    const out = assignments;
    assignments = [];
    return out;
  },

  async close() {
    closing = true;
    setRate(0);
    for (const conn of conns) conn.ws.terminate();
    return true;
  },
});

emitEvent('ready', { pid: process.pid });
