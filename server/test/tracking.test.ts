import { randomBytes } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, parseConfig } from '../src/platform/config.js';
import { TRACKING_TOKEN } from '../src/tracking/tracking-links.js';
import { createTrackingService, firstNameOf, toTrackingState } from '../src/tracking/tracking.service.js';
import type { TrackedDeliveryRow } from '../src/tracking/tracking.store.js';
import { logSink } from './support/log-sink.js';
import {
  api,
  createTestDatabase,
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
const CANCELLED = '/events/seller-order-cancelled';
const generate = () => randomBytes(32).toString('base64url');

const tokenOf = (trackingUrl: string) => new URL(trackingUrl).pathname.split('/').at(-1) as string;
/** `trackingUrl` as a path on the hub under test: PUBLIC_URL may name a proxy in front of it. */
const pathOf = (trackingUrl: string) => `/track/${tokenOf(trackingUrl)}`;

async function get(hub: TestHub, path: string): Promise<{ status: number; body: any; text: string; headers: Headers }> {
  const res = await fetch(`${hub.url}${path}`);
  const text = await res.text();
  const json = res.headers.get('content-type')?.includes('json');
  return { status: res.status, body: json ? JSON.parse(text) : null, text, headers: res.headers };
}

function row(overrides: Partial<TrackedDeliveryRow> = {}): TrackedDeliveryRow {
  return {
    status: 'ASSIGNED',
    orderCode: 'ORD-1',
    pickupLat: 52.5,
    pickupLng: 13.4,
    pickupAddress: 'Shop, Main St 1',
    dropoffLat: 52.51,
    dropoffLng: 13.41,
    dropoffAddress: null,
    updatedAt: new Date('2030-01-01T10:00:00Z'),
    driverName: '  Ada   Lovelace ',
    driverLat: 52.505,
    driverLng: 13.405,
    driverHeading: 90,
    driverPositionAt: new Date('2030-01-01T10:00:05Z'),
    ...overrides,
  };
}

describe('tracking configuration and rules (no hub)', () => {
  it('when PUBLIC_URL and TRACKING_TTL_HOURS are set, then the URL loses its trailing slash, hours may be fractions, and bad values are refused', () => {
    expect(parseConfig({ PUBLIC_URL: 'https://hub.example.com/dispatch/' }, generate).PUBLIC_URL).toBe('https://hub.example.com/dispatch');
    expect(parseConfig({}, generate).PUBLIC_URL).toBeUndefined();
    expect(parseConfig({}, generate).TRACKING_TTL_HOURS).toBe(24);
    expect(parseConfig({ TRACKING_TTL_HOURS: '0.5' }, generate).TRACKING_TTL_HOURS).toBe(0.5);
    for (const env of [{ PUBLIC_URL: 'ftp://hub.example.com' }, { PUBLIC_URL: 'https://hub.example.com/?x=1' }, { PUBLIC_URL: 'not a url' }, { TRACKING_TTL_HOURS: '0' }, { TRACKING_TTL_HOURS: 'soon' }]) {
      expect(() => parseConfig(env, generate), JSON.stringify(env)).toThrow(ConfigError);
    }
  });

  it('when a state is built, then the driver shows only while ASSIGNED or PICKED_UP, by first name, and an ended delivery expires after the TTL', () => {
    const now = new Date('2030-01-01T10:01:00Z').getTime();
    expect(toTrackingState(row(), now, 1)).toEqual({
      status: 'ASSIGNED',
      orderCode: 'ORD-1',
      driver: { firstName: 'Ada', lat: 52.505, lng: 13.405, heading: 90, ts: new Date('2030-01-01T10:00:05Z').getTime() },
      pickup: { lat: 52.5, lng: 13.4, address: 'Shop, Main St 1' },
      dropoff: { lat: 52.51, lng: 13.41 },
      updatedAt: '2030-01-01T10:00:00.000Z',
    });
    expect(toTrackingState(row({ status: 'PICKED_UP' }), now, 1)?.driver?.firstName).toBe('Ada');
    for (const status of ['PENDING', 'DELIVERED', 'FAILED', 'CANCELLED'] as const) expect(toTrackingState(row({ status }), now, 1)?.driver, status).toBeNull();
    expect(toTrackingState(row({ driverLat: null, driverLng: null }), now, 1)?.driver).toEqual({ firstName: 'Ada', lat: null, lng: null, heading: null, ts: null });
    // Ended an hour ago with a one-hour TTL: still there at the edge, gone just after.
    const ended = row({ status: 'DELIVERED', updatedAt: new Date(now - 3_600_000) });
    expect(toTrackingState(ended, now, 1)).not.toBeNull();
    expect(toTrackingState(ended, now + 1, 1)).toBeNull();
    // An active delivery never expires, however old its last change.
    expect(toTrackingState(row({ updatedAt: new Date(0) }), now, 1)).not.toBeNull();
    expect(firstNameOf('Zoë')).toBe('Zoë');
    expect(firstNameOf('x'.repeat(80))).toHaveLength(50);
  });

  it('when many viewers read one link at once, then the store is read once per cache period, and a failed read is not kept', async () => {
    let reads = 0;
    let fail = false;
    let clock = 0;
    const service = createTrackingService({
      store: {
        byToken: async () => {
          reads += 1;
          if (fail) throw new Error('database away');
          return row();
        },
      },
      ttlHours: 1,
      cacheMs: 1000,
      maxCached: 3,
      now: () => clock,
    });
    const states = await Promise.all(Array.from({ length: 50 }, () => service.state('t1')));
    expect(reads).toBe(1);
    expect(states.every((s) => s?.driver?.firstName === 'Ada')).toBe(true);
    clock = 999;
    await service.state('t1');
    expect(reads).toBe(1);
    clock = 1000;
    await service.state('t1');
    expect(reads).toBe(2);
    fail = true;
    clock = 5000;
    await expect(service.state('t1')).rejects.toThrow('database away');
    fail = false;
    await service.state('t1');
    expect(reads).toBe(4);
    // Bounded: beyond maxCached tokens the oldest reads are forgotten.
    for (const t of ['a', 'b', 'c', 'd']) await service.state(t);
    reads = 0;
    await service.state('t1');
    expect(reads).toBe(1);
  });
});

describe('tracking links through the hub', () => {
  let db: TestDatabase;
  let hub: TestHub;
  let receiver: Server;
  const received: any[] = [];
  const sink = logSink();

  beforeAll(async () => {
    receiver = createServer((req, res) => {
      let body = '';
      req.on('data', (c) => (body += c));
      req.on('end', () => {
        received.push(JSON.parse(body));
        res.writeHead(204).end();
      });
    });
    await new Promise<void>((resolve) => receiver.listen(0, '127.0.0.1', resolve));
    const port = (receiver.address() as { port: number }).port;
    db = await createTestDatabase();
    hub = await startTestHub(
      testConfig(db, {
        PUBLIC_URL: 'https://track.example.test/hub/',
        VENDURE_WEBHOOK_URL: `http://127.0.0.1:${port}/dispatch-events`,
        VENDURE_WEBHOOK_SECRET: `whsec_${Buffer.from('tracking-receiver').toString('base64')}`,
        OUTBOX_POLL_MS: '50',
      }),
      // The test polls far faster than a page; the budget has its own test below.
      { sink, edge: { rateLimits: { trackingRead: { points: 100_000, seconds: 60 } } } },
    );
  });
  afterAll(async () => {
    await hub?.stop();
    receiver?.close();
    await db?.drop();
  });

  it('when Vendure posts orders, then every answer carries the delivery\'s own unguessable link under PUBLIC_URL, the same on a retry', async () => {
    const pending = order({ pickup: { lat: -41.29, lng: 174.78 } });
    const first = await postWebhook(hub, READY, pending);
    expect(first.status).toBe(202);
    expect(first.body.trackingUrl).toMatch(/^https:\/\/track\.example\.test\/hub\/track\/[A-Za-z0-9_-]{43}$/);
    const token = tokenOf(first.body.trackingUrl);
    expect(token).toMatch(TRACKING_TOKEN);
    // 43 base64url characters: 258 bits of text, 244 of them random.
    expect(Buffer.from(token, 'base64url')).toHaveLength(32);
    expect((await postWebhook(hub, READY, pending)).body).toMatchObject({ idempotent: true, trackingUrl: first.body.trackingUrl });
    const other = await postWebhook(hub, READY, order({ pickup: { lat: -41.29, lng: 174.78 } }));
    expect(tokenOf(other.body.trackingUrl)).not.toBe(token);
    const cancelled = await postWebhook(hub, CANCELLED, { sellerOrderId: pending.sellerOrderId });
    expect(cancelled.body).toMatchObject({ status: 'CANCELLED', trackingUrl: first.body.trackingUrl });
    await eventually(async () => (await get(hub, `${pathOf(first.body.trackingUrl)}/state`)).body.status === 'CANCELLED', 'the cancel shown');
  });

  it('when a delivery goes through its life, then the state shows the driver (first name, position) only while ASSIGNED or PICKED_UP and never a phone, a name in full, or another id', async () => {
    const at = { lat: 59.33, lng: 18.06 };
    const driver = await onDutyDriver(hub, at, 'Ada Lovelace-Byron');
    const o = {
      ...order({ pickup: at, dropoff: { lat: at.lat + 0.02, lng: at.lng } }),
      customer: { name: 'Carla Customer', phone: '+46 70 123 45 67' },
      notes: 'ring twice, code 4711',
    };
    const placed = await postWebhook(hub, READY, o);
    expect(placed.body).toMatchObject({ status: 'ASSIGNED', driverId: driver.id });
    const statePath = `${pathOf(placed.body.trackingUrl)}/state`;

    const assigned = await eventually(async () => {
      const s = (await get(hub, statePath)).body;
      return s.driver?.lat !== null && s.driver ? s : null;
    }, 'the driver with a position');
    expect(Object.keys(assigned).sort()).toEqual(['driver', 'dropoff', 'orderCode', 'pickup', 'status', 'updatedAt']);
    expect(Object.keys(assigned.driver).sort()).toEqual(['firstName', 'heading', 'lat', 'lng', 'ts']);
    expect(assigned).toMatchObject({ status: 'ASSIGNED', orderCode: o.orderCode, driver: { firstName: 'Ada', lat: at.lat, lng: at.lng } });

    const moved = { lat: at.lat + 0.005, lng: at.lng + 0.001 };
    await driver.emitAck('location', moved);
    await eventually(async () => (await get(hub, statePath)).body.driver?.lat === moved.lat, 'the moved position');
    expect((await driver.emitAck('delivery:update', { deliveryId: placed.body.deliveryId, status: 'PICKED_UP' })).ok).toBe(true);
    await eventually(async () => (await get(hub, statePath)).body.status === 'PICKED_UP', 'PICKED_UP');
    const pickedUp = await get(hub, statePath);
    expect(pickedUp.body.driver).toMatchObject({ firstName: 'Ada', lat: moved.lat });

    expect((await driver.emitAck('delivery:update', { deliveryId: placed.body.deliveryId, status: 'DELIVERED' })).ok).toBe(true);
    const delivered = (await eventually(async () => {
      const s = await get(hub, statePath);
      return s.body.status === 'DELIVERED' ? s : null;
    }, 'DELIVERED')) as Awaited<ReturnType<typeof get>>;
    expect(delivered.body.driver).toBeNull();

    for (const text of [assigned, pickedUp.body, delivered.body].map((s) => JSON.stringify(s))) {
      for (const secret of ['+46', '4711', 'Carla', 'Lovelace', o.sellerOrderId, placed.body.deliveryId, driver.id]) expect(text).not.toContain(secret);
    }
    const page = await get(hub, pathOf(placed.body.trackingUrl));
    expect(page.status).toBe(200);
    for (const secret of ['+46', '4711', 'Carla', 'Lovelace', driver.id]) expect(page.text).not.toContain(secret);
    expect(page.headers.get('referrer-policy')).toBe('no-referrer');
    expect(page.headers.get('cache-control')).toBe('no-store');
    expect(page.headers.get('content-security-policy')).toContain("script-src 'self'");
    driver.close();

    // Vendure hears the same link with every status event of the delivery.
    await eventually(() => received.filter((e) => e.deliveryId === placed.body.deliveryId).length >= 3, 'three status events at the receiver', 20_000);
    const events = received.filter((e) => e.deliveryId === placed.body.deliveryId);
    expect(events.map((e) => e.type)).toEqual(['delivery.assigned', 'delivery.picked_up', 'delivery.delivered']);
    for (const e of events) expect(e.data.trackingUrl).toBe(placed.body.trackingUrl);
  });

  it('when a link is wrong, then page and state answer a plain 404, and nothing logged carries a token', async () => {
    const placed = await postWebhook(hub, READY, order({ pickup: { lat: 35.68, lng: 139.69 } }));
    const token = tokenOf(placed.body.trackingUrl);
    for (const wrong of [`${token.slice(0, -1)}${token.endsWith('A') ? 'B' : 'A'}`, 'short', `${token}x`, '%3Cscript%3E']) {
      const page = await get(hub, `/track/${wrong}`);
      expect(page.status, wrong).toBe(404);
      expect(page.headers.get('content-type')).toContain('text/html');
      expect(page.text).toContain('Tracking link not found');
      expect(page.text).not.toContain('<script');
      const state = await get(hub, `/track/${wrong}/state`);
      expect(state.status).toBe(404);
      expect(state.body).toEqual({ error: { code: 'NOT_FOUND', message: 'no such tracking link' } });
    }
    expect(sink.text()).toContain('tracking request refused');
    expect(sink.text()).not.toContain(token.slice(0, -1));
  });
});

describe('tracking links: expiry, per-token budget, guessing', () => {
  let db: TestDatabase;

  beforeAll(async () => {
    db = await createTestDatabase();
  });
  afterAll(async () => {
    await db?.drop();
  });

  it('when TRACKING_TTL_HOURS has passed since the delivery ended, then its link answers exactly like a wrong one', async () => {
    // 0.0005 h = 1.8 s.
    const hub = await startTestHub(testConfig(db, { TRACKING_TTL_HOURS: '0.0005' }));
    try {
      const placed = await postWebhook(hub, READY, order({ pickup: { lat: 1.35, lng: 103.82 } }));
      const path = pathOf(placed.body.trackingUrl);
      expect((await get(hub, `${path}/state`)).status).toBe(200);
      await new Promise((r) => setTimeout(r, 2500));
      expect((await get(hub, `${path}/state`)).status, 'an open delivery never expires').toBe(200);
      await postWebhook(hub, CANCELLED, { sellerOrderId: (await api(hub, 'GET', `/admin/deliveries/${placed.body.deliveryId}`)).body.sellerOrderId });
      // Reads of a link are shared for a second: the change shows within one.
      await eventually(async () => (await get(hub, `${path}/state`)).body.status === 'CANCELLED', 'the cancel shown');
      await eventually(async () => (await get(hub, `${path}/state`)).status === 404, 'the link to expire', 10_000, 200);
      const expired = await get(hub, path);
      const wrong = await get(hub, `/track/${'Q'.repeat(43)}`);
      expect(expired.status).toBe(404);
      expect(expired.text).toBe(wrong.text);
    } finally {
      await hub.stop();
    }
  });

  it('when one link is read past its budget, then it gets 429 with Retry-After while other links still answer', async () => {
    const sink = logSink();
    const hub = await startTestHub(testConfig(db), { sink, edge: { rateLimits: { trackingRead: { points: 5, seconds: 60 } } } });
    try {
      const a = pathOf((await postWebhook(hub, READY, order({ pickup: { lat: 1.3, lng: 103.8 } }))).body.trackingUrl);
      const b = pathOf((await postWebhook(hub, READY, order({ pickup: { lat: 1.3, lng: 103.8 } }))).body.trackingUrl);
      expect((await get(hub, a)).status).toBe(200);
      for (let i = 0; i < 4; i++) expect((await get(hub, `${a}/state`)).status).toBe(200);
      const limited = await get(hub, `${a}/state`);
      expect(limited.status).toBe(429);
      expect(limited.body.error.code).toBe('RATE_LIMITED');
      expect(Number(limited.headers.get('retry-after'))).toBeGreaterThan(0);
      const page = await get(hub, a);
      expect(page.status).toBe(429);
      expect(page.headers.get('content-type')).toContain('text/html');
      expect((await get(hub, `${b}/state`)).status).toBe(200);
      expect(sink.text()).not.toContain(a.split('/')[2]);
    } finally {
      await hub.stop();
    }
  });

  it('when an address keeps guessing tokens, then it is refused before its guesses are looked at, valid ones included', async () => {
    const hub = await startTestHub(testConfig(db, { AUTH_FAILURE_LIMIT: '5' }));
    try {
      const valid = pathOf((await postWebhook(hub, READY, order({ pickup: { lat: 1.3, lng: 103.8 } }))).body.trackingUrl);
      for (let i = 0; i < 5; i++) expect((await get(hub, `/track/${randomBytes(32).toString('base64url').slice(0, 43)}/state`)).status).toBe(404);
      expect((await get(hub, `${valid}/state`)).status).toBe(429);
      expect((await get(hub, valid)).status).toBe(429);
    } finally {
      await hub.stop();
    }
  });
});
