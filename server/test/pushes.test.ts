import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { PrivateRedis, TcpProxy } from './support/faults.js';
import {
  api,
  connectDriver,
  connectSocket,
  createDriver,
  createTestDatabase,
  type DriverClient,
  firstEvent,
  hasSharedPostgres,
  metricOf,
  onDutyDriver,
  order,
  postWebhook,
  startTestHub,
  type TestDatabase,
  type TestHub,
  testConfig,
} from './support/hub.js';
import { eventually } from './support/net.js';

const READY = '/events/seller-order-ready';
const CANCELLED = '/events/seller-order-cancelled';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

let area = 0;
const nextPlace = () => {
  area += 1;
  return { lat: -40 + area, lng: 100 + area };
};

describe('pushes a driver app acknowledges', () => {
  const RETRY_MS = 300;
  const MAX_RESENDS = 3;
  let db: TestDatabase;
  let hub: TestHub;

  beforeAll(async () => {
    db = await createTestDatabase();
    hub = await startTestHub(testConfig(db, { PUSH_RETRY_MS: String(RETRY_MS), PUSH_MAX_RESENDS: String(MAX_RESENDS) }));
  });
  afterAll(async () => {
    await hub?.stop();
    await db?.drop();
  });

  const detail = async (id: string) => (await api(hub, 'GET', `/admin/deliveries/${id}`)).body;

  it('when the app acknowledges an assignment, then acknowledgedAt is recorded and nothing is sent again', async () => {
    const at = nextPlace();
    const driver = await onDutyDriver(hub, at);
    const res = await postWebhook(hub, READY, order({ pickup: at }));
    expect(res.body.status).toBe('ASSIGNED');
    await eventually(async () => (await detail(res.body.deliveryId)).acknowledgedAt !== null, 'the acknowledgement recorded');
    const view = await detail(res.body.deliveryId);
    expect(view.pushes).toEqual([expect.objectContaining({ kind: 'assignment', driverId: driver.id, resends: 0, unacknowledgedAt: null })]);
    expect(view.pushes[0].acknowledgedAt).toBe(view.acknowledgedAt);
    await sleep(RETRY_MS * 4);
    expect(driver.assignments).toHaveLength(1);
    // A reconnect sends the active job once more (the app may have lost it), and nothing else.
    driver.close();
    const again = await connectDriver(hub, driver.token);
    expect(again.session.activeDelivery?.deliveryId).toBe(res.body.deliveryId);
    await sleep(RETRY_MS * 3);
    expect(again.assignments.map((a) => a.deliveryId)).toEqual([res.body.deliveryId]);
    again.close();
  });

  it('when the app never acknowledges, then the push is re-sent a bounded number of times and flagged for dispatchers and metrics', async () => {
    const at = nextPlace();
    const { id, token } = await createDriver(hub);
    const silent = await connectDriver(hub, token, { ackPushes: false });
    await silent.emitAck('location', at);
    await silent.emitAck('status', { status: 'AVAILABLE' });
    const before = await metricOf(hub, 'hub_pushes_unacknowledged_total', 'kind="assignment"');
    const dispatcher = connectSocket(hub, '/dispatch', { token: (await api(hub, 'POST', '/admin/tokens', { role: 'dispatcher', subject: 'watcher' })).body.token });
    const pushStates: any[] = [];
    dispatcher.on('delivery:push', (p) => pushStates.push(p));
    await firstEvent(dispatcher, 'snapshot');

    const res = await postWebhook(hub, READY, order({ pickup: at }));
    expect(res.body).toMatchObject({ status: 'ASSIGNED', driverId: id });
    await eventually(() => silent.assignments.length === 1 + MAX_RESENDS, 'every re-send', 10_000);
    await eventually(() => pushStates.some((p) => p.deliveryId === res.body.deliveryId && p.state === 'unacknowledged'), 'dispatchers told');
    await sleep(RETRY_MS * 4);
    expect(silent.assignments).toHaveLength(1 + MAX_RESENDS);
    for (const a of silent.assignments) expect(a.deliveryId).toBe(res.body.deliveryId);
    const view = await detail(res.body.deliveryId);
    expect(view.acknowledgedAt).toBeNull();
    expect(view.pushes[0]).toMatchObject({ kind: 'assignment', resends: MAX_RESENDS, acknowledgedAt: null });
    expect(view.pushes[0].unacknowledgedAt).not.toBeNull();
    expect(await metricOf(hub, 'hub_pushes_unacknowledged_total', 'kind="assignment"')).toBe(before + 1);

    // Reconnecting, with an app that does answer, delivers it at once and records the acknowledgement.
    silent.close();
    const fixed = await connectDriver(hub, token);
    await eventually(() => fixed.assignments.length === 1, 'the job sent at once on reconnect');
    await eventually(async () => (await detail(res.body.deliveryId)).acknowledgedAt !== null, 'the late acknowledgement recorded');
    fixed.close();
    dispatcher.disconnect();
  });

  it('when the app answers with anything but { ok: true }, then nothing is recorded, it is counted, and the push comes again', async () => {
    const at = nextPlace();
    const { token } = await createDriver(hub);
    const socket = connectSocket(hub, '/drivers', { token });
    // Four sends in all (the first and MAX_RESENDS re-sends): three refusals, then the real answer.
    const replies: unknown[] = [{ ok: false, error: { code: 'INTERNAL', message: 'handler threw' } }, 'yes', { ok: 'true' }, { ok: true }];
    const received: any[] = [];
    socket.on('assignment', (a: any, ack: (r: unknown) => void) => {
      received.push(a);
      ack(replies[Math.min(received.length - 1, replies.length - 1)]);
    });
    await firstEvent(socket, 'session');
    await socket.timeout(5000).emitWithAck('location', at);
    await socket.timeout(5000).emitWithAck('status', { status: 'AVAILABLE' });
    const before = await metricOf(hub, 'hub_input_rejected_total', 'event="assignment ack"');
    const res = await postWebhook(hub, READY, order({ pickup: at }));
    await eventually(async () => (await detail(res.body.deliveryId)).acknowledgedAt !== null, 'the fourth answer recorded', 10_000);
    expect(received).toHaveLength(4);
    expect(await metricOf(hub, 'hub_input_rejected_total', 'event="assignment ack"')).toBe(before + 3);
    socket.disconnect();
  });

  it('when a delivery is cancelled while its driver is disconnected, then the cancel is delivered on reconnect, and a stale acknowledgement changes nothing', async () => {
    const at = nextPlace();
    const { id, token } = await createDriver(hub);
    // Holds the assignment's acknowledgement back, as an app killed before answering would.
    const socket = connectSocket(hub, '/drivers', { token });
    let heldAck: ((r: unknown) => void) | null = null;
    socket.on('assignment', (_a: unknown, ack: (r: unknown) => void) => {
      heldAck ??= ack;
    });
    await firstEvent(socket, 'session');
    await socket.timeout(5000).emitWithAck('location', at);
    await socket.timeout(5000).emitWithAck('status', { status: 'AVAILABLE' });
    const o = order({ pickup: at });
    const res = await postWebhook(hub, READY, o);
    expect(res.body.driverId).toBe(id);
    await eventually(() => heldAck !== null, 'the assignment');

    const cancelled = await postWebhook(hub, CANCELLED, { sellerOrderId: o.sellerOrderId, reason: 'customer changed their mind' });
    expect(cancelled.status).toBe(200);
    // The answer that comes after the cancel is about a job that is gone: nothing is recorded.
    heldAck!({ ok: true });
    await sleep(200);
    expect((await detail(res.body.deliveryId)).acknowledgedAt).toBeNull();
    socket.disconnect();

    const back = await connectDriver(hub, token);
    await eventually(() => back.cancellations.length === 1, 'the cancel after reconnecting');
    expect(back.cancellations[0]).toEqual({ deliveryId: res.body.deliveryId, reason: 'customer changed their mind' });
    expect(back.session.activeDelivery).toBeNull();
    await sleep(RETRY_MS * 3);
    expect(back.assignments).toHaveLength(0);
    expect(back.cancellations).toHaveLength(1);
    const view = await detail(res.body.deliveryId);
    expect(view.pushes.find((p: any) => p.kind === 'assignment')).toMatchObject({ acknowledgedAt: null });
    expect(view.pushes.find((p: any) => p.kind === 'assignment').closedAt).not.toBeNull();
    expect(view.pushes.find((p: any) => p.kind === 'delivery:cancelled').acknowledgedAt).not.toBeNull();
    back.close();
  });

  it('when a driver reconnects after its first job was cancelled unanswered and a second assigned, then it gets exactly the current job', async () => {
    const at = nextPlace();
    const { token } = await createDriver(hub);
    const silent = await connectDriver(hub, token, { ackPushes: false });
    await silent.emitAck('location', at);
    await silent.emitAck('status', { status: 'AVAILABLE' });
    const first = order({ pickup: at });
    const one = await postWebhook(hub, READY, first);
    await eventually(() => silent.assignments.length >= 1, 'the first job');
    await postWebhook(hub, CANCELLED, { sellerOrderId: first.sellerOrderId });
    await eventually(() => silent.cancellations.length >= 1, 'the cancel');
    const two = await postWebhook(hub, READY, order({ pickup: at }));
    expect(two.body.status).toBe('ASSIGNED');
    silent.close();

    const back = await connectDriver(hub, token);
    expect(back.session.activeDelivery?.deliveryId).toBe(two.body.deliveryId);
    await eventually(() => back.assignments.length >= 1, 'the current job');
    await sleep(RETRY_MS * 3);
    // The reconnect's send and a re-send pass may both go out before the answer is recorded: the
    // same job twice is a repeat the app recognises; the cancelled job never comes back.
    expect([...new Set(back.assignments.map((a) => a.deliveryId))]).toEqual([two.body.deliveryId]);
    expect([...new Set(back.cancellations.map((c) => c.deliveryId))]).toEqual([one.body.deliveryId]);
    back.close();
  });
});

describe.skipIf(!hasSharedPostgres())('pushes while the Redis link is cut, on three hubs', () => {
  const RETRY_MS = 1000;
  let db: TestDatabase;
  let redisServer: PrivateRedis;
  let proxy: TcpProxy;
  let hubs: TestHub[];
  let drivers: (DriverClient & { id: string })[];

  beforeEach(async () => {
    db = await createTestDatabase();
    redisServer = new PrivateRedis();
    await redisServer.start();
    proxy = new TcpProxy(redisServer.port);
    await proxy.start();
    hubs = [];
    for (let i = 0; i < 3; i++) {
      hubs.push(
        await startTestHub(
          testConfig(db, {
            REDIS_URL: `redis://127.0.0.1:${proxy.port}`,
            REDIS_PREFIX: 'cut:',
            NODE_ID: `cut-${i}`,
            REDIS_COMMAND_TIMEOUT_MS: '300',
            PUSH_RETRY_MS: String(RETRY_MS),
          }),
        ),
      );
    }
    drivers = [];
  });
  afterEach(async () => {
    for (const d of drivers) d.close();
    await Promise.all(hubs.map((h) => h.stop()));
    await proxy?.stop();
    await redisServer?.kill();
    await db?.drop();
  });

  it('when orders are assigned to drivers on other nodes with Redis cut, then every driver gets its job within PUSH_RETRY_MS and a margin, and again after Redis returns', async () => {
    const base = { lat: 59.33, lng: 18.06 };
    // Drivers on nodes 1 and 2, far enough apart that each order has one nearest driver; orders go to node 0.
    for (let i = 0; i < 6; i++) drivers.push(await onDutyDriver(hubs[1 + (i % 2)], { lat: base.lat + i * 0.5, lng: base.lng }, `Cut ${i}`));
    await sleep(500); // positions flushed to PostgreSQL, which assigns while Redis is away

    proxy.set('refuse');
    const bound = RETRY_MS + 2500;
    for (let i = 0; i < 3; i++) {
      const sent = Date.now();
      const res = await postWebhook(hubs[0], READY, order({ pickup: { lat: base.lat + i * 0.5, lng: base.lng } }));
      expect(res.status).toBe(200);
      const driver = drivers.find((d) => d.id === res.body.driverId)!;
      await eventually(() => driver.assignments.some((a) => a.deliveryId === res.body.deliveryId), `job ${i} while Redis is cut`, bound);
      expect(Date.now() - sent).toBeLessThan(bound);
    }

    proxy.set('pass');
    await eventually(async () => (await api(hubs[0], 'GET', '/health')).body.redis === 'up', 'redis back', 15_000);
    for (let i = 3; i < 6; i++) {
      const res = await postWebhook(hubs[0], READY, order({ pickup: { lat: base.lat + i * 0.5, lng: base.lng } }));
      expect(res.status).toBe(200);
      const driver = drivers.find((d) => d.id === res.body.driverId)!;
      await eventually(() => driver.assignments.some((a) => a.deliveryId === res.body.deliveryId), `job ${i} after Redis returned`, bound);
    }
    for (const d of drivers) expect(new Set(d.assignments.map((a) => a.deliveryId)).size).toBe(1);
    const views = await Promise.all(
      drivers.map(async (d) => (await api(hubs[0], 'GET', `/admin/deliveries?driverId=${d.id}`)).body.deliveries as { acknowledgedAt: string | null }[]),
    );
    await eventually(async () => {
      const all = await Promise.all(drivers.map(async (d) => (await api(hubs[0], 'GET', `/admin/deliveries?driverId=${d.id}`)).body.deliveries[0].acknowledgedAt));
      return all.every((a) => a !== null);
    }, 'every job acknowledged and recorded');
    expect(views).toHaveLength(6);
  });
});
