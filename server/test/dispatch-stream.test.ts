import type { Socket } from 'socket.io-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DispatchSnapshot } from '#shared/events.js';
import type { DeliveryView, DriverMoved } from '#shared/schemas.js';
import {
  api,
  connectError,
  connectSocket,
  createTestDatabase,
  firstEvent,
  hasSharedPostgres,
  onDutyDriver,
  order,
  postWebhook,
  redisFor,
  startCluster,
  startTestHub,
  type TestDatabase,
  type TestHub,
  testConfig,
} from './support/hub.js';
import { proxyToSharedRedis, type TcpProxy } from './support/faults.js';
import { eventually } from './support/net.js';

const TICK_MS = 500;

interface Dispatcher {
  socket: Socket;
  snapshot: DispatchSnapshot;
  /** Every drivers:moved message, in arrival order. */
  batches: DriverMoved[][];
  statuses: { id: string; status: string; ts: number }[];
  updates: (DeliveryView & { previousStatus: string | null })[];
  /** Newest position seen per driver. */
  latest(id: string): DriverMoved | undefined;
  close(): void;
}

async function dispatcherToken(hub: TestHub, subject = 'dispatcher-test'): Promise<string> {
  const res = await api<{ token: string }>(hub, 'POST', '/admin/tokens', { role: 'dispatcher', subject });
  if (res.status !== 200) throw new Error(`token not minted: ${res.status}`);
  return res.body.token;
}

async function connectDispatcher(hub: TestHub, token?: string): Promise<Dispatcher> {
  const socket = connectSocket(hub, '/dispatch', { token: token ?? (await dispatcherToken(hub)) });
  const batches: DriverMoved[][] = [];
  const statuses: Dispatcher['statuses'] = [];
  const updates: Dispatcher['updates'] = [];
  socket.on('drivers:moved', (moves: DriverMoved[]) => batches.push(moves));
  socket.on('driver:status', (s: Dispatcher['statuses'][number]) => statuses.push(s));
  socket.on('delivery:updated', (d: Dispatcher['updates'][number]) => updates.push(d));
  const snapshot = await firstEvent<DispatchSnapshot>(socket, 'snapshot');
  return {
    socket,
    snapshot,
    batches,
    statuses,
    updates,
    latest: (id) => batches.flat().filter((m) => m.id === id).at(-1),
    close: () => socket.disconnect(),
  };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('/dispatch stream on one node', () => {
  let db: TestDatabase;
  let hub: TestHub;
  const opened: { close(): void }[] = [];

  beforeAll(async () => {
    db = await createTestDatabase();
    // The production tick: long enough that a burst of pings certainly falls inside one.
    hub = await startTestHub(testConfig(db, { MAP_TICK_MS: String(TICK_MS) }));
  });
  afterAll(async () => {
    for (const c of opened) c.close();
    await hub?.stop();
    await db?.drop();
  });

  it('when a dispatcher connects, then the snapshot holds the drivers with their last positions and the open deliveries', async () => {
    const a = await onDutyDriver(hub, { lat: 10.001, lng: 20.001 }, 'Snap A');
    const b = await onDutyDriver(hub, { lat: 10.002, lng: 20.002 }, 'Snap B');
    opened.push(a, b);
    const o = order({ pickup: { lat: 10.0011, lng: 20.0011 } });
    const created = await postWebhook(hub, '/events/seller-order-ready', o);
    expect(created.status).toBe(200);

    const d = await connectDispatcher(hub);
    opened.push(d);
    const byId = new Map(d.snapshot.drivers.map((x) => [x.id, x]));
    expect(byId.get(a.id)).toMatchObject({ name: 'Snap A', lat: 10.001, lng: 20.001 });
    expect(byId.get(b.id)).toMatchObject({ name: 'Snap B', status: 'AVAILABLE', lat: 10.002, lng: 20.002 });
    expect(byId.get(created.body.driverId)?.status).toBe('BUSY');
    const delivery = d.snapshot.deliveries.find((x) => x.id === created.body.deliveryId);
    expect(delivery).toMatchObject({ sellerOrderId: o.sellerOrderId, orderCode: o.orderCode, status: 'ASSIGNED', driverId: created.body.driverId });
  });

  it('when many pings arrive within one tick, then one drivers:moved message carries each driver once at its newest position', async () => {
    const drivers = [];
    for (let i = 0; i < 3; i++) drivers.push(await onDutyDriver(hub, { lat: 11 + i * 0.01, lng: 21 }, `Burst ${i}`));
    opened.push(...drivers);
    const d = await connectDispatcher(hub);
    opened.push(d);

    // The premise is that the burst fits inside one tick. On a busy machine 30 acknowledged pings can
    // take longer than half a tick; then the burst is sent again, lined up afresh, rather than the
    // test judging coalescing on a burst that straddled two ticks.
    let before = 0;
    const last = new Map<string, { lat: number; lng: number }>();
    for (let attempt = 1; ; attempt++) {
      // Line up with the node's tick: a batch has just gone out, so the next one is a full tick away.
      const seen = d.batches.length;
      await drivers[0].emitAck('location', { lat: 11, lng: 21.0001 });
      await eventually(() => d.batches.length > seen, 'a batch to line up with');
      before = d.batches.length;
      const started = Date.now();
      await Promise.all(
        drivers.map(async (driver, i) => {
          for (let step = 1; step <= 10; step++) {
            const fix = { lat: 11 + i * 0.01 + step * 0.0001 * attempt, lng: 21 + step * 0.0001, heading: 45, speed: 9 };
            last.set(driver.id, { lat: fix.lat, lng: fix.lng });
            const ack = await driver.emitAck('location', fix);
            expect(ack.ok).toBe(true);
          }
        }),
      );
      if (Date.now() - started < TICK_MS / 2) break;
      expect(attempt, 'a burst of 30 pings never fit in half a tick').toBeLessThan(5);
      await sleep(TICK_MS * 2);
    }

    await eventually(() => d.batches.length > before, 'the burst batch');
    await sleep(TICK_MS * 2); // no second message may follow for the same pings
    const after = d.batches.slice(before);
    expect(after).toHaveLength(1);
    const [batch] = after;
    expect(batch.map((m) => m.id).sort()).toEqual(drivers.map((x) => x.id).sort());
    for (const driver of drivers) {
      const move = batch.find((m) => m.id === driver.id)!;
      expect({ lat: move.lat, lng: move.lng }).toEqual(last.get(driver.id));
      expect(move).toMatchObject({ heading: 45, speed: 9, status: 'AVAILABLE' });
      expect(typeof move.ts).toBe('number');
    }
  });

  it('when a dispatcher sets a viewport, then it only gets drivers inside it while others still get everyone', async () => {
    const inside = await onDutyDriver(hub, { lat: 12.5, lng: 22.5 }, 'Inside');
    const outside = await onDutyDriver(hub, { lat: 14.5, lng: 24.5 }, 'Outside');
    opened.push(inside, outside);
    const framed = await connectDispatcher(hub);
    const everything = await connectDispatcher(hub);
    opened.push(framed, everything);

    const bad = await framed.socket.timeout(5000).emitWithAck('viewport', { minLat: 95, minLng: 0, maxLat: 1, maxLng: 1 });
    expect(bad).toMatchObject({ ok: false, error: { code: 'VALIDATION_FAILED' } });
    const set = await framed.socket.timeout(5000).emitWithAck('viewport', { minLat: 12, minLng: 22, maxLat: 13, maxLng: 23 });
    expect(set).toEqual({ ok: true });
    // Batches sent before the ack predate the viewport (one socket keeps order): only later ones count.
    framed.batches.length = 0;

    await inside.emitAck('location', { lat: 12.51, lng: 22.51 });
    await outside.emitAck('location', { lat: 14.51, lng: 24.51 });
    await eventually(() => everything.latest(inside.id)?.lat === 12.51 && everything.latest(outside.id)?.lat === 14.51, 'the unfiltered dispatcher to see both');
    await sleep(100);
    expect(framed.latest(inside.id)).toMatchObject({ lat: 12.51, lng: 22.51 });
    expect(framed.latest(outside.id)).toBeUndefined();

    // Driving into the box makes a driver visible; clearing the viewport shows everyone again.
    await outside.emitAck('location', { lat: 12.9, lng: 22.9 });
    await eventually(() => framed.latest(outside.id)?.lat === 12.9, 'the driver that drove into the viewport');
    expect((await framed.socket.timeout(5000).emitWithAck('viewport', null)).ok).toBe(true);
    await outside.emitAck('location', { lat: 14.6, lng: 24.6 });
    await eventually(() => framed.latest(outside.id)?.lat === 14.6, 'everyone again without a viewport');
  });

  it('when a viewport crosses the antimeridian, then drivers on both sides of it are inside', async () => {
    const east = await onDutyDriver(hub, { lat: -17, lng: 179.5 }, 'East of 180');
    const west = await onDutyDriver(hub, { lat: -17, lng: -179.5 }, 'West of 180');
    const far = await onDutyDriver(hub, { lat: -17, lng: 170 }, 'Far');
    opened.push(east, west, far);
    const d = await connectDispatcher(hub);
    opened.push(d);
    expect((await d.socket.timeout(5000).emitWithAck('viewport', { minLat: -18, minLng: 179, maxLat: -16, maxLng: -179 })).ok).toBe(true);
    d.batches.length = 0;
    await far.emitAck('location', { lat: -17.01, lng: 170 });
    await east.emitAck('location', { lat: -17.01, lng: 179.5 });
    await west.emitAck('location', { lat: -17.01, lng: -179.5 });
    await eventually(() => d.latest(east.id) && d.latest(west.id), 'both sides of the antimeridian');
    expect(d.latest(far.id)).toBeUndefined();
  });

  it('when a driver token, no token or a forged token is used on /dispatch, then the handshake is refused with a code', async () => {
    const driver = await onDutyDriver(hub, { lat: 13, lng: 23 }, 'Nosy');
    opened.push(driver);
    const asDriver = connectSocket(hub, '/dispatch', { token: driver.token });
    const forbidden = await connectError(asDriver);
    expect(forbidden.message).toBe('FORBIDDEN');
    expect(forbidden.data).toMatchObject({ code: 'FORBIDDEN' });
    asDriver.disconnect();

    const anonymous = connectSocket(hub, '/dispatch', {});
    expect((await connectError(anonymous)).data).toMatchObject({ code: 'TOKEN_MISSING' });
    anonymous.disconnect();

    const forged = connectSocket(hub, '/dispatch', { token: `${driver.token.slice(0, -4)}AAAA` });
    expect((await connectError(forged)).data?.code).toMatch(/^TOKEN_/);
    forged.disconnect();

    // A token in the query string would end up in access logs: refused even when valid.
    const inQuery = connectSocket(hub, '/dispatch', {}, { query: { token: await dispatcherToken(hub) } });
    expect((await connectError(inQuery)).data?.code).toBe('TOKEN_INVALID');
    inQuery.disconnect();
  });
});

// Three hubs need one database they can all reach: PGlite is single-process.
describe.skipIf(!hasSharedPostgres())('/dispatch stream across three nodes', () => {
  let db: TestDatabase;
  let hubs: TestHub[];
  const opened: { close(): void }[] = [];

  beforeAll(async () => {
    db = await createTestDatabase();
    hubs = await startCluster(db, 3);
  });
  afterAll(async () => {
    for (const c of opened) c.close();
    await Promise.all(hubs?.map((h) => h.stop()) ?? []);
    await db?.drop();
  });

  it('when no map is open on any node, then no position batches or status and delivery events cross nodes; once one opens on node 2, node 0 sends it both', async () => {
    const driver = await onDutyDriver(hubs[0], { lat: 33, lng: 43 }, 'Unwatched');
    opened.push(driver);
    const redis = redisFor(hubs[0]);
    const onRedis = { 'drivers:moved': 0, 'dispatch:events': 0 };
    try {
      await redis.psubscribe(`${hubs[0].config.REDIS_PREFIX}socket.io*#/dispatch#*`);
      redis.on('pmessageBuffer', (_pattern: Buffer, _channel: Buffer, message: Buffer) => {
        const event = message[0] === 0x7b ? JSON.parse(message.toString()).data?.[0] : null;
        if (event in onRedis) onRedis[event as keyof typeof onRedis] += 1;
      });
      for (let i = 1; i <= 5; i++) {
        expect((await driver.emitAck('location', { lat: 33 + i * 0.001, lng: 43 })).ok).toBe(true);
        await sleep(60);
      }
      for (const status of ['OFFLINE', 'AVAILABLE']) expect((await driver.emitAck('status', { status })).ok).toBe(true);
      expect((await postWebhook(hubs[0], '/events/seller-order-ready', order({ pickup: { lat: 33.005, lng: 43 } }))).body.driverId).toBe(driver.id);
      await sleep(300);
      expect(onRedis).toEqual({ 'drivers:moved': 0, 'dispatch:events': 0 });

      const d = await connectDispatcher(hubs[2]);
      opened.push(d);
      await eventually(async () => {
        await driver.emitAck('location', { lat: 33.5, lng: 43 });
        return d.latest(driver.id)?.lat === 33.5;
      }, 'node 0 streams to the map on node 2');
      expect(onRedis['drivers:moved']).toBeGreaterThan(0);
      const job = driver.assignments.at(-1).deliveryId;
      expect((await driver.emitAck('delivery:update', { deliveryId: job, status: 'PICKED_UP' })).ok).toBe(true);
      await eventually(() => d.updates.some((u) => u.id === job && u.status === 'PICKED_UP'), 'the pickup on node 2');
      expect(onRedis['dispatch:events']).toBeGreaterThan(0);
    } finally {
      redis.disconnect();
    }
  });

  it('when drivers on nodes 0 and 1 move and node 0 assigns one of them, then a dispatcher on node 2 sees both move and the assignment', async () => {
    const pickup = { lat: 30, lng: 40 };
    const onNode0 = await onDutyDriver(hubs[0], { lat: pickup.lat + 0.05, lng: pickup.lng }, 'On node 0');
    const onNode1 = await onDutyDriver(hubs[1], { lat: pickup.lat + 0.001, lng: pickup.lng }, 'On node 1');
    opened.push(onNode0, onNode1);
    const d = await connectDispatcher(hubs[2]);
    opened.push(d);
    expect(d.snapshot.drivers.map((x) => x.id)).toEqual(expect.arrayContaining([onNode0.id, onNode1.id]));

    await onNode0.emitAck('location', { lat: pickup.lat + 0.049, lng: pickup.lng + 0.001 });
    await onNode1.emitAck('location', { lat: pickup.lat + 0.0009, lng: pickup.lng + 0.0001 });
    await eventually(
      () => d.latest(onNode0.id)?.lat === pickup.lat + 0.049 && d.latest(onNode1.id)?.lat === pickup.lat + 0.0009,
      'both drivers moving on node 2',
    );
    // Each node sends its own batch: no message mixes drivers of two nodes, and none repeats a driver.
    for (const batch of d.batches) {
      const ids = batch.map((m) => m.id);
      expect(new Set(ids).size).toBe(ids.length);
      expect(ids.includes(onNode0.id) && ids.includes(onNode1.id)).toBe(false);
    }

    const o = order({ pickup });
    const res = await postWebhook(hubs[0], '/events/seller-order-ready', o);
    expect(res.status).toBe(200);
    expect(res.body.driverId).toBe(onNode1.id);
    await eventually(() => onNode1.assignments.some((a) => a.deliveryId === res.body.deliveryId), 'the assignment pushed to node 1');
    const update = await eventually(() => d.updates.find((u) => u.id === res.body.deliveryId && u.status === 'ASSIGNED'), 'delivery:updated on node 2');
    expect(update).toMatchObject({ sellerOrderId: o.sellerOrderId, orderCode: o.orderCode, driverId: onNode1.id });
    await eventually(() => d.statuses.some((s) => s.id === onNode1.id && s.status === 'BUSY'), 'driver:status BUSY on node 2');

    // Once per change, not once per node.
    await onNode1.emitAck('delivery:update', { deliveryId: res.body.deliveryId, status: 'PICKED_UP' });
    await eventually(() => d.updates.some((u) => u.id === res.body.deliveryId && u.status === 'PICKED_UP'), 'PICKED_UP on node 2');
    await sleep(300);
    expect(d.updates.filter((u) => u.id === res.body.deliveryId && u.status === 'ASSIGNED')).toHaveLength(1);
    expect(d.updates.filter((u) => u.id === res.body.deliveryId && u.status === 'PICKED_UP')).toHaveLength(1);
    expect(d.updates.find((u) => u.status === 'PICKED_UP')?.previousStatus).toBe('ASSIGNED');
  });

  it('when a driver on node 0 goes on and off duty and then takes a delivery through, then dispatchers on nodes 0 and 1 each get every driver:status and delivery:updated once and in order', async () => {
    const pickup = { lat: 35, lng: 45 };
    const driver = await onDutyDriver(hubs[0], { lat: pickup.lat + 0.001, lng: pickup.lng }, 'Toggler');
    opened.push(driver);
    const here = await connectDispatcher(hubs[0]);
    const there = await connectDispatcher(hubs[1]);
    opened.push(here, there);
    // The setup's own events may still be on their way: only what follows counts.
    await sleep(300);
    for (const d of [here, there]) {
      d.statuses.length = 0;
      d.updates.length = 0;
    }

    // Back to back, so that several changes share one tick and one Redis message.
    const toggles = ['OFFLINE', 'AVAILABLE', 'OFFLINE', 'AVAILABLE', 'OFFLINE', 'AVAILABLE'];
    for (const status of toggles) expect((await driver.emitAck('status', { status })).ok).toBe(true);
    const o = order({ pickup });
    const res = await postWebhook(hubs[0], '/events/seller-order-ready', o);
    expect(res.status).toBe(200);
    expect(res.body.driverId).toBe(driver.id);
    const deliveryId: string = res.body.deliveryId;
    expect((await driver.emitAck('delivery:update', { deliveryId, status: 'PICKED_UP' })).ok).toBe(true);
    expect((await driver.emitAck('delivery:update', { deliveryId, status: 'DELIVERED' })).ok).toBe(true);

    const statusesOf = (d: Dispatcher) => d.statuses.filter((s) => s.id === driver.id).map((s) => s.status);
    const updatesOf = (d: Dispatcher) => d.updates.filter((u) => u.id === deliveryId).map((u) => `${u.previousStatus}->${u.status}`);
    const expectedStatuses = [...toggles, 'BUSY', 'AVAILABLE'];
    const expectedUpdates = ['PENDING->ASSIGNED', 'ASSIGNED->PICKED_UP', 'PICKED_UP->DELIVERED'];
    for (const [d, where] of [[here, 'node 0'], [there, 'node 1']] as const) {
      await eventually(() => statusesOf(d).length >= expectedStatuses.length && updatesOf(d).length >= expectedUpdates.length, `every event on ${where}`);
    }
    await sleep(300); // a repeat would arrive within a few ticks
    for (const d of [here, there]) {
      expect(statusesOf(d)).toEqual(expectedStatuses);
      expect(updatesOf(d)).toEqual(expectedUpdates);
      const stamps = d.statuses.filter((s) => s.id === driver.id).map((s) => s.ts);
      expect(stamps).toEqual([...stamps].sort((a, b) => a - b));
    }
    expect(there.updates.find((u) => u.id === deliveryId && u.status === 'ASSIGNED')).toMatchObject({
      sellerOrderId: o.sellerOrderId,
      orderCode: o.orderCode,
      driverId: driver.id,
    });
  });

  it('when many drivers on node 0 change status at once, then node 0 shares them in fewer Redis messages than events and a dispatcher on node 2 gets each one', async () => {
    const drivers = [];
    for (let i = 0; i < 10; i++) drivers.push(await onDutyDriver(hubs[0], { lat: 36 + i * 0.01, lng: 46 }, `Crowd ${i}`));
    opened.push(...drivers);
    const d = await connectDispatcher(hubs[2]);
    opened.push(d);
    await sleep(300);
    d.statuses.length = 0;

    const redis = redisFor(hubs[0]);
    let carried = 0;
    try {
      // Every /dispatch message between nodes: emits, server-side emits and their replies.
      await redis.psubscribe(`${hubs[0].config.REDIS_PREFIX}socket.io*#/dispatch#*`);
      redis.on('pmessageBuffer', (_pattern: Buffer, _channel: Buffer, message: Buffer) => {
        // Position batches are not what this change is about.
        if (message[0] === 0x7b && ['drivers:moved', 'dispatch:watching'].includes(JSON.parse(message.toString()).data?.[0])) return;
        carried += 1;
      });

      await Promise.all(drivers.map(async (x) => expect((await x.emitAck('status', { status: 'OFFLINE' })).ok).toBe(true)));
      const ids = new Set(drivers.map((x) => x.id));
      await eventually(() => d.statuses.filter((s) => ids.has(s.id)).length >= drivers.length, 'every OFFLINE on node 2');
      await sleep(300);
      for (const x of drivers) expect(d.statuses.filter((s) => s.id === x.id)).toEqual([expect.objectContaining({ status: 'OFFLINE' })]);
      expect(carried).toBeGreaterThan(0);
      expect(carried).toBeLessThan(drivers.length);
    } finally {
      redis.disconnect();
    }
  });
});

// A node that hears other nodes late (its subscriber behind a slow proxy) while it changes things.
describe.skipIf(!hasSharedPostgres())('/dispatch stream when a node hears of a new map late', () => {
  let db: TestDatabase;
  let proxy: TcpProxy;
  let hubs: TestHub[];

  beforeAll(async () => {
    db = await createTestDatabase();
    const slow = await proxyToSharedRedis();
    proxy = slow.proxy;
    const prefix = `t${Math.random().toString(16).slice(2, 10)}:`;
    hubs = [
      await startTestHub(testConfig(db, { REDIS_PREFIX: prefix, NODE_ID: 'late-0', REDIS_URL: slow.url })),
      await startTestHub(testConfig(db, { REDIS_PREFIX: prefix, NODE_ID: 'late-1' })),
    ];
  });
  afterAll(async () => {
    await Promise.all(hubs?.map((h) => h.stop()) ?? []);
    await proxy?.stop();
    await db?.drop();
  });

  it('when a delivery is cancelled on a node that has not yet heard of a map opening on another, then the map does not keep it open', async () => {
    // Nobody near: the order waits, open.
    const o = order({ pickup: { lat: -41, lng: -61 } });
    const created = await postWebhook(hubs[1], '/events/seller-order-ready', o);
    expect(created.body.status).toBe('PENDING');
    const deliveryId: string = created.body.deliveryId;
    proxy.subscriberDelayMs = 1500;
    const socket = connectSocket(hubs[1], '/dispatch', { token: await dispatcherToken(hubs[1]) });
    try {
      const updates: Dispatcher['updates'] = [];
      socket.on('delivery:updated', (d: Dispatcher['updates'][number]) => updates.push(d));
      const snapshot = firstEvent<DispatchSnapshot>(socket, 'snapshot');
      await firstEvent(socket, 'connect');
      // Past the moment a map that did not wait would have read its snapshot; node 0 hears of the map 1.5 s late.
      await sleep(150);
      expect((await postWebhook(hubs[0], '/events/seller-order-cancelled', { sellerOrderId: o.sellerOrderId })).body.status).toBe('CANCELLED');
      // Still open in the snapshot: only the cancellation sent after it may close it for the map.
      if ((await snapshot).deliveries.some((d) => d.id === deliveryId)) {
        await eventually(() => updates.some((u) => u.id === deliveryId && u.status === 'CANCELLED'), 'the cancellation reaching the map', 5000);
      }
    } finally {
      proxy.subscriberDelayMs = 0;
      socket.disconnect();
    }
  });
});
