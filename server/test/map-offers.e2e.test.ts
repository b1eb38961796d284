import type { Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { OfferPush } from '#shared/schemas.js';
import { startHub } from '../src/main.js';
import { createLogger } from '../src/platform/logger.js';
import { createMapRoutes } from '../src/realtime/map.routes.js';
import { DEAD_TILES, hasChromium, launchChromium, screenshot } from './support/browser.js';
import { api, createTestDatabase, onDutyDriver, order, postWebhook, type TestDatabase, type TestHub, testConfig } from './support/hub.js';
import { eventually } from './support/net.js';

/** The dispatcher map against a hub in offer mode: offered deliveries and their countdown. */
describe.skipIf(!hasChromium)('dispatcher map in offer mode (headless Chromium)', () => {
  let db: TestDatabase;
  let hub: TestHub;
  let browser: Browser | undefined;
  let dispatcherToken: string;

  beforeAll(async () => {
    db = await createTestDatabase();
    const config = testConfig(db, { MAP_TILE_URL: DEAD_TILES, DISPATCH_MODE: 'offer', OFFER_TIMEOUT_SECONDS: '30' });
    const started = await startHub(config, createLogger({ level: config.LOG_LEVEL, nodeId: config.NODE_ID }), {
      publicRoutes: [createMapRoutes({ tileUrl: config.MAP_TILE_URL })],
    });
    hub = { ...started, url: `http://127.0.0.1:${started.port}` };
    dispatcherToken = (await api(hub, 'POST', '/admin/tokens', { role: 'dispatcher', subject: 'map-offers' })).body.token;
    browser = await launchChromium();
  });
  afterAll(async () => {
    await browser?.close();
    await hub?.stop();
    await db?.drop();
  });

  it('when a delivery is offered, then the list shows it OFFERED with a countdown that runs, until the driver accepts', async () => {
    const place = { lat: 48.8566, lng: 2.3522 };
    const driver = await onDutyDriver(hub, { lat: place.lat + 0.001, lng: place.lng }, 'Olga Offered');
    const offers: OfferPush[] = [];
    driver.app.on('offer', (o) => void offers.push(o));
    const page = await browser!.newPage();
    const errors: string[] = [];
    page.on('pageerror', (err) => errors.push(err.message));
    try {
      await page.goto(`${hub.url}/map#token=${encodeURIComponent(dispatcherToken)}`);
      await eventually(() => page.evaluate(() => (window as any).hubMap?.connected === true), 'the page to connect');
      const res = await postWebhook(hub, '/events/seller-order-ready', order({ pickup: place }));
      expect(res.body.status).toBe('OFFERED');
      const item = page.locator(`#deliveries li[data-delivery-id="${res.body.deliveryId}"]`);
      await eventually(async () => (await item.getAttribute('data-status')) === 'OFFERED', 'listed as OFFERED');
      const left = async () => Number(((await item.locator('.offer-countdown').textContent()) ?? '').match(/^(\d+) s left$/)?.[1]);
      const first = await left();
      expect(first).toBeGreaterThan(20);
      expect(first).toBeLessThanOrEqual(30);
      await eventually(async () => (await left()) <= first - 2, 'the countdown running', 6000, 250);
      await screenshot(page, 'map-offered-countdown');
      await eventually(() => offers.length === 1, 'the offer at the driver');
      await driver.app.acceptOffer(res.body.deliveryId);
      await eventually(async () => (await item.getAttribute('data-status')) === 'ASSIGNED', 'listed as ASSIGNED');
      expect(await item.locator('.offer-countdown').count()).toBe(0);
      expect(errors).toEqual([]);
    } finally {
      await page.close();
      driver.close();
    }
  });
});
