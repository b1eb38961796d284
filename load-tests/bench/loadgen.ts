/**
 * A load-generator child process: holds thousands of driver sockets and sends location pings at
 * the rate the parent sets. It speaks Socket.IO's wire protocol directly over `ws` (Engine.IO v4:
 * `40/drivers,{auth}` to join, `42/drivers,[...]` events, `43` acks, answers `2` with `3`), which
 * costs a fraction of socket.io-client's CPU, so more of the two cores is left to the server under
 * test. Mode `ws` talks to the raw-ws baseline: one JSON text message per ping, no protocol.
 */
import { monitorEventLoopDelay } from 'node:perf_hooks';
import WebSocket from 'ws';
import { DEFAULT_BACKOFF, fullJitterDelay } from '#shared/driver-client/backoff.js';
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
  /** Hub in DISPATCH_MODE=offer: accept every `offer` at once, as a keen driver does (the offer counts as the job reaching the driver). */
  acceptOffers?: boolean;
}

/**
 * After its node dies, how a socket comes back: `none` at once (and after a refusal, when the
 * refusal says or after a fixed second: no randomness), `client` as the driver client does (the
 * n-th retry waits uniformly in [0, min(30 s, 5 s * 2^n)), never less than a refusal's retryAfterMs).
 */
export type StormJitter = 'none' | 'client';

export interface StormReport {
  /** Sockets that were ready when their node died and have come back (`session` for the hub). */
  back: number;
  /** Sockets that went down and are not back yet. */
  waiting: number;
  /** Wall clock of the last socket's namespace connect (`40`) and of the last `session`. */
  lastConnectedAt: number | null;
  lastSessionAt: number | null;
  /** Wall clock of the last socket's close as the app saw it, and of the last first attempt's start. */
  lastClosedAt: number | null;
  lastFirstAttemptAt: number | null;
  /** Per successful attempt, ms from opening the websocket to the namespace connect and to `session`. */
  connectMs: number[];
  sessionMs: number[];
  attempts: number;
  /** Failed attempts by reason (connect_error code, timeout, refused TCP connection, ...). */
  refused: Record<string, number>;
  /** Sockets that needed more than one attempt. */
  retried: number;
}

interface Conn {
  index: number;
  url: string;
  ws: WebSocket;
  ready: boolean;
  frames: [Buffer, Buffer];
  flip: number;
  nextAck: number;
  acks: Map<number, (reply: unknown) => void>;
  connectedAt?: number;
  sessionAt?: number;
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

const counters = { sent: 0, skipped: 0, missed: 0, disconnects: 0, connectErrors: 0, assignments: 0, offers: 0, pushes: 0, pingAcks: 0, pingRefused: 0, storedConfirmations: 0 };
/** Ping acknowledgements that refused the ping, by error code. */
let refusedPings: Record<string, number> = {};
const REFUSAL_CODE = /"ok":false,"error":\{"code":"([A-Z_]+)"/;
let assignments: [string, number][] = [];
/** Deliveries offered to this generator's drivers so far (offer mode). */
const offered = new Set<string>();
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
      conn.sessionAt = wallMs();
      if (init.waitSession) onReady();
    } else if (rest.startsWith('["assignment"')) {
      const at = wallMs();
      counters.pushes += 1;
      const [, payload] = JSON.parse(rest) as [string, { sellerOrderId: string }];
      counters.assignments += 1;
      assignments.push([payload.sellerOrderId, at]);
    } else if (rest.startsWith('["offer"')) {
      const at = wallMs();
      counters.pushes += 1;
      const [, payload] = JSON.parse(rest) as [string, { sellerOrderId: string; deliveryId: string }];
      counters.offers += 1;
      // A re-send of an offer already taken is acknowledged above and not counted again.
      if (!offered.has(payload.deliveryId)) {
        offered.add(payload.deliveryId);
        assignments.push([payload.sellerOrderId, at]);
        if (init.acceptOffers) conn.ws.send(`42${prefix}["offer:accept",${JSON.stringify({ deliveryId: payload.deliveryId })}]`);
      }
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
    } else {
      counters.pingAcks += 1;
      const refused = REFUSAL_CODE.exec(rest);
      if (refused) {
        counters.pingRefused += 1;
        refusedPings[refused[1]] = (refusedPings[refused[1]] ?? 0) + 1;
      }
    }
    return;
  }
  if (text.startsWith(`40${prefix}`)) {
    conn.connectedAt = wallMs();
    if (!init.waitSession) onReady();
    return;
  }
  if (text.startsWith(`44${prefix}`)) {
    const body = text.slice(2 + prefix.length);
    let code = 'unknown';
    let retryAfterMs: number | undefined;
    try {
      const parsed = JSON.parse(body) as { message?: string; data?: { code?: string; details?: { retryAfterMs?: number } } };
      code = parsed.data?.code ?? parsed.message ?? code;
      retryAfterMs = parsed.data?.details?.retryAfterMs;
    } catch {}
    onError(Object.assign(new Error(`connect_error ${body.slice(0, 200)}`), { code, retryAfterMs }));
    return;
  }
  if (text.startsWith(`41${prefix}`)) conn.ws.terminate();
}

function open(index: number, timeoutMs: number, serverUrl = init.url): Promise<Conn> {
  const [lat, lng] = init.positions[index];
  const url =
    init.mode === 'sio'
      ? `${serverUrl.replace(/^http/, 'ws')}/socket.io/?EIO=4&transport=websocket`
      : serverUrl.replace(/^http/, 'ws');
  const ws = new WebSocket(url, { perMessageDeflate: false, generateMask: zeroMask, handshakeTimeout: timeoutMs });
  const conn: Conn = {
    index,
    url: serverUrl,
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
        if (!closing) {
          counters.disconnects += 1;
          if (storm) comeBack(conn);
        }
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

// --- a node dies: its sockets come back to the others --------------------------------------------

let storm: { jitter: StormJitter; survivors: string[]; timeoutMs: number } | null = null;
const stormState = {
  down: new Set<number>(),
  back: 0,
  lastConnectedAt: null as number | null,
  lastSessionAt: null as number | null,
  lastClosedAt: null as number | null,
  lastFirstAttemptAt: null as number | null,
  connectMs: [] as number[],
  sessionMs: [] as number[],
  attempts: 0,
  refused: {} as Record<string, number>,
  retried: new Set<number>(),
};
/** Where each socket sits in `ready`, so a socket that came back takes its old place in the pacing. */
const readySlot = new Map<number, number>();

function comeBack(dead: Conn): void {
  if (!storm || stormState.down.has(dead.index)) return;
  stormState.down.add(dead.index);
  stormState.lastClosedAt = wallMs();
  attempt(dead.index, 0, storm.jitter === 'none' ? 0 : fullJitterDelay(0, DEFAULT_BACKOFF, Math.random));
}

function attempt(index: number, retry: number, delayMs: number): void {
  setTimeout(async () => {
    if (!storm || closing) return;
    // A load balancer in front spreads the fleet over the nodes left: here by the driver's index.
    const url = storm.survivors[index % storm.survivors.length];
    const started = wallMs();
    stormState.attempts += 1;
    if (retry === 0) stormState.lastFirstAttemptAt = started;
    try {
      const conn = await open(index, storm.timeoutMs, url);
      if (conn.connectedAt !== undefined) stormState.connectMs.push(conn.connectedAt - started);
      if (conn.sessionAt !== undefined) stormState.sessionMs.push(conn.sessionAt - started);
      stormState.lastConnectedAt = Math.max(stormState.lastConnectedAt ?? 0, conn.connectedAt ?? wallMs());
      stormState.lastSessionAt = Math.max(stormState.lastSessionAt ?? 0, conn.sessionAt ?? wallMs());
      stormState.down.delete(index);
      stormState.back += 1;
      conns.push(conn);
      const slot = readySlot.get(index);
      if (slot !== undefined) ready[slot] = conn;
    } catch (err) {
      const e = err as Error & { code?: string; retryAfterMs?: number };
      const reason = typeof e.code === 'string' ? e.code : e.message.slice(0, 60);
      stormState.refused[reason] = (stormState.refused[reason] ?? 0) + 1;
      stormState.retried.add(index);
      const atLeast = e.retryAfterMs ?? 0;
      const next = storm.jitter === 'none' ? Math.max(atLeast, 1000) : Math.max(atLeast, fullJitterDelay(retry + 1, DEFAULT_BACKOFF, Math.random));
      attempt(index, retry + 1, next);
    }
  }, delayMs);
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
    readySlot.clear();
    ready.forEach((c, i) => readySlot.set(c.index, i));
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

  /** Switches how pings are sent from now on (see LoadgenInit.protocol). */
  setProtocol({ protocol }: { protocol: NonNullable<LoadgenInit['protocol']> }) {
    init.protocol = protocol;
    return true;
  },

  /** Refused ping acknowledgements by code since the last call. */
  drainRefusedPings() {
    const out = refusedPings;
    refusedPings = {};
    return out;
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

  /** From now on a socket whose node dies comes back to one of `survivors`. */
  stormArm(args: { jitter: StormJitter; survivors: string[]; timeoutMs?: number }) {
    storm = { jitter: args.jitter, survivors: args.survivors, timeoutMs: args.timeoutMs ?? 30_000 };
    return true;
  },

  stormReport(args: { full?: boolean } = {}): StormReport {
    return {
      back: stormState.back,
      waiting: stormState.down.size,
      lastConnectedAt: stormState.lastConnectedAt,
      lastSessionAt: stormState.lastSessionAt,
      lastClosedAt: stormState.lastClosedAt,
      lastFirstAttemptAt: stormState.lastFirstAttemptAt,
      connectMs: args.full ? stormState.connectMs : [],
      sessionMs: args.full ? stormState.sessionMs : [],
      attempts: stormState.attempts,
      refused: stormState.refused,
      retried: stormState.retried.size,
    };
  },

  drainAssignments() {
    const out = assignments;
    assignments = [];
    return out;
  },

  async close() {
    closing = true;
    storm = null;
    setRate(0);
    for (const conn of conns) conn.ws.terminate();
    return true;
  },
});

emitEvent('ready', { pid: process.pid });
