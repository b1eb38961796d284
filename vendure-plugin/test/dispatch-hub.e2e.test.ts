import { randomUUID } from 'node:crypto';
import type { TestEnvironment } from '@vendure/testing';
import gql from 'graphql-tag';
import { type Socket, io } from 'socket.io-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
// The hub, started in-process the way the hub's own tests start it: this is a test of the two ends together.
import { api, createDriver, createTestDatabase, type TestDatabase, type TestHub, startTestHub, testConfig, WEBHOOK_SECRET } from '../../server/test/support/hub.js';
import { eventually, freePort } from '../../server/test/support/net.js';
import { signWebhook } from '../../shared/src/webhooks.js';
import { DispatchHubPlugin, STATUS_PATH } from '../src/index.js';
import { CANCEL_ORDER, DISPATCH_JOBS, MARK_READY, ORDER_DELIVERY, placePaidOrder, shippingOnHold, startVendure, UPDATE_CHANNEL } from './support/vendure.js';

const STATUS_SECRET = `whsec_${Buffer.from('vendure-plugin-status-secret').toString('base64')}`;
const SHOP = { lat: 52.5301, lng: 13.4012 };
const CUSTOMER = { lat: 52.5251, lng: 13.3694 };

/**
 * A driver app reduced to what these tests need, straight on socket.io-client; the hub's typed
 * driver client (`createDriverClient` in shared/) can take its place once it lands.
 */
interface DriverApp {
  nextAssignment(timeoutMs?: number): Promise<{ deliveryId: string; orderCode: string; sellerOrderId: string }>;
  send(event: string, payload: unknown): Promise<{ ok: boolean; [key: string]: unknown }>;
  close(): void;
}

async function driverApp(hubUrl: string, token: string): Promise<DriverApp> {
  const socket: Socket = io(`${hubUrl}/drivers`, { transports: ['websocket'], auth: { token }, reconnection: false, forceNew: true });
  const assignments: any[] = [];
  const waiting: Array<(a: any) => void> = [];
  socket.on('assignment', (assignment: any, ack?: (reply: unknown) => void) => {
    ack?.({ ok: true });
    const waiter = waiting.shift();
    if (waiter) waiter(assignment);
    else assignments.push(assignment);
  });
  await new Promise<void>((resolve, reject) => {
    socket.once('session', () => resolve());
    socket.once('connect_error', reject);
  });
  return {
    nextAssignment(timeoutMs = 20_000) {
      const queued = assignments.shift();
      if (queued) return Promise.resolve(queued);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no assignment within ${timeoutMs} ms`)), timeoutMs);
        waiting.push((a) => {
          clearTimeout(timer);
          resolve(a);
        });
      });
    },
    send: (event, payload) => socket.timeout(10_000).emitWithAck(event, payload),
    close: () => socket.disconnect(),
  };
}

describe('the Vendure plugin against a real Vendure server and a real hub', () => {
  let db: TestDatabase;
  let hubConfig: ReturnType<typeof testConfig>;
  let hub: TestHub;
  let env: TestEnvironment;
  let vendureUrl: string;

  const orderView = async (id: string) => (await env.adminClient.query(ORDER_DELIVERY, { id })).order;
  const notes = (order: any): string[] => order.history.items.filter((h: any) => h.type === 'ORDER_NOTE').map((h: any) => h.data.note);
  const hubDeliveriesFor = async (sellerOrderId: string) =>
    (await api(hub, 'GET', '/admin/deliveries?limit=1000')).body.deliveries.filter((d: any) => d.sellerOrderId === sellerOrderId);
  /** The hub knows orders by Vendure's own id; the Admin API shows it encoded (the test id strategy prefixes "T_"). */
  const sellerOrderIdOf = (apiId: string) => apiId.replace(/^T_/, '');

  beforeAll(async () => {
    const [vendurePort, hubPort] = [await freePort(), await freePort()];
    vendureUrl = `http://127.0.0.1:${vendurePort}`;
    db = await createTestDatabase();
    // A fixed port, so the hub can be stopped and come back where Vendure expects it.
    hubConfig = testConfig(db, {
      PORT: String(hubPort),
      VENDURE_WEBHOOK_URL: `${vendureUrl}${STATUS_PATH}`,
      VENDURE_WEBHOOK_SECRET: STATUS_SECRET,
      OUTBOX_POLL_MS: '50',
    });
    hub = await startTestHub(hubConfig);
    env = await startVendure(vendurePort, [
      DispatchHubPlugin.init({
        hubUrl: hub.url,
        webhookSecret: WEBHOOK_SECRET,
        statusSecret: STATUS_SECRET,
        backoff: { baseMs: 300, capMs: 1000 },
        requestTimeoutMs: 3000,
      }),
    ]);
    const updated = await env.adminClient.query(UPDATE_CHANNEL, {
      input: { id: 'T_1', customFields: { dispatchPickupLatitude: SHOP.lat, dispatchPickupLongitude: SHOP.lng, dispatchPickupAddress: 'Corner Bakery, Berlin' } },
    });
    expect(updated.updateChannel).toMatchObject({ id: 'T_1' });
  }, 180_000);

  afterAll(async () => {
    await env?.server.destroy();
    await hub?.stop();
    await db?.drop();
  });

  it('when a customer pays, then a driver is assigned, picks up and delivers, and the fulfillment and Order.delivery say Delivered', async () => {
    const { token, id: driverId } = await createDriver(hub, 'Dora Driver');
    const driver = await driverApp(hub.url, token);
    try {
      expect(await driver.send('location', SHOP)).toMatchObject({ ok: true });
      expect(await driver.send('status', { status: 'AVAILABLE' })).toMatchObject({ ok: true });

      const placed = await placePaidOrder(env, CUSTOMER);
      expect(placed.state).toBe('PaymentSettled');

      const assignment = await driver.nextAssignment();
      expect(assignment).toMatchObject({ orderCode: placed.code, sellerOrderId: sellerOrderIdOf(placed.id) });
      const assigned = await eventually(async () => {
        const o = await orderView(placed.id);
        return o.delivery?.status === 'ASSIGNED' && o;
      }, 'Vendure to hear of the assignment', 20_000);
      expect(assigned.delivery).toMatchObject({ deliveryId: assignment.deliveryId, driverId });

      expect(await driver.send('delivery:update', { deliveryId: assignment.deliveryId, status: 'PICKED_UP' })).toMatchObject({ ok: true });
      const shipped = await eventually(async () => {
        const o = await orderView(placed.id);
        return o.fulfillments?.[0]?.state === 'Shipped' && o;
      }, 'the fulfillment to be Shipped', 20_000);
      expect(shipped.state).toBe('Shipped');

      expect(await driver.send('delivery:update', { deliveryId: assignment.deliveryId, status: 'DELIVERED' })).toMatchObject({ ok: true });
      const delivered = await eventually(async () => {
        const o = await orderView(placed.id);
        return o.delivery?.status === 'DELIVERED' && o;
      }, 'Order.delivery to say DELIVERED', 20_000);
      expect(delivered.state).toBe('Delivered');
      expect(delivered.fulfillments).toHaveLength(1);
      expect(delivered.fulfillments[0]).toMatchObject({ state: 'Delivered', method: 'Dispatch hub courier' });
      expect(delivered.delivery).toMatchObject({ status: 'DELIVERED', deliveryId: assignment.deliveryId, driverId });
      expect(Date.parse(delivered.delivery.updatedAt)).toBeGreaterThan(0);
      expect(notes(delivered).filter((n) => n.startsWith('Delivered by'))).toHaveLength(1);
    } finally {
      driver.close();
    }
  });

  it('when Vendure refuses the fulfillment transition, then the event is still answered 200, logged and noted, and the hub has nothing to retry', async () => {
    // Before the hub-down test: its orders wait in the hub as PENDING and would take this driver.
    const { token } = await createDriver(hub, 'Held Harry');
    const driver = await driverApp(hub.url, token);
    try {
      expect(await driver.send('location', SHOP)).toMatchObject({ ok: true });
      expect(await driver.send('status', { status: 'AVAILABLE' })).toMatchObject({ ok: true });
      const placed = await placePaidOrder(env, CUSTOMER);
      shippingOnHold.add(placed.code);
      const assignment = await driver.nextAssignment();
      expect(await driver.send('delivery:update', { deliveryId: assignment.deliveryId, status: 'PICKED_UP' })).toMatchObject({ ok: true });
      const held = await eventually(async () => {
        const o = await orderView(placed.id);
        return o.delivery?.status === 'PICKED_UP' && o;
      }, 'the pickup to be recorded', 20_000);
      expect(held.fulfillments.map((f: any) => f.state)).toEqual(['Pending']);
      expect(notes(held).some((n) => /Vendure refused moving fulfillment .* from Pending to Shipped: .*shipping is on hold/.test(n))).toBe(true);
      // The hub got a 2xx: nothing of this delivery is left to send or given up on.
      expect((await api(hub, 'GET', '/admin/outbox/dead')).body.events).toHaveLength(0);
    } finally {
      driver.close();
    }
  });

  it('when the hub is down as the order is paid, then the job retries and the delivery is created exactly once when the hub returns', async () => {
    await hub.stop();
    let placed;
    try {
      placed = await placePaidOrder(env, CUSTOMER);
      await eventually(async () => {
        const { jobs } = await env.adminClient.query(DISPATCH_JOBS);
        const job = jobs.items.find((j: any) => j.data.orderCode === placed!.code);
        return job && job.attempts >= 2 && job.state === 'RETRYING';
      }, 'two failed attempts while the hub is down', 20_000);
      expect((await orderView(placed.id)).delivery.status).toBe('REQUESTED');
    } finally {
      hub = await startTestHub(hubConfig);
    }
    const accepted = await eventually(async () => {
      const o = await orderView(placed.id);
      return o.delivery?.status === 'PENDING' && o;
    }, 'the delivery to reach the hub once it is back', 20_000);
    expect(await hubDeliveriesFor(sellerOrderIdOf(placed.id))).toHaveLength(1);
    expect(accepted.delivery.deliveryId).toBe((await hubDeliveriesFor(sellerOrderIdOf(placed.id)))[0].id);
    const { jobs } = await env.adminClient.query(DISPATCH_JOBS);
    expect(jobs.items.filter((j: any) => j.data.orderCode === placed.code).map((j: any) => j.state)).toEqual(['COMPLETED']);
    expect(notes(accepted).filter((n) => n.startsWith('Accepted by the dispatch hub'))).toHaveLength(1);

    // Asking again changes nothing: the order is already with the hub.
    const again = await env.adminClient.query(MARK_READY, { id: placed.id });
    expect(again.markReadyForDelivery.delivery.status).toBe('PENDING');
    expect(await hubDeliveriesFor(sellerOrderIdOf(placed.id))).toHaveLength(1);
  });

  describe('status events', () => {
    let placed: { id: string; code: string };

    beforeAll(async () => {
      placed = await placePaidOrder(env, CUSTOMER);
      await eventually(async () => (await orderView(placed.id)).delivery?.status === 'PENDING', 'the order to reach the hub', 20_000);
    });

    const statusEvent = (overrides: { id?: string; sequence: number; status?: string; driverName?: string }) => ({
      id: overrides.id ?? `evt_${randomUUID()}`,
      type: 'delivery.assigned',
      deliveryId: 'd-replayed',
      sequence: overrides.sequence,
      occurredAt: new Date().toISOString(),
      data: {
        deliveryId: 'd-replayed',
        sellerOrderId: sellerOrderIdOf(placed.id),
        orderCode: placed.code,
        status: overrides.status ?? 'ASSIGNED',
        previousStatus: 'PENDING',
        driverId: 'driver-replayed',
        driverName: overrides.driverName ?? 'Rita Replay',
        reason: null,
        at: new Date().toISOString(),
        trackingUrl: 'https://hub.example.com/track/abc',
      },
    });

    const post = async (event: { id: string }, opts: { secret?: string; timestamp?: number } = {}) => {
      const body = JSON.stringify(event);
      const headers = signWebhook(opts.secret ?? STATUS_SECRET, event.id, opts.timestamp ?? Date.now() / 1000, body);
      const res = await fetch(`${vendureUrl}${STATUS_PATH}`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body });
      return { status: res.status, body: await res.json() };
    };

    it('when the same status event arrives twice, then it is applied once', async () => {
      const event = statusEvent({ sequence: 1_000_000 });
      expect(await post(event)).toEqual({ status: 200, body: { ok: true, outcome: 'applied' } });
      expect(await post(event)).toEqual({ status: 200, body: { ok: true, outcome: 'duplicate' } });
      const order = await orderView(placed.id);
      expect(order.delivery).toMatchObject({ status: 'ASSIGNED', driverName: 'Rita Replay', trackingUrl: 'https://hub.example.com/track/abc' });
      expect(notes(order).filter((n) => n.startsWith('Courier assigned: Rita Replay'))).toHaveLength(1);
    });

    it('when an event is older than the last one applied, then it is ignored', async () => {
      const stale = statusEvent({ sequence: 999_999, status: 'CANCELLED', driverName: 'Old News' });
      expect(await post(stale)).toEqual({ status: 200, body: { ok: true, outcome: 'stale' } });
      expect((await orderView(placed.id)).delivery).toMatchObject({ status: 'ASSIGNED', driverName: 'Rita Replay' });
    });

    it('when a status event is forged or its timestamp is stale, then it gets 401 and nothing changes', async () => {
      const before = await orderView(placed.id);
      const forged = await post(statusEvent({ sequence: 2_000_000, status: 'DELIVERED', driverName: 'Mallory' }), {
        secret: `whsec_${Buffer.from('not-the-status-secret').toString('base64')}`,
      });
      expect(forged).toMatchObject({ status: 401, body: { error: { code: 'INVALID_SIGNATURE' } } });
      const replayed = await post(statusEvent({ sequence: 2_000_001, status: 'DELIVERED', driverName: 'Mallory' }), { timestamp: Date.now() / 1000 - 6 * 60 });
      expect(replayed).toMatchObject({ status: 401, body: { error: { code: 'INVALID_SIGNATURE', message: expect.stringContaining('TIMESTAMP_TOO_OLD') } } });
      const tampered = statusEvent({ sequence: 2_000_002, status: 'DELIVERED' });
      const body = JSON.stringify(tampered);
      const headers = signWebhook(STATUS_SECRET, tampered.id, Date.now() / 1000, body);
      const res = await fetch(`${vendureUrl}${STATUS_PATH}`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: body.replace('Rita Replay', 'Mallory!!!!') });
      expect(res.status).toBe(401);
      const after = await orderView(placed.id);
      expect(after.delivery).toEqual(before.delivery);
      expect(after.fulfillments).toEqual(before.fulfillments);
      expect(after.history.items).toHaveLength(before.history.items.length);
    });
  });

  it('when a paid order is cancelled in Vendure, then the hub cancels its delivery and Order.delivery says CANCELLED', async () => {
    const placed = await placePaidOrder(env, CUSTOMER);
    await eventually(async () => (await orderView(placed.id)).delivery?.status === 'PENDING', 'the order to reach the hub', 20_000);
    const cancelled = await env.adminClient.query(CANCEL_ORDER, { input: { orderId: placed.id, reason: 'Customer changed their mind', cancelShipping: true } });
    expect(cancelled.cancelOrder).toMatchObject({ state: 'Cancelled' });
    const after = await eventually(async () => {
      const o = await orderView(placed.id);
      return o.delivery?.status === 'CANCELLED' && o;
    }, 'the hub to report the cancellation', 20_000);
    expect(after.delivery.reason).toBe('Order cancelled in Vendure');
    const [delivery] = await hubDeliveriesFor(sellerOrderIdOf(placed.id));
    expect(delivery.status).toBe('CANCELLED');
  });

  it('when an order has no dropoff coordinates, then it is refused with the reason and nothing is sent', async () => {
    const placed = await placePaidOrder(env, null);
    const refused = await eventually(async () => {
      const o = await orderView(placed.id);
      return o.delivery?.status === 'REFUSED' && o;
    }, 'the order to be refused', 10_000);
    expect(refused.delivery.reason).toMatch(/missing dropoff coordinates \(the shipping address needs dispatchLatitude and dispatchLongitude\)/);
    expect(notes(refused).some((n) => n.includes('cannot be sent for delivery'))).toBe(true);
    const { jobs } = await env.adminClient.query(DISPATCH_JOBS);
    expect(jobs.items.filter((j: any) => j.data.orderCode === placed.code)).toHaveLength(0);
    expect(await hubDeliveriesFor(sellerOrderIdOf(placed.id))).toHaveLength(0);

    // A seller asking by hand gets the same clear refusal.
    const asked = await env.adminClient.query(MARK_READY, { id: placed.id }).catch((err: Error) => err);
    expect(String((asked as Error).message)).toMatch(/cannot be sent for delivery: missing dropoff coordinates/);
  });

  it('when the status route gets an unsigned request, then it answers 401 in the error shape', async () => {
    const res = await fetch(`${vendureUrl}${STATUS_PATH}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' });
    expect(res.status).toBe(401);
    expect(await res.json()).toMatchObject({ error: { code: 'INVALID_SIGNATURE', message: expect.stringContaining('MISSING_HEADERS') } });
    const gqlRes = await env.adminClient.query(gql`query { __type(name: "OrderDelivery") { fields { name } } }`);
    expect(gqlRes.__type.fields.map((f: any) => f.name)).toEqual(expect.arrayContaining(['status', 'driverName', 'trackingUrl', 'updatedAt']));
  });
});
