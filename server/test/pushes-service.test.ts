import { describe, expect, it } from 'vitest';
import { HubEvents } from '../src/platform/hub-events.js';
import { createLogger } from '../src/platform/logger.js';
import { createMetrics } from '../src/platform/metrics.js';
import { ACK_WINDOW_MS, createPushService, isAcknowledgement, type PushStore, type PushTransport } from '../src/pushes/pushes.service.js';
import type { OpenPush, PushKey } from '../src/pushes/pushes.store.js';

const DRIVER = '11111111-1111-4111-8111-111111111111';
const OTHER = '22222222-2222-4222-8222-222222222222';
const DELIVERY = '33333333-3333-4333-8333-333333333333';

/** A fake store with the real one's rules (open until acknowledged; re-sends counted, flagged once). */
function fakeStore(maxResends: number) {
  const rows = new Map<string, OpenPush & { acknowledged: boolean; sentAt: number; flagged: boolean }>();
  const k = (p: PushKey) => `${p.deliveryId}/${p.driverId}/${p.kind}`;
  let now = 0;
  const store: PushStore & { add(p: OpenPush): void; tick(ms: number): void; rows: typeof rows } = {
    rows,
    add: (p) => rows.set(k(p), { ...p, acknowledged: false, sentAt: now, flagged: false }),
    tick: (ms) => {
      now += ms;
    },
    acknowledgeMany: async (keys) =>
      keys.map((key) => {
        const row = rows.get(k(key));
        if (!row || row.acknowledged) return null;
        row.acknowledged = true;
        return { acknowledgedAt: new Date(now) };
      }),
    due: async (afterMs) => [...rows.values()].filter((r) => !r.acknowledged && !r.flagged && r.sentAt <= now - afterMs),
    openFor: async (driverId) => [...rows.values()].filter((r) => !r.acknowledged && r.driverId === driverId),
    openForMany: async (driverIds) => [...rows.values()].filter((r) => !r.acknowledged && driverIds.includes(r.driverId)),
    markResent: async (keys) => {
      const flagged: PushKey[] = [];
      for (const key of keys) {
        const row = rows.get(k(key))!;
        row.resends += 1;
        row.sentAt = now;
        if (row.resends === maxResends) {
          row.flagged = true;
          flagged.push(key);
        }
      }
      return flagged;
    },
  };
  return store;
}

function fakeTransport(local: string[], answer: (driverId: string) => unknown, awaiting: string[] = []) {
  const sent: { driverId: string; kind: string; how: 'broadcast' | 'local' }[] = [];
  const transport: PushTransport = {
    broadcast: async (driverId, kind) => {
      sent.push({ driverId, kind, how: 'broadcast' });
      return answer(driverId);
    },
    sendLocal: async (driverId, kind) => {
      sent.push({ driverId, kind, how: 'local' });
      return local.includes(driverId) ? answer(driverId) : null;
    },
    isLocal: (driverId) => local.includes(driverId),
    awaitingAnswer: (driverId) => awaiting.includes(driverId),
    localDrivers: () => local,
  };
  return { transport, sent };
}

function service(store: PushStore, maxResends = 3) {
  const events = new HubEvents();
  const metrics = createMetrics('unit');
  const pushes = createPushService({ store, events, metrics, logger: createLogger({ level: 'silent', nodeId: 'unit' }), config: { retryMs: 1000, maxResends } });
  return { pushes, events, metrics };
}

/** Acknowledgements gather a few milliseconds before they are written together. */
// Long enough for the acknowledgement window to close and its batch to be written.
const settle = () => new Promise((r) => setTimeout(r, ACK_WINDOW_MS + 20));

describe('push re-sends', () => {
  it('when an app answers { ok: true }, then only that counts as an acknowledgement', () => {
    expect(isAcknowledgement({ ok: true })).toBe(true);
    for (const reply of [{ ok: false }, { ok: 'true' }, 'ok', null, undefined, [], { ok: 1 }]) expect(isAcknowledgement(reply)).toBe(false);
  });

  it('when a push is due, then only the node holding the driver sends it again, and an answer ends the re-sends', async () => {
    const store = fakeStore(3);
    store.add({ deliveryId: DELIVERY, driverId: DRIVER, kind: 'assignment', payload: {}, resends: 0 });
    store.add({ deliveryId: DELIVERY, driverId: OTHER, kind: 'delivery:cancelled', payload: {}, resends: 0 });
    const { pushes, events } = service(store);
    let answers = 0;
    const { transport, sent } = fakeTransport([DRIVER], () => (++answers >= 2 ? { ok: true } : null));
    pushes.useTransport(transport);
    const acked: string[] = [];
    events.on('push:acknowledged', (e) => acked.push(e.driverId));

    expect(await pushes.pass()).toBe(0); // not due yet
    store.tick(1000);
    expect(await pushes.pass()).toBe(1); // the other driver's push is not this node's
    await settle();
    expect(sent).toEqual([{ driverId: DRIVER, kind: 'assignment', how: 'local' }]);
    store.tick(1000);
    expect(await pushes.pass()).toBe(1);
    await settle();
    expect(acked).toEqual([DRIVER]);
    store.tick(5000);
    expect(await pushes.pass()).toBe(0);
  });

  it('when an app never answers, then the push is sent at most maxResends more times and flagged once', async () => {
    const store = fakeStore(3);
    store.add({ deliveryId: DELIVERY, driverId: DRIVER, kind: 'assignment', payload: {}, resends: 0 });
    const { pushes, events, metrics } = service(store, 3);
    const { transport, sent } = fakeTransport([DRIVER], () => null);
    pushes.useTransport(transport);
    const flagged: string[] = [];
    events.on('push:unacknowledged', (e) => flagged.push(e.deliveryId));
    for (let i = 0; i < 10; i++) {
      store.tick(1000);
      await pushes.pass();
    }
    expect(sent).toHaveLength(3);
    expect(flagged).toEqual([DELIVERY]);
    expect((await metrics.pushesUnacknowledged.get()).values[0].value).toBe(1);
    // A reconnect still sends it (once more), without flagging it again.
    await pushes.resendOpenTo(DRIVER);
    expect(sent).toHaveLength(4);
    expect(flagged).toEqual([DELIVERY]);
  });

  it('when a due push still waits for the app to answer its last send, then a pass neither sends nor counts it again', async () => {
    const store = fakeStore(3);
    store.add({ deliveryId: DELIVERY, driverId: DRIVER, kind: 'assignment', payload: {}, resends: 0 });
    const { pushes } = service(store);
    const { transport, sent } = fakeTransport([DRIVER], () => null, [DRIVER]);
    pushes.useTransport(transport);
    store.tick(1000);
    expect(await pushes.pass()).toBe(0);
    expect(sent).toEqual([]);
    expect([...store.rows.values()][0].resends).toBe(0);
  });

  it('when the app answers a push while a pass is reading it as due, then the pass does not send it again', async () => {
    const store = fakeStore(3);
    store.add({ deliveryId: DELIVERY, driverId: DRIVER, kind: 'assignment', payload: {}, resends: 0 });
    store.tick(2000);
    // The pass's read sees the push open; its answer comes back only after the app has answered.
    const due = store.due.bind(store);
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    store.due = async (...args) => {
      const rows = await due(...args);
      await held;
      return rows;
    };
    const { pushes } = service(store);
    const { transport, sent } = fakeTransport([DRIVER], () => ({ ok: true }));
    pushes.useTransport(transport);

    const pass = pushes.pass();
    expect(await pushes.resendOpenTo(DRIVER)).toBe(1);
    await settle();
    expect(store.rows.get(`${DELIVERY}/${DRIVER}/assignment`)!.acknowledged).toBe(true);
    // Kept while the read that may list it runs, and not a moment longer.
    expect(pushes.answersRemembered).toBe(1);
    release();
    expect(await pass).toBe(0);
    expect(sent).toHaveLength(1);
    expect(pushes.answersRemembered).toBe(0);

    // An answer that was written before a read began holds nothing back: a new push is sent.
    const later = '44444444-4444-4444-8444-444444444444';
    store.add({ deliveryId: later, driverId: DRIVER, kind: 'assignment', payload: {}, resends: 0 });
    store.tick(2000);
    store.due = due;
    expect(await pushes.pass()).toBe(1);
  });

  it('when apps answer while no read of open pushes is running, then no answer is kept in memory', async () => {
    const store = fakeStore(3);
    const { pushes, events } = service(store);
    const { transport } = fakeTransport([DRIVER, OTHER], () => ({ ok: true }));
    pushes.useTransport(transport);
    for (let i = 0; i < 50; i++) {
      const deliveryId = `33333333-3333-4333-8333-${String(i).padStart(12, '0')}`;
      store.add({ deliveryId, driverId: DRIVER, kind: 'assignment', payload: {}, resends: 0 });
      const assignment = { deliveryId, sellerOrderId: `s${i}`, orderCode: `c${i}`, pickup: { lat: 0, lng: 0 }, dropoff: { lat: 0, lng: 0 }, assignedAt: '' };
      events.emit('delivery:assigned', { driverId: DRIVER, assignment });
    }
    await settle();
    expect([...store.rows.values()].every((r) => r.acknowledged)).toBe(true);
    expect(pushes.answersRemembered).toBe(0);
  });

  it('when several drivers reconnect at once, then their open pushes are read in one go, every open one is sent again and an active job not open goes out too', async () => {
    const store = fakeStore(3);
    store.add({ deliveryId: DELIVERY, driverId: DRIVER, kind: 'delivery:cancelled', payload: {}, resends: 0 });
    let reads = 0;
    const openForMany = store.openForMany;
    store.openForMany = async (ids) => {
      reads += 1;
      return openForMany(ids);
    };
    const { pushes } = service(store);
    const { transport, sent } = fakeTransport([DRIVER, OTHER], () => null);
    pushes.useTransport(transport);
    const counts = await Promise.all([pushes.connected(DRIVER, null), pushes.connected(OTHER, { deliveryId: DELIVERY })]);
    await settle();
    expect(reads).toBe(1);
    expect(counts).toEqual([1, 0]);
    expect(sent).toEqual(
      expect.arrayContaining([
        { driverId: DRIVER, kind: 'delivery:cancelled', how: 'local' },
        { driverId: OTHER, kind: 'assignment', how: 'local' },
      ]),
    );
    expect(sent).toHaveLength(2);
  });

  it('when an assignment is announced, then it is broadcast at once and a second acknowledgement records nothing', async () => {
    const store = fakeStore(3);
    store.add({ deliveryId: DELIVERY, driverId: DRIVER, kind: 'assignment', payload: {}, resends: 0 });
    const { pushes, events } = service(store);
    const { transport, sent } = fakeTransport([], () => ({ ok: true }));
    pushes.useTransport(transport);
    const acked: string[] = [];
    events.on('push:acknowledged', (e) => acked.push(e.deliveryId));
    const assignment = { deliveryId: DELIVERY, sellerOrderId: 's', orderCode: 'c', pickup: { lat: 0, lng: 0 }, dropoff: { lat: 0, lng: 0 }, assignedAt: '' };
    events.emit('delivery:assigned', { driverId: DRIVER, assignment });
    events.emit('delivery:assigned', { driverId: DRIVER, assignment });
    await pushes.stop();
    expect(sent.map((s) => s.how)).toEqual(['broadcast', 'broadcast']);
    expect(acked).toEqual([DELIVERY]);
  });
});
