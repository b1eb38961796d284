import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { api, onDutyDriver, order, postWebhook, startTestHub, type TestDatabase, type TestHub, testConfig } from './support/hub.js';
import { HUB_MODES } from './support/modes.js';
import { eventually } from './support/net.js';

const READY = '/events/seller-order-ready';

let area = 0;
function nextArea() {
  area += 1;
  return { lat: -40 + area * 2, lng: 100 + area * 3 };
}
const near = (p: { lat: number; lng: number }, dLat: number) => ({ lat: p.lat + dLat, lng: p.lng });

// Both ways candidates are found: the Redis fast path, and PostgreSQL alone (no Redis, embedded).
describe.each(HUB_MODES)('scoring and fleets, $name', (mode) => {
  let db: TestDatabase;
  let hub: TestHub;

  beforeAll(async () => {
    db = await mode.database();
    hub = await startTestHub(testConfig(db, { ASSIGN_MAX_RADIUS_KM: '20', FAIRNESS_BAND_METERS: '500', PENDING_RETRY_MS: '300', ...mode.env }));
  });
  afterAll(async () => {
    await hub?.stop();
    await db?.drop();
  });

  const detail = async (id: string) => (await api(hub, 'GET', `/admin/deliveries/${id}`)).body;

  it('when drivers are equally near, then the one idle longest wins, and the delivery stores every term of the score', async () => {
    const place = nextArea();
    const spot = near(place, 0.002);
    const longest = await onDutyDriver(hub, spot, 'Waiting longest');
    const latest = await onDutyDriver(hub, spot, 'Just arrived');
    const res = await postWebhook(hub, READY, order({ pickup: place }));
    expect(res.body).toMatchObject({ status: 'ASSIGNED', driverId: longest.id });
    const d = await detail(res.body.deliveryId);
    expect(d.candidates).toHaveLength(2);
    expect(d.candidates[0]).toMatchObject({ driverId: longest.id, rank: 1, outcome: 'chosen', pool: 'shared', fleet: null, withinBand: true, deliveriesToday: 0, fairnessBandMeters: 500 });
    expect(d.candidates[1]).toMatchObject({ driverId: latest.id, rank: 2, outcome: 'not-tried', withinBand: true, beyondNearestMeters: 0 });
    expect(d.candidates[0].idleSeconds).toBeGreaterThan(d.candidates[1].idleSeconds);
    // The next order finds the other one.
    const second = await postWebhook(hub, READY, order({ pickup: place }));
    expect(second.body).toMatchObject({ status: 'ASSIGNED', driverId: latest.id });
    longest.close();
    latest.close();
  });

  it('when a nearer driver is farther than the band from an idler one, then the nearer still wins', async () => {
    const place = nextArea();
    const idle = await onDutyDriver(hub, near(place, 0.015), 'Idle but far'); // about 1.7 km
    const nearer = await onDutyDriver(hub, near(place, 0.001), 'Near');
    const res = await postWebhook(hub, READY, order({ pickup: place }));
    expect(res.body).toMatchObject({ status: 'ASSIGNED', driverId: nearer.id });
    const d = await detail(res.body.deliveryId);
    // Redis is searched small radius first, so the far one may not even be a candidate; if it is, it is outside the band.
    expect(d.candidates[0]).toMatchObject({ driverId: nearer.id, withinBand: true, rank: 1 });
    expect(d.candidates.slice(1).map((c: any) => [c.driverId, c.withinBand])).toEqual(d.candidates.length > 1 ? [[idle.id, false]] : []);
    // Alone in its band: nothing to compare, so the fairness facts were not read.
    expect(d.candidates[0]).toMatchObject({ idleSeconds: null, deliveriesToday: null });
    idle.close();
    nearer.close();
  });

  it('when fleets are managed, then bad input is refused with a code and changes nothing', async () => {
    expect((await api(hub, 'PUT', '/admin/fleets/shop-1', { exclusive: false })).status).toBe(201);
    const again = await api(hub, 'PUT', '/admin/fleets/shop-1', { exclusive: false });
    expect(again).toEqual({ status: 200, body: { fleet: 'shop-1', exclusive: false, drivers: 0 } });
    expect((await api(hub, 'PUT', '/admin/fleets/shop-1', { exclusive: 'yes' })).body.error.code).toBe('VALIDATION_FAILED');
    expect((await api(hub, 'PUT', '/admin/fleets/bad%20name', { exclusive: true })).body.error.code).toBe('VALIDATION_FAILED');
    expect((await api(hub, 'GET', '/admin/fleets/nobody')).body.error.code).toBe('NOT_FOUND');
    expect((await api(hub, 'PUT', '/admin/fleets/shop-2', { exclusive: true }, null)).status).toBe(401);
    const before = (await api(hub, 'GET', '/admin/drivers')).body.drivers.length;
    const unknown = await api(hub, 'POST', '/admin/drivers', { name: 'X', fleet: 'no-such-fleet' });
    expect(unknown.status).toBe(404);
    expect(unknown.body.error.code).toBe('NOT_FOUND');
    expect((await api(hub, 'GET', '/admin/drivers')).body.drivers.length).toBe(before);
    const created = await api(hub, 'POST', '/admin/drivers', { name: 'Own', fleet: 'shop-1' });
    expect(created.body).toMatchObject({ fleet: 'shop-1', status: 'OFFLINE' });
    expect((await api(hub, 'PATCH', `/admin/drivers/${created.body.id}`, { fleet: 'no-such-fleet' })).status).toBe(404);
    expect((await api(hub, 'PATCH', '/admin/drivers/00000000-0000-4000-8000-000000000000', { fleet: null })).status).toBe(404);
    expect((await api(hub, 'GET', '/admin/fleets/shop-1')).body).toEqual({ fleet: 'shop-1', exclusive: false, drivers: 1 });
  });

  it("when a seller has a fleet, then its orders go to the fleet first and the shared pool second, and other orders never reach the fleet", async () => {
    const seller = `seller-${area}-${mode.redis ? 'r' : 'p'}`;
    await api(hub, 'PUT', `/admin/fleets/${seller}`, { exclusive: false });
    const place = nextArea();
    const shared = await onDutyDriver(hub, near(place, 0.001), 'Shared, near');
    const ownDriver = await createFleetDriver(seller, near(place, 0.03), 'Own, farther');
    const first = await postWebhook(hub, READY, { ...order({ pickup: place }), sellerId: seller });
    expect(first.body).toMatchObject({ status: 'ASSIGNED', driverId: ownDriver.id });
    const d = await detail(first.body.deliveryId);
    expect(d.candidates.map((c: any) => [c.driverId, c.pool, c.fleet])).toEqual([
      [ownDriver.id, 'fleet', seller],
      [shared.id, 'shared', null],
    ]);
    // The fleet is busy: the shared pool is next.
    const second = await postWebhook(hub, READY, { ...order({ pickup: place }), sellerId: seller });
    expect(second.body).toMatchObject({ status: 'ASSIGNED', driverId: shared.id });
    // A fleet driver free again never takes another seller's order or one without a seller.
    await ownDriver.app.updateDelivery({ deliveryId: first.body.deliveryId, status: 'PICKED_UP' });
    await ownDriver.app.updateDelivery({ deliveryId: first.body.deliveryId, status: 'DELIVERED' });
    const other = await postWebhook(hub, READY, order({ pickup: place }));
    expect(other.body.status).toBe('PENDING');
    const another = await postWebhook(hub, READY, { ...order({ pickup: place }), sellerId: 'someone-else' });
    expect(another.body.status).toBe('PENDING');
    const later = await detail(other.body.deliveryId);
    expect(later.status).toBe('PENDING');
    shared.close();
    ownDriver.close();
  });

  it('when a seller fleet is exclusive, then its orders never go to the shared pool; they wait for its own driver', async () => {
    const seller = `exclusive-${area}-${mode.redis ? 'r' : 'p'}`;
    await api(hub, 'PUT', `/admin/fleets/${seller}`, { exclusive: true });
    const place = nextArea();
    const shared = await onDutyDriver(hub, near(place, 0.001), 'Shared');
    const res = await postWebhook(hub, READY, { ...order({ pickup: place }), sellerId: seller });
    expect(res.body.status).toBe('PENDING');
    // The pending retries keep passing the shared driver over.
    await new Promise((r) => setTimeout(r, 1000));
    expect((await detail(res.body.deliveryId)).status).toBe('PENDING');
    expect(shared.assignments).toHaveLength(0);
    // Its own driver comes on duty: the waiting order is its.
    const ownDriver = await createFleetDriver(seller, near(place, 0.05), 'Own');
    await eventually(async () => (await detail(res.body.deliveryId)).driverId === ownDriver.id, 'assigned to the fleet');
    expect(shared.assignments).toHaveLength(0);
    shared.close();
    ownDriver.close();
  });

  it('when a driver is moved into a fleet, then the shared pool no longer gets it', async () => {
    const seller = `moved-${area}-${mode.redis ? 'r' : 'p'}`;
    await api(hub, 'PUT', `/admin/fleets/${seller}`, { exclusive: false });
    const place = nextArea();
    const driver = await onDutyDriver(hub, near(place, 0.001), 'Moving');
    expect((await api(hub, 'PATCH', `/admin/drivers/${driver.id}`, { fleet: seller })).body).toMatchObject({ id: driver.id, fleet: seller });
    const res = await postWebhook(hub, READY, order({ pickup: place }));
    expect(res.body.status).toBe('PENDING');
    const own = await postWebhook(hub, READY, { ...order({ pickup: place }), sellerId: seller });
    expect(own.body).toMatchObject({ status: 'ASSIGNED', driverId: driver.id });
    driver.close();
  });

  /** A driver of a seller's fleet, on duty at `at`, through the driver client. */
  async function createFleetDriver(fleet: string, at: { lat: number; lng: number }, name: string) {
    const driver = await onDutyDriver(hub, at, name);
    const moved = await api(hub, 'PATCH', `/admin/drivers/${driver.id}`, { fleet });
    expect(moved.status).toBe(200);
    return driver;
  }
});
