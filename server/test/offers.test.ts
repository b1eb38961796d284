import postgres from 'postgres';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { OfferPush } from '#shared/schemas.js';
import { type ChildHub, envFrom, spawnHub } from './support/child-hub.js';
import { api, connectSocket, createTestDatabase, firstEvent, hasSharedPostgres, onDutyDriver, order, postWebhook, startCluster, type TestDatabase, type TestHub } from './support/hub.js';
import { eventually } from './support/net.js';

const READY = '/events/seller-order-ready';

let area = 0;
function nextArea() {
  area += 1;
  return { lat: -50 + area * 2, lng: -160 + area * 3 };
}
const near = (p: { lat: number; lng: number }, dLat: number) => ({ lat: p.lat + dLat, lng: p.lng });

/** A driver on duty through the driver client, recording the offers and cancellations it takes. */
async function offerDriver(hub: TestHub, at: { lat: number; lng: number }, name: string) {
  const driver = await onDutyDriver(hub, at, name);
  const offers: OfferPush[] = [];
  driver.app.on('offer', (offer) => void offers.push(offer));
  return Object.assign(driver, { offers });
}

describe.skipIf(!hasSharedPostgres())('offer mode (DISPATCH_MODE=offer, three nodes)', () => {
  let db: TestDatabase;
  let hubs: TestHub[];
  let sql: postgres.Sql;

  beforeAll(async () => {
    db = await createTestDatabase();
    // Short deadlines; each node looks for expired offers every 100 ms, so they race for each one.
    hubs = await startCluster(db, 3, { DISPATCH_MODE: 'offer', OFFER_TIMEOUT_SECONDS: '3', PENDING_RETRY_MS: '400', ASSIGN_MAX_RADIUS_KM: '20' });
    sql = postgres(db.url!, { max: 2, onnotice: () => {} });
  });
  afterAll(async () => {
    await Promise.all((hubs ?? []).map((h) => h.stop()));
    await sql?.end();
    await db?.drop();
  });

  const detail = async (id: string) => (await api(hubs[0], 'GET', `/admin/deliveries/${id}`)).body;
  const transitions = (d: any) => d.events.map((e: any) => [e.from, e.to]);

  it('when an order is ready, then the best driver is reserved and offered; accepting assigns it and only then tells Vendure', async () => {
    const place = nextArea();
    const driver = await offerDriver(hubs[1], near(place, 0.001), 'Taker');
    const o = order({ pickup: place });
    const res = await postWebhook(hubs[0], READY, o);
    expect(res.status).toBe(202);
    expect(res.body).toMatchObject({ status: 'OFFERED', driverId: driver.id, idempotent: false });
    const expiresAt = Date.parse(res.body.offerExpiresAt);
    expect(expiresAt).toBeGreaterThan(Date.now() - 1000);
    await eventually(() => driver.offers.length === 1, 'offer pushed');
    expect(driver.offers[0]).toMatchObject({ deliveryId: res.body.deliveryId, orderCode: o.orderCode, expiresAt: res.body.offerExpiresAt });
    // Reserved exactly like a claim: BUSY, held by the delivery; the push acknowledged by the app.
    const [row] = await sql`select status, current_delivery_id from drivers where id = ${driver.id}`;
    expect(row).toEqual({ status: 'BUSY', current_delivery_id: res.body.deliveryId });
    await eventually(async () => (await detail(res.body.deliveryId)).pushes.some((p: any) => p.kind === 'offer' && p.acknowledgedAt), 'offer acknowledged');
    expect(await sql`select type from outbox where delivery_id = ${res.body.deliveryId}`).toEqual([]);
    // A retry answers the open offer.
    const retry = await postWebhook(hubs[2], READY, o);
    expect(retry.body).toMatchObject({ status: 'OFFERED', driverId: driver.id, offerExpiresAt: res.body.offerExpiresAt, idempotent: true });

    const accepted = await driver.app.acceptOffer(res.body.deliveryId);
    expect(accepted).toMatchObject({ id: res.body.deliveryId, status: 'ASSIGNED', driverId: driver.id });
    expect(driver.app.state).toMatchObject({ offer: null, status: 'BUSY', activeDelivery: { deliveryId: res.body.deliveryId } });
    // Accepting again answers the same delivery.
    expect(await driver.app.acceptOffer(res.body.deliveryId)).toMatchObject({ status: 'ASSIGNED' });
    const d = await detail(res.body.deliveryId);
    expect(transitions(d)).toEqual([
      [null, 'PENDING'],
      ['PENDING', 'OFFERED'],
      ['OFFERED', 'ASSIGNED'],
    ]);
    expect(d.offers).toMatchObject([{ driverId: driver.id, attempt: 1, outcome: 'ACCEPTED' }]);
    expect(d.acknowledgedAt).not.toBeNull();
    expect((await sql`select type from outbox where delivery_id = ${res.body.deliveryId}`).map((r) => r.type)).toEqual(['delivery.assigned']);
    driver.close();
  });

  it('when a delivery is offered, then dispatchers on every node see it OFFERED with its deadline, in the stream and in the snapshot', async () => {
    const { token } = (await api(hubs[0], 'POST', '/admin/tokens', { role: 'dispatcher', subject: 'offers' })).body;
    const map = connectSocket(hubs[2], '/dispatch', { token });
    await firstEvent(map, 'snapshot');
    const updates: any[] = [];
    map.on('delivery:updated', (u: any) => updates.push(u));
    const place = nextArea();
    const driver = await offerDriver(hubs[1], near(place, 0.001), 'Watched');
    const res = await postWebhook(hubs[0], READY, order({ pickup: place }));
    const offered = await eventually(() => updates.find((u) => u.id === res.body.deliveryId && u.status === 'OFFERED'), 'OFFERED in the stream');
    expect(offered).toMatchObject({ driverId: driver.id, offerExpiresAt: res.body.offerExpiresAt, previousStatus: 'PENDING' });
    const late = connectSocket(hubs[1], '/dispatch', { token });
    const snapshot = await firstEvent<any>(late, 'snapshot');
    expect(snapshot.deliveries.find((d: any) => d.id === res.body.deliveryId)).toMatchObject({ status: 'OFFERED', offerExpiresAt: res.body.offerExpiresAt });
    await driver.app.declineOffer(res.body.deliveryId);
    await eventually(() => updates.some((u) => u.id === res.body.deliveryId && u.status === 'PENDING' && u.previousStatus === 'OFFERED'), 'back to PENDING in the stream');
    map.disconnect();
    late.disconnect();
    driver.close();
  });

  it('when the driver declines, then it is freed and the next driver gets the offer; the first is never asked again', async () => {
    const place = nextArea();
    const first = await offerDriver(hubs[0], near(place, 0.001), 'Nearest');
    const second = await offerDriver(hubs[2], near(place, 0.02), 'Next');
    const res = await postWebhook(hubs[1], READY, order({ pickup: place }));
    expect(res.body).toMatchObject({ status: 'OFFERED', driverId: first.id });
    await eventually(() => first.offers.length === 1, 'first offer');
    await first.app.declineOffer(res.body.deliveryId, { reason: 'flat tyre' });
    await eventually(() => second.offers.length === 1, 'second offer');
    expect(second.offers[0].deliveryId).toBe(res.body.deliveryId);
    await eventually(async () => (await sql`select status from drivers where id = ${first.id}`)[0].status === 'AVAILABLE', 'first driver free');
    // Declining again changes nothing; someone else's offer is not yours to answer.
    await first.app.declineOffer(res.body.deliveryId);
    await expect(first.app.acceptOffer(res.body.deliveryId)).rejects.toMatchObject({ code: 'OFFER_EXPIRED' });
    const stranger = await offerDriver(hubs[1], near(nextArea(), 0), 'Stranger');
    await expect(stranger.app.acceptOffer(res.body.deliveryId)).rejects.toMatchObject({ code: 'FORBIDDEN' });
    await expect(stranger.app.declineOffer(res.body.deliveryId)).rejects.toMatchObject({ code: 'FORBIDDEN' });
    await expect(stranger.app.acceptOffer('00000000-0000-4000-8000-000000000000')).rejects.toMatchObject({ code: 'NOT_FOUND' });
    expect(await stranger.emitAck('offer:accept', { deliveryId: 'nope' })).toMatchObject({ ok: false, error: { code: 'VALIDATION_FAILED' } });
    expect(await stranger.emitAck('offer:decline', { deliveryId: res.body.deliveryId, extra: 1 })).toMatchObject({ ok: false, error: { code: 'VALIDATION_FAILED' } });
    await second.app.acceptOffer(res.body.deliveryId);
    const d = await detail(res.body.deliveryId);
    expect(d).toMatchObject({ status: 'ASSIGNED', driverId: second.id });
    expect(d.offers).toMatchObject([
      { driverId: first.id, attempt: 1, outcome: 'DECLINED', reason: 'flat tyre' },
      { driverId: second.id, attempt: 2, outcome: 'ACCEPTED' },
    ]);
    expect(transitions(d)).toEqual([
      [null, 'PENDING'],
      ['PENDING', 'OFFERED'],
      ['OFFERED', 'PENDING'],
      ['PENDING', 'OFFERED'],
      ['OFFERED', 'ASSIGNED'],
    ]);
    expect(d.events[2]).toMatchObject({ driverId: first.id, actor: `driver:${first.id}`, reason: 'offer declined: flat tyre' });
    for (const d of [first, second, stranger]) d.close();
  });

  it('when nobody answers, then the offer expires on time, the driver is told and freed, the next driver is offered, and a late accept changes nothing', async () => {
    const place = nextArea();
    const silent = await offerDriver(hubs[2], near(place, 0.001), 'Silent');
    const next = await offerDriver(hubs[1], near(place, 0.03), 'Next');
    const res = await postWebhook(hubs[0], READY, order({ pickup: place }));
    expect(res.body).toMatchObject({ status: 'OFFERED', driverId: silent.id });
    await eventually(() => next.offers.length === 1, 'offer moved on after the deadline', 15_000);
    expect(Date.now()).toBeGreaterThanOrEqual(Date.parse(res.body.offerExpiresAt));
    await eventually(() => silent.cancellations.some((c) => c.deliveryId === res.body.deliveryId), 'expired driver told');
    expect(silent.app.state.offer).toBeNull();
    await expect(silent.app.acceptOffer(res.body.deliveryId)).rejects.toMatchObject({ code: 'OFFER_EXPIRED' });
    const d = await detail(res.body.deliveryId);
    expect(d).toMatchObject({ status: 'OFFERED', driverId: next.id });
    // Three nodes raced to expire it: one outcome, one audit row.
    expect(d.offers.map((o: any) => [o.driverId, o.outcome])).toEqual([
      [silent.id, 'EXPIRED'],
      [next.id, 'OPEN'],
    ]);
    expect(d.events.filter((e: any) => e.reason === 'offer expired')).toHaveLength(1);
    expect((await sql`select status from drivers where id = ${silent.id}`)[0].status).toBe('AVAILABLE');
    // The next driver's deadline is its own, and nobody is left after it: PENDING, waiting like any other.
    await eventually(async () => (await detail(res.body.deliveryId)).status === 'PENDING', 'nobody left', 15_000);
    const waiting = await detail(res.body.deliveryId);
    expect(waiting.offers.map((o: any) => o.outcome)).toEqual(['EXPIRED', 'EXPIRED']);
    expect(waiting.driverId).toBeNull();
    silent.close();
    next.close();
  });

  it('when an accept races the deadline, then exactly one outcome holds', async () => {
    for (let round = 0; round < 3; round++) {
      const place = nextArea();
      const driver = await offerDriver(hubs[round % 3], near(place, 0.001), 'Racer');
      const res = await postWebhook(hubs[(round + 1) % 3], READY, order({ pickup: place }));
      expect(res.body.status).toBe('OFFERED');
      const wait = Date.parse(res.body.offerExpiresAt) - Date.now() - 15 + round * 15;
      await new Promise((r) => setTimeout(r, Math.max(0, wait)));
      const outcome = await driver.app.acceptOffer(res.body.deliveryId).then(
        () => 'accepted',
        (err) => err.code as string,
      );
      const d = await eventually(async () => {
        const now = await detail(res.body.deliveryId);
        return now.offers[0].outcome !== 'OPEN' ? now : null;
      }, 'offer settled');
      if (outcome === 'accepted') {
        expect(d).toMatchObject({ status: 'ASSIGNED', driverId: driver.id });
        expect(d.offers).toMatchObject([{ outcome: 'ACCEPTED' }]);
        expect(d.events.some((e: any) => e.reason === 'offer expired')).toBe(false);
      } else {
        expect(outcome).toBe('OFFER_EXPIRED');
        expect(d.offers).toMatchObject([{ outcome: 'EXPIRED' }]);
        expect(d.status).not.toBe('ASSIGNED');
        expect((await sql`select count(*)::int as n from outbox where delivery_id = ${res.body.deliveryId}`)[0].n).toBe(0);
      }
      driver.close();
    }
  });

  it('when the driver reconnects with an open offer, then its session carries the offer and the push comes again until acknowledged', async () => {
    const place = nextArea();
    const driver = await offerDriver(hubs[0], near(place, 0.001), 'Flaky');
    const res = await postWebhook(hubs[1], READY, order({ pickup: place }));
    await eventually(() => driver.offers.length === 1, 'offer pushed');
    const sessions: any[] = [];
    driver.app.on('session', (s) => void sessions.push(s));
    driver.socket.disconnect();
    await eventually(() => sessions.length > 0, 'reconnected', 10_000);
    expect(sessions[0].offer).toMatchObject({ deliveryId: res.body.deliveryId, expiresAt: res.body.offerExpiresAt });
    expect(driver.app.state.offer?.deliveryId).toBe(res.body.deliveryId);
    driver.close();
  });

  it('when a delivery with an open offer is cancelled, then the offer ends, the driver is freed and told', async () => {
    const place = nextArea();
    const driver = await offerDriver(hubs[0], near(place, 0.001), 'Cancelled');
    const o = order({ pickup: place });
    const res = await postWebhook(hubs[1], READY, o);
    await eventually(() => driver.offers.length === 1, 'offer pushed');
    const cancel = await postWebhook(hubs[2], '/events/seller-order-cancelled', { sellerOrderId: o.sellerOrderId });
    expect(cancel.body).toMatchObject({ status: 'CANCELLED' });
    await eventually(() => driver.cancellations.length === 1, 'driver told');
    const d = await detail(res.body.deliveryId);
    expect(d.offers).toMatchObject([{ outcome: 'CANCELLED' }]);
    expect((await sql`select status, current_delivery_id from drivers where id = ${driver.id}`)[0]).toEqual({ status: 'AVAILABLE', current_delivery_id: null });
    await expect(driver.app.acceptOffer(res.body.deliveryId)).rejects.toMatchObject({ code: 'OFFER_EXPIRED' });
    driver.close();
  });

  it('when the node that made the offer is SIGKILLed, then another node expires the offer and offers the next driver', async () => {
    const child: ChildHub = await spawnHub(envFrom(hubs[0].config, { DISPATCH_MODE: 'offer', OFFER_TIMEOUT_SECONDS: '3', PENDING_RETRY_MS: '400', NODE_ID: 'doomed' }));
    try {
      const place = nextArea();
      const silent = await offerDriver(hubs[1], near(place, 0.001), 'Silent');
      const next = await offerDriver(hubs[2], near(place, 0.03), 'Next');
      const res = await postWebhook(child, READY, order({ pickup: place }));
      expect(res.body).toMatchObject({ status: 'OFFERED', driverId: silent.id });
      await child.kill('SIGKILL');
      await eventually(() => next.offers.length === 1, 'the offer moved on without its node', 15_000);
      // Nothing beyond the deadline: the survivors sweep every 100 ms (a generous bound for a loaded machine).
      expect(Date.now() - Date.parse(res.body.offerExpiresAt)).toBeLessThan(5000);
      const d = await detail(res.body.deliveryId);
      expect(d.offers.map((o: any) => o.outcome)).toEqual(['EXPIRED', 'OPEN']);
      silent.close();
      next.close();
    } finally {
      await child.kill('SIGKILL');
    }
  });

  it('when 200 orders race on three nodes and drivers accept, decline or stay silent at random, then no driver holds two offers or two deliveries and every order ends ASSIGNED or PENDING', async () => {
    const place = nextArea();
    const drivers = await Promise.all(Array.from({ length: 20 }, (_, i) => offerDriver(hubs[i % 3], near(place, 0.0005 * (i + 1)), `Random ${i}`)));
    for (const driver of drivers) {
      driver.app.on('offer', (offer) => {
        // Answer a little later, at random: take it, turn it down, or let it lapse.
        const roll = Math.random();
        setTimeout(() => {
          if (roll < 0.5) void driver.app.acceptOffer(offer.deliveryId).catch(() => {});
          else if (roll < 0.85) void driver.app.declineOffer(offer.deliveryId, { reason: 'random' }).catch(() => {});
        }, Math.random() * 300);
      });
    }
    const orders = Array.from({ length: 200 }, () => order({ pickup: near(place, Math.random() * 0.01) }));
    const replies = await Promise.all(orders.map((o, i) => postWebhook(hubs[i % 3], READY, o)));
    expect(replies.every((r) => r.status === 202 && (r.body.status === 'OFFERED' || r.body.status === 'PENDING'))).toBe(true);
    const ids = replies.map((r) => r.body.deliveryId as string);
    // Settles once nothing is offered any more: every order ASSIGNED, or PENDING with nobody left to ask.
    await eventually(
      async () => {
        const rows = await sql`select status from deliveries where id in ${sql(ids)}`;
        const openOffers = await sql`select count(*)::int as n from offers where status = 'OPEN' and delivery_id in ${sql(ids)}`;
        return rows.every((r) => r.status === 'ASSIGNED' || r.status === 'PENDING') && openOffers[0].n === 0;
      },
      'every order settled',
      60_000,
      250,
    );
    const twoActive = await sql`select driver_id from deliveries where status in ('ASSIGNED', 'PICKED_UP') and driver_id is not null group by driver_id having count(*) > 1`;
    expect(twoActive).toEqual([]);
    const twice = await sql`select delivery_id, driver_id from offers where delivery_id in ${sql(ids)} group by delivery_id, driver_id having count(*) > 1`;
    expect(twice).toEqual([]);
    const assigned = await sql`select count(*)::int as n from deliveries where id in ${sql(ids)} and status = 'ASSIGNED'`;
    expect(assigned[0].n).toBeLessThanOrEqual(drivers.length);
    expect(assigned[0].n).toBeGreaterThan(0);
    const outcomes = await sql`select status, count(*)::int as n from offers where delivery_id in ${sql(ids)} group by status`;
    expect(outcomes.map((o) => o.status).sort()).toEqual(expect.arrayContaining(['ACCEPTED', 'DECLINED']));
    // At most one open offer per driver, at any time: the partial unique index, checked here as well.
    expect(await sql`select driver_id from offers where status = 'OPEN' group by driver_id having count(*) > 1`).toEqual([]);
    // Every driver row agrees with the deliveries: BUSY exactly when an active delivery holds it.
    const mismatched = await sql`select d.id from drivers d where d.id in ${sql(drivers.map((x) => x.id))}
      and (d.current_delivery_id is not null) <> exists (select 1 from deliveries x where x.driver_id = d.id and x.status in ('OFFERED', 'ASSIGNED'))`;
    expect(mismatched).toEqual([]);
    for (const driver of drivers) driver.close();
  }, 120_000);
});
