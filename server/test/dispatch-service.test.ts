import { describe, expect, it } from 'vitest';
import type { DeliveryStatus } from '#shared/schemas.js';
import { createDeliveriesService } from '../src/deliveries/deliveries.service.js';
import type { Candidate, DeliveriesStore, DeliveryRecord, TransitionResult } from '../src/deliveries/deliveries.store.js';
import { createDeliveryAnnouncer, type DeliveryChange } from '../src/deliveries/delivery-announcer.js';
import { createDispatchService } from '../src/dispatch/dispatch.service.js';
import { HubError } from '../src/platform/errors.js';
import { HubEvents } from '../src/platform/hub-events.js';
import { createLogger } from '../src/platform/logger.js';
import { createMetrics } from '../src/platform/metrics.js';
import type { NearestCandidates } from '../src/presence/nearest-candidates.js';
import { createTrackingLinks } from '../src/tracking/tracking-links.js';

const logger = createLogger({ level: 'silent', nodeId: 'unit' });
const DRIVER = '11111111-1111-4111-8111-111111111111';
const DELIVERY = '33333333-3333-4333-8333-333333333333';
const PICKUP = { lat: 52.52, lng: 13.405 };
const DROPOFF = { lat: 52.53, lng: 13.41 };
const TOKEN = 'Tk9UX0FfUkVBTF9UT0tFTl9KVVNUX0FfVEVTVF8wMDE';
const links = createTrackingLinks(() => 'https://hub.test');
const TRACKING_URL = `https://hub.test/track/${TOKEN}`;

function deliveryRow(status: DeliveryStatus, driverId: string | null = null): DeliveryRecord {
  const at = new Date('2026-01-01T00:00:00Z');
  return {
    id: DELIVERY,
    sellerOrderId: 'so-1',
    orderCode: 'T1',
    sellerId: null,
    status,
    driverId,
    pickupLat: PICKUP.lat,
    pickupLng: PICKUP.lng,
    pickupAddress: null,
    dropoffLat: DROPOFF.lat,
    dropoffLng: DROPOFF.lng,
    dropoffAddress: null,
    customer: null,
    notes: null,
    distanceMeters: driverId ? 120 : null,
    candidates: null,
    assignedAt: driverId ? at : null,
    acknowledgedAt: null,
    createdAt: at,
    updatedAt: at,
    trackingToken: TOKEN,
  };
}

const order = { sellerOrderId: 'so-1', orderCode: 'T1', pickup: PICKUP, dropoff: DROPOFF };
const nearby = (n: number, from = 0): Candidate[] => Array.from({ length: n }, (_, i) => ({ driverId: `driver-${from + i}`, distanceMeters: 100 * (from + i + 1) }));

type DispatchStore = Parameters<typeof createDispatchService>[0]['deliveries'];

function dispatchWith(store: Partial<DispatchStore>, search: (count: number) => NearestCandidates) {
  const events = new HubEvents();
  const announced: DeliveryChange[] = [];
  const searches: number[] = [];
  const claimsTried: Candidate[][] = [];
  const passedOver: (ReadonlySet<string> | undefined)[] = [];
  const dispatch = createDispatchService({
    deliveries: {
      createAndAssign: async () => ({ created: true, delivery: deliveryRow('PENDING'), chosen: null }),
      assignPending: async (_id, candidates) => {
        claimsTried.push([...candidates]);
        return null;
      },
      assignOldestPendingTo: async () => null,
      pending: async () => [],
      get: async () => null,
      takenFrom: async () => new Set(),
      anyPending: async () => true,
      ...store,
    },
    presence: {
      nearestCandidates: async (_point, count, passOver) => {
        searches.push(count);
        passedOver.push(passOver);
        return search(count);
      },
    },
    announce: async (change) => void announced.push(change),
    events,
    logger,
    metrics: createMetrics('unit'),
    links,
    config: { maxRadiusKm: 20, pendingRetryMs: 60_000 },
  });
  return { dispatch, events, announced, searches, claimsTried, passedOver };
}

describe('dispatch service', () => {
  it('when an order is ready and a nearby driver is claimed, then the change is announced and the reply says ASSIGNED', async () => {
    const { dispatch, announced } = dispatchWith(
      { createAndAssign: async () => ({ created: true, delivery: deliveryRow('ASSIGNED', DRIVER), chosen: { driverId: DRIVER, distanceMeters: 120 } }) },
      () => ({ source: 'redis', candidates: [{ driverId: DRIVER, distanceMeters: 120 }] }),
    );
    expect(await dispatch.orderReady(order)).toEqual({ status: 'ASSIGNED', deliveryId: DELIVERY, sellerOrderId: 'so-1', driverId: DRIVER, distanceMeters: 120, idempotent: false, trackingUrl: TRACKING_URL });
    expect(announced).toEqual([{ delivery: expect.objectContaining({ status: 'ASSIGNED' }), previousStatus: 'PENDING' }]);
  });

  it('when every proposed driver was taken by concurrent orders, then a wider search of untried drivers is claimed before the order waits', async () => {
    const { dispatch, announced, searches, claimsTried } = dispatchWith(
      {
        assignPending: async (_id, candidates) => {
          claimsTried.push([...candidates]);
          return { delivery: deliveryRow('ASSIGNED', candidates[0].driverId), chosen: candidates[0] };
        },
      },
      (count) => ({ source: 'redis', candidates: nearby(count) }),
    );
    const reply = await dispatch.orderReady(order);
    expect(searches).toEqual([5, 30]);
    expect(claimsTried).toEqual([nearby(25, 5)]);
    expect(reply).toMatchObject({ status: 'ASSIGNED', driverId: 'driver-5' });
    expect(announced.map((c) => c.previousStatus)).toEqual(['PENDING']);
  });

  it('when fewer drivers than asked for were proposed and none was free, then the order waits PENDING without a second search', async () => {
    const { dispatch, announced, searches } = dispatchWith({}, () => ({ source: 'postgres', candidates: nearby(2) }));
    expect(await dispatch.orderReady(order)).toEqual({ status: 'PENDING', deliveryId: DELIVERY, sellerOrderId: 'so-1', driverId: null, idempotent: false, trackingUrl: TRACKING_URL });
    expect(searches).toEqual([5]);
    expect(announced).toEqual([{ delivery: expect.objectContaining({ status: 'PENDING' }), previousStatus: null }]);
  });

  it('when a retry names a known order, then its current state is answered as idempotent and nothing is announced; with another pickup, CONFLICT', async () => {
    const { dispatch, announced } = dispatchWith({ createAndAssign: async () => ({ created: false, delivery: deliveryRow('ASSIGNED', DRIVER) }) }, () => ({ source: 'redis', candidates: [] }));
    expect(await dispatch.orderReady(order)).toMatchObject({ status: 'ASSIGNED', driverId: DRIVER, idempotent: true, trackingUrl: TRACKING_URL });
    const moved = dispatch.orderReady({ ...order, pickup: { lat: 1, lng: 1 } });
    await expect(moved).rejects.toBeInstanceOf(HubError);
    await expect(moved).rejects.toMatchObject({ code: 'CONFLICT' });
    expect(announced).toEqual([]);
  });

  it('when a driver becomes AVAILABLE at a position, then the oldest pending delivery within reach is claimed for it and announced', async () => {
    const offers: unknown[][] = [];
    const { events, announced } = dispatchWith(
      {
        assignOldestPendingTo: async (...args) => {
          offers.push(args);
          return { delivery: deliveryRow('ASSIGNED', DRIVER), chosen: { driverId: DRIVER, distanceMeters: 80 } };
        },
      },
      () => ({ source: 'redis', candidates: [] }),
    );
    events.emit('driver:status', { driverId: DRIVER, status: 'BUSY', position: PICKUP });
    events.emit('driver:status', { driverId: DRIVER, status: 'AVAILABLE', position: null });
    events.emit('driver:status', { driverId: DRIVER, status: 'AVAILABLE', position: PICKUP });
    await new Promise((r) => setTimeout(r, 20));
    expect(offers).toEqual([[{ id: DRIVER, ...PICKUP }, 20_000]]);
    expect(announced.map((c) => [c.delivery.status, c.previousStatus])).toEqual([['ASSIGNED', 'PENDING']]);
  });

  it('when many drivers come free and nothing waits, then one look for waiting deliveries answers them all and no claim is tried', async () => {
    let looks = 0;
    const offers: unknown[] = [];
    const { events } = dispatchWith(
      {
        anyPending: async () => {
          looks += 1;
          return false;
        },
        assignOldestPendingTo: async (...args) => {
          offers.push(args);
          return null;
        },
      },
      () => ({ source: 'redis', candidates: [] }),
    );
    for (let i = 0; i < 50; i++) events.emit('driver:status', { driverId: `driver-${i}`, status: 'AVAILABLE', position: PICKUP });
    await new Promise((r) => setTimeout(r, 20));
    expect(looks).toBe(1);
    expect(offers).toEqual([]);
  });

  it('when pending deliveries are retried, then each with candidates is tried and only the claimed ones are announced', async () => {
    const waiting = [deliveryRow('PENDING'), { ...deliveryRow('PENDING'), id: 'other', pickupLat: 0 }];
    const { dispatch, announced, claimsTried } = dispatchWith(
      {
        pending: async () => waiting,
        assignPending: async (id, candidates) => {
          claimsTried.push([...candidates]);
          return id === DELIVERY ? { delivery: deliveryRow('ASSIGNED', DRIVER), chosen: candidates[0] } : null;
        },
      },
      () => ({ source: 'postgres', candidates: nearby(1) }),
    );
    expect(await dispatch.assignPendingNow()).toBe(1);
    expect(claimsTried).toHaveLength(2);
    expect(announced).toHaveLength(1);
  });

  it('when a driver comes free while pending deliveries are retried, then an older delivery searched before it appeared still goes first', async () => {
    const older = { ...deliveryRow('PENDING'), id: 'older' };
    const newer = { ...deliveryRow('PENDING'), id: 'newer' };
    const claimed: string[] = [];
    let searchesBeforeTheDriver = 1;
    const { dispatch, announced } = dispatchWith(
      {
        pending: async () => [older, newer],
        assignPending: async (id, candidates) => {
          if (claimed.length > 0) return null;
          claimed.push(id);
          return { delivery: { ...deliveryRow('ASSIGNED', DRIVER), id }, chosen: candidates[0] };
        },
      },
      // The older delivery's search ran just before the driver came on duty; every later one finds it.
      () => ({ source: 'redis', candidates: searchesBeforeTheDriver-- > 0 ? [] : nearby(1) }),
    );
    expect(await dispatch.assignPendingNow()).toBe(1);
    expect(claimed).toEqual(['older']);
    expect(announced.map((a) => a.delivery.id)).toEqual(['older']);
  });

  it('when a delivery was taken from drivers (sent back to assignment), then the search for its next driver passes over them', async () => {
    const silent = new Set(['driver-0']);
    const { dispatch, passedOver, claimsTried } = dispatchWith(
      {
        get: async () => deliveryRow('PENDING'),
        takenFrom: async () => silent,
        assignPending: async (_id, candidates) => {
          claimsTried.push([...candidates]);
          return { delivery: deliveryRow('ASSIGNED', candidates[0].driverId), chosen: candidates[0] };
        },
      },
      () => ({ source: 'redis', candidates: nearby(1, 1) }),
    );
    expect(await dispatch.assignPendingDelivery(DELIVERY)).toMatchObject({ status: 'ASSIGNED', driverId: 'driver-1' });
    expect(passedOver).toEqual([silent]);
    expect(claimsTried).toEqual([nearby(1, 1)]);
  });

  it('when a delivery sent back is no longer PENDING, then nothing is searched or claimed', async () => {
    const { dispatch, searches } = dispatchWith({ get: async () => deliveryRow('ASSIGNED', DRIVER) }, () => ({ source: 'redis', candidates: nearby(1) }));
    expect(await dispatch.assignPendingDelivery(DELIVERY)).toBeNull();
    expect(searches).toEqual([]);
  });
});

describe('delivery announcer', () => {
  function announcerWith() {
    const steps: string[] = [];
    const events = new HubEvents();
    events.on('delivery:assigned', ({ driverId }) => steps.push(`push ${driverId}`));
    events.on('delivery:updated', ({ delivery, previousStatus }) => steps.push(`updated ${previousStatus}->${delivery.status}`));
    const announce = createDeliveryAnnouncer({
      events,
      presence: {
        claimed: async (driverId) => void steps.push(`claimed ${driverId}`),
        released: async (row) => void steps.push(`released ${row.id} ${row.status}`),
      },
    });
    return { announce, steps };
  }

  it('when a delivery is assigned, then the driver push goes first, then the driver is BUSY in Redis, then dispatchers hear of it', async () => {
    const { announce, steps } = announcerWith();
    await announce({ delivery: deliveryRow('ASSIGNED', DRIVER), previousStatus: 'PENDING' });
    expect(steps).toEqual([`push ${DRIVER}`, `claimed ${DRIVER}`, 'updated PENDING->ASSIGNED']);
  });

  it('when a transition frees a driver, then dispatchers hear of the delivery before the driver new status', async () => {
    const { announce, steps } = announcerWith();
    await announce({ delivery: deliveryRow('DELIVERED', DRIVER), previousStatus: 'PICKED_UP', released: { id: DRIVER, status: 'AVAILABLE', lat: 1, lng: 2 } });
    expect(steps).toEqual(['updated PICKED_UP->DELIVERED', `released ${DRIVER} AVAILABLE`]);
  });
});

describe('deliveries service', () => {
  function serviceWith(transition: DeliveriesStore['transition']) {
    const events = new HubEvents();
    const cancelled: unknown[] = [];
    events.on('delivery:cancelled', (e) => cancelled.push(e));
    const announced: DeliveryChange[] = [];
    const service = createDeliveriesService({
      store: {
        transition,
        findBySellerOrderId: async (id: string) => (id === 'so-1' ? deliveryRow('ASSIGNED', DRIVER) : null),
      } as unknown as DeliveriesStore,
      pushes: { forDelivery: async () => [] },
      announce: async (change) => void announced.push(change),
      events,
      logger,
    });
    return { service, announced, cancelled };
  }
  const changed = (to: DeliveryStatus, from: DeliveryStatus, didChange = true): TransitionResult => ({
    delivery: deliveryRow(to, DRIVER),
    previousStatus: from,
    changed: didChange,
    released: null,
  });

  it('when the store refuses a driver update, then its reason becomes the error code and nothing is announced', async () => {
    for (const error of ['NOT_FOUND', 'FORBIDDEN', 'INVALID_TRANSITION'] as const) {
      const { service, announced } = serviceWith(async () => ({ error, status: 'DELIVERED' }));
      await expect(service.updateFromDriver(DRIVER, { deliveryId: DELIVERY, status: 'PICKED_UP' })).rejects.toMatchObject({ code: error });
      expect(announced).toEqual([]);
    }
  });

  it('when a driver reports progress, then only the driver own delivery may move, and only a real change is announced', async () => {
    const asked: unknown[] = [];
    let again = false;
    const { service, announced } = serviceWith(async (input) => {
      asked.push(input);
      return changed('PICKED_UP', again ? 'PICKED_UP' : 'ASSIGNED', !again);
    });
    expect(await service.updateFromDriver(DRIVER, { deliveryId: DELIVERY, status: 'PICKED_UP' })).toMatchObject({ status: 'PICKED_UP' });
    again = true;
    await service.updateFromDriver(DRIVER, { deliveryId: DELIVERY, status: 'PICKED_UP' });
    expect(asked[0]).toMatchObject({ deliveryId: DELIVERY, to: 'PICKED_UP', allowedFrom: ['ASSIGNED'], actor: `driver:${DRIVER}`, driverId: DRIVER });
    expect(announced).toHaveLength(1);
  });

  it('when an assigned delivery is cancelled, then its driver is told with the reason and the change announced; a repeat changes nothing', async () => {
    let first = true;
    const { service, announced, cancelled } = serviceWith(async () => {
      const result = changed('CANCELLED', first ? 'ASSIGNED' : 'CANCELLED', first);
      first = false;
      return result;
    });
    expect(await service.cancel('so-1', 'out of stock')).toMatchObject({ idempotent: false, delivery: { status: 'CANCELLED' } });
    expect(await service.cancel('so-1', undefined)).toMatchObject({ idempotent: true });
    expect(cancelled).toEqual([{ driverId: DRIVER, deliveryId: DELIVERY, reason: 'out of stock' }]);
    expect(announced).toHaveLength(1);
    await expect(service.cancel('never-seen', undefined)).rejects.toMatchObject({ code: 'NOT_FOUND' });
  });
});
