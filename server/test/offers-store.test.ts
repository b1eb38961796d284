import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import type { OffersStore } from '../src/dispatch/offers.store.js';
import { hasSharedPostgres } from './support/hub.js';
import { useStoreNodes } from './support/store-nodes.js';

describe.skipIf(!hasSharedPostgres())('offers in PostgreSQL: one outcome per offer, whoever races for it (invariant 9)', () => {
  const nodes = useStoreNodes();

  /** A connected, on-duty driver and a PENDING delivery offered to it, with its deadline `inMs` from now. */
  async function openOffer(inMs: number) {
    const driver = await nodes.a.drivers.create({ name: 'Racer' });
    await nodes.sql`update drivers set status = 'AVAILABLE', on_duty = true, session_id = ${`s-${driver.id}`} where id = ${driver.id}`;
    const created = await nodes.a.deliveries.createAndAssign(
      { sellerOrderId: `so-${randomUUID()}`, orderCode: 'R1', pickup: { lat: 1, lng: 1 }, dropoff: { lat: 1.01, lng: 1 } },
      [],
    );
    const offered = await nodes.a.offers.offerNext({ deliveryId: created.delivery.id, candidates: [{ driverId: driver.id, distanceMeters: 10 }], timeoutSeconds: 60 });
    expect(offered?.delivery.status).toBe('OFFERED');
    await nodes.sql`update offers set expires_at = clock_timestamp() + make_interval(secs => ${inMs / 1000}) where delivery_id = ${created.delivery.id}`;
    return { driverId: driver.id, deliveryId: created.delivery.id };
  }

  async function facts(deliveryId: string, driverId: string) {
    const [delivery] = await nodes.sql`select status, driver_id from deliveries where id = ${deliveryId}`;
    const offers = await nodes.sql`select status from offers where delivery_id = ${deliveryId}`;
    const [{ expiries }] = await nodes.sql`select count(*)::int as expiries from delivery_events where delivery_id = ${deliveryId} and reason = 'offer expired'`;
    const [{ assigned }] = await nodes.sql`select count(*)::int as assigned from outbox where delivery_id = ${deliveryId} and type = 'delivery.assigned'`;
    const [driver] = await nodes.sql`select status, current_delivery_id from drivers where id = ${driverId}`;
    return { delivery, offers: offers.map((o) => o.status), expiries, assigned, driver };
  }

  it('when two nodes expire the same offer at once, then it expires once: one audit row, the driver freed once', async () => {
    for (let round = 0; round < 10; round++) {
      const { driverId, deliveryId } = await openOffer(-1);
      const [left, right] = await Promise.all([nodes.a.offers.expireDue(10), nodes.b.offers.expireDue(10)]);
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
      const [answer] = await Promise.all([nodes.a.offers.accept(deliveryId, driverId), sweeping(nodes.a.offers), sweeping(nodes.b.offers)]);
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
      const [declined, left, right] = await Promise.all([nodes.a.offers.decline(deliveryId, driverId, 'busy'), nodes.a.offers.expireDue(10), nodes.b.offers.expireDue(10)]);
      const endings = ('changed' in declined && declined.changed ? 1 : 0) + left.length + right.length;
      expect(endings).toBe(1);
      const [{ back }] = await nodes.sql`select count(*)::int as back from delivery_events where delivery_id = ${deliveryId} and from_status = 'OFFERED' and to_status = 'PENDING'`;
      expect(back).toBe(1);
      expect((await facts(deliveryId, driverId)).driver).toEqual({ status: 'AVAILABLE', current_delivery_id: null });
    }
  });

  it('when a driver was offered a delivery once, then it is never offered it again, and never holds two open offers', async () => {
    const { driverId, deliveryId } = await openOffer(60_000);
    await nodes.a.offers.decline(deliveryId, driverId, null);
    expect(await nodes.b.offers.offerNext({ deliveryId, candidates: [{ driverId, distanceMeters: 10 }], timeoutSeconds: 60 })).toBeNull();
    // Reserved by one offer, a driver cannot be reserved by another.
    const other = await openOffer(60_000);
    const created = await nodes.a.deliveries.createAndAssign({ sellerOrderId: `so-${randomUUID()}`, orderCode: 'R2', pickup: { lat: 1, lng: 1 }, dropoff: { lat: 1.01, lng: 1 } }, []);
    expect(await nodes.b.offers.offerNext({ deliveryId: created.delivery.id, candidates: [{ driverId: other.driverId, distanceMeters: 10 }], timeoutSeconds: 60 })).toBeNull();
    const [{ open }] = await nodes.sql`select count(*)::int as open from offers where driver_id = ${other.driverId} and status = 'OPEN'`;
    expect(open).toBe(1);
  });
});
