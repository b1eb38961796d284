import { randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import { type Browser, chromium, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startHub } from '../src/main.js';
import { createLogger } from '../src/platform/logger.js';
import { createMapRoutes } from '../src/realtime/map.routes.js';
import {
  api,
  createTestDatabase,
  type DriverClient,
  onDutyDriver,
  order,
  postWebhook,
  type TestDatabase,
  type TestHub,
  testConfig,
} from './support/hub.js';
import { eventually } from './support/net.js';
import { recordAddedIds } from './support/browser.js';

const CHROMIUM = '/usr/bin/chromium';
const hasChromium = existsSync(CHROMIUM);
if (!hasChromium) console.warn(`map e2e tests skipped: ${CHROMIUM} is missing (apt-get install -y chromium)`);
/** Nothing listens on port 9 (discard): every tile request fails, which the page must shrug off. */
const DEAD_TILES = 'http://127.0.0.1:9/{z}/{x}/{y}.png';
/** Short enough to watch a marker go stale within a test. */
const STALE_AFTER_MS = 2000;

type Driver = DriverClient & { id: string; token: string };
type DriverRow = { id: string; lat: number | null; lng: number | null; status: string; stale: boolean };

async function startMapHub(db: TestDatabase): Promise<TestHub> {
  const config = testConfig(db, { MAP_TILE_URL: DEAD_TILES });
  const logger = createLogger({ level: config.LOG_LEVEL, nodeId: config.NODE_ID });
  const hub = await startHub(config, logger, {
    publicRoutes: [createMapRoutes({ tileUrl: config.MAP_TILE_URL, staleAfterMs: STALE_AFTER_MS, staleCheckMs: 250 })],
  });
  return { ...hub, url: `http://127.0.0.1:${hub.port}` };
}

function driverRows(page: Page): Promise<DriverRow[]> {
  return page.$$eval('#drivers li', (items) =>
    items.map((li) => {
      const el = li as HTMLElement;
      return {
        id: el.dataset.driverId!,
        lat: el.dataset.lat ? Number(el.dataset.lat) : null,
        lng: el.dataset.lng ? Number(el.dataset.lng) : null,
        status: el.dataset.status!,
        stale: el.dataset.stale === 'true',
      };
    }),
  );
}

async function driverRow(page: Page, id: string): Promise<DriverRow | undefined> {
  return (await driverRows(page)).find((row) => row.id === id);
}

const close = (a: number | null, b: number) => a !== null && Math.abs(a - b) < 1e-9;

describe('dispatcher map page (routes)', () => {
  let db: TestDatabase;
  let hub: TestHub;

  beforeAll(async () => {
    db = await createTestDatabase();
    hub = await startMapHub(db);
  });
  afterAll(async () => {
    await hub?.stop();
    await db?.drop();
  });

  it('when the page and its assets are requested, then each comes from the hub with its content type and no CDN is referenced', async () => {
    const expected: Record<string, string> = {
      '/map': 'text/html',
      '/map/app.js': 'text/javascript',
      '/map/vendor/leaflet.js': 'text/javascript',
      '/map/vendor/leaflet.css': 'text/css',
      '/map/vendor/socket.io.min.js': 'text/javascript',
      '/map/vendor/images/layers.png': 'image/png',
      '/map/config.json': 'application/json',
    };
    for (const [path, type] of Object.entries(expected)) {
      const res = await fetch(`${hub.url}${path}`);
      expect(res.status, path).toBe(200);
      expect(res.headers.get('content-type'), path).toContain(type);
      expect((await res.arrayBuffer()).byteLength, path).toBeGreaterThan(0);
    }
    const page = await fetch(`${hub.url}/map`);
    const html = await page.text();
    expect(html).not.toMatch(/(src|href)="https?:/);
    expect(page.headers.get('content-security-policy')).toContain("script-src 'self'");
    expect(page.headers.get('content-security-policy')).toContain('http://127.0.0.1:9');
    const config = await (await fetch(`${hub.url}/map/config.json`)).json();
    expect(config).toMatchObject({ tileUrl: DEAD_TILES, staleAfterMs: STALE_AFTER_MS });
    expect(Math.abs(config.serverTime - Date.now())).toBeLessThan(5000);
  });
});

describe('dispatcher map page (headless Chromium)', () => {
  let db: TestDatabase;
  let hub: TestHub;
  let browser: Browser | undefined;
  let dispatcherToken: string;
  const drivers: Driver[] = [];
  const centre = { lat: 52.52, lng: 13.405 };
  const startAt = (i: number) => ({ lat: centre.lat + i * 0.004, lng: centre.lng + i * 0.004 });

  beforeAll(async () => {
    if (!hasChromium) return;
    db = await createTestDatabase();
    hub = await startMapHub(db);
    dispatcherToken = (await api(hub, 'POST', '/admin/tokens', { role: 'dispatcher', subject: 'map-e2e' })).body.token;
    // On the map before the page opens, so the page's first view frames them.
    for (let i = 0; i < 3; i++) drivers.push(await onDutyDriver(hub, startAt(i), `Sim ${i}`));
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
  });
  afterAll(async () => {
    for (const d of drivers) d.close();
    await browser?.close();
    await hub?.stop();
    await db?.drop();
  });

  /** `beforeLoad` runs on the new page before it loads the map (to route its socket, say). */
  async function openMap(token: string, beforeLoad?: (page: Page) => Promise<void>): Promise<{ page: Page; errors: string[] }> {
    const page = await browser!.newPage();
    const errors: string[] = [];
    page.on('pageerror', (err) => errors.push(err.message));
    await beforeLoad?.(page);
    await page.goto(`${hub.url}/map#token=${encodeURIComponent(token)}`);
    return { page, errors };
  }

  /** An order whose pickup is next to the drivers: one of them is assigned. */
  async function orderNearCentre() {
    const o = order({ pickup: { lat: centre.lat + 0.0001, lng: centre.lng + 0.0001 }, dropoff: { lat: centre.lat + 0.01, lng: centre.lng } });
    const res = await postWebhook(hub, '/events/seller-order-ready', o);
    expect(res.status).toBe(200);
    return { o, deliveryId: res.body.deliveryId as string, driverId: res.body.driverId as string };
  }

  it.skipIf(!hasChromium)('when simulated drivers move, then their markers move on the page', async () => {
    const { page, errors } = await openMap(dispatcherToken);
    try {
      await eventually(() => page.evaluate(() => (window as any).hubMap?.connected === true), 'the page to connect');
      expect(page.url()).not.toContain('token='); // read from the fragment, then removed from the address bar

      const rows = await eventually(async () => {
        const all = await driverRows(page);
        return drivers.every((d, i) => all.some((r) => r.id === d.id && close(r.lat, startAt(i).lat) && r.status === 'AVAILABLE')) ? all : null;
      }, 'the three drivers on the page at their start positions');
      expect(rows).toHaveLength(3);

      // A few rounds of pings, like a driver app once a second (here faster).
      for (let step = 1; step <= 3; step++) {
        const targets = drivers.map((_, i) => ({ lat: startAt(i).lat + step * 0.0007, lng: startAt(i).lng - step * 0.0005, heading: 90, speed: 10 }));
        await Promise.all(drivers.map((d, i) => d.emitAck('location', targets[i])));
        await eventually(async () => {
          for (const [i, d] of drivers.entries()) {
            const row = await driverRow(page, d.id);
            if (!row || !close(row.lat, targets[i].lat) || !close(row.lng, targets[i].lng)) return false;
          }
          return true;
        }, `markers at step ${step}`);
      }

      // The Leaflet markers themselves moved, not just the test hook, and are coloured by status.
      const markers = await page.evaluate(() =>
        [...(window as any).hubMap.markers.entries()].map(([id, m]: [string, any]) => ({ id, ...m.getLatLng(), color: m.options.color })),
      );
      for (const [i, d] of drivers.entries()) {
        const marker = markers.find((m: any) => m.id === d.id);
        expect(marker.lat).toBeCloseTo(startAt(i).lat + 3 * 0.0007, 9);
        expect(marker.lng).toBeCloseTo(startAt(i).lng - 3 * 0.0005, 9);
        expect(marker.color).toBe('#1a9641');
      }
      expect(await page.locator('#tiles-note').isVisible()).toBe(true); // tiles failed, the map did not
      expect(errors).toEqual([]);
    } finally {
      await page.close();
    }
  });

  it.skipIf(!hasChromium)('when a webhook creates a delivery, then it is listed with its state, follows the lifecycle, and its driver turns BUSY', async () => {
    const { page, errors } = await openMap(dispatcherToken);
    try {
      await eventually(() => page.evaluate(() => (window as any).hubMap?.connected === true), 'the page to connect');
      const { o, deliveryId, driverId } = await orderNearCentre();
      const item = page.locator(`#deliveries li[data-delivery-id="${deliveryId}"]`);
      await eventually(async () => (await item.getAttribute('data-status')) === 'ASSIGNED', 'the delivery listed as ASSIGNED');
      expect(await item.textContent()).toContain(o.orderCode);
      await eventually(async () => (await driverRow(page, driverId))?.status === 'BUSY', 'the assigned driver shown BUSY');
      expect(await page.evaluate((id) => (window as any).hubMap.markers.get(id).options.color, driverId)).toBe('#f07c00');

      const driver = drivers.find((d) => d.id === driverId)!;
      expect((await driver.emitAck('delivery:update', { deliveryId, status: 'PICKED_UP' })).ok).toBe(true);
      await eventually(async () => (await item.getAttribute('data-status')) === 'PICKED_UP', 'the delivery shown PICKED_UP');
      expect((await driver.emitAck('delivery:update', { deliveryId, status: 'DELIVERED' })).ok).toBe(true);
      await eventually(async () => (await item.getAttribute('data-status')) === 'DELIVERED', 'the delivery shown DELIVERED');
      await eventually(async () => (await driverRow(page, driverId))?.status === 'AVAILABLE', 'the driver back to AVAILABLE');
      expect(errors).toEqual([]);
    } finally {
      await page.close();
    }
  });

  it.skipIf(!hasChromium)('when a move written before a claim arrives after it, then the map keeps the driver BUSY and takes only the position', async () => {
    // The page's socket goes through a pass-through proxy, so a `drivers:moved` batch can be
    // delivered late on purpose: a fix written while the driver was AVAILABLE, leaving the hub's
    // map tick after the claim's `driver:status` BUSY (the order two ticks can produce).
    let toPage: ((frame: string) => void) | null = null;
    const { page, errors } = await openMap(dispatcherToken, (p) =>
      p.routeWebSocket(/socket\.io/, (ws) => {
        const server = ws.connectToServer();
        toPage = (frame) => ws.send(frame);
        server.onMessage((message) => ws.send(message));
        ws.onMessage((message) => server.send(message));
      }),
    );
    try {
      await eventually(() => page.evaluate(() => (window as any).hubMap?.connected === true), 'the page to connect');
      const { deliveryId, driverId } = await orderNearCentre();
      await eventually(async () => (await driverRow(page, driverId))?.status === 'BUSY', 'the assigned driver shown BUSY');

      const late = { id: driverId, lat: centre.lat + 0.0042, lng: centre.lng + 0.0042, status: 'AVAILABLE', ts: Date.now() - 100 };
      toPage!(`42/dispatch,${JSON.stringify(['drivers:moved', [late]])}`);
      const row = await eventually(async () => {
        const r = await driverRow(page, driverId);
        return r && close(r.lat, late.lat) ? r : undefined;
      }, 'the late position shown');
      expect(row?.status).toBe('BUSY');
      expect(await page.evaluate((id) => (window as any).hubMap.markers.get(id).options.color, driverId)).toBe('#f07c00');

      // A driver the page has never seen still enters with the move's status.
      const stranger = { id: randomUUID(), lat: centre.lat - 0.003, lng: centre.lng, status: 'AVAILABLE', ts: Date.now() };
      toPage!(`42/dispatch,${JSON.stringify(['drivers:moved', [stranger]])}`);
      await eventually(async () => (await driverRow(page, stranger.id))?.status === 'AVAILABLE', 'a new driver introduced by a move');

      // The driver finishes the job, so the tests after this one find it AVAILABLE again.
      const driver = drivers.find((d) => d.id === driverId)!;
      expect((await driver.emitAck('delivery:update', { deliveryId, status: 'PICKED_UP' })).ok).toBe(true);
      expect((await driver.emitAck('delivery:update', { deliveryId, status: 'DELIVERED' })).ok).toBe(true);
      await eventually(async () => (await driverRow(page, driverId))?.status === 'AVAILABLE', 'the driver back to AVAILABLE');
      expect(errors).toEqual([]);
    } finally {
      await page.close();
    }
  });

  it.skipIf(!hasChromium)('when a driver stops pinging, then its marker turns stale, and a new ping revives it', async () => {
    const { page } = await openMap(dispatcherToken);
    try {
      await eventually(() => page.evaluate(() => (window as any).hubMap?.connected === true), 'the page to connect');
      const [quiet] = drivers;
      const fix = { lat: startAt(0).lat + 0.001, lng: startAt(0).lng + 0.001 };
      await quiet.emitAck('location', fix);
      await eventually(async () => close((await driverRow(page, quiet.id))?.lat ?? null, fix.lat), 'the fresh position');
      expect((await driverRow(page, quiet.id))?.stale).toBe(false);
      await eventually(async () => (await driverRow(page, quiet.id))?.stale === true, 'the marker to turn stale', STALE_AFTER_MS + 5000);
      expect(await page.evaluate((id) => (window as any).hubMap.markers.get(id).options.dashArray, quiet.id)).toBeTruthy();
      await quiet.emitAck('location', { lat: fix.lat + 0.0002, lng: fix.lng });
      await eventually(async () => (await driverRow(page, quiet.id))?.stale === false, 'the marker fresh again');
    } finally {
      await page.close();
    }
  });

  it.skipIf(!hasChromium)('when the token is not a dispatcher token, then the page says it was refused and shows nobody', async () => {
    const { page } = await openMap(drivers[0].token);
    try {
      await eventually(async () => /refused/.test((await page.locator('#conn').textContent()) ?? ''), 'the refusal shown');
      expect(await page.locator('#conn').textContent()).toContain('FORBIDDEN');
      expect(await page.evaluate(() => (window as any).hubMap.connected)).toBe(false);
      expect(await driverRows(page)).toEqual([]);
    } finally {
      await page.close();
    }
  });
});

describe('dispatcher map page with hostile text (headless Chromium)', () => {
  let db: TestDatabase;
  let hub: TestHub;
  let browser: Browser | undefined;
  let driver: Driver | undefined;
  const at = { lat: 40.4168, lng: -3.7038 };
  /** Each carries an element with an id: if the page ever parses one as HTML, the element exists. */
  const NAME = '<img src=x id="pwn-name-img" onerror="window.pwned=1"><b id="pwn-name">Mallory</b>';
  const CODE = '<svg id="pwn-code" onload="window.pwned=2"></svg>';
  const PICKUP = '<a id="pwn-pickup" href="javascript:window.pwned=3">shop</a>';
  const DROPOFF = '<iframe id="pwn-dropoff" srcdoc="x"></iframe><i id="pwn-dropoff-i">home</i>';
  const CREDIT = '<b id="pwn-credit">tiles</b>';
  const HOSTILE_IDS = ['pwn-name-img', 'pwn-name', 'pwn-code', 'pwn-pickup', 'pwn-dropoff', 'pwn-dropoff-i', 'pwn-credit'];

  beforeAll(async () => {
    if (!hasChromium) return;
    db = await createTestDatabase();
    const config = testConfig(db, { MAP_TILE_URL: DEAD_TILES });
    const logger = createLogger({ level: config.LOG_LEVEL, nodeId: config.NODE_ID });
    const running = await startHub(config, logger, {
      publicRoutes: [createMapRoutes({ tileUrl: DEAD_TILES, tileAttribution: CREDIT, tileAttributionUrl: 'javascript:window.pwned=4' })],
    });
    hub = { ...running, url: `http://127.0.0.1:${running.port}` };
    driver = await onDutyDriver(hub, at, NAME);
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
  });
  afterAll(async () => {
    driver?.close();
    await browser?.close();
    await hub?.stop();
    await db?.drop();
  });

  it.skipIf(!hasChromium)('when driver names, order codes, addresses and the tile credit carry markup, then the page shows them as text and creates no element from them', async () => {
    const dispatcherToken = (await api(hub, 'POST', '/admin/tokens', { role: 'dispatcher', subject: 'map-hostile' })).body.token;
    const o = {
      ...order({ pickup: at, dropoff: { lat: at.lat + 0.01, lng: at.lng } }),
      orderCode: CODE,
      pickup: { ...at, address: PICKUP },
      dropoff: { lat: at.lat + 0.01, lng: at.lng, address: DROPOFF },
    };
    const assigned = await postWebhook(hub, '/events/seller-order-ready', o);
    expect(assigned.body).toMatchObject({ status: 'ASSIGNED', driverId: driver!.id });

    const page = await browser!.newPage();
    const errors: string[] = [];
    page.on('pageerror', (err) => errors.push(err.message));
    try {
      // Every element ever added to the page is recorded, so one created and removed again is caught too.
      await recordAddedIds(page);
      await page.goto(`${hub.url}/map#token=${encodeURIComponent(dispatcherToken)}`);
      await eventually(() => page.evaluate(() => (window as any).hubMap?.connected === true), 'the page to connect');
      const item = page.locator(`#deliveries li[data-delivery-id="${assigned.body.deliveryId}"]`);
      await eventually(async () => (await item.count()) === 1, 'the delivery listed');
      await eventually(() => page.evaluate((id) => (window as any).hubMap.markers.has(id), driver!.id), 'the driver marker');

      // The tooltip, opened the way a hover opens it.
      await page.evaluate((id) => (window as any).hubMap.markers.get(id).openTooltip(), driver!.id);
      const tooltip = page.locator('.leaflet-tooltip');
      await eventually(async () => ((await tooltip.textContent()) ?? '').includes('last ping'), 'the tooltip text');

      expect(await tooltip.textContent()).toContain(NAME);
      const listed = (await item.textContent()) ?? '';
      for (const text of [CODE, NAME, PICKUP, DROPOFF]) expect(listed).toContain(text);
      expect(await page.locator('.leaflet-control-attribution').textContent()).toContain(CREDIT);
      expect(await page.locator('.leaflet-control-attribution a[href^="javascript:"]').count()).toBe(0);

      const found = await page.evaluate((ids) => ids.filter((id) => document.getElementById(id) !== null), HOSTILE_IDS);
      expect(found).toEqual([]);
      const everAdded: string[] = await page.evaluate(() => (window as any).addedIds);
      expect(everAdded.filter((id) => HOSTILE_IDS.includes(id))).toEqual([]);
      expect(await page.locator('#deliveries img, #deliveries svg, #deliveries a, #deliveries iframe, .leaflet-tooltip :not(.driver-tooltip), .leaflet-popup').count()).toBe(0);
      expect(await page.evaluate(() => (window as any).pwned)).toBeUndefined();
      expect(errors).toEqual([]);
    } finally {
      await page.close();
    }
  });
});
