import type { AckReply } from '../errors.js';
import type { DriverEventName, DriverEventPayloads, DriverEventReplies, DriverServerEvents, DriverSession, PushAck } from '../events.js';
import {
  type AssignmentPush,
  type DeliveryCancelledPush,
  type DeliveryUpdatePayload,
  type DeliveryView,
  type DriverStatus,
  type LocationFix,
  type OfferPush,
  MAX_LOCATION_BATCH,
  TERMINAL_DELIVERY_STATUSES,
  deliveryUpdatePayload,
  driverStatusPayload,
  locationFix,
  locationStored,
  offerAcceptPayload,
  offerDeclinePayload,
} from '../schemas.js';
import { type BackoffOptions, DEFAULT_BACKOFF, checkBackoffOptions, fullJitterDelay } from './backoff.js';
import { DriverClientError } from './driver-client-error.js';
import { type DriverSocket, type DriverSocketConnector, socketIoConnector } from './driver-socket.js';
import { FixBuffer, type NumberedFix } from './fix-buffer.js';
import { type DriverClientRuntime, defaultRuntime } from './runtime.js';
import { TypedEmitter } from './typed-emitter.js';

export interface DriverClientOptions {
  /** The hub's base URL, e.g. https://hub.example.com (the client adds the `/drivers` namespace). */
  url: string;
  /** The driver's JWT, or a function asked for it before every connection attempt (so it can refresh it). */
  token: string | (() => string | Promise<string>);
  /** Socket.IO's path on the server when the hub sits behind a prefix; default `/socket.io`. */
  path?: string;
  /** Reconnect backoff: the n-th retry waits uniformly in [0, min(capMs, baseMs * 2^n)). Default 5 s / 30 s. */
  backoff?: Partial<BackoffOptions>;
  /** A connection that lived this long counts as healthy: the next retry starts from the first window again. Default 20 s. */
  stableAfterMs?: number;
  /** Bound on one attempt, from opening the socket to the hub's `session`. Default 20 s. */
  connectTimeoutMs?: number;
  /** Default bound on a request (setStatus, updateDelivery, acceptOffer, declineOffer, a location batch). Default 10 s. */
  requestTimeoutMs?: number;
  /** Most fixes kept while the hub has not confirmed them; the oldest go first. Default 1,000. */
  maxBufferedFixes?: number;
  /** Most fixes per `location` batch (1 to 100). Default 100. */
  batchSize?: number;
  /**
   * How fixes are confirmed: `cumulative` (default) uses `location:stored` when the hub announces it
   * in `session` and falls back to per-batch acks when it does not; `ack` always asks for per-batch acks.
   */
  locationConfirmation?: 'cumulative' | 'ack';
  /** With cumulative confirmation: how long fixes sent on a connection may stay unconfirmed before they are sent again. Default 10 s. */
  confirmTimeoutMs?: number;
  /** Clock, randomness and timers; the globals by default. */
  runtime?: Partial<DriverClientRuntime>;
  /** How a socket is made; socket.io-client by default. */
  connect?: DriverSocketConnector;
}

export type ConnectionState = 'connecting' | 'connected' | 'reconnecting' | 'closed';

/** The driver's current job; `status` is ASSIGNED until the app reports PICKED_UP (or the hub says so). */
export type ActiveDelivery = AssignmentPush & { status: 'ASSIGNED' | 'PICKED_UP' };

/** What the client knows, replaced from `session` on every connection and kept current by pushes and replies in between. */
export interface DriverState {
  readonly connection: ConnectionState;
  /** Null until the first `session`. */
  readonly driverId: string | null;
  /** Null until the first `session`. */
  readonly status: DriverStatus | null;
  readonly activeDelivery: ActiveDelivery | null;
  readonly offer: OfferPush | null;
}

export type ConnectionChange =
  | { state: 'connecting'; attempt: number }
  | { state: 'connected'; attempt: number }
  | { state: 'reconnecting'; retry: number; delayMs: number; reason: string }
  | { state: 'closed'; reason: string };

export interface LocationProgress {
  /** Fixes kept, not yet confirmed by the hub. */
  pending: number;
  /** Fixes confirmed by this change. */
  confirmed: number;
  /** Fixes given up by this change: pushed out by newer ones, or refused by the hub as invalid. */
  dropped: number;
}

/**
 * What the app can listen to. Handlers of `assignment`, `offer` and `cancelled` may be async: the
 * push is acknowledged to the hub once every handler has returned or resolved, and not when one
 * throws or rejects (the hub then sends it again). Each push is given to the handlers once per
 * client, unless they failed.
 */
export interface DriverClientEventMap {
  state: (state: DriverState) => void;
  /** After every (re)connect, once the state was replaced from it. */
  session: (session: DriverSession) => void;
  connection: (change: ConnectionChange) => void;
  assignment: (assignment: ActiveDelivery) => void | Promise<void>;
  offer: (offer: OfferPush) => void | Promise<void>;
  cancelled: (cancellation: DeliveryCancelledPush) => void | Promise<void>;
  locations: (progress: LocationProgress) => void;
  /** Problems that are not the answer to a call: refused handshakes, refused batches, failing handlers. */
  error: (error: DriverClientError) => void;
}

/** A fix as the app gives it; the client numbers it and stamps `ts` (now) when it is missing. */
export type LocationInput = Omit<LocationFix, 'seq'>;

export interface RequestOptions {
  timeoutMs?: number;
}

export interface DriverClient {
  /** A frozen snapshot; a new object on every change (see `state` events). */
  readonly state: DriverState;
  /** Fixes kept, not yet confirmed by the hub. */
  readonly pendingFixes: number;
  on<E extends keyof DriverClientEventMap>(event: E, listener: DriverClientEventMap[E]): () => void;
  off<E extends keyof DriverClientEventMap>(event: E, listener: DriverClientEventMap[E]): void;
  /** Resolves once connected with a session (at once if so now); rejects with CLOSED, or TIMEOUT after `timeoutMs`. */
  ready(options?: RequestOptions): Promise<DriverState>;
  /**
   * Keeps fixes until the hub confirms them and sends them as soon as it can, in batches, oldest
   * first. Throws VALIDATION_FAILED (keeping none of them) when one does not fit the contract.
   */
  sendLocation(fixes: LocationInput | readonly LocationInput[]): void;
  setStatus(status: 'AVAILABLE' | 'OFFLINE', options?: RequestOptions): Promise<DriverStatus>;
  updateDelivery(update: DeliveryUpdatePayload, options?: RequestOptions): Promise<DeliveryView>;
  acceptOffer(deliveryId: string, options?: RequestOptions): Promise<DeliveryView>;
  declineOffer(deliveryId: string, options?: RequestOptions & { reason?: string }): Promise<void>;
  /** While waiting to reconnect: try now, and start the backoff over (the network came back, the app came to the foreground). */
  reconnectNow(): void;
  /** Disconnects and stops every timer; pending calls reject with CLOSED, kept fixes are dropped. */
  close(): void;
}

/** Handshake refusals that a new token could cure; with a fixed token they end the client. */
const AUTH_REFUSALS = new Set(['TOKEN_MISSING', 'TOKEN_INVALID', 'TOKEN_EXPIRED', 'UNAUTHORIZED', 'FORBIDDEN']);
/** A batch refused with these can never be stored; sending it again cannot help. */
const UNSTORABLE_BATCH = new Set(['VALIDATION_FAILED']);
/** Pushes remembered as taken, so a re-sent one is acknowledged without running the handlers again. */
const HANDLED_PUSHES_KEPT = 256;

type PushKind = 'assignment' | 'offer' | 'cancelled';

interface Connection {
  id: number;
  socket: DriverSocket;
  /** `session` received: requests and fixes may go. */
  live: boolean;
  liveSince: number;
  cumulative: boolean;
  sessionTimer: unknown;
  /** Ack mode: the batch waiting for its ack. */
  inFlight: { lo: number; hi: number } | null;
  flushTimer: unknown;
  flushRetries: number;
  confirmTimer: unknown;
}

interface PendingRequest {
  connection: Connection;
  timer: unknown;
  reject: (err: DriverClientError) => void;
}

const message = (err: unknown) => (err instanceof Error ? err.message : String(err));

function sameState(a: DriverState, b: DriverState): boolean {
  return a.connection === b.connection && a.driverId === b.driverId && a.status === b.status && a.activeDelivery === b.activeDelivery && a.offer === b.offer;
}

function validationError(issues: readonly { path: PropertyKey[]; message: string }[], what: string): DriverClientError {
  return new DriverClientError(
    'VALIDATION_FAILED',
    `invalid ${what}`,
    issues.slice(0, 20).map((i) => ({ path: i.path.map(String).join('.'), message: i.message })),
  );
}

function asActiveDelivery(push: AssignmentPush, current: ActiveDelivery | null): ActiveDelivery {
  // Status only moves forward; a re-sent push that leaves it out must not take PICKED_UP back.
  const status = push.status === 'PICKED_UP' || (current?.deliveryId === push.deliveryId && current.status === 'PICKED_UP') ? 'PICKED_UP' : 'ASSIGNED';
  return { ...push, status };
}

/**
 * A driver app's connection to the hub. Connects at once; reconnects by itself with capped
 * exponential backoff and full jitter until `close()`. See docs/driver-app.md.
 */
export function createDriverClient(options: DriverClientOptions): DriverClient {
  const rt: DriverClientRuntime = { ...defaultRuntime, ...options.runtime };
  const backoff = checkBackoffOptions({ ...DEFAULT_BACKOFF, ...options.backoff });
  const stableAfterMs = options.stableAfterMs ?? 20_000;
  const connectTimeoutMs = options.connectTimeoutMs ?? 20_000;
  const requestTimeoutMs = options.requestTimeoutMs ?? 10_000;
  const confirmTimeoutMs = options.confirmTimeoutMs ?? 10_000;
  const batchSize = Math.max(1, Math.min(MAX_LOCATION_BATCH, Math.floor(options.batchSize ?? MAX_LOCATION_BATCH)));
  const wantsCumulative = (options.locationConfirmation ?? 'cumulative') === 'cumulative';
  const connector = options.connect ?? socketIoConnector;
  const buffer = new FixBuffer(options.maxBufferedFixes ?? 1000);

  let state: DriverState = Object.freeze({ connection: 'connecting', driverId: null, status: null, activeDelivery: null, offer: null });
  let closed = false;
  /** The duty the driver last chose (or the hub last reported): where a released driver goes. */
  let lastDuty: 'AVAILABLE' | 'OFFLINE' | null = null;
  let connection: Connection | null = null;
  let connectionIds = 0;
  let attempts = 0;
  /** Index of the next backoff window. */
  let retry = 0;
  let reconnectTimer: unknown = null;
  const pending = new Set<PendingRequest>();
  const readyWaiters = new Set<{ resolve: (s: DriverState) => void; reject: (e: DriverClientError) => void; timer: unknown }>();
  const handledPushes = new Set<string>();
  const runningPushes = new Map<string, PushAck[]>();

  const emitter = new TypedEmitter<DriverClientEventMap>((event, err) => {
    if (event === 'error') return;
    report(new DriverClientError('HANDLER_FAILED', `a '${String(event)}' listener failed: ${message(err)}`, undefined, { cause: err }));
  });

  function report(error: DriverClientError): void {
    emitter.emit('error', error);
  }

  function setState(patch: Partial<DriverState>): void {
    const next = { ...state, ...patch };
    if (sameState(next, state)) return;
    state = Object.freeze(next);
    emitter.emit('state', state);
  }

  /** Where the hub puts a driver whose job or offer ended: back on duty unless it went off duty. */
  const releasedStatus = (): DriverStatus => lastDuty ?? 'AVAILABLE';

  // ---- connecting ----

  function resolveToken(): Promise<string> {
    const { token } = options;
    return typeof token === 'function' ? Promise.resolve().then(token) : Promise.resolve(token);
  }

  function startAttempt(): void {
    if (closed) return;
    reconnectTimer = null;
    const id = ++connectionIds;
    attempts += 1;
    const attempt = attempts;
    resolveToken().then(
      (token) => {
        if (closed || id !== connectionIds) return;
        if (typeof token !== 'string' || token.length === 0) return failBeforeOpen(new Error('the token function gave no token'));
        open(id, token);
      },
      (err) => {
        if (!closed && id === connectionIds) failBeforeOpen(err);
      },
    );
    setState({ connection: 'connecting' });
    emitter.emit('connection', { state: 'connecting', attempt });
  }

  function failBeforeOpen(err: unknown): void {
    report(new DriverClientError('UNAUTHORIZED', `no token: ${message(err)}`, undefined, { cause: err }));
    scheduleReconnect('no token');
  }

  function open(id: number, token: string): void {
    const socket = connector({ url: options.url, path: options.path, auth: { token }, timeoutMs: connectTimeoutMs });
    const conn: Connection = {
      id,
      socket,
      live: false,
      liveSince: 0,
      cumulative: false,
      sessionTimer: null,
      inFlight: null,
      flushTimer: null,
      flushRetries: 0,
      confirmTimer: null,
    };
    connection = conn;
    // Every listener is bound to this connection: whatever a dead socket still says is ignored.
    const on = <E extends keyof DriverServerEvents>(event: E, listener: DriverServerEvents[E]) =>
      socket.on(event, (...args: any[]) => {
        if (connection === conn) (listener as (...a: any[]) => void)(...args);
      });
    on('session', (session) => onSession(conn, session));
    on('assignment', (push, ack) => onPush('assignment', push, ack));
    on('offer', (push, ack) => onPush('offer', push, ack));
    on('delivery:cancelled', (push, ack) => onPush('cancelled', push, ack));
    on('location:stored', (payload) => onLocationStored(conn, payload));
    socket.on('connect_error', (err: unknown) => {
      if (connection === conn) onConnectError(conn, err);
    });
    socket.on('disconnect', (reason: unknown) => {
      if (connection === conn) dropConnection(conn, `disconnected: ${String(reason)}`);
    });
    conn.sessionTimer = rt.setTimeout(() => {
      if (connection === conn && !conn.live) dropConnection(conn, `no session within ${connectTimeoutMs} ms`);
    }, connectTimeoutMs);
    socket.connect();
  }

  /** Lets go of a connection: its socket, its timers, and the calls waiting on it. */
  function teardown(conn: Connection, error: DriverClientError): void {
    if (connection !== conn) return;
    connection = null;
    for (const timer of [conn.sessionTimer, conn.flushTimer, conn.confirmTimer]) if (timer !== null) rt.clearTimeout(timer);
    conn.socket.off();
    conn.socket.disconnect();
    for (const request of [...pending]) {
      if (request.connection !== conn) continue;
      pending.delete(request);
      rt.clearTimeout(request.timer);
      request.reject(error);
    }
    if (conn.live && rt.now() - conn.liveSince >= stableAfterMs) retry = 0;
  }

  function dropConnection(conn: Connection, reason: string): void {
    teardown(conn, new DriverClientError('DISCONNECTED', `connection lost (${reason})`));
    scheduleReconnect(reason);
  }

  function onConnectError(conn: Connection, err: unknown): void {
    teardown(conn, new DriverClientError('DISCONNECTED', 'connection refused'));
    const data = (err as { data?: { code?: unknown; message?: unknown; details?: unknown } } | null)?.data;
    const code = typeof data?.code === 'string' ? data.code : null;
    if (code === null) return scheduleReconnect(`connect error: ${message(err)}`);
    const refusal = DriverClientError.fromBody({ code, message: typeof data?.message === 'string' ? data.message : code, details: data?.details });
    report(refusal);
    if (AUTH_REFUSALS.has(code) && typeof options.token !== 'function') return shutdown(`refused: ${code}`);
    scheduleReconnect(`refused: ${code}`, refusal.retryAfterMs ?? 0);
  }

  function scheduleReconnect(reason: string, atLeastMs = 0): void {
    if (closed || reconnectTimer !== null) return;
    const thisRetry = retry;
    retry += 1;
    const delayMs = Math.max(atLeastMs, fullJitterDelay(thisRetry, backoff, rt.random));
    reconnectTimer = rt.setTimeout(startAttempt, delayMs);
    setState({ connection: 'reconnecting' });
    emitter.emit('connection', { state: 'reconnecting', retry: thisRetry, delayMs, reason });
  }

  function onSession(conn: Connection, session: DriverSession): void {
    if (!session || typeof session.driverId !== 'string') {
      report(new DriverClientError('VALIDATION_FAILED', 'the hub sent a session without a driverId'));
      return dropConnection(conn, 'malformed session');
    }
    const firstOnConnection = !conn.live;
    if (firstOnConnection) {
      rt.clearTimeout(conn.sessionTimer);
      conn.sessionTimer = null;
      conn.live = true;
      conn.liveSince = rt.now();
      // Whatever went out on an earlier connection counts as unsent on this one: it goes again, oldest first.
      conn.cumulative = wantsCumulative && session.locationConfirmation === 'cumulative';
    }
    if (session.status === 'AVAILABLE' || session.status === 'OFFLINE') lastDuty = session.status;
    setState({
      connection: 'connected',
      driverId: session.driverId,
      status: session.status,
      // Replaced, except that a job this client saw PICKED_UP stays so when a hub leaves the status out.
      activeDelivery: session.activeDelivery ? asActiveDelivery(session.activeDelivery, state.activeDelivery) : null,
      offer: session.offer ?? null,
    });
    if (connection !== conn) return;
    for (const waiter of [...readyWaiters]) {
      readyWaiters.delete(waiter);
      rt.clearTimeout(waiter.timer);
      waiter.resolve(state);
    }
    emitter.emit('session', session);
    if (firstOnConnection && connection === conn) emitter.emit('connection', { state: 'connected', attempt: attempts });
    flush();
  }

  // ---- pushes ----

  /** A delivery is assigned, offered or cancelled to a driver at most once, so its id names the push. */
  const pushKey = (kind: PushKind, deliveryId: string) => `${kind}:${deliveryId}`;

  function remember(key: string): void {
    handledPushes.add(key);
    if (handledPushes.size > HANDLED_PUSHES_KEPT) handledPushes.delete(handledPushes.values().next().value!);
  }

  const answer = (ack: PushAck | undefined, reply: AckReply) => {
    try {
      ack?.(reply);
    } catch {
      // The socket it belonged to is gone; the hub sends the push again on the new one.
    }
  };

  function applyPush(kind: PushKind, push: AssignmentPush | OfferPush | DeliveryCancelledPush): unknown {
    if (kind === 'assignment') {
      const activeDelivery = asActiveDelivery(push as AssignmentPush, state.activeDelivery);
      setState({ activeDelivery, status: 'BUSY', offer: state.offer?.deliveryId === push.deliveryId ? null : state.offer });
      return activeDelivery;
    }
    if (kind === 'offer') {
      // A late re-send of an offer already accepted must not bring it back.
      if (state.activeDelivery?.deliveryId !== push.deliveryId) setState({ offer: push as OfferPush, status: 'BUSY' });
      return push;
    }
    const patch: { -readonly [K in keyof DriverState]?: DriverState[K] } = {};
    if (state.activeDelivery?.deliveryId === push.deliveryId) patch.activeDelivery = null;
    if (state.offer?.deliveryId === push.deliveryId) patch.offer = null;
    if (Object.keys(patch).length > 0) setState({ ...patch, status: releasedStatus() });
    return push;
  }

  function onPush(kind: PushKind, push: AssignmentPush | OfferPush | DeliveryCancelledPush, ack: PushAck | undefined): void {
    if (typeof ack !== 'function') ack = undefined;
    if (!push || typeof push !== 'object' || typeof push.deliveryId !== 'string') {
      report(new DriverClientError('VALIDATION_FAILED', `the hub sent a malformed ${kind}`));
      return answer(ack, { ok: false, error: { code: 'VALIDATION_FAILED', message: `malformed ${kind}` } });
    }
    const key = pushKey(kind, push.deliveryId);
    if (handledPushes.has(key)) return answer(ack, { ok: true });
    const waiting = runningPushes.get(key);
    if (waiting) {
      // A re-send while the handlers still run: answered together when they finish.
      if (ack) waiting.push(ack);
      return;
    }
    const acks = ack ? [ack] : [];
    runningPushes.set(key, acks);
    const forApp = applyPush(kind, push);
    emitter.emitAndWait(kind, forApp as never).then(
      () => {
        runningPushes.delete(key);
        if (closed) return;
        remember(key);
        for (const a of acks) answer(a, { ok: true });
      },
      (err) => {
        runningPushes.delete(key);
        if (closed) return;
        report(new DriverClientError('HANDLER_FAILED', `the app's ${kind} handler failed: ${message(err)}`, { deliveryId: push.deliveryId }, { cause: err }));
        const reply = { ok: false as const, error: { code: 'INTERNAL' as const, message: `the app could not take the ${kind}: ${message(err)}`.slice(0, 500) } };
        for (const a of acks) answer(a, reply);
      },
    );
  }

  // ---- requests ----

  function request<E extends DriverEventName>(
    event: E,
    payload: DriverEventPayloads[E],
    timeoutMs: number,
  ): Promise<{ ok: true } & DriverEventReplies[E]> {
    if (closed) return Promise.reject(new DriverClientError('CLOSED', 'the client is closed'));
    const conn = connection;
    if (!conn || !conn.live || !conn.socket.connected) return Promise.reject(new DriverClientError('DISCONNECTED', `not connected; ${event} not sent`));
    return new Promise((resolve, reject) => {
      const entry: PendingRequest = {
        connection: conn,
        reject,
        timer: rt.setTimeout(() => {
          if (!pending.delete(entry)) return;
          reject(new DriverClientError('TIMEOUT', `no answer to ${event} within ${timeoutMs} ms`));
        }, timeoutMs),
      };
      pending.add(entry);
      conn.socket.emit(event, payload, (reply: AckReply<DriverEventReplies[E]>) => {
        if (!pending.delete(entry)) return;
        rt.clearTimeout(entry.timer);
        if (reply && typeof reply === 'object' && reply.ok === true) resolve(reply);
        else if (reply && typeof reply === 'object' && reply.ok === false && reply.error && typeof reply.error.code === 'string') reject(DriverClientError.fromBody(reply.error));
        else reject(new DriverClientError('INTERNAL', `malformed answer to ${event}`, reply));
      });
    });
  }

  const timeoutOf = (o?: RequestOptions) => o?.timeoutMs ?? requestTimeoutMs;

  function parseOrThrow<T>(schema: { safeParse(v: unknown): { success: true; data: T } | { success: false; error: { issues: any[] } } }, value: unknown, what: string): T {
    const parsed = schema.safeParse(value);
    if (!parsed.success) throw validationError(parsed.error.issues, what);
    return parsed.data;
  }

  async function setStatus(status: 'AVAILABLE' | 'OFFLINE', o?: RequestOptions): Promise<DriverStatus> {
    const payload = parseOrThrow(driverStatusPayload, { status }, 'status');
    const reply = await request('status', payload, timeoutOf(o));
    lastDuty = payload.status;
    setState({ status: reply.status });
    return reply.status;
  }

  async function updateDelivery(update: DeliveryUpdatePayload, o?: RequestOptions): Promise<DeliveryView> {
    const payload = parseOrThrow(deliveryUpdatePayload, update, 'delivery update');
    const { delivery } = await request('delivery:update', payload, timeoutOf(o));
    const current = state.activeDelivery;
    if (current?.deliveryId === delivery.id) {
      if (TERMINAL_DELIVERY_STATUSES.includes(delivery.status)) setState({ activeDelivery: null, status: releasedStatus() });
      else if (delivery.status === 'PICKED_UP') setState({ activeDelivery: { ...current, status: 'PICKED_UP' } });
    }
    return delivery;
  }

  /** The offer is over one way or another (declined, expired, taken away): it leaves the state. */
  function offerEnded(deliveryId: string): void {
    if (state.offer?.deliveryId === deliveryId) setState({ offer: null, status: state.activeDelivery ? 'BUSY' : releasedStatus() });
  }

  async function acceptOffer(deliveryId: string, o?: RequestOptions): Promise<DeliveryView> {
    const payload = parseOrThrow(offerAcceptPayload, { deliveryId }, 'offer acceptance');
    let delivery: DeliveryView;
    try {
      ({ delivery } = await request('offer:accept', payload, timeoutOf(o)));
    } catch (err) {
      if (err instanceof DriverClientError && (err.code === 'OFFER_EXPIRED' || err.code === 'NOT_FOUND' || err.code === 'FORBIDDEN')) offerEnded(deliveryId);
      throw err;
    }
    const activeDelivery: ActiveDelivery = {
      deliveryId: delivery.id,
      sellerOrderId: delivery.sellerOrderId,
      orderCode: delivery.orderCode,
      pickup: delivery.pickup,
      dropoff: delivery.dropoff,
      assignedAt: delivery.updatedAt,
      status: delivery.status === 'PICKED_UP' ? 'PICKED_UP' : 'ASSIGNED',
    };
    // The app has this job from the answer: a later `assignment` for it (a re-send on reconnect) is acknowledged without the handlers.
    remember(pushKey('assignment', delivery.id));
    setState({ activeDelivery, offer: state.offer?.deliveryId === deliveryId ? null : state.offer, status: 'BUSY' });
    return delivery;
  }

  async function declineOffer(deliveryId: string, o?: RequestOptions & { reason?: string }): Promise<void> {
    const payload = parseOrThrow(offerDeclinePayload, o?.reason === undefined ? { deliveryId } : { deliveryId, reason: o.reason }, 'offer decline');
    try {
      await request('offer:decline', payload, timeoutOf(o));
    } catch (err) {
      if (err instanceof DriverClientError && (err.code === 'OFFER_EXPIRED' || err.code === 'NOT_FOUND' || err.code === 'FORBIDDEN')) offerEnded(deliveryId);
      throw err;
    }
    offerEnded(deliveryId);
  }

  // ---- fixes ----

  function progress(confirmed: number, dropped: number): void {
    if (confirmed > 0 || dropped > 0) emitter.emit('locations', { pending: buffer.size, confirmed, dropped });
  }

  function sendLocation(input: LocationInput | readonly LocationInput[]): void {
    if (closed) return;
    const list: readonly LocationInput[] = Array.isArray(input) ? input : [input as LocationInput];
    const now = rt.now();
    // All or none: a bad fix in the buffer would sink every batch it travels in.
    const fixes = list.map((fix, i) => {
      const { seq: _ignored, ...parsed } = parseOrThrow(locationFix, { ...fix, ts: fix?.ts ?? now }, list.length > 1 ? `fix ${i}` : 'fix');
      return parsed as LocationFix & { ts: number };
    });
    let dropped = 0;
    for (const fix of fixes) dropped += buffer.add(fix);
    progress(0, dropped);
    flush();
  }

  function flush(): void {
    const conn = connection;
    if (closed || !conn || !conn.live || !conn.socket.connected) return;
    if (conn.cumulative) flushCumulative(conn);
    else flushAcked(conn);
  }

  /** Ack mode: one batch at a time, oldest first; its fixes leave when its ack comes. */
  function flushAcked(conn: Connection): void {
    if (conn.inFlight || conn.flushTimer !== null) return;
    const batch = buffer.oldest(batchSize);
    if (batch.length === 0) return;
    const inFlight = { lo: batch[0].seq, hi: batch[batch.length - 1].seq };
    conn.inFlight = inFlight;
    request('location', batch, requestTimeoutMs).then(
      () => {
        const confirmed = buffer.confirmRange(inFlight.lo, inFlight.hi);
        if (conn.inFlight === inFlight) conn.inFlight = null;
        conn.flushRetries = 0;
        progress(confirmed, 0);
        flush();
      },
      (err: DriverClientError) => {
        if (conn.inFlight === inFlight) conn.inFlight = null;
        if (connection !== conn) return; // the next session sends them again
        if (UNSTORABLE_BATCH.has(err.code)) {
          const dropped = buffer.confirmRange(inFlight.lo, inFlight.hi);
          report(err);
          progress(0, dropped);
          return flush();
        }
        const delayMs = err.code === 'RATE_LIMITED' ? (err.retryAfterMs ?? 1000) : fullJitterDelay(conn.flushRetries++, backoff, rt.random);
        conn.flushTimer = rt.setTimeout(() => {
          conn.flushTimer = null;
          flush();
        }, delayMs);
      },
    );
  }

  /** Cumulative mode: everything not yet sent on this connection goes now, without acks. */
  function flushCumulative(conn: Connection): void {
    for (let batch = buffer.unsent(conn.id, batchSize); batch.length > 0; batch = buffer.unsent(conn.id, batchSize)) {
      conn.socket.emit('location', batch satisfies NumberedFix[]);
      buffer.markSent(batch, conn.id);
    }
    if (conn.confirmTimer === null && buffer.awaitingConfirmation(conn.id)) armConfirmTimer(conn);
  }

  function armConfirmTimer(conn: Connection): void {
    if (conn.confirmTimer !== null) rt.clearTimeout(conn.confirmTimer);
    conn.confirmTimer = rt.setTimeout(() => {
      conn.confirmTimer = null;
      if (connection !== conn || !buffer.awaitingConfirmation(conn.id)) return;
      // Nothing confirmed for a while: the hub dropped something (rate limit, a restart). Send it all again.
      buffer.markAllUnsent();
      flush();
    }, confirmTimeoutMs);
  }

  function onLocationStored(conn: Connection, payload: unknown): void {
    const parsed = locationStored.safeParse(payload);
    if (!parsed.success) return report(new DriverClientError('VALIDATION_FAILED', 'the hub sent a malformed location:stored'));
    const confirmed = buffer.confirmUpTo(parsed.data.upTo);
    if (confirmed > 0) {
      // Progress: the hub is storing; give the rest the full interval again.
      if (buffer.awaitingConfirmation(conn.id)) armConfirmTimer(conn);
      else if (conn.confirmTimer !== null) {
        rt.clearTimeout(conn.confirmTimer);
        conn.confirmTimer = null;
      }
    }
    progress(confirmed, 0);
  }

  // ---- lifecycle ----

  function ready(o?: RequestOptions): Promise<DriverState> {
    if (closed) return Promise.reject(new DriverClientError('CLOSED', 'the client is closed'));
    if (state.connection === 'connected') return Promise.resolve(state);
    return new Promise((resolve, reject) => {
      const waiter = { resolve, reject, timer: null as unknown };
      if (o?.timeoutMs !== undefined) {
        waiter.timer = rt.setTimeout(() => {
          if (readyWaiters.delete(waiter)) reject(new DriverClientError('TIMEOUT', `not connected within ${o.timeoutMs} ms`));
        }, o.timeoutMs);
      }
      readyWaiters.add(waiter);
    });
  }

  function reconnectNow(): void {
    if (closed || reconnectTimer === null) return;
    rt.clearTimeout(reconnectTimer);
    reconnectTimer = null;
    retry = 0;
    startAttempt();
  }

  function shutdown(reason: string): void {
    if (closed) return;
    closed = true;
    if (reconnectTimer !== null) rt.clearTimeout(reconnectTimer);
    reconnectTimer = null;
    const error = new DriverClientError('CLOSED', `the client is closed (${reason})`);
    if (connection) teardown(connection, error);
    for (const waiter of readyWaiters) {
      rt.clearTimeout(waiter.timer);
      waiter.reject(error);
    }
    readyWaiters.clear();
    runningPushes.clear();
    buffer.clear();
    setState({ connection: 'closed' });
    emitter.emit('connection', { state: 'closed', reason });
    emitter.clear();
  }

  startAttempt();

  return {
    get state() {
      return state;
    },
    get pendingFixes() {
      return buffer.size;
    },
    on: (event, listener) => emitter.on(event, listener),
    off: (event, listener) => emitter.off(event, listener),
    ready,
    sendLocation,
    setStatus,
    updateDelivery,
    acceptOffer,
    declineOffer,
    reconnectNow,
    close: () => shutdown('closed by the app'),
  };
}
