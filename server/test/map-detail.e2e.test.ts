import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DriverMoved } from '#shared/schemas.js';
import { startHub } from '../src/main.js';
import { createLogger } from '../src/platform/logger.js';
import { createMapRoutes } from '../src/realtime/map.routes.js';
import { DEAD_TILES, hasChromium, launchChromium, recordAddedIds, SCREENSHOT_DIR, screenshot } from './support/browser.js';
import {
  api,
  connectDriver,
  createDriver,
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

if (!hasChromium) console.warn('map detail e2e tests skipped: /usr/bin/chromium is missing (apt-get install -y chromium)');

const READY = '/events/seller-order-ready';
const VIEWPORT = { width: 1400, height: 900 };

async function startMapHub(db: TestDatabase): Promise<TestHub> {
  const config = testConfig(db, { MAP_TILE_URL: DEAD_TILES });
  const logger = createLogger({ level: config.LOG_LEVEL, nodeId: config.NODE_ID });
  const hub = await startHub(config, logger, { publicRoutes: [createMapRoutes({ tileUrl: DEAD_TILES })] });
  return { ...hub, url: `http://127.0.0.1:${hub.port}` };
}

async function openMap(browser: Browser, hub: TestHub, token: string, before?: (page: Page) => Promise<void>): Promise<{ page: Page; errors: string[] }> {
  const page = await browser.newPage({ viewport: VIEWPORT });
  const errors: string[] = [];
  page.on('pageerror', (err) => errors.push(err.message));
  await before?.(page);
  await page.goto(`${hub.url}/map#token=${encodeURIComponent(token)}`);
  await eventually(() => page.evaluate(() => (window as any).hubMap?.connected === true && (window as any).hubMap.snapshotAt), 'the page to connect');
  return { page, errors };
}

/** Where a Leaflet layer sits on the screen, to click it as a person would. */
function screenPointOf(page: Page, which: 'driver' | 'delivery', id: string): Promise<{ x: number; y: number }> {
  return page.evaluate(
    ([kind, key]) => {
      const hubMap = (window as any).hubMap;
      const layer = (kind === 'driver' ? hubMap.markers : hubMap.deliveryMarkers).get(key);
      hubMap.map.setView(layer.getLatLng(), 15, { animate: false });
      const point = hubMap.map.latLngToContainerPoint(layer.getLatLng());
      const box = document.getElementById('map')!.getBoundingClientRect();
      return { x: box.left + point.x, y: box.top + point.y };
    },
    [which, id] as const,
  );
}

const texts = (page: Page, selector: string) => page.$$eval(selector, (els) => els.map((e) => e.textContent ?? ''));

describe('dispatcher map: delivery and driver detail, actions, filters (headless Chromium)', () => {
  let db: TestDatabase;
  let hub: TestHub;
  let browser: Browser | undefined;
  let dispatcherToken: string;
  const clients: { close(): void }[] = [];
  const centre = { lat: 48.8566, lng: 2.3522 };
  let anna: DriverClient & { id: string };
  let ben: DriverClient & { id: string };
  let first: { deliveryId: string; orderCode: string };
  /** The delivery sent back to assignment, now Dora's. */
  let redispatched = '';

  beforeAll(async () => {
    if (!hasChromium) return;
    db = await createTestDatabase();
    hub = await startMapHub(db);
    dispatcherToken = (await api(hub, 'POST', '/admin/tokens', { role: 'dispatcher', subject: 'map-detail' })).body.token;
    anna = await onDutyDriver(hub, { lat: centre.lat + 0.001, lng: centre.lng }, 'Anna Near');
    ben = await onDutyDriver(hub, { lat: centre.lat + 0.003, lng: centre.lng + 0.002 }, 'Ben Middle');
    const cleo = await onDutyDriver(hub, { lat: centre.lat - 0.004, lng: centre.lng - 0.003 }, 'Cleo Far');
    clients.push(anna, ben, cleo);
    // Their positions in PostgreSQL too (flushed every POSITION_FLUSH_MS): the nearest is then Anna whichever store answers.
    await eventually(async () => {
      const listed: { id: string; lat: number | null }[] = (await api(hub, 'GET', '/admin/drivers')).body.drivers;
      return [anna, ben, cleo].every((d) => listed.some((l) => l.id === d.id && l.lat !== null));
    }, 'the drivers\' positions stored');
    const o = order({ pickup: centre, dropoff: { lat: centre.lat + 0.012, lng: centre.lng + 0.01 } });
    const placed = await postWebhook(hub, READY, { ...o, pickup: { ...centre, address: '1 Rue de Rivoli' }, dropoff: { lat: centre.lat + 0.012, lng: centre.lng + 0.01, address: '20 Rue Lepic' } });
    expect(placed.body).toMatchObject({ status: 'ASSIGNED', driverId: anna.id });
    first = { deliveryId: placed.body.deliveryId, orderCode: o.orderCode };
    browser = await launchChromium();
  });
  afterAll(async () => {
    for (const c of clients) c.close();
    await browser?.close();
    await hub?.stop();
    await db?.drop();
  });

  it.skipIf(!hasChromium)('when a dispatcher opens a delivery from the list or the map, then the panel shows its route, time in state, acknowledgement, ranked candidates and audit trail, and a driver shows its delivery and last ping', async () => {
    const { page, errors } = await openMap(browser!, hub, dispatcherToken);
    try {
      await page.locator(`#deliveries li[data-delivery-id="${first.deliveryId}"]`).click();
      await eventually(async () => (await page.locator('#detail-status').getAttribute('data-status')) === 'ASSIGNED', 'the detail panel');
      expect(await page.locator('#detail-title').textContent()).toBe(`Order ${first.orderCode}`);
      expect(await page.locator('#detail-age').textContent()).toMatch(/^\d+ s$/);
      expect(await page.locator('#detail-pickup').textContent()).toBe('1 Rue de Rivoli');
      expect(await page.locator('#detail-dropoff').textContent()).toBe('20 Rue Lepic');
      // The driver's app confirmed the job: shown once the hub says so (delivery:push refreshes the panel).
      await eventually(async () => (await page.locator('#detail-ack').getAttribute('data-acknowledged')) === 'true', 'the acknowledgement shown');
      expect(await page.locator('#detail-ack').textContent()).toContain("Driver's app confirmed the job");

      // Why this driver: every candidate, best first, with distance, outcome and every term of its score.
      expect(await page.$$eval('#candidates th', (ths) => ths.map((th) => (th as HTMLElement).dataset.key))).toEqual([
        'rank',
        'driverId',
        'distanceMeters',
        'outcome',
        'pool',
        'fleet',
        'beyondNearestMeters',
        'withinBand',
        'fairnessBandMeters',
        'idleSeconds',
        'deliveriesToday',
      ]);
      const rows = await page.$$eval('#candidates tbody tr', (trs) => trs.map((tr) => ({ chosen: tr.classList.contains('chosen'), cells: Array.from(tr.children).map((td) => td.textContent) })));
      expect(rows.length).toBeGreaterThanOrEqual(2);
      expect(rows[0].chosen).toBe(true);
      expect(rows[0].cells.slice(0, 5)).toEqual(['1', 'Anna Near', expect.stringMatching(/^\d+ m$/), 'chosen', 'shared']);
      expect(rows.map((r) => r.cells[1])).toContain('Ben Middle');
      const audit = await page.$$eval('#audit tbody tr', (trs) => trs.map((tr) => Array.from(tr.children).map((td) => td.textContent)));
      expect(audit.map((r) => [r[1], r[2]])).toEqual([
        ['∅ → PENDING', 'webhook'],
        ['PENDING → ASSIGNED', 'hub'],
      ]);

      // On the map: pickup and dropoff markers, and the line from the driver to the pickup, following the driver.
      const drawn = () =>
        page.evaluate(() => {
          const m = (window as any).hubMap;
          return { pickup: m.detailPickup.getLatLng(), dropoff: m.detailDropoff.getLatLng(), line: m.driverLine?.getLatLngs().map((p: any) => ({ lat: p.lat, lng: p.lng })) ?? null };
        });
      const before = await drawn();
      expect(before.pickup).toMatchObject(centre);
      expect(before.dropoff).toMatchObject({ lat: centre.lat + 0.012, lng: centre.lng + 0.01 });
      expect(before.line).toEqual([{ lat: centre.lat + 0.001, lng: centre.lng }, centre]);
      await anna.emitAck('location', { lat: centre.lat + 0.0005, lng: centre.lng + 0.0002 });
      await eventually(async () => (await drawn()).line?.[0].lat === centre.lat + 0.0005, 'the line following the driver');
      await screenshot(page, 'map-delivery-detail');

      // From the map: the pickup marker opens the same delivery.
      await page.locator('#detail-close').click();
      expect(await page.locator('#detail').isHidden()).toBe(true);
      const pickupAt = await screenPointOf(page, 'delivery', first.deliveryId);
      await page.mouse.click(pickupAt.x, pickupAt.y);
      await eventually(async () => (await page.locator('#detail-title').textContent()) === `Order ${first.orderCode}`, 'the delivery opened from its map marker');

      // A driver: its current delivery and how long ago it last pinged.
      await page.locator('#detail-close').click();
      const annaAt = await screenPointOf(page, 'driver', anna.id);
      await page.mouse.click(annaAt.x, annaAt.y);
      await eventually(async () => (await page.locator('#driver-detail').getAttribute('data-driver-id')) === anna.id, 'the driver detail');
      expect(await page.locator('#detail-title').textContent()).toBe('Anna Near');
      expect(await page.locator('#driver-ping-age').textContent()).toMatch(/^\d+ s ago$/);
      expect(await page.locator('#driver-delivery').textContent()).toBe(`${first.orderCode} · ASSIGNED`);
      await screenshot(page, 'map-driver-detail');
      await page.locator('#driver-delivery button').click();
      await eventually(async () => (await page.locator('#detail-status').getAttribute('data-status')) === 'ASSIGNED', 'back to the delivery');
      expect(errors).toEqual([]);
    } finally {
      await page.close();
    }
  });

  it.skipIf(!hasChromium)('when the dispatcher cancels a delivery from the panel, then the driver app receives the cancel, the driver is free and the trail names the dispatcher', async () => {
    const { page, errors } = await openMap(browser!, hub, dispatcherToken);
    try {
      await page.locator(`#deliveries li[data-delivery-id="${first.deliveryId}"]`).click();
      await eventually(async () => (await page.locator('#detail-status').getAttribute('data-status')) === 'ASSIGNED', 'the detail panel');
      expect(await page.locator('#detail-redispatch').isDisabled()).toBe(true); // confirmed by the app: cancel, do not reassign
      await page.locator('#detail-reason').fill('customer not home, shop called');
      await page.locator('#detail-cancel').click();
      await eventually(async () => (await page.locator('#detail-message').getAttribute('data-result')) === 'CANCELLED', 'the cancel confirmed');
      await eventually(() => anna.cancellations.some((c) => c.deliveryId === first.deliveryId), "the driver's app told");
      expect(anna.cancellations.find((c) => c.deliveryId === first.deliveryId).reason).toBe('customer not home, shop called');
      await eventually(async () => (await page.locator('#detail-status').getAttribute('data-status')) === 'CANCELLED', 'the panel showing CANCELLED');
      const last = await page.$eval('#audit tbody tr:last-child', (tr) => Array.from(tr.children).map((td) => td.textContent));
      expect(last.slice(1)).toEqual(['ASSIGNED → CANCELLED', 'dispatcher:map-detail', 'Anna Near', 'customer not home, shop called']);
      expect(await page.locator('#detail-cancel').isDisabled()).toBe(true);
      await eventually(async () => (await page.locator(`#deliveries li[data-delivery-id="${first.deliveryId}"]`).getAttribute('data-status')) === 'CANCELLED', 'the list updated');
      await eventually(async () => (await page.locator(`#drivers li[data-driver-id="${anna.id}"]`).getAttribute('data-status')) === 'AVAILABLE', 'the driver free again');
      expect(errors).toEqual([]);
    } finally {
      await page.close();
    }
  });

  it.skipIf(!hasChromium)('when a delivery waits on a driver app that never confirms, then the dispatcher sends it back to assignment and the next driver gets it', async () => {
    const spot = { lat: centre.lat + 0.05, lng: centre.lng + 0.05 };
    const { id, token } = await createDriver(hub, 'Silent Sam');
    const silent = await connectDriver(hub, token, { ackPushes: false });
    clients.push(silent);
    await silent.emitAck('location', spot);
    await silent.emitAck('status', { status: 'AVAILABLE' });
    const dora = await onDutyDriver(hub, { lat: spot.lat + 0.004, lng: spot.lng }, 'Dora Next');
    clients.push(dora);
    await eventually(async () => {
      const listed: { id: string; lat: number | null }[] = (await api(hub, 'GET', '/admin/drivers')).body.drivers;
      return [id, dora.id].every((d) => listed.some((l) => l.id === d && l.lat !== null));
    }, 'the drivers\' positions stored');
    const o = order({ pickup: spot });
    const placed = await postWebhook(hub, READY, o);
    expect(placed.body).toMatchObject({ status: 'ASSIGNED', driverId: id });
    redispatched = placed.body.deliveryId;

    const { page, errors } = await openMap(browser!, hub, dispatcherToken);
    try {
      await page.locator(`#deliveries li[data-delivery-id="${placed.body.deliveryId}"]`).click();
      await eventually(async () => (await page.locator('#detail-ack').getAttribute('data-acknowledged')) === 'false', 'not acknowledged shown');
      expect(await page.locator('#detail-ack').textContent()).toContain("Not confirmed by the driver's app yet");
      await page.locator('#detail-reason').fill('driver app silent');
      await page.locator('#detail-redispatch').click();
      await eventually(async () => (await page.locator('#detail-message').getAttribute('data-result')) === 'ASSIGNED', 'assigned again');
      expect(await page.locator('#detail-message').textContent()).toBe('assigned again, to Dora Next');
      await eventually(() => silent.cancellations.some((c) => c.deliveryId === placed.body.deliveryId), 'the silent app told the job is gone');
      await eventually(() => dora.assignments.some((a) => a.deliveryId === placed.body.deliveryId), 'the next driver given it');
      const auditRows = () => page.$$eval('#audit tbody tr', (trs) => trs.map((tr) => Array.from(tr.children).map((td) => td.textContent)));
      // The panel refreshes its trail when the delivery changes, a moment after the answer to the click.
      await eventually(async () => (await auditRows()).length >= 4, 'the audit trail refreshed');
      const audit = await auditRows();
      expect(audit.map((r) => r.slice(1))).toEqual([
        ['∅ → PENDING', 'webhook', '–', '–'],
        ['PENDING → ASSIGNED', 'hub', 'Silent Sam', '–'],
        ['ASSIGNED → PENDING', 'dispatcher:map-detail', 'Silent Sam', 'driver app silent'],
        ['PENDING → ASSIGNED', 'hub', 'Dora Next', '–'],
      ]);
      expect(errors).toEqual([]);
    } finally {
      await page.close();
    }
  });

  it.skipIf(!hasChromium)('when the dispatcher filters by status or searches by order code or driver name, then the list shows only those deliveries', async () => {
    const waiting = order({ pickup: { lat: -33.87, lng: 151.21 } });
    expect((await postWebhook(hub, READY, waiting)).status).toBe(202);
    const { page, errors } = await openMap(browser!, hub, dispatcherToken);
    const listed = async () => page.$$eval('#deliveries li[data-delivery-id]', (lis) => lis.map((li) => ({ id: (li as HTMLElement).dataset.deliveryId, status: (li as HTMLElement).dataset.status, text: li.textContent })));
    try {
      await page.locator('#filter-status').selectOption('PENDING');
      await eventually(async () => (await listed()).length > 0 && (await listed()).every((d) => d.status === 'PENDING'), 'only PENDING listed');
      expect((await listed()).some((d) => d.text?.includes(waiting.orderCode))).toBe(true);

      // A closed status comes from the hub: the snapshot holds open deliveries only.
      await page.locator('#filter-status').selectOption('CANCELLED');
      await eventually(async () => (await listed()).some((d) => d.id === first.deliveryId), 'the cancelled delivery loaded');
      expect((await listed()).every((d) => d.status === 'CANCELLED')).toBe(true);

      await page.locator('#filter-status').selectOption('OFFERED');
      await eventually(async () => (await texts(page, '#deliveries li')).join() === 'none', 'no OFFERED delivery');

      await page.locator('#filter-status').selectOption('open');
      await page.locator('#search').fill(waiting.orderCode.slice(1).toLowerCase());
      await eventually(async () => {
        const found = await listed();
        return found.length === 1 && found[0].text?.includes(waiting.orderCode);
      }, 'the search by order code');

      await page.locator('#search').fill('dora');
      await eventually(async () => (await texts(page, '#driver-results li')).some((t) => t.includes('Dora Next')), 'the driver found by name');
      await eventually(async () => (await listed()).length > 0 && (await listed()).every((d) => d.text?.includes('Dora Next')), "Dora's deliveries only");
      await page.locator('#driver-results li', { hasText: 'Dora Next' }).click();
      await eventually(async () => (await page.locator('#detail-title').textContent()) === 'Dora Next', 'the driver opened from the search');
      await screenshot(page, 'map-search');
      expect(errors).toEqual([]);
    } finally {
      await page.close();
    }
  });

  it.skipIf(!hasChromium)('when the hub sends offers and score terms this page has never heard of, then each term becomes a column and open offers count down', async () => {
    const { page, errors } = await openMap(browser!, hub, dispatcherToken, async (p) => {
      await recordAddedIds(p);
      // The fields issue 18 adds (offer mode, score terms), added to the hub's real answer.
      await p.route('**/admin/deliveries/*', async (route) => {
        if (route.request().method() !== 'GET') return route.continue();
        const response = await route.fetch();
        const detail = await response.json();
        const now = Date.now();
        detail.candidates = detail.candidates.map((c: any, i: number) => ({
          ...c,
          rank: i + 1,
          pool: i === 0 ? 'fleet' : 'shared',
          idleSeconds: 340 - i * 100,
          deliveriesToday: i + 3,
          inBand: i === 0,
          scoreNote: '<b id="pwn-term">sneaky</b>',
        }));
        detail.offers = [
          { driverId: detail.candidates[0].driverId, offeredAt: new Date(now - 5000).toISOString(), expiresAt: new Date(now + 30_000).toISOString(), outcome: 'OPEN', reason: null, answeredAt: null },
          { driverId: detail.candidates[1]?.driverId ?? detail.candidates[0].driverId, offeredAt: new Date(now - 60_000).toISOString(), expiresAt: new Date(now - 40_000).toISOString(), outcome: 'DECLINED', reason: '<i id="pwn-offer">on a break</i>', answeredAt: new Date(now - 50_000).toISOString() },
        ];
        await route.fulfill({ response, json: detail });
      });
    });
    try {
      await page.locator(`#deliveries li[data-delivery-id="${redispatched}"]`).click();
      await eventually(async () => (await page.locator('#offers tbody tr').count()) === 2, 'the offers listed');
      // The hub's own terms first (in its order), then the ones this page has never heard of.
      const headers = await page.$$eval('#candidates th', (ths) => ths.map((th) => th.textContent));
      expect(headers).toEqual(['#', 'driver', 'distance', 'outcome', 'pool', 'fleet', 'beyond nearest meters', 'within band', 'fairness band meters', 'idle seconds', 'deliveries today', 'in band', 'score note']);
      const cells = await page.$$eval('#candidates tbody tr:first-child td', (tds) => tds.map((td) => td.textContent));
      const cell = (header: string) => cells[headers.indexOf(header)];
      expect(['pool', 'idle seconds', 'deliveries today', 'in band', 'score note'].map(cell)).toEqual(['fleet', '5 min 40 s', '3', 'yes', '<b id="pwn-term">sneaky</b>']);
      const countdown = () => page.locator('#offers td.countdown').textContent();
      const firstCount = Number((await countdown())?.match(/^(\d+) s left$/)?.[1]);
      expect(firstCount).toBeGreaterThan(20);
      await eventually(async () => Number((await countdown())?.match(/^(\d+) s left$/)?.[1]) <= firstCount - 2, 'the countdown running', 5000, 250);
      expect(await texts(page, '#offers tbody tr:nth-child(2) td')).toEqual([expect.any(String), expect.any(String), expect.any(String), 'DECLINED', '<i id="pwn-offer">on a break</i>', expect.any(String)]);
      await screenshot(page, 'map-offers-and-score-terms');
      const added: string[] = await page.evaluate(() => (window as any).addedIds);
      expect(added.filter((id) => id.startsWith('pwn-'))).toEqual([]);
      expect(errors).toEqual([]);
    } finally {
      await page.close();
    }
  });
});

describe('dispatcher map detail with hostile text (headless Chromium)', () => {
  let db: TestDatabase;
  let hub: TestHub;
  let browser: Browser | undefined;
  const at = { lat: 45.4642, lng: 9.19 };
  const NAME = '<img src=x id="pwn-name" onerror="window.pwned=1"><b id="pwn-name-b">Mallory</b>';
  const CODE = '<svg id="pwn-code" onload="window.pwned=2"></svg>';
  const PICKUP = '<a id="pwn-pickup" href="javascript:window.pwned=3">shop</a>';
  const DROPOFF = '<iframe id="pwn-dropoff" srcdoc="x"></iframe>';
  const REASON = '<script id="pwn-reason">window.pwned=4</script>';
  const HOSTILE = ['pwn-name', 'pwn-name-b', 'pwn-code', 'pwn-pickup', 'pwn-dropoff', 'pwn-reason'];

  beforeAll(async () => {
    if (!hasChromium) return;
    db = await createTestDatabase();
    hub = await startMapHub(db);
    browser = await launchChromium();
  });
  afterAll(async () => {
    await browser?.close();
    await hub?.stop();
    await db?.drop();
  });

  it.skipIf(!hasChromium)('when names, codes, addresses and reasons carry markup, then the detail panel shows them as text and creates no element from them', async () => {
    const token = (await api(hub, 'POST', '/admin/tokens', { role: 'dispatcher', subject: 'hostile-desk' })).body.token;
    const driver = await onDutyDriver(hub, at, NAME);
    const o = { ...order({ pickup: at }), orderCode: CODE, pickup: { ...at, address: PICKUP }, dropoff: { lat: at.lat + 0.01, lng: at.lng, address: DROPOFF } };
    const placed = await postWebhook(hub, READY, o);
    expect(placed.body.driverId).toBe(driver.id);
    expect((await api(hub, 'POST', `/admin/deliveries/${placed.body.deliveryId}/cancel`, { reason: REASON }, token)).status).toBe(200);
    const { page, errors } = await openMap(browser!, hub, token, recordAddedIds);
    try {
      // Cancelled before the page opened: not in the snapshot, loaded by the status filter.
      await page.locator('#filter-status').selectOption('CANCELLED');
      await page.locator(`#deliveries li[data-delivery-id="${placed.body.deliveryId}"]`).click();
      await eventually(async () => (await page.locator('#detail-status').getAttribute('data-status')) === 'CANCELLED', 'the detail');
      expect(await page.locator('#detail-title').textContent()).toBe(`Order ${CODE}`);
      expect(await page.locator('#detail-pickup').textContent()).toBe(PICKUP);
      expect(await page.locator('#detail-dropoff').textContent()).toBe(DROPOFF);
      expect(await page.locator('#detail-driver').textContent()).toBe(NAME);
      expect(await page.$eval('#audit tbody tr:last-child td:last-child', (td) => td.textContent)).toBe(REASON);
      expect(await texts(page, '#candidates tbody td')).toContain(NAME);
      await page.locator('#detail-driver').click();
      await eventually(async () => (await page.locator('#detail-title').textContent()) === NAME, 'the driver detail');
      await page.locator('#search').fill('mallory');
      await eventually(async () => (await texts(page, '#driver-results li')).some((t) => t.includes(NAME)), 'the driver found');
      const added: string[] = await page.evaluate(() => (window as any).addedIds);
      expect(added.filter((id) => HOSTILE.includes(id))).toEqual([]);
      expect(await page.locator('#detail img, #detail svg, #detail a, #detail iframe, #detail script, #lists img, #lists a').count()).toBe(0);
      expect(await page.evaluate(() => (window as any).pwned)).toBeUndefined();
      expect(errors).toEqual([]);
    } finally {
      driver.close();
      await page.close();
    }
  });
});

describe('dispatcher map with 2,000 drivers moving (headless Chromium)', () => {
  const DRIVERS = 2000;
  const MEASURE_MS = 5000;
  let db: TestDatabase;
  let hub: TestHub;
  let browser: Browser | undefined;
  const ids: string[] = [];

  beforeAll(async () => {
    if (!hasChromium) return;
    db = await createTestDatabase();
    hub = await startMapHub(db);
    for (let i = 0; i < DRIVERS; i += 50) {
      const batch = await Promise.all(Array.from({ length: Math.min(50, DRIVERS - i) }, (_, j) => createDriver(hub, `Fleet ${i + j}`)));
      ids.push(...batch.map((d) => d.id));
    }
    browser = await launchChromium();
  }, 180_000);
  afterAll(async () => {
    await browser?.close();
    await hub?.stop();
    await db?.drop();
  });

  it.skipIf(!hasChromium)('when 2,000 drivers move, then every marker follows and the page keeps drawing frames (frame time measured and reported)', async () => {
    const token = (await api(hub, 'POST', '/admin/tokens', { role: 'dispatcher', subject: 'load-desk' })).body.token;
    const { page, errors } = await openMap(browser!, hub, token);
    const centre = { lat: 52.52, lng: 13.405 };
    // Spread over the city like sunflower seeds (golden angle), each driver circling its spot a
    // little at every fix: all inside the view.
    const position = (i: number, step: number) => {
      const r = Math.sqrt((i + 0.5) / DRIVERS);
      return {
        lat: centre.lat + 0.06 * r * Math.sin(i * 2.39996) + 0.0004 * Math.sin(step / 5 + i),
        lng: centre.lng + 0.1 * r * Math.cos(i * 2.39996) + 0.0004 * Math.cos(step / 5 + i),
      };
    };
    const steps = new Array<number>(DRIVERS).fill(0);
    // The hub's own /dispatch namespace sends the batches, as its tick does for pings: 2,000 driver
    // sockets would measure this machine's CPU rather than the page.
    const nsp = hub.app.io.of('/dispatch');
    let next = 0;
    const send = (count: number) => {
      const ts = Date.now();
      const batch: DriverMoved[] = [];
      for (let k = 0; k < count; k++) {
        const i = next;
        next = (next + 1) % DRIVERS;
        steps[i] += 1;
        batch.push({ id: ids[i], ...position(i, steps[i]), heading: null, speed: 8, status: 'AVAILABLE', ts });
      }
      nsp.emit('drivers:moved', batch);
    };

    const startFrames = () =>
      page.evaluate(() => {
        const w = window as any;
        // Each measurement's loop keeps its own log: a loop still pending from the one before stops on its own flag.
        const log = { deltas: [] as number[], longTaskMs: 0, stop: false, batches: w.hubMap.moveBatches, handlerMs: w.hubMap.moveHandlingMs, observer: null as PerformanceObserver | null };
        w.frameLog = log;
        let last = performance.now();
        const loop = (t: number) => {
          if (log.stop) return;
          log.deltas.push(t - last);
          last = t;
          requestAnimationFrame(loop);
        };
        requestAnimationFrame(loop);
        try {
          log.observer = new PerformanceObserver((list) => {
            for (const e of list.getEntries()) log.longTaskMs += e.duration;
          });
          log.observer.observe({ type: 'longtask' });
        } catch {
          // No long task API: frame deltas say enough.
        }
      });
    const stopFrames = () =>
      page.evaluate(() => {
        const w = window as any;
        w.frameLog.stop = true;
        w.frameLog.observer?.disconnect();
        const d = (w.frameLog.deltas as number[]).slice(1).sort((a, b) => a - b);
        const q = (p: number) => Math.round(d[Math.min(d.length - 1, Math.floor(p * d.length))] * 10) / 10;
        const batches = w.hubMap.moveBatches - w.frameLog.batches;
        return {
          frames: d.length,
          meanMs: Math.round((d.reduce((a, b) => a + b, 0) / d.length) * 10) / 10,
          p50Ms: q(0.5),
          p95Ms: q(0.95),
          maxMs: q(1),
          over50Ms: d.filter((x) => x > 50).length,
          longTaskMs: Math.round(w.frameLog.longTaskMs),
          batchesHandled: batches,
          handlerMsPerBatch: Math.round(((w.hubMap.moveHandlingMs - w.frameLog.handlerMs) / Math.max(1, batches)) * 10) / 10,
        };
      });
    /** `perTick` moves every `tickMs` for MEASURE_MS, while the page's frames are timed. */
    const measure = async (tickMs: number, perTick: number) => {
      await startFrames();
      const timer = setInterval(() => send(perTick), tickMs);
      await new Promise((r) => setTimeout(r, MEASURE_MS));
      clearInterval(timer);
      return { tickMs, movesPerBatch: perTick, movesPerSecond: Math.round((perTick * 1000) / tickMs), ...(await stopFrames()) };
    };

    try {
      send(DRIVERS);
      await eventually(() => page.evaluate((n) => (window as any).hubMap.markers.size === n, DRIVERS), 'all markers placed', 20_000);
      await page.evaluate((c) => void (window as any).hubMap.map.setView([c.lat, c.lng], 12, { animate: false }), centre);

      await startFrames();
      await new Promise((r) => setTimeout(r, 2000));
      const idle = await stopFrames();
      // Every driver pinging once a second, batched by the hub every 50 ms (MAP_TICK_MS).
      const everySecond = await measure(50, DRIVERS / 20);
      // Ten times that: every driver moving on every 100 ms batch.
      const tenTimes = await measure(100, DRIVERS);

      // Every marker is where its last move put it.
      const sample = [0, 517, 1999].map((i) => ({ id: ids[i], want: position(i, steps[i]) }));
      await eventually(async () => {
        const at = await page.evaluate((s) => s.map(({ id }) => (window as any).hubMap.markers.get(id).getLatLng()), sample);
        return at.every((p: { lat: number; lng: number }, k: number) => Math.abs(p.lat - sample[k].want.lat) < 1e-9 && Math.abs(p.lng - sample[k].want.lng) < 1e-9);
      }, 'the sampled markers at their last positions');
      await screenshot(page, 'map-2000-drivers');

      const report = { drivers: DRIVERS, measureMs: MEASURE_MS, idle, everySecond, tenTimes };
      mkdirSync(SCREENSHOT_DIR, { recursive: true });
      writeFileSync(join(SCREENSHOT_DIR, '..', 'map-frame-time.json'), `${JSON.stringify(report, null, 2)}\n`);
      console.log(`map frame time with ${DRIVERS} drivers: ${JSON.stringify(report)}`);
      // Generous on purpose (a shared test machine): the page keeps drawing; docs/realtime.md has the figures.
      for (const run of [everySecond, tenTimes]) {
        expect(run.frames).toBeGreaterThan(MEASURE_MS / 1000);
        expect(run.p50Ms).toBeLessThan(500);
      }
      expect(errors).toEqual([]);
    } finally {
      await page.close();
    }
  }, 120_000);
});
