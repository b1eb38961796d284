import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { DriverSession } from '../events.js';
import type { AssignmentPush, OfferPush } from '../schemas.js';
import { createDriverClient, type DriverClient, type DriverClientOptions } from './driver-client.js';
import { DriverClientError } from './driver-client-error.js';
import { fakeConnector, type FakeSocket } from './fake-socket.js';

const DRIVER = '0b7f6a2e-1a4b-4c1e-9a7e-3f1d2c4b5a60';
const DELIVERY = '5f2c1d9e-8b7a-4e3f-a1b2-c3d4e5f60718';
const OTHER_DELIVERY = '7a8b9c0d-1e2f-4a3b-8c4d-5e6f7a8b9c0d';
const place = { lat: 52.52, lng: 13.405 };

const session = (over: Partial<DriverSession> = {}): DriverSession => ({ driverId: DRIVER, status: 'OFFLINE', activeDelivery: null, offer: null, ...over });
const assignment = (over: Partial<AssignmentPush> = {}): AssignmentPush => ({
  deliveryId: DELIVERY,
  sellerOrderId: 'so-1',
  orderCode: 'T1',
  pickup: place,
  dropoff: { lat: 52.53, lng: 13.41 },
  assignedAt: '2025-01-01T10:00:00.000Z',
  ...over,
});
const offer = (over: Partial<OfferPush> = {}): OfferPush => ({
  deliveryId: DELIVERY,
  sellerOrderId: 'so-1',
  orderCode: 'T1',
  pickup: place,
  dropoff: { lat: 52.53, lng: 13.41 },
  distanceMeters: 800,
  expiresAt: '2025-01-01T10:00:20.000Z',
  ...over,
});
const deliveryView = (status: string, id = DELIVERY) => ({
  id,
  sellerOrderId: 'so-1',
  orderCode: 'T1',
  status,
  driverId: DRIVER,
  pickup: place,
  dropoff: { lat: 52.53, lng: 13.41 },
  createdAt: '2025-01-01T10:00:00.000Z',
  updatedAt: '2025-01-01T10:01:00.000Z',
});

/** Lets promise callbacks run (token, handlers) without moving the clock. */
const settle = () => vi.advanceTimersByTimeAsync(0);

let clients: DriverClient[] = [];

function start(options: Partial<DriverClientOptions> = {}) {
  const hub = fakeConnector();
  const client = createDriverClient({
    url: 'http://hub.test',
    token: 'driver-token',
    connect: hub.connect,
    runtime: { random: () => 0.5 },
    backoff: { baseMs: 1000, capMs: 8000 },
    ...options,
  });
  clients.push(client);
  return { hub, client };
}

async function connected(options: Partial<DriverClientOptions> = {}, first: DriverSession = session()) {
  const started = start(options);
  await settle();
  started.hub.last.open(first);
  return started;
}

/** The fixes of every `location` the socket sent, batch by batch, as sequence numbers. */
const batches = (socket: FakeSocket) => socket.emitted('location').map((e) => (e.args[0] as { seq: number }[]).map((f) => f.seq));

async function rejection(promise: Promise<unknown>): Promise<DriverClientError> {
  try {
    await promise;
  } catch (err) {
    expect(err).toBeInstanceOf(DriverClientError);
    return err as DriverClientError;
  }
  throw new Error('expected a rejection');
}

beforeEach(() => {
  vi.useFakeTimers();
});
afterEach(() => {
  for (const client of clients) client.close();
  clients = [];
  expect(vi.getTimerCount()).toBe(0);
  vi.useRealTimers();
});

describe('driver client: connecting', () => {
  it('when created, then it connects at once with the token and is connected once the session came', async () => {
    const { hub, client } = start();
    expect(client.state.connection).toBe('connecting');
    await settle();
    expect(hub.sockets).toHaveLength(1);
    expect(hub.last.target).toMatchObject({ url: 'http://hub.test', auth: { token: 'driver-token' } });
    expect(hub.last.connectCalls).toBe(1);
    const ready = client.ready();
    hub.last.open(session({ status: 'AVAILABLE' }));
    await expect(ready).resolves.toMatchObject({ connection: 'connected', driverId: DRIVER, status: 'AVAILABLE' });
  });

  it('when the token is a function, then it is asked again before every attempt', async () => {
    let n = 0;
    const { hub } = start({ token: async () => `token-${++n}` });
    await settle();
    hub.last.drop();
    await vi.advanceTimersByTimeAsync(1000);
    expect(hub.sockets.map((s) => s.target.auth.token)).toEqual(['token-1', 'token-2']);
  });

  it('when connections keep failing, then each retry waits a random share of a window that doubles up to the cap', async () => {
    const draws = [0.999, 0.999, 0.999, 0.999, 0.999, 0.5];
    const { hub, client } = start({ runtime: { random: () => draws.shift() ?? 0.5 } });
    const delays: number[] = [];
    client.on('connection', (c) => {
      if (c.state === 'reconnecting') delays.push(c.delayMs);
    });
    await settle();
    for (let i = 0; i < 6; i++) {
      hub.last.fire('connect_error', new Error('websocket error'));
      await vi.advanceTimersByTimeAsync(delays[delays.length - 1]);
    }
    expect(delays).toEqual([999, 1998, 3996, 7992, 7992, 4000]);
    expect(hub.sockets).toHaveLength(7);
  });

  it('when a connection had lived a while before it dropped, then the next retry starts from the first window again', async () => {
    const { hub, client } = await connected({ runtime: { random: () => 0.999 }, stableAfterMs: 5000 });
    const delays: number[] = [];
    client.on('connection', (c) => {
      if (c.state === 'reconnecting') delays.push(c.delayMs);
    });
    // Short-lived connections (kicked right after the session) grow the window.
    for (let i = 0; i < 3; i++) {
      hub.last.drop('io server disconnect');
      await vi.advanceTimersByTimeAsync(delays[delays.length - 1]);
      await settle();
      hub.last.open(session());
    }
    await vi.advanceTimersByTimeAsync(5000);
    hub.last.drop();
    expect(delays).toEqual([999, 1998, 3996, 999]);
  });

  it('when the hub refuses a fixed token, then the client reports the code and stops', async () => {
    const { hub, client } = start();
    const errors: DriverClientError[] = [];
    client.on('error', (e) => errors.push(e));
    const ready = client.ready();
    await settle();
    hub.last.refuse('TOKEN_EXPIRED');
    expect(errors.map((e) => e.code)).toEqual(['TOKEN_EXPIRED']);
    expect(client.state.connection).toBe('closed');
    expect((await rejection(ready)).code).toBe('CLOSED');
    await vi.advanceTimersByTimeAsync(60_000);
    expect(hub.sockets).toHaveLength(1);
  });

  it('when the hub refuses a token that comes from a function, then it keeps trying with a fresh one', async () => {
    let n = 0;
    const { hub, client } = start({ token: () => `t${++n}` });
    await settle();
    hub.last.refuse('TOKEN_EXPIRED');
    expect(client.state.connection).toBe('reconnecting');
    await vi.advanceTimersByTimeAsync(1000);
    expect(hub.last.target.auth.token).toBe('t2');
  });

  it('when the handshake is rate limited, then the next attempt waits at least as long as the hub asked', async () => {
    const { hub, client } = start();
    const delays: number[] = [];
    client.on('connection', (c) => {
      if (c.state === 'reconnecting') delays.push(c.delayMs);
    });
    await settle();
    hub.last.refuse('RATE_LIMITED', { retryAfterMs: 7000 });
    expect(delays).toEqual([7000]);
    await vi.advanceTimersByTimeAsync(6999);
    expect(hub.sockets).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(hub.sockets).toHaveLength(2);
  });

  it('when no session comes within connectTimeoutMs, then the attempt is given up and retried', async () => {
    const { hub } = start({ connectTimeoutMs: 3000 });
    await settle();
    hub.last.connected = true;
    hub.last.fire('connect');
    await vi.advanceTimersByTimeAsync(3000);
    expect(hub.sockets[0].disconnectCalls).toBe(1);
    await vi.advanceTimersByTimeAsync(1000);
    expect(hub.sockets).toHaveLength(2);
  });

  it('when reconnectNow is called while waiting, then it tries at once', async () => {
    const { hub, client } = await connected({ runtime: { random: () => 0.99 } });
    hub.last.drop();
    client.reconnectNow();
    await settle();
    expect(hub.sockets).toHaveLength(2);
  });

  it('when a dead socket still speaks, then nothing it says counts', async () => {
    const { hub, client } = await connected();
    const old = hub.last;
    old.drop();
    await vi.advanceTimersByTimeAsync(1000);
    old.fire('session', session({ status: 'AVAILABLE' }));
    old.push('assignment', assignment());
    expect(client.state).toMatchObject({ connection: 'connecting', status: 'OFFLINE', activeDelivery: null });
  });
});

describe('driver client: session', () => {
  it('when a session arrives after a reconnect, then the local state is replaced from it, not merged', async () => {
    const { hub, client } = await connected({}, session({ status: 'BUSY', activeDelivery: assignment(), offer: null }));
    hub.last.push('offer', offer({ deliveryId: OTHER_DELIVERY }));
    expect(client.state.offer?.deliveryId).toBe(OTHER_DELIVERY);
    const sessions: DriverSession[] = [];
    client.on('session', (s) => sessions.push(s));
    hub.last.drop();
    await vi.advanceTimersByTimeAsync(1000);
    // Meanwhile the delivery was cancelled and the offer expired; the hub's session says so.
    hub.last.open(session({ status: 'AVAILABLE' }));
    expect(client.state).toEqual({ connection: 'connected', driverId: DRIVER, status: 'AVAILABLE', activeDelivery: null, offer: null });
    expect(sessions).toHaveLength(1);
  });

  it('when a hub from before offers leaves offer out, then the state has offer null and the job as ASSIGNED', async () => {
    const { client } = await connected({}, { driverId: DRIVER, status: 'BUSY', activeDelivery: assignment() });
    expect(client.state.offer).toBeNull();
    expect(client.state.activeDelivery?.status).toBe('ASSIGNED');
  });

  it('when the job was picked up, then a session that leaves its status out keeps PICKED_UP, and a fresh client takes it from a session that says so', async () => {
    const { hub, client } = await connected({}, session({ status: 'BUSY', activeDelivery: assignment() }));
    const picked = client.updateDelivery({ deliveryId: DELIVERY, status: 'PICKED_UP' });
    hub.last.emitted('delivery:update')[0].ack!({ ok: true, delivery: deliveryView('PICKED_UP') });
    await picked;
    hub.last.drop();
    await vi.advanceTimersByTimeAsync(1000);
    hub.last.open(session({ status: 'BUSY', activeDelivery: assignment() }));
    expect(client.state.activeDelivery?.status).toBe('PICKED_UP');
    const fresh = await connected({}, session({ status: 'BUSY', activeDelivery: assignment({ status: 'PICKED_UP' }) }));
    expect(fresh.client.state.activeDelivery?.status).toBe('PICKED_UP');
  });

  it('when the state changes, then listeners get a new frozen snapshot each time', async () => {
    const { hub, client } = start();
    const states: unknown[] = [];
    client.on('state', (s) => states.push(s));
    await settle();
    hub.last.open(session());
    expect(states.length).toBeGreaterThan(0);
    expect(Object.isFrozen(client.state)).toBe(true);
    expect(states[states.length - 1]).toBe(client.state);
  });
});

describe('driver client: pushes', () => {
  it('when an async assignment handler resolves, then the push is acknowledged after it and not before', async () => {
    const { hub, client } = await connected();
    let release!: () => void;
    const seen: unknown[] = [];
    client.on('assignment', async (a) => {
      seen.push({ a, stateDelivery: client.state.activeDelivery?.deliveryId });
      await new Promise<void>((resolve) => (release = resolve));
    });
    const answers = hub.last.push('assignment', assignment());
    await settle();
    expect(seen).toEqual([{ a: { ...assignment(), status: 'ASSIGNED' }, stateDelivery: DELIVERY }]);
    expect(answers).toEqual([]);
    release();
    await settle();
    expect(answers).toEqual([{ ok: true }]);
    expect(client.state.status).toBe('BUSY');
  });

  it('when a handler throws, then the push is answered ok:false, reported, and its re-send runs the handler again', async () => {
    const { hub, client } = await connected();
    let calls = 0;
    client.on('assignment', () => {
      calls += 1;
      if (calls === 1) throw new Error('disk full');
    });
    const errors: DriverClientError[] = [];
    client.on('error', (e) => errors.push(e));
    const first = hub.last.push('assignment', assignment());
    await settle();
    expect(first).toEqual([{ ok: false, error: { code: 'INTERNAL', message: expect.stringContaining('disk full') } }]);
    expect(errors.map((e) => e.code)).toEqual(['HANDLER_FAILED']);
    const second = hub.last.push('assignment', assignment());
    await settle();
    expect(second).toEqual([{ ok: true }]);
    expect(calls).toBe(2);
  });

  it('when a push the app already took is sent again (a lost ack, a reconnect), then it is acknowledged at once and the handler does not run again', async () => {
    const { hub, client } = await connected();
    const handler = vi.fn();
    client.on('assignment', handler);
    hub.last.push('assignment', assignment());
    await settle();
    hub.last.drop();
    await vi.advanceTimersByTimeAsync(1000);
    hub.last.open(session({ status: 'BUSY', activeDelivery: assignment() }));
    const answers = hub.last.push('assignment', assignment());
    expect(answers).toEqual([{ ok: true }]);
    expect(handler).toHaveBeenCalledTimes(1);
  });

  it('when a push is re-sent while its handler still runs, then the handler runs once and both are answered when it finishes', async () => {
    const { hub, client } = await connected();
    let release!: () => void;
    const handler = vi.fn(() => new Promise<void>((resolve) => (release = resolve)));
    client.on('offer', handler);
    const first = hub.last.push('offer', offer());
    const second = hub.last.push('offer', offer());
    await settle();
    expect(handler).toHaveBeenCalledTimes(1);
    release();
    await settle();
    expect([first, second]).toEqual([[{ ok: true }], [{ ok: true }]]);
    expect(client.state.offer?.deliveryId).toBe(DELIVERY);
  });

  it('when a hub sends a push without an ack (before issue 16), then the handler still runs', async () => {
    const { hub, client } = await connected();
    const handler = vi.fn();
    client.on('assignment', handler);
    hub.last.fire('assignment', assignment());
    await settle();
    expect(handler).toHaveBeenCalledTimes(1);
  });

  it('when a push is malformed, then it is refused and nothing changes', async () => {
    const { hub, client } = await connected();
    const handler = vi.fn();
    client.on('assignment', handler);
    expect(hub.last.push('assignment', { nope: 1 })).toEqual([{ ok: false, error: { code: 'VALIDATION_FAILED', message: 'malformed assignment' } }]);
    expect(handler).not.toHaveBeenCalled();
    expect(client.state.activeDelivery).toBeNull();
  });

  it('when the job is cancelled, then it leaves the state, the driver is back on the duty it chose, and the cancel is acknowledged', async () => {
    const { hub, client } = await connected({}, session({ status: 'AVAILABLE' }));
    hub.last.push('assignment', assignment());
    expect(client.state.status).toBe('BUSY');
    const cancelled = vi.fn();
    client.on('cancelled', cancelled);
    const answers = hub.last.push('delivery:cancelled', { deliveryId: DELIVERY, reason: 'customer cancelled' });
    await settle();
    expect(cancelled).toHaveBeenCalledWith({ deliveryId: DELIVERY, reason: 'customer cancelled' });
    expect(answers).toEqual([{ ok: true }]);
    expect(client.state).toMatchObject({ activeDelivery: null, status: 'AVAILABLE' });
  });

  it('when a late re-send of an accepted offer arrives, then the offer does not come back', async () => {
    const { hub, client } = await connected({}, session({ status: 'BUSY', activeDelivery: assignment() }));
    hub.last.push('offer', offer());
    expect(client.state.offer).toBeNull();
  });
});

describe('driver client: requests', () => {
  it('when setStatus is answered, then it resolves with the hub status and the state follows', async () => {
    const { hub, client } = await connected();
    const result = client.setStatus('AVAILABLE');
    const [{ args, ack }] = hub.last.emitted('status');
    expect(args[0]).toEqual({ status: 'AVAILABLE' });
    ack!({ ok: true, status: 'AVAILABLE' });
    await expect(result).resolves.toBe('AVAILABLE');
    expect(client.state.status).toBe('AVAILABLE');
  });

  it('when the hub refuses, then the promise rejects with a DriverClientError carrying its code and details', async () => {
    const { hub, client } = await connected();
    const result = client.updateDelivery({ deliveryId: DELIVERY, status: 'DELIVERED' });
    hub.last.emitted('delivery:update')[0].ack!({ ok: false, error: { code: 'INVALID_TRANSITION', message: 'not picked up', details: { from: 'ASSIGNED' } } });
    const err = await rejection(result);
    expect(err).toMatchObject({ code: 'INVALID_TRANSITION', message: 'not picked up', details: { from: 'ASSIGNED' } });
  });

  it('when no answer comes within the timeout, then it rejects with TIMEOUT, and a late answer changes nothing', async () => {
    const { hub, client } = await connected({ requestTimeoutMs: 2000 });
    const result = rejection(client.setStatus('AVAILABLE'));
    await vi.advanceTimersByTimeAsync(1999);
    const short = rejection(client.setStatus('OFFLINE', { timeoutMs: 100 }));
    await vi.advanceTimersByTimeAsync(100);
    expect((await result).code).toBe('TIMEOUT');
    expect((await short).code).toBe('TIMEOUT');
    hub.last.emitted('status')[0].ack!({ ok: true, status: 'AVAILABLE' });
    expect(client.state.status).toBe('OFFLINE');
  });

  it('when the connection drops before the answer, then it rejects with DISCONNECTED; while disconnected, requests reject at once', async () => {
    const { hub, client } = await connected();
    const result = rejection(client.setStatus('AVAILABLE'));
    hub.last.drop();
    expect((await result).code).toBe('DISCONNECTED');
    expect((await rejection(client.acceptOffer(DELIVERY))).code).toBe('DISCONNECTED');
    expect(hub.last.emitted('offer:accept')).toHaveLength(0);
  });

  it('when the arguments break the contract, then it rejects with VALIDATION_FAILED and sends nothing', async () => {
    const { hub, client } = await connected();
    const err = await rejection(client.updateDelivery({ deliveryId: DELIVERY, status: 'FAILED' }));
    expect(err.code).toBe('VALIDATION_FAILED');
    expect(err.details).toEqual([{ path: 'reason', message: expect.any(String) }]);
    expect((await rejection(client.acceptOffer('not-a-uuid'))).code).toBe('VALIDATION_FAILED');
    expect(hub.last.sent).toHaveLength(0);
  });

  it('when the job is picked up and delivered, then the state follows; delivered frees the driver', async () => {
    const { hub, client } = await connected({}, session({ status: 'AVAILABLE' }));
    hub.last.push('assignment', assignment());
    const picked = client.updateDelivery({ deliveryId: DELIVERY, status: 'PICKED_UP' });
    hub.last.emitted('delivery:update')[0].ack!({ ok: true, delivery: deliveryView('PICKED_UP') });
    await picked;
    expect(client.state.activeDelivery?.status).toBe('PICKED_UP');
    // A re-send without a status does not take PICKED_UP back.
    hub.last.push('assignment', assignment({ assignedAt: '2025-01-01T10:00:00.001Z' }));
    expect(client.state.activeDelivery?.status).toBe('PICKED_UP');
    const delivered = client.updateDelivery({ deliveryId: DELIVERY, status: 'DELIVERED' });
    hub.last.emitted('delivery:update')[1].ack!({ ok: true, delivery: deliveryView('DELIVERED') });
    await expect(delivered).resolves.toMatchObject({ status: 'DELIVERED' });
    expect(client.state).toMatchObject({ activeDelivery: null, status: 'AVAILABLE' });
  });

  it('when an offer is accepted, then it becomes the active delivery', async () => {
    const { hub, client } = await connected({}, session({ status: 'BUSY', offer: offer() }));
    const accepted = client.acceptOffer(DELIVERY);
    const [{ args, ack }] = hub.last.emitted('offer:accept');
    expect(args[0]).toEqual({ deliveryId: DELIVERY });
    ack!({ ok: true, delivery: deliveryView('ASSIGNED') });
    await accepted;
    expect(client.state).toMatchObject({ offer: null, status: 'BUSY', activeDelivery: { deliveryId: DELIVERY, orderCode: 'T1', status: 'ASSIGNED' } });
    // The answer was the confirmation: the job re-sent as an assignment (a reconnect) does not run the handler.
    const handler = vi.fn();
    client.on('assignment', handler);
    expect(hub.last.push('assignment', assignment())).toEqual([{ ok: true }]);
    expect(handler).not.toHaveBeenCalled();
  });

  it('when an offer expired before the answer, then OFFER_EXPIRED rejects and the offer leaves the state', async () => {
    const { hub, client } = await connected({}, session({ status: 'BUSY', offer: offer() }));
    const accepted = rejection(client.acceptOffer(DELIVERY));
    hub.last.emitted('offer:accept')[0].ack!({ ok: false, error: { code: 'OFFER_EXPIRED', message: 'too late' } });
    expect((await accepted).code).toBe('OFFER_EXPIRED');
    expect(client.state).toMatchObject({ offer: null, status: 'AVAILABLE' });
  });

  it('when an offer is declined, then it leaves the state and the reason goes along', async () => {
    const { hub, client } = await connected({}, session({ status: 'BUSY', offer: offer() }));
    const declined = client.declineOffer(DELIVERY, { reason: 'too far' });
    const [{ args, ack }] = hub.last.emitted('offer:decline');
    expect(args[0]).toEqual({ deliveryId: DELIVERY, reason: 'too far' });
    ack!({ ok: true });
    await declined;
    expect(client.state.offer).toBeNull();
  });
});

describe('driver client: fixes', () => {
  it('when fixes come while offline, then they are kept, the oldest dropped beyond the bound, and sent after the session in batches of up to 100, oldest first', async () => {
    const { hub, client } = start({ maxBufferedFixes: 250, locationConfirmation: 'ack' });
    const progress: unknown[] = [];
    client.on('locations', (p) => progress.push(p));
    for (let i = 0; i < 300; i++) client.sendLocation({ lat: 52, lng: 13 + i / 1000, ts: 1000 + i });
    expect(client.pendingFixes).toBe(250);
    expect(progress).toHaveLength(50);
    await settle();
    hub.last.open(session());
    let sent = batches(hub.last);
    expect(sent).toHaveLength(1);
    expect(sent[0]).toHaveLength(100);
    expect(sent[0][0]).toBe(50);
    hub.last.emitted('location')[0].ack!({ ok: true, accepted: 100 });
    await settle();
    hub.last.emitted('location')[1].ack!({ ok: true, accepted: 100 });
    await settle();
    sent = batches(hub.last);
    expect(sent.map((b) => [b[0], b[b.length - 1]])).toEqual([
      [50, 149],
      [150, 249],
      [250, 299],
    ]);
    // The newest fix travels last, so the hub ends on it.
    const last = hub.last.emitted('location')[2].args[0] as { ts: number }[];
    expect(last[last.length - 1].ts).toBe(1299);
  });

  it('when a batch was acknowledged, then its fixes are never sent again; an unacknowledged one goes again on the next connection', async () => {
    const { hub, client } = await connected({ locationConfirmation: 'ack' });
    client.sendLocation({ lat: 52, lng: 13 });
    hub.last.emitted('location')[0].ack!({ ok: true, accepted: 1 });
    await settle();
    client.sendLocation({ lat: 52.1, lng: 13 });
    client.sendLocation({ lat: 52.2, lng: 13 });
    // Only one batch at a time; the second fix waits for the first's ack.
    expect(batches(hub.last)).toEqual([[0], [1]]);
    hub.last.drop();
    client.sendLocation({ lat: 52.3, lng: 13 });
    await vi.advanceTimersByTimeAsync(1000);
    hub.last.open(session());
    expect(batches(hub.last)).toEqual([[1, 2, 3]]);
    hub.last.emitted('location')[0].ack!({ ok: true, accepted: 3 });
    await settle();
    expect(client.pendingFixes).toBe(0);
    hub.last.drop();
    await vi.advanceTimersByTimeAsync(1000);
    hub.last.open(session());
    expect(batches(hub.last)).toEqual([]);
  });

  it('when a fix is stamped and numbered, then ts defaults to now, seq grows by one, and a fix that breaks the contract is refused with nothing kept', async () => {
    const { hub, client } = await connected({ locationConfirmation: 'ack' });
    vi.setSystemTime(5_000_000);
    client.sendLocation([{ lat: 1, lng: 2 }, { lat: 3, lng: 4, ts: 42 }]);
    expect(hub.last.emitted('location')[0].args[0]).toEqual([
      { lat: 1, lng: 2, ts: 5_000_000, seq: 0 },
      { lat: 3, lng: 4, ts: 42, seq: 1 },
    ]);
    let thrown: unknown;
    try {
      client.sendLocation([{ lat: 1, lng: 2 }, { lat: 91, lng: 2 }]);
    } catch (err) {
      thrown = err;
    }
    expect(thrown).toMatchObject({ code: 'VALIDATION_FAILED', details: [{ path: 'lat' }] });
    expect(client.pendingFixes).toBe(2);
  });

  it('when the hub rate-limits a batch, then it goes again after the wait; a batch refused as invalid is dropped and reported', async () => {
    const { hub, client } = await connected({ locationConfirmation: 'ack' });
    const errors: string[] = [];
    client.on('error', (e) => errors.push(e.code));
    client.sendLocation({ lat: 1, lng: 2 });
    hub.last.emitted('location')[0].ack!({ ok: false, error: { code: 'RATE_LIMITED', message: 'slow down', details: { retryAfterMs: 1500 } } });
    await vi.advanceTimersByTimeAsync(1499);
    expect(batches(hub.last)).toEqual([[0]]);
    await vi.advanceTimersByTimeAsync(1);
    expect(batches(hub.last)).toEqual([[0], [0]]);
    hub.last.emitted('location')[1].ack!({ ok: false, error: { code: 'VALIDATION_FAILED', message: 'bad' } });
    await settle();
    expect(client.pendingFixes).toBe(0);
    expect(errors).toEqual(['VALIDATION_FAILED']);
  });

  it('when a batch gets no ack in time, then it is sent again after a backoff on the same connection', async () => {
    const { hub, client } = await connected({ locationConfirmation: 'ack', requestTimeoutMs: 2000 });
    client.sendLocation({ lat: 1, lng: 2 });
    await vi.advanceTimersByTimeAsync(2000 + 499);
    expect(batches(hub.last)).toEqual([[0]]);
    await vi.advanceTimersByTimeAsync(1);
    expect(batches(hub.last)).toEqual([[0], [0]]);
  });
});

describe('driver client: cumulative confirmation', () => {
  const cumulative = session({ locationConfirmation: 'cumulative' });

  it('when the hub announces it, then fixes go without ack callbacks and stay until location:stored covers them', async () => {
    const { hub, client } = await connected({}, cumulative);
    for (let i = 0; i < 5; i++) client.sendLocation({ lat: 52, lng: 13 + i / 100 });
    const sent = hub.last.emitted('location');
    expect(sent.map((s) => s.ack)).toEqual([undefined, undefined, undefined, undefined, undefined]);
    expect(batches(hub.last)).toEqual([[0], [1], [2], [3], [4]]);
    hub.last.fire('location:stored', { upTo: 2 });
    expect(client.pendingFixes).toBe(2);
    hub.last.fire('location:stored', { upTo: 4 });
    expect(client.pendingFixes).toBe(0);
  });

  it('when the hub does not announce it, or the app chose acks, then the client asks for per-batch acks instead', async () => {
    const { hub, client } = await connected({}, session());
    client.sendLocation({ lat: 52, lng: 13 });
    expect(hub.last.emitted('location')[0].ack).toBeTypeOf('function');
    const chose = await connected({ locationConfirmation: 'ack' }, cumulative);
    chose.client.sendLocation({ lat: 52, lng: 13 });
    expect(chose.hub.last.emitted('location')[0].ack).toBeTypeOf('function');
  });

  it('when confirmations stop for confirmTimeoutMs, then the unconfirmed fixes go again; after a reconnect only unconfirmed ones go, oldest first', async () => {
    const { hub, client } = await connected({ confirmTimeoutMs: 4000 }, cumulative);
    for (let i = 0; i < 3; i++) client.sendLocation({ lat: 52, lng: 13 });
    hub.last.fire('location:stored', { upTo: 0 });
    await vi.advanceTimersByTimeAsync(3999);
    expect(batches(hub.last)).toEqual([[0], [1], [2]]);
    await vi.advanceTimersByTimeAsync(1);
    expect(batches(hub.last)).toEqual([[0], [1], [2], [1, 2]]);
    hub.last.fire('location:stored', { upTo: 1 });
    hub.last.drop();
    for (let i = 0; i < 150; i++) client.sendLocation({ lat: 52, lng: 13 });
    await vi.advanceTimersByTimeAsync(1000);
    hub.last.open(cumulative);
    expect(batches(hub.last).map((b) => [b[0], b[b.length - 1], b.length])).toEqual([
      [2, 101, 100],
      [102, 152, 51],
    ]);
    hub.last.fire('location:stored', { upTo: 152 });
    expect(client.pendingFixes).toBe(0);
    await vi.advanceTimersByTimeAsync(10_000);
    expect(batches(hub.last)).toHaveLength(2);
  });

  it('when location:stored is malformed, then it is ignored and reported', async () => {
    const { hub, client } = await connected({}, cumulative);
    const errors: string[] = [];
    client.on('error', (e) => errors.push(e.code));
    client.sendLocation({ lat: 52, lng: 13 });
    hub.last.fire('location:stored', { upTo: -1 });
    hub.last.fire('location:stored', 'all');
    expect(client.pendingFixes).toBe(1);
    expect(errors).toEqual(['VALIDATION_FAILED', 'VALIDATION_FAILED']);
  });
});

describe('driver client: close', () => {
  it('when closed, then the socket goes, calls and waiters reject with CLOSED, no timer is left and it never reconnects', async () => {
    const { hub, client } = await connected({}, session({ locationConfirmation: 'cumulative' }));
    client.sendLocation({ lat: 52, lng: 13 });
    const pendingCall = rejection(client.setStatus('AVAILABLE'));
    const changes: string[] = [];
    client.on('connection', (c) => changes.push(c.state));
    client.close();
    expect((await pendingCall).code).toBe('CLOSED');
    expect((await rejection(client.ready())).code).toBe('CLOSED');
    expect((await rejection(client.setStatus('OFFLINE'))).code).toBe('CLOSED');
    expect(hub.last.disconnectCalls).toBe(1);
    expect(changes).toEqual(['closed']);
    expect(client.state.connection).toBe('closed');
    expect(vi.getTimerCount()).toBe(0);
    client.sendLocation({ lat: 52, lng: 13 });
    await vi.advanceTimersByTimeAsync(60_000);
    expect(hub.sockets).toHaveLength(1);
  });

  it('when closed while waiting to reconnect, then no attempt follows', async () => {
    const { hub, client } = await connected();
    hub.last.drop();
    client.close();
    await vi.advanceTimersByTimeAsync(60_000);
    expect(hub.sockets).toHaveLength(1);
  });
});
