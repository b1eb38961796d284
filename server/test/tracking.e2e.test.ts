import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEAD_TILES, hasChromium, launchChromium, recordAddedIds, screenshot, startTileServer } from './support/browser.js';
import { createTestDatabase, onDutyDriver, order, postWebhook, startTestHub, type TestDatabase, type TestHub, testConfig } from './support/hub.js';
import { eventually } from './support/net.js';

if (!hasChromium) console.warn('tracking e2e tests skipped: /usr/bin/chromium is missing (apt-get install -y chromium)');

const READY = '/events/seller-order-ready';
const pathOf = (trackingUrl: string) => `/track/${new URL(trackingUrl).pathname.split('/').at(-1)}`;

/** What the page shows, read the way a test reads a page: from its elements. */
async function shown(page: Page) {
  return page.evaluate(() => {
    const driver = document.getElementById('driver') as HTMLElement;
    return {
      status: (document.getElementById('status') as HTMLElement).dataset.status,
      statusText: document.getElementById('status')!.textContent,
      driverText: driver.hidden ? null : driver.textContent,
      lat: driver.dataset.lat ? Number(driver.dataset.lat) : null,
      lng: driver.dataset.lng ? Number(driver.dataset.lng) : null,
      current: document.querySelector('#steps li.current')?.getAttribute('data-step') ?? null,
      done: Array.from(document.querySelectorAll('#steps li.done')).map((li) => li.getAttribute('data-step')),
      mapShown: (window as any).hubTrack.mapShown as boolean,
      marker: (window as any).hubTrack.markers.driver ? (window as any).hubTrack.markers.driver.getLatLng() : null,
      polls: (window as any).hubTrack.polls as number,
    };
  });
}

describe('customer tracking page (headless Chromium)', () => {
  let db: TestDatabase;
  let hub: TestHub;
  let browser: Browser | undefined;
  let tiles: Awaited<ReturnType<typeof startTileServer>> | undefined;

  beforeAll(async () => {
    if (!hasChromium) return;
    db = await createTestDatabase();
    tiles = await startTileServer();
    hub = await startTestHub(testConfig(db, { MAP_TILE_URL: tiles.tileUrl }));
    browser = await launchChromium();
  });
  afterAll(async () => {
    await browser?.close();
    await hub?.stop();
    await tiles?.close();
    await db?.drop();
  });

  it.skipIf(!hasChromium)('when a customer opens the link, then the page shows the driver moving, and after the delivery only its final status', async () => {
    const shop = { lat: 41.3874, lng: 2.1686, address: 'Forn Sant Pau, Carrer de Sant Pau 12' };
    const home = { lat: 41.3954, lng: 2.1616, address: 'Carrer de Verdi 40, 3r 2a' };
    const driver = await onDutyDriver(hub, { lat: shop.lat - 0.002, lng: shop.lng + 0.001 }, 'Jordi Puig');
    const placed = await postWebhook(hub, READY, { ...order({ pickup: shop, dropoff: home }), pickup: shop, dropoff: home, customer: { name: 'Marta', phone: '+34 600 000 000' } });
    expect(placed.body).toMatchObject({ status: 'ASSIGNED', driverId: driver.id });
    const { deliveryId } = placed.body;

    const page = await browser!.newPage({ viewport: { width: 390, height: 844 } });
    const errors: string[] = [];
    page.on('pageerror', (err) => errors.push(err.message));
    try {
      const res = await page.goto(`${hub.url}${pathOf(placed.body.trackingUrl)}`);
      expect(res?.status()).toBe(200);
      const first = await shown(page);
      expect(first).toMatchObject({ status: 'ASSIGNED', current: 'ASSIGNED', done: ['PENDING'] });
      expect(first.statusText).toContain('Jordi is on the way to pick up');
      expect(first.driverText).toMatch(/^Driver: Jordi · [\d.]+ (m|km) away/);
      expect(first.driverText).not.toContain('Puig');
      // The map appears once a tile arrives, with the driver where the hub last saw it.
      await eventually(async () => (await shown(page)).mapShown, 'the map shown after a tile loaded');
      expect(tiles!.requests()).toBeGreaterThan(0);
      expect((await shown(page)).marker).toMatchObject({ lat: shop.lat - 0.002, lng: shop.lng + 0.001 });

      // The driver drives to the shop: the marker follows (the page polls every 3 s).
      for (const step of [1, 2]) {
        const fix = { lat: shop.lat - 0.002 + step * 0.0008, lng: shop.lng + 0.001 - step * 0.0004 };
        await driver.emitAck('location', fix);
        await eventually(async () => {
          const now = await shown(page);
          return now.lat === fix.lat && now.marker?.lat === fix.lat && now.marker?.lng === fix.lng;
        }, `the marker at step ${step}`, 15_000, 200);
      }
      expect((await driver.emitAck('delivery:update', { deliveryId, status: 'PICKED_UP' })).ok).toBe(true);
      await driver.emitAck('location', { lat: 41.3915, lng: 2.1652 });
      await eventually(async () => {
        const now = await shown(page);
        return now.status === 'PICKED_UP' && now.marker?.lat === 41.3915;
      }, 'PICKED_UP with the driver on the way', 15_000, 200);
      const onTheWay = await shown(page);
      expect(onTheWay).toMatchObject({ current: 'PICKED_UP', done: ['PENDING', 'ASSIGNED'] });
      expect(onTheWay.statusText).toContain('Jordi has your order');
      await screenshot(page, 'tracking-on-the-way');

      expect((await driver.emitAck('delivery:update', { deliveryId, status: 'DELIVERED' })).ok).toBe(true);
      await eventually(async () => (await shown(page)).status === 'DELIVERED', 'DELIVERED', 15_000, 200);
      const final = await shown(page);
      expect(final).toMatchObject({ driverText: null, lat: null, marker: null, current: 'DELIVERED', done: ['PENDING', 'ASSIGNED', 'PICKED_UP'] });
      expect(final.statusText).toBe('Delivered. Enjoy!');
      await screenshot(page, 'tracking-delivered');
      // The page stops asking once the delivery ended.
      await new Promise((r) => setTimeout(r, 4000));
      expect((await shown(page)).polls).toBe(final.polls);
      expect(await page.content()).not.toContain('+34');
      expect(errors).toEqual([]);
    } finally {
      driver.close();
      await page.close();
    }
  });

  it.skipIf(!hasChromium)('when the link is wrong, then the customer gets a plain not-found page', async () => {
    const page = await browser!.newPage({ viewport: { width: 390, height: 600 } });
    try {
      const res = await page.goto(`${hub.url}/track/${'N'.repeat(43)}`);
      expect(res?.status()).toBe(404);
      expect(await page.locator('h1').textContent()).toBe('Tracking link not found');
      expect(await page.locator('script').count()).toBe(0);
      await screenshot(page, 'tracking-not-found');
    } finally {
      await page.close();
    }
  });
});

describe('customer tracking page without tiles, with hostile text, and expired (headless Chromium)', () => {
  let db: TestDatabase;
  let hub: TestHub;
  let browser: Browser | undefined;
  const NAME = '<img src=x id="pwn-name" onerror="window.pwned=1">Mallory';
  const CODE = '<svg id="pwn-code" onload="window.pwned=2"></svg></script><script id="pwn-script">window.pwned=5</script>';
  const PICKUP = '<a id="pwn-pickup" href="javascript:window.pwned=3">shop</a>';
  const DROPOFF = '<iframe id="pwn-dropoff" srcdoc="x"></iframe>\u2028home';
  const HOSTILE_IDS = ['pwn-name', 'pwn-code', 'pwn-script', 'pwn-pickup', 'pwn-dropoff'];

  beforeAll(async () => {
    if (!hasChromium) return;
    db = await createTestDatabase();
    // 0.001 h = 3.6 s after the delivery ended, its link stops working.
    hub = await startTestHub(testConfig(db, { MAP_TILE_URL: DEAD_TILES, TRACKING_TTL_HOURS: '0.001' }));
    browser = await launchChromium();
  });
  afterAll(async () => {
    await browser?.close();
    await hub?.stop();
    await db?.drop();
  });

  it.skipIf(!hasChromium)('when names, codes and addresses carry markup and no tile loads, then the page shows them as text, still says everything, and the expired link is a plain 404', async () => {
    const at = { lat: 40.4168, lng: -3.7038 };
    const driver = await onDutyDriver(hub, at, NAME);
    const o = { ...order({ pickup: at }), orderCode: CODE, pickup: { ...at, address: PICKUP }, dropoff: { lat: at.lat + 0.01, lng: at.lng, address: DROPOFF } };
    const placed = await postWebhook(hub, READY, o);
    expect(placed.body).toMatchObject({ status: 'ASSIGNED', driverId: driver.id });
    const page = await browser!.newPage({ viewport: { width: 390, height: 700 } });
    const errors: string[] = [];
    page.on('pageerror', (err) => errors.push(err.message));
    try {
      await recordAddedIds(page);
      await page.goto(`${hub.url}${pathOf(placed.body.trackingUrl)}`);
      await eventually(async () => (await shown(page)).driverText !== null, 'the driver line');
      const view = await shown(page);
      // The first word of the name, as text.
      expect(view.driverText).toContain('Driver: <img ');
      expect(view.driverText).toMatch(/(m|km) away/);
      expect(await page.locator('#order-code').textContent()).toBe(CODE);
      expect(await page.locator('#pickup').textContent()).toBe(PICKUP);
      expect(await page.locator('#dropoff').textContent()).toBe(DROPOFF);
      expect(await page.title()).toBe(`Delivery ${CODE}`);
      // No tile: the map stays out of the way, the text says it all.
      await new Promise((r) => setTimeout(r, 1000));
      expect(view.mapShown).toBe(false);
      expect(await page.locator('#map').evaluate((el) => el.classList.contains('waiting'))).toBe(true);
      const found = await page.evaluate((ids) => ids.filter((id) => document.getElementById(id) !== null), HOSTILE_IDS);
      expect(found).toEqual([]);
      const added: string[] = await page.evaluate(() => (window as any).addedIds);
      expect(added.filter((id) => HOSTILE_IDS.includes(id))).toEqual([]);
      expect(await page.evaluate(() => (window as any).pwned)).toBeUndefined();
      expect(errors).toEqual([]);
      await screenshot(page, 'tracking-no-tiles-hostile');

      // Delivered, then TRACKING_TTL_HOURS later the same link is a plain 404 page.
      expect((await driver.emitAck('delivery:update', { deliveryId: placed.body.deliveryId, status: 'PICKED_UP' })).ok).toBe(true);
      expect((await driver.emitAck('delivery:update', { deliveryId: placed.body.deliveryId, status: 'DELIVERED' })).ok).toBe(true);
      await eventually(async () => (await shown(page)).status === 'DELIVERED', 'DELIVERED', 15_000, 200);
      const expired = await browser!.newPage();
      try {
        await eventually(async () => (await expired.goto(`${hub.url}${pathOf(placed.body.trackingUrl)}`))?.status() === 404, 'the link to expire', 15_000, 500);
        expect(await expired.locator('h1').textContent()).toBe('Tracking link not found');
      } finally {
        await expired.close();
      }
    } finally {
      driver.close();
      await page.close();
    }
  });
});
