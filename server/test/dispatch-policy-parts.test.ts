import { describe, expect, it } from 'vitest';
import type { DeliveryRecord } from '../src/deliveries/deliveries.store.js';
import type { DeliveryChange } from '../src/deliveries/delivery-announcer.js';
import { createDispatchService } from '../src/dispatch/dispatch.service.js';
import type { EndedOffer, OfferRow } from '../src/dispatch/offers.store.js';
import { HubEvents } from '../src/platform/hub-events.js';
import { createLogger } from '../src/platform/logger.js';
import { createMetrics } from '../src/platform/metrics.js';
import { type CandidatePool, createCandidateSearch } from '../src/presence/nearest-candidates.js';
import type { NearbyDriver } from '../src/presence/presence.store.js';
import { createTrackingLinks } from '../src/tracking/tracking-links.js';

const logger = createLogger({ level: 'silent', nodeId: 'unit' });
const POINT = { lat: 52.52, lng: 13.405 };
const DELIVERY = '33333333-3333-4333-8333-333333333333';

/** Drivers at the given distances; `fleet` maps some of them to a fleet. */
function searchWith(everyone: NearbyDriver[], fleet: Record<string, string>, band?: number) {
  const redisAsks: { radius: number; count: number }[] = [];
  const postgresAsks: unknown[][] = [];
  const search = createCandidateSearch({
    store: {
      available: true,
      nearest: async (_point, radius, count) => {
        redisAsks.push({ radius, count });
        return everyone.filter((d) => d.distanceMeters <= radius).slice(0, count);
      },
    },
    drivers: {
      nearestAvailable: async (...args) => {
        postgresAsks.push(args);
        return [];
      },
    },
    fleets: { fleetOf: (id) => fleet[id] ?? null, fleetDrivers: Object.keys(fleet).length },
    logger,
    config: { maxRadiusKm: 20, heartbeatTtlSeconds: 30, fairnessBandMeters: band },
  });
  return { search, redisAsks, postgresAsks };
}

const at = (driverId: string, distanceMeters: number): NearbyDriver => ({ driverId, distanceMeters });

describe('candidate pools and the fairness band in the search', () => {
  it('when the shared pool is searched in Redis, then fleet drivers are left out and the search looks past as many more', async () => {
    const { search, redisAsks } = searchWith([at('f1', 10), at('f2', 20), at('s1', 30), at('s2', 40)], { f1: 'shop', f2: 'shop' });
    const shared: CandidatePool = { fleet: null };
    expect((await search(POINT, 1, undefined, shared)).candidates).toEqual([at('s1', 30)]);
    expect(redisAsks[0]).toEqual({ radius: 1000, count: 3 });
  });

  it("when a fleet is searched in Redis, then only its own drivers are proposed", async () => {
    const { search } = searchWith([at('s1', 10), at('f1', 20), at('g1', 25), at('f2', 30)], { f1: 'shop', f2: 'shop', g1: 'other' });
    expect((await search(POINT, 5, undefined, { fleet: 'shop' })).candidates).toEqual([at('f1', 20), at('f2', 30)]);
  });

  it('when no pool is given, then every driver is a candidate as before', async () => {
    const { search } = searchWith([at('f1', 10), at('s1', 30)], { f1: 'shop' });
    expect((await search(POINT, 5)).candidates).toEqual([at('f1', 10), at('s1', 30)]);
  });

  it('when Redis is away, then the pool goes to PostgreSQL with the search', async () => {
    const { search, postgresAsks } = searchWith([], {});
    await search(POINT, 5, undefined, { fleet: 'shop' });
    expect(postgresAsks).toEqual([]); // Redis answered (nobody): PostgreSQL not asked
    const away = createCandidateSearch({
      store: { available: false, nearest: async () => [] },
      drivers: {
        nearestAvailable: async (...args) => {
          postgresAsks.push(args);
          return [];
        },
      },
      logger,
      config: { maxRadiusKm: 20, heartbeatTtlSeconds: 30 },
    });
    await away(POINT, 5, undefined, { fleet: 'shop' });
    expect(postgresAsks).toEqual([[POINT, 20_000, 5, 30, { fleet: 'shop' }]]);
  });

  it('when a radius finds someone near its edge, then it widens once to cover the nearest plus the band', async () => {
    const { search, redisAsks } = searchWith([at('a', 900), at('b', 1300), at('c', 1500)], {}, 500);
    expect((await search(POINT, 5)).candidates).toEqual([at('a', 900), at('b', 1300)]);
    expect(redisAsks.map((a) => a.radius)).toEqual([1000, 1400]);
  });
});

describe('offer mode in the dispatch service', () => {
  function row(status: DeliveryRecord['status'], driverId: string | null): DeliveryRecord {
    const now = new Date();
    return {
      id: DELIVERY, sellerOrderId: 'so-1', orderCode: 'T1', sellerId: null, status, driverId, pickupLat: POINT.lat, pickupLng: POINT.lng,
      pickupAddress: null, dropoffLat: POINT.lat, dropoffLng: POINT.lng, dropoffAddress: null, customer: null, notes: null, distanceMeters: null,
      candidates: null, assignedAt: null, acknowledgedAt: null, createdAt: now, updatedAt: now, trackingToken: 'x'.repeat(43),
    };
  }
  function offer(attempt: number, driverId: string): OfferRow {
    const now = new Date();
    return { id: `offer-${attempt}`, deliveryId: DELIVERY, driverId, attempt, status: 'OPEN', reason: null, distanceMeters: 100, score: null, createdAt: now, expiresAt: new Date(now.getTime() + 20_000), answeredAt: null };
  }

  function offerDispatch(maxAttempts: number) {
    const offered: string[][] = [];
    const announced: DeliveryChange[] = [];
    const dispatch = createDispatchService({
      deliveries: {
        createAndAssign: async () => ({ created: true, delivery: row('PENDING', null), chosen: null }),
        assignPending: async () => {
          throw new Error('offer mode never assigns directly');
        },
        assignOldestPendingTo: async () => null,
        pending: async () => [],
        get: async () => row('PENDING', null),
        takenFrom: async () => new Set(),
        anyPending: async () => false,
      },
      presence: { nearestCandidates: async () => ({ source: 'redis', candidates: [at('d2', 100), at('d3', 200)] }) },
      offers: {
        offerNext: async ({ candidates }) => {
          offered.push(candidates.map((c) => c.driverId));
          return { delivery: row('OFFERED', candidates[0].driverId), offer: offer(2, candidates[0].driverId) };
        },
        expireDue: async () => [],
        openFor: async () => offer(1, 'd2'),
      },
      announce: async (change) => void announced.push(change),
      events: new HubEvents(),
      logger,
      metrics: createMetrics('unit'),
      links: createTrackingLinks(() => 'https://hub.test'),
      config: { maxRadiusKm: 20, pendingRetryMs: 60_000, mode: 'offer', offerTimeoutSeconds: 20, offerMaxAttempts: maxAttempts },
    });
    return { dispatch, offered, announced };
  }
  const ended = (attempt: number): EndedOffer => ({ delivery: row('PENDING', null), offer: { ...offer(attempt, 'd1'), status: 'DECLINED' }, released: null });

  it('when an offer ends before the last attempt, then the delivery is announced PENDING and the next driver is offered', async () => {
    const { dispatch, offered, announced } = offerDispatch(3);
    await dispatch.offerEnded(ended(2));
    expect(offered).toEqual([['d2', 'd3']]);
    expect(announced.map((c) => [c.delivery.status, c.previousStatus])).toEqual([
      ['PENDING', 'OFFERED'],
      ['OFFERED', 'PENDING'],
    ]);
    expect(announced[1].offer).toMatchObject({ deliveryId: DELIVERY, distanceMeters: 100 });
  });

  it('when the last attempt ends, then the delivery waits PENDING and nobody else is asked now', async () => {
    const { dispatch, offered, announced } = offerDispatch(3);
    await dispatch.offerEnded(ended(3));
    expect(offered).toEqual([]);
    expect(announced.map((c) => c.delivery.status)).toEqual(['PENDING']);
  });

  it('when an order is ready in offer mode, then the webhook answers OFFERED with the deadline', async () => {
    const { dispatch } = offerDispatch(5);
    const reply = await dispatch.orderReady({ sellerOrderId: 'so-1', orderCode: 'T1', pickup: POINT, dropoff: POINT });
    expect(reply).toMatchObject({ status: 'OFFERED', driverId: 'd2', idempotent: false });
    expect(reply.status === 'OFFERED' && Date.parse(reply.offerExpiresAt)).toBeGreaterThan(Date.now());
  });
});
