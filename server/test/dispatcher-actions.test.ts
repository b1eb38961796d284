import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  api,
  connectDriver,
  createDriver,
  createTestDatabase,
  type DriverClient,
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

/** A driver whose app takes pushes but never acknowledges them: the stuck job a dispatcher sends back. */
async function silentDriver(hub: TestHub, at: { lat: number; lng: number }, name: string): Promise<DriverClient & { id: string }> {
  const { id, token } = await createDriver(hub, name);
  const client = await connectDriver(hub, token, { ackPushes: false });
  expect((await client.emitAck('location', at)).ok).toBe(true);
  expect((await client.emitAck('status', { status: 'AVAILABLE' })).ok).toBe(true);
  return { ...client, id };
}

describe('dispatcher actions: cancel and send back to assignment', () => {
  let db: TestDatabase;
  let hub: TestHub;
  let dispatcher: string;
  const clients: { close(): void }[] = [];

  beforeAll(async () => {
    db = await createTestDatabase();
    hub = await startTestHub(testConfig(db));
    dispatcher = (await api(hub, 'POST', '/admin/tokens', { role: 'dispatcher', subject: 'desk-1' })).body.token;
  });
  afterAll(async () => {
    for (const c of clients) c.close();
    await hub?.stop();
    await db?.drop();
  });

  const detail = async (id: string) => (await api(hub, 'GET', `/admin/deliveries/${id}`)).body;
  /** Positions reach PostgreSQL every POSITION_FLUSH_MS: waited for, the nearest driver is the same whichever store answers. */
  const stored = (...ids: string[]) =>
    eventually(async () => {
      const listed: { id: string; lat: number | null }[] = (await api(hub, 'GET', '/admin/drivers')).body.drivers;
      return ids.every((id) => listed.some((l) => l.id === id && l.lat !== null));
    }, 'the drivers\' positions stored');
  const driverStatus = async (id: string) => (await api(hub, 'GET', '/admin/drivers')).body.drivers.find((d: { id: string }) => d.id === id)?.status;

  it('when a dispatcher cancels an assigned delivery, then the driver app receives the cancel, the driver is free again, and the audit row names the dispatcher', async () => {
    const at = { lat: 48.137, lng: 11.575 };
    const driver = await onDutyDriver(hub, at, 'Cancel Courier');
    clients.push(driver);
    await stored(driver.id);
    const placed = await postWebhook(hub, READY, order({ pickup: at }));
    expect(placed.body).toMatchObject({ status: 'ASSIGNED', driverId: driver.id });
    const { deliveryId } = placed.body;

    const res = await api(hub, 'POST', `/admin/deliveries/${deliveryId}/cancel`, { reason: 'customer called the shop' }, dispatcher);
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({ idempotent: false, delivery: { id: deliveryId, status: 'CANCELLED' } });

    await eventually(() => driver.cancellations.some((c) => c.deliveryId === deliveryId), 'the driver app told of the cancel');
    expect(driver.cancellations.find((c) => c.deliveryId === deliveryId)).toMatchObject({ reason: 'customer called the shop' });
    await eventually(async () => (await driverStatus(driver.id)) === 'AVAILABLE', 'the driver free again');
    const after = await detail(deliveryId);
    expect(after.events.at(-1)).toMatchObject({ from: 'ASSIGNED', to: 'CANCELLED', actor: 'dispatcher:desk-1', reason: 'customer called the shop' });

    // Again: the same answer, nothing new in the trail.
    const again = await api(hub, 'POST', `/admin/deliveries/${deliveryId}/cancel`, {}, dispatcher);
    expect(again).toMatchObject({ status: 200, body: { idempotent: true, delivery: { status: 'CANCELLED' } } });
    expect((await detail(deliveryId)).events).toHaveLength(after.events.length);
  });

  it('when an unacknowledged delivery is sent back to assignment, then its silent driver is told and freed, the next driver gets it, and the trail shows both steps', async () => {
    const at = { lat: 50.11, lng: 8.68 };
    const silent = await silentDriver(hub, at, 'Silent Phone');
    clients.push(silent);
    const other = await onDutyDriver(hub, { lat: at.lat + 0.01, lng: at.lng }, 'Next Courier');
    clients.push(other);
    await stored(silent.id, other.id);
    const placed = await postWebhook(hub, READY, order({ pickup: at }));
    expect(placed.body).toMatchObject({ status: 'ASSIGNED', driverId: silent.id });
    const { deliveryId } = placed.body;
    await eventually(() => silent.assignments.some((a) => a.deliveryId === deliveryId), 'the push reaching the silent app');
    expect((await detail(deliveryId)).acknowledgedAt).toBeNull();

    const res = await api(hub, 'POST', `/admin/deliveries/${deliveryId}/redispatch`, { reason: 'app not answering' }, dispatcher);
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({ takenFrom: silent.id, delivery: { id: deliveryId, status: 'ASSIGNED', driverId: other.id } });

    await eventually(() => silent.cancellations.some((c) => c.deliveryId === deliveryId), 'the silent app told the job is gone');
    await eventually(() => other.assignments.some((a) => a.deliveryId === deliveryId), 'the next driver given the job');
    await eventually(async () => (await driverStatus(silent.id)) === 'AVAILABLE', 'the silent driver free again');
    const { events } = await detail(deliveryId);
    expect(events.map((e: { from: string | null; to: string; actor: string; driverId: string | null }) => [e.from, e.to, e.actor, e.driverId])).toEqual([
      [null, 'PENDING', 'webhook', null],
      ['PENDING', 'ASSIGNED', 'hub', silent.id],
      ['ASSIGNED', 'PENDING', 'dispatcher:desk-1', silent.id],
      ['PENDING', 'ASSIGNED', 'hub', other.id],
    ]);
    expect(events[2].reason).toBe('app not answering');
    await eventually(async () => (await detail(deliveryId)).acknowledgedAt !== null, "the next driver's app confirming");
    silent.close();
    other.close();
  });

  it('when nobody else is free, then the delivery waits PENDING and the driver it was taken from is never given it again, though it gets other work', async () => {
    const at = { lat: 53.55, lng: 9.99 };
    const silent = await silentDriver(hub, at, 'Silent Again');
    clients.push(silent);
    await stored(silent.id);
    const placed = await postWebhook(hub, READY, order({ pickup: at }));
    expect(placed.body).toMatchObject({ status: 'ASSIGNED', driverId: silent.id });
    const { deliveryId } = placed.body;

    const res = await api(hub, 'POST', `/admin/deliveries/${deliveryId}/redispatch`, {}, dispatcher);
    expect(res.body).toMatchObject({ takenFrom: silent.id, delivery: { status: 'PENDING', driverId: null } });
    await eventually(async () => (await driverStatus(silent.id)) === 'AVAILABLE', 'the silent driver free again');
    // The pending retry runs every 2 s, and the driver's release offered it the oldest pending work nearby.
    await new Promise((r) => setTimeout(r, 3000));
    expect((await detail(deliveryId)).status).toBe('PENDING');

    // Another order at the same place goes to that driver: it is passed over for one delivery only.
    const next = await postWebhook(hub, READY, order({ pickup: at }));
    expect(next.body).toMatchObject({ status: 'ASSIGNED', driverId: silent.id });

    // Sent back while PENDING: tried now, and still nobody.
    const retried = await api(hub, 'POST', `/admin/deliveries/${deliveryId}/redispatch`, {}, dispatcher);
    expect(retried).toMatchObject({ status: 200, body: { takenFrom: null, delivery: { status: 'PENDING' } } });
    silent.close();
  });

  it('when a delivery cannot be acted on, then each refusal carries its code and changes nothing', async () => {
    const at = { lat: 51.34, lng: 12.37 };
    const driver = await onDutyDriver(hub, at, 'Confirming Courier');
    clients.push(driver);
    const placed = await postWebhook(hub, READY, order({ pickup: at }));
    const { deliveryId } = placed.body;
    await eventually(async () => (await detail(deliveryId)).acknowledgedAt !== null, 'the app confirming the job');
    const path = `/admin/deliveries/${deliveryId}`;
    const unchanged = async (status: string, events: number) => {
      const now = await detail(deliveryId);
      expect(now.status).toBe(status);
      expect(now.events).toHaveLength(events);
    };
    const trail = (await detail(deliveryId)).events.length;

    const confirmed = await api(hub, 'POST', `${path}/redispatch`, {}, dispatcher);
    expect(confirmed.status).toBe(409);
    expect(confirmed.body.error).toMatchObject({ code: 'INVALID_TRANSITION', details: { status: 'ASSIGNED', acknowledged: true } });
    await unchanged('ASSIGNED', trail);

    expect((await api(hub, 'POST', `${path}/cancel`, { reason: '' }, dispatcher)).body.error.code).toBe('VALIDATION_FAILED');
    expect((await api(hub, 'POST', `${path}/cancel`, { reason: 'x', extra: 1 }, dispatcher)).body.error.code).toBe('VALIDATION_FAILED');
    expect((await api(hub, 'POST', `${path}/cancel`, '{not json', dispatcher)).status).toBe(400);
    expect((await api(hub, 'POST', `${path}/cancel`, {}, driver.token)).status).toBe(403);
    expect((await api(hub, 'POST', `${path}/cancel`, {}, null)).status).toBe(401);
    expect((await api(hub, 'POST', `/admin/deliveries/${randomUUID()}/cancel`, {}, dispatcher)).body.error.code).toBe('NOT_FOUND');
    expect((await api(hub, 'POST', `/admin/deliveries/${randomUUID()}/redispatch`, {}, dispatcher)).body.error.code).toBe('NOT_FOUND');
    expect((await api(hub, 'POST', '/admin/deliveries/not-an-id/redispatch', {}, dispatcher)).status).toBe(404);
    await unchanged('ASSIGNED', trail);

    expect((await driver.emitAck('delivery:update', { deliveryId, status: 'PICKED_UP' })).ok).toBe(true);
    const pickedUp = await api(hub, 'POST', `${path}/redispatch`, {}, dispatcher);
    expect(pickedUp.body.error).toMatchObject({ code: 'INVALID_TRANSITION', details: { status: 'PICKED_UP' } });
    await unchanged('PICKED_UP', trail + 1);

    expect((await driver.emitAck('delivery:update', { deliveryId, status: 'DELIVERED' })).ok).toBe(true);
    for (const action of ['cancel', 'redispatch']) {
      const refused = await api(hub, 'POST', `${path}/${action}`, {}, dispatcher);
      expect(refused.status, action).toBe(409);
      expect(refused.body.error).toMatchObject({ code: 'INVALID_TRANSITION', details: { status: 'DELIVERED' } });
    }
    await unchanged('DELIVERED', trail + 2);
  });

  it('when the admin token cancels, then the audit row says admin', async () => {
    const placed = await postWebhook(hub, READY, order({ pickup: { lat: -1.29, lng: 36.82 } }));
    expect(placed.body.status).toBe('PENDING');
    const res = await api(hub, 'POST', `/admin/deliveries/${placed.body.deliveryId}/cancel`);
    expect(res).toMatchObject({ status: 200, body: { delivery: { status: 'CANCELLED', driverId: null } } });
    expect((await detail(placed.body.deliveryId)).events.at(-1)).toMatchObject({ from: 'PENDING', to: 'CANCELLED', actor: 'admin', reason: 'cancelled by admin' });
  });
});
