import postgres from 'postgres';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  api,
  connectDriver,
  onDutyDriver,
  order,
  postWebhook,
  startTestHub,
  type TestDatabase,
  type TestHub,
  testConfig,
  WEBHOOK_SECRET,
} from './support/hub.js';
import { HUB_MODES, type PresencePicture, pictureOf } from './support/modes.js';
import { eventually } from './support/net.js';

const READY = '/events/seller-order-ready';
const CANCELLED = '/events/seller-order-cancelled';

/** Each test works in its own part of the world so drivers of other tests are never nearer. */
let area = 0;
function nextArea() {
  area += 1;
  return { lat: -60 + area * 2, lng: -170 + area * 3 };
}
const near = (p: { lat: number; lng: number }, dLat: number) => ({ lat: p.lat + dLat, lng: p.lng });

describe.each(HUB_MODES)('webhook and assignment, $name', (mode) => {
  let db: TestDatabase;
  let hub: TestHub;
  let picture: PresencePicture;

  beforeAll(async () => {
    db = await mode.database();
    hub = await startTestHub(testConfig(db, { ASSIGN_MAX_RADIUS_KM: '20', ...mode.env }));
    picture = pictureOf(hub);
  });
  afterAll(async () => {
    await hub?.stop();
    picture?.close();
    await db?.drop();
  });

  const deliveries = async () => (await api(hub, 'GET', '/admin/deliveries?limit=1000')).body.deliveries as any[];

  it('when signatures are missing, stale, from the future, altered or from another secret, then 401 and nothing is written', async () => {
    const before = (await deliveries()).length;
    const o = order({ pickup: nextArea() });
    // Read the clock per request: on a busy machine the earlier requests can take over a second,
    // and a timestamp taken before them would drift back inside the 300 s tolerance.
    const now = () => Date.now() / 1000;
    const cases = [
      await postWebhook(hub, READY, o, { mutate: (_h, body) => ({ headers: { 'content-type': 'application/json' }, body }) }),
      // Whole seconds, as the header carries them; the future one with room for a slow request,
      // which brings the hub's clock closer to it.
      await postWebhook(hub, READY, o, { timestamp: Math.floor(now()) - 301 }),
      await postWebhook(hub, READY, o, { timestamp: Math.ceil(now()) + 330 }),
      await postWebhook(hub, READY, o, { mutate: (h, body) => ({ headers: h, body: body.replace('"sellerOrderId":"so', '"sellerOrderId":"sO') }) }),
      await postWebhook(hub, READY, o, { secret: `whsec_${Buffer.from('another secret entirely').toString('base64')}` }),
    ];
    for (const res of cases) {
      expect(res.status).toBe(401);
      expect(res.body.error.code).toBe('INVALID_SIGNATURE');
    }
    expect((await deliveries()).length).toBe(before);
  });

  it('when the body is invalid, then 400 with field errors and nothing is written', async () => {
    const before = (await deliveries()).length;
    const res = await postWebhook(hub, READY, { sellerOrderId: 'x', pickup: { lat: 100, lng: 0 } });
    expect(res.status).toBe(400);
    expect(res.body.error.code).toBe('VALIDATION_FAILED');
    expect(res.body.error.details.length).toBeGreaterThan(0);
    const notJson = await postWebhook(hub, READY, null, { mutate: (h) => ({ headers: h, body: '{not json' }) });
    expect(notJson.status).toBe(401); // the signature covers the raw body, so an altered body fails first
    expect((await deliveries()).length).toBe(before);
  });

  it('when an order is ready, then the nearest AVAILABLE driver is assigned, told over its socket, and the audit trail shows why', async () => {
    const place = nextArea();
    const far = await onDutyDriver(hub, near(place, 0.05), 'Far');
    const close = await onDutyDriver(hub, near(place, 0.001), 'Close');
    const o = order({ pickup: place });
    const res = await postWebhook(hub, READY, o);
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({ status: 'ASSIGNED', sellerOrderId: o.sellerOrderId, driverId: close.id, idempotent: false });
    expect(res.body.distanceMeters).toBeGreaterThan(50);
    expect(res.body.distanceMeters).toBeLessThan(200);
    await eventually(() => close.assignments.length === 1, 'assignment pushed');
    expect(close.assignments[0]).toMatchObject({ deliveryId: res.body.deliveryId, sellerOrderId: o.sellerOrderId, orderCode: o.orderCode, pickup: o.pickup });
    expect(far.assignments).toHaveLength(0);
    const detail = (await api(hub, 'GET', `/admin/deliveries/${res.body.deliveryId}`)).body;
    expect(detail.status).toBe('ASSIGNED');
    expect(detail.events.map((e: any) => [e.from, e.to])).toEqual([
      [null, 'PENDING'],
      ['PENDING', 'ASSIGNED'],
    ]);
    expect(detail.candidates[0]).toMatchObject({ driverId: close.id, outcome: 'chosen' });
    // The claimed driver is BUSY everywhere and out of the GEO set.
    expect(await picture.status(close.id)).toBe('BUSY');
    expect(await picture.inGeo(close.id)).toBe(false);
    far.close();
    close.close();
  });

  it.skipIf(!mode.sharedDatabase)('when a twin commits the same order while the webhook is claiming a driver, then the claim is rolled back and the twin is answered', async () => {
    const place = nextArea();
    const driver = await onDutyDriver(hub, near(place, 0.001), 'Almost');
    const o = order({ pickup: place });
    // Two connections: one holds the twin's transaction open, the other watches the hub wait on it.
    const sql = postgres(db.url!, { max: 2, onnotice: () => {} });
    try {
      let twinId = '';
      let reply: Promise<{ status: number; body: any }> | undefined;
      await sql.begin(async (tx) => {
        // The twin is written but not committed: the webhook's statement does not see it, claims
        // the driver, and then waits on the unique key until the twin commits.
        const [twin] = await tx`insert into deliveries (seller_order_id, order_code, status, pickup_lat, pickup_lng, dropoff_lat, dropoff_lng)
          values (${o.sellerOrderId}, ${o.orderCode}, 'PENDING', ${o.pickup.lat}, ${o.pickup.lng}, ${o.dropoff.lat}, ${o.dropoff.lng}) returning id`;
        twinId = twin.id;
        reply = postWebhook(hub, READY, o);
        await eventually(async () => {
          const [waiting] = await sql`select count(*)::int as n from pg_stat_activity
            where application_name = 'dispatch-hub' and datname = current_database() and wait_event_type = 'Lock'`;
          return waiting.n > 0;
        }, 'the webhook waiting on the twin');
      });
      const res = await reply!;
      expect(res.status).toBe(202);
      expect(res.body).toMatchObject({ status: 'PENDING', deliveryId: twinId, driverId: null, idempotent: true });
      const [row] = await sql`select status from drivers where id = ${driver.id}`;
      expect(row.status).toBe('AVAILABLE');
      const [written] = await sql`select
        (select count(*)::int from deliveries where seller_order_id = ${o.sellerOrderId}) as deliveries,
        (select count(*)::int from deliveries where driver_id = ${driver.id}) as assigned,
        (select count(*)::int from outbox where delivery_id = ${twinId}) as events`;
      expect(written).toEqual({ deliveries: 1, assigned: 0, events: 0 });
      expect(driver.assignments).toHaveLength(0);
    } finally {
      await sql.end();
      driver.close();
    }
  });

  it('when the same webhook is retried 50 times concurrently, then one delivery exists and every answer is the same', async () => {
    const place = nextArea();
    const driver = await onDutyDriver(hub, near(place, 0.002), 'Storm');
    const o = order({ pickup: place });
    const replies = await Promise.all(Array.from({ length: 50 }, () => postWebhook(hub, READY, o)));
    const ids = new Set(replies.map((r) => r.body.deliveryId));
    expect(ids.size).toBe(1);
    for (const r of replies) {
      expect(r.status).toBe(200);
      expect(r.body).toMatchObject({ status: 'ASSIGNED', driverId: driver.id, sellerOrderId: o.sellerOrderId });
    }
    expect(replies.filter((r) => !r.body.idempotent)).toHaveLength(1);
    expect((await deliveries()).filter((d) => d.sellerOrderId === o.sellerOrderId)).toHaveLength(1);
    await eventually(() => driver.assignments.length === 1, 'one push');
    await new Promise((r) => setTimeout(r, 100));
    expect(driver.assignments).toHaveLength(1);
    driver.close();
  });

  it('when the same sellerOrderId comes with another pickup, then 409 and nothing changes', async () => {
    const o = order({ pickup: nextArea() });
    const first = await postWebhook(hub, READY, o);
    expect([200, 202]).toContain(first.status);
    const res = await postWebhook(hub, READY, { ...o, pickup: { lat: 1, lng: 1 } });
    expect(res.status).toBe(409);
    expect(res.body.error.code).toBe('CONFLICT');
  });

  it('when no driver is free, then 202 PENDING; when a driver goes on duty nearby, then it is assigned oldest first and pushed', async () => {
    const place = nextArea();
    const older = await postWebhook(hub, READY, order({ pickup: place }));
    expect(older.status).toBe(202);
    expect(older.body).toMatchObject({ status: 'PENDING', driverId: null, idempotent: false });
    const newer = await postWebhook(hub, READY, order({ pickup: place }));
    expect(newer.status).toBe(202);
    const driver = await onDutyDriver(hub, near(place, 0.003), 'Late');
    await eventually(() => driver.assignments.length === 1, 'pending assignment pushed');
    expect(driver.assignments[0].deliveryId).toBe(older.body.deliveryId);
    const retry = await postWebhook(hub, READY, { ...order({ pickup: place }), sellerOrderId: older.body.sellerOrderId, orderCode: 'X' });
    expect(retry.body).toMatchObject({ status: 'ASSIGNED', driverId: driver.id, idempotent: true });
    // Finishing the first delivery frees the driver, which then takes the newer one.
    const id = older.body.deliveryId;
    expect((await driver.emitAck('delivery:update', { deliveryId: id, status: 'PICKED_UP' })).ok).toBe(true);
    expect((await driver.emitAck('delivery:update', { deliveryId: id, status: 'DELIVERED' })).ok).toBe(true);
    await eventually(() => driver.assignments.length === 2, 'second pending assignment pushed');
    expect(driver.assignments[1].deliveryId).toBe(newer.body.deliveryId);
    driver.close();
  });

  it('when a driver reports progress, then the lifecycle is enforced, repeats are idempotent and only the owner may report', async () => {
    const place = nextArea();
    const driver = await onDutyDriver(hub, near(place, 0.001), 'Lifecycle');
    const other = await onDutyDriver(hub, near(place, 0.2), 'Other');
    const res = await postWebhook(hub, READY, order({ pickup: place }));
    const deliveryId = res.body.deliveryId;
    expect(res.body.driverId).toBe(driver.id);

    const stranger = await other.emitAck('delivery:update', { deliveryId, status: 'PICKED_UP' });
    expect(stranger).toMatchObject({ ok: false, error: { code: 'FORBIDDEN' } });
    const missing = await driver.emitAck('delivery:update', { deliveryId: '00000000-0000-4000-8000-000000000000', status: 'PICKED_UP' });
    expect(missing).toMatchObject({ ok: false, error: { code: 'NOT_FOUND' } });
    const skip = await driver.emitAck('delivery:update', { deliveryId, status: 'DELIVERED' });
    expect(skip).toMatchObject({ ok: false, error: { code: 'INVALID_TRANSITION' } });
    const noReason = await driver.emitAck('delivery:update', { deliveryId, status: 'FAILED' });
    expect(noReason).toMatchObject({ ok: false, error: { code: 'VALIDATION_FAILED' } });

    const picked = await driver.emitAck('delivery:update', { deliveryId, status: 'PICKED_UP' });
    expect(picked).toMatchObject({ ok: true, delivery: { id: deliveryId, status: 'PICKED_UP' } });
    const again = await driver.emitAck('delivery:update', { deliveryId, status: 'PICKED_UP' });
    expect(again).toMatchObject({ ok: true, delivery: { status: 'PICKED_UP' } });
    const failed = await driver.emitAck('delivery:update', { deliveryId, status: 'FAILED', reason: 'customer absent' });
    expect(failed).toMatchObject({ ok: true, delivery: { status: 'FAILED' } });
    const afterEnd = await driver.emitAck('delivery:update', { deliveryId, status: 'DELIVERED' });
    expect(afterEnd).toMatchObject({ ok: false, error: { code: 'INVALID_TRANSITION' } });

    const detail = (await api(hub, 'GET', `/admin/deliveries/${deliveryId}`)).body;
    expect(detail.events.map((e: any) => e.to)).toEqual(['PENDING', 'ASSIGNED', 'PICKED_UP', 'FAILED']);
    expect(detail.events[3]).toMatchObject({ actor: `driver:${driver.id}`, reason: 'customer absent' });
    // The driver is free again and back in the GEO set.
    await eventually(async () => (await picture.status(driver.id)) === 'AVAILABLE', 'driver freed');
    await eventually(() => picture.inGeo(driver.id), 'driver back in geo');
    driver.close();
    other.close();
  });

  it('when the order is cancelled, then the delivery is CANCELLED, the driver freed and told; a repeat is idempotent', async () => {
    const place = nextArea();
    const driver = await onDutyDriver(hub, near(place, 0.001), 'Cancel');
    const o = order({ pickup: place });
    const res = await postWebhook(hub, READY, o);
    expect(res.body.driverId).toBe(driver.id);
    const cancel = await postWebhook(hub, CANCELLED, { sellerOrderId: o.sellerOrderId, reason: 'customer changed mind' });
    expect(cancel.status).toBe(200);
    expect(cancel.body).toMatchObject({ status: 'CANCELLED', idempotent: false });
    await eventually(() => driver.cancellations.length === 1, 'cancellation pushed');
    expect(driver.cancellations[0]).toEqual({ deliveryId: res.body.deliveryId, reason: 'customer changed mind' });
    expect((await postWebhook(hub, CANCELLED, { sellerOrderId: o.sellerOrderId })).body).toMatchObject({ status: 'CANCELLED', idempotent: true });
    expect((await postWebhook(hub, CANCELLED, { sellerOrderId: 'never-seen' })).status).toBe(404);
    const update = await driver.emitAck('delivery:update', { deliveryId: res.body.deliveryId, status: 'PICKED_UP' });
    expect(update).toMatchObject({ ok: false, error: { code: 'INVALID_TRANSITION' } });
    await eventually(async () => (await picture.status(driver.id)) === 'AVAILABLE', 'driver freed');
    driver.close();
  });

  it('when a driver with an active delivery reconnects, then it keeps the delivery and gets it re-sent', async () => {
    const place = nextArea();
    const driver = await onDutyDriver(hub, near(place, 0.001), 'Keeper');
    const res = await postWebhook(hub, READY, order({ pickup: place }));
    await eventually(() => driver.assignments.length === 1, 'assignment');
    driver.close();
    await eventually(async () => (await api(hub, 'GET', '/admin/drivers')).body.drivers.find((d: any) => d.id === driver.id).status === 'OFFLINE', 'offline');
    const again = await connectDriver(hub, driver.token);
    expect(again.session.status).toBe('BUSY');
    expect(again.session.activeDelivery).toMatchObject({ deliveryId: res.body.deliveryId });
    await eventually(() => again.assignments.length === 1, 'assignment re-sent');
    expect(again.assignments[0].deliveryId).toBe(res.body.deliveryId);
    expect((await api(hub, 'GET', `/admin/deliveries/${res.body.deliveryId}`)).body.status).toBe('ASSIGNED');
    again.close();
  });

  it('when deliveries are listed, then filters, limit and newest-first order apply; bad queries are 400', async () => {
    const all = (await api(hub, 'GET', '/admin/deliveries?limit=2')).body.deliveries;
    expect(all).toHaveLength(2);
    expect(all[0].createdAt >= all[1].createdAt).toBe(true);
    const pending = (await api(hub, 'GET', '/admin/deliveries?status=CANCELLED')).body.deliveries;
    expect(pending.every((d: any) => d.status === 'CANCELLED')).toBe(true);
    expect((await api(hub, 'GET', '/admin/deliveries?limit=5000')).status).toBe(400);
    expect((await api(hub, 'GET', '/admin/deliveries?status=NOPE')).status).toBe(400);
    expect((await api(hub, 'GET', '/admin/deliveries/not-a-uuid')).status).toBe(404);
  });

  // Once is enough, and a second hub cannot open the first one's PGlite.
  it.skipIf(!mode.redis)('when no WEBHOOK_SECRET is configured in production, then webhooks are refused with a clear error', async () => {
    const bare = await startTestHub(testConfig(db, { WEBHOOK_SECRET: '', NODE_ENV: 'production' }));
    try {
      const res = await postWebhook(bare, READY, order(), { secret: WEBHOOK_SECRET });
      expect(res.status).toBe(503);
      expect(res.body.error.message).toContain('WEBHOOK_SECRET');
    } finally {
      await bare.stop();
    }
  });
});
