import { randomUUID } from 'node:crypto';
import postgres from 'postgres';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createDeliveriesStore } from '../src/deliveries/deliveries.store.js';
import { createOffersStore, type OffersStore } from '../src/dispatch/offers.store.js';
import { createDriversStore } from '../src/drivers/drivers.store.js';
import { createOutboxStore } from '../src/outbox/outbox.store.js';
import { type Database, openDatabase } from '../src/platform/db.js';
import { createPushesStore } from '../src/pushes/pushes.store.js';
import { createTestDatabase, hasSharedPostgres, type TestDatabase } from './support/hub.js';

/** Two "nodes": each its own connection pool and its own stores, over one PostgreSQL. */
function node(database: Database) {
  const drivers = createDriversStore(database);
  const pushes = createPushesStore(database);
  const outbox = createOutboxStore(database);
  return {
    drivers,
    deliveries: createDeliveriesStore({ database, drivers, outbox, pushes }),
    offers: createOffersStore({ database, drivers, pushes, outbox }),
  };
}

describe.skipIf(!hasSharedPostgres())('offers in PostgreSQL: one outcome per offer, whoever races for it (invariant 9)', () => {
  let db: TestDatabase;
  let first: Database;
  let second: Database;
  let a: ReturnType<typeof node>;
  let b: ReturnType<typeof node>;
  let sql: postgres.Sql;

  beforeAll(async () => {
    db = await createTestDatabase();
    first = openDatabase({ url: db.url, dataDir: db.dataDir, poolSize: 4 });
    await first.migrate();
    second = openDatabase({ url: db.url, dataDir: db.dataDir, poolSize: 4 });
    a = node(first);
    b = node(second);
    sql = postgres(db.url!, { max: 2, onnotice: () => {} });
  });
  afterAll(async () => {
    await first?.close();
    await second?.close();
    await sql?.end();
    await db?.drop();
  });

  /** A connected, on-duty driver and a PENDING delivery offered to it, with its deadline `inMs` from now. */
  async function openOffer(inMs: number) {
    const driver = await a.drivers.create({ name: 'Racer' });
    await sql`update drivers set status = 'AVAILABLE', on_duty = true, session_id = ${`s-${driver.id}`} where id = ${driver.id}`;
    const created = await a.deliveries.createAndAssign(
      { sellerOrderId: `so-${randomUUID()}`, orderCode: 'R1', pickup: { lat: 1, lng: 1 }, dropoff: { lat: 1.01, lng: 1 } },
      [],
    );
    const offered = await a.offers.offerNext({ deliveryId: created.delivery.id, candidates: [{ driverId: driver.id, distanceMeters: 10 }], timeoutSeconds: 60 });
    expect(offered?.delivery.status).toBe('OFFERED');
    await sql`update offers set expires_at = clock_timestamp() + make_interval(secs => ${inMs / 1000}) where delivery_id = ${created.delivery.id}`;
    return { driverId: driver.id, deliveryId: created.delivery.id };
  }

  async function facts(deliveryId: string, driverId: string) {
    const [delivery] = await sql`select status, driver_id from deliveries where id = ${deliveryId}`;
    const offers = await sql`select status from offers where delivery_id = ${deliveryId}`;
    const [{ expiries }] = await sql`select count(*)::int as expiries from delivery_events where delivery_id = ${deliveryId} and reason = 'offer expired'`;
    const [{ assigned }] = await sql`select count(*)::int as assigned from outbox where delivery_id = ${deliveryId} and type = 'delivery.assigned'`;
    const [driver] = await sql`select status, current_delivery_id from drivers where id = ${driverId}`;
    return { delivery, offers: offers.map((o) => o.status), expiries, assigned, driver };
  }

  it('when two nodes expire the same offer at once, then it expires once: one audit row, the driver freed once', async () => {
    for (let round = 0; round < 10; round++) {
      const { driverId, deliveryId } = await openOffer(-1);
      const [left, right] = await Promise.all([a.offers.expireDue(10), b.offers.expireDue(10)]);
      expect(left.length + right.length).toBe(1);
      expect(await facts(deliveryId, driverId)).toEqual({
        delivery: { status: 'PENDING', driver_id: null },
        offers: ['EXPIRED'],
        expiries: 1,
        assigned: 0,
        driver: { status: 'AVAILABLE', current_delivery_id: null },
      });
    }
  });

  it('when an accept races the deadline and both nodes sweep, then exactly one of accepted or expired holds', async () => {
    // Deadlines 3 or 8 ms away while the accept runs: which side wins is up to timing; each round checks one, and only one, holds.
    for (let round = 0; round < 20; round++) {
      const { driverId, deliveryId } = await openOffer(round % 2 === 0 ? 3 : 8);
      const sweeping = (store: OffersStore) => (async () => {
        const until = Date.now() + 200;
        while (Date.now() < until) await store.expireDue(10);
      })();
      await new Promise((r) => setTimeout(r, 3));
      const [answer] = await Promise.all([a.offers.accept(deliveryId, driverId), sweeping(a.offers), sweeping(b.offers)]);
      const now = await facts(deliveryId, driverId);
      if ('error' in answer) {
        expect(answer.error).toBe('OFFER_EXPIRED');
        expect(now).toMatchObject({ delivery: { status: 'PENDING', driver_id: null }, offers: ['EXPIRED'], expiries: 1, assigned: 0, driver: { status: 'AVAILABLE' } });
      } else {
        expect(answer.changed).toBe(true);
        expect(now).toMatchObject({ delivery: { status: 'ASSIGNED', driver_id: driverId }, offers: ['ACCEPTED'], expiries: 0, assigned: 1, driver: { status: 'BUSY', current_delivery_id: deliveryId } });
      }
    }
  });

  it('when a decline races the deadline, then the offer ends once and the delivery is PENDING once', async () => {
    for (let round = 0; round < 10; round++) {
      const { driverId, deliveryId } = await openOffer(2);
      await new Promise((r) => setTimeout(r, 2));
      const [declined, left, right] = await Promise.all([a.offers.decline(deliveryId, driverId, 'busy'), a.offers.expireDue(10), b.offers.expireDue(10)]);
      const endings = ('changed' in declined && declined.changed ? 1 : 0) + left.length + right.length;
      expect(endings).toBe(1);
      const [{ back }] = await sql`select count(*)::int as back from delivery_events where delivery_id = ${deliveryId} and from_status = 'OFFERED' and to_status = 'PENDING'`;
      expect(back).toBe(1);
      expect((await facts(deliveryId, driverId)).driver).toEqual({ status: 'AVAILABLE', current_delivery_id: null });
    }
  });

  it('when a driver was offered a delivery once, then it is never offered it again, and never holds two open offers', async () => {
    const { driverId, deliveryId } = await openOffer(60_000);
    await a.offers.decline(deliveryId, driverId, null);
    expect(await b.offers.offerNext({ deliveryId, candidates: [{ driverId, distanceMeters: 10 }], timeoutSeconds: 60 })).toBeNull();
    // Reserved by one offer, a driver cannot be reserved by another.
    const other = await openOffer(60_000);
    const created = await a.deliveries.createAndAssign({ sellerOrderId: `so-${randomUUID()}`, orderCode: 'R2', pickup: { lat: 1, lng: 1 }, dropoff: { lat: 1.01, lng: 1 } }, []);
    expect(await b.offers.offerNext({ deliveryId: created.delivery.id, candidates: [{ driverId: other.driverId, distanceMeters: 10 }], timeoutSeconds: 60 })).toBeNull();
    const [{ open }] = await sql`select count(*)::int as open from offers where driver_id = ${other.driverId} and status = 'OPEN'`;
    expect(open).toBe(1);
  });
});
