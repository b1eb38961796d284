import { existsSync } from 'node:fs';
import { type Browser, chromium } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase, type TestHub, startTestHub, testConfig } from './support/hub.js';
import { eventually } from './support/net.js';

const CHROMIUM = '/usr/bin/chromium';
const hasChromium = existsSync(CHROMIUM);
if (!hasChromium) console.warn(`front door browser tests skipped: ${CHROMIUM} is missing (apt-get install -y chromium)`);

describe('front door and documentation pages', () => {
  let db: TestDatabase;
  let hub: TestHub;
  let browser: Browser | undefined;

  beforeAll(async () => {
    db = await createTestDatabase();
    hub = await startTestHub(testConfig(db));
    if (hasChromium) {
      browser = await chromium.launch({
        executablePath: CHROMIUM,
        args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
      });
    }
  });
  afterAll(async () => {
    await browser?.close();
    await hub?.stop();
    await db?.drop();
  });

  it('when a JSON client or curl asks for /, then it gets the JSON index with health and links', async () => {
    for (const accept of [undefined, '*/*', 'application/json']) {
      const res = await fetch(`${hub.url}/`, { headers: accept ? { accept } : {} });
      expect(res.status).toBe(200);
      expect(res.headers.get('content-type')).toMatch(/^application\/json/);
      expect(res.headers.get('vary')).toMatch(/accept/i);
      const index = await res.json();
      expect(index.health).toMatchObject({ status: 'ok', postgres: 'up', node: hub.config.NODE_ID });
      expect(index.links).toMatchObject({ map: '/map', apiReference: '/docs', openapi: '/openapi.json', asyncapi: '/asyncapi.json' });
      expect(index.links.guides.map((g: { href: string }) => g.href)).toContain('/docs/guides/deployment.md');
    }
  });

  it('when a browser asks for /, then it gets a page naming the hub, its health and the links, with no inline script', async () => {
    const res = await fetch(`${hub.url}/`, { headers: { accept: 'text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8' } });
    expect(res.headers.get('content-type')).toMatch(/^text\/html/);
    expect(res.headers.get('content-security-policy')).toContain("script-src 'self'");
    const html = await res.text();
    expect(html).toContain('Dispatch hub');
    expect(html).toContain(`id="health-status" class="v ok">ok<`);
    for (const href of ['/map', '/docs', '/docs/sockets', '/openapi.json', '/asyncapi.json', '/metrics', '/docs/guides/api.md']) expect(html).toContain(`href="${href}"`);
    expect(html).not.toMatch(/<script>(?!<\/script>)/);
  });

  it('when a guide name tries to leave docs/, then the answer is 404', async () => {
    for (const name of ['..%2Fpackage.json', '%2E%2E%2F%2E%2E%2Fetc%2Fpasswd', 'README.md', 'api.md%00']) {
      const res = await fetch(`${hub.url}/docs/guides/${name}`);
      expect(res.status, name).toBe(404);
      await res.arrayBuffer();
    }
  });

  it.skipIf(!hasChromium)('when the API reference opens in a browser, then Swagger UI renders every operation from /openapi.json under the CSP', async () => {
    const page = await browser!.newPage();
    const errors: string[] = [];
    page.on('pageerror', (err) => errors.push(err.message));
    page.on('console', (msg) => {
      if (msg.type() === 'error') errors.push(msg.text());
    });
    const outside: string[] = [];
    page.on('request', (req) => {
      if (!req.url().startsWith(hub.url) && !req.url().startsWith('data:')) outside.push(req.url());
    });
    try {
      await page.goto(`${hub.url}/docs`);
      await eventually(async () => (await page.locator('.opblock').count()) >= 10, 'the operations to render', 20_000);
      expect(await page.getByText('/events/seller-order-ready', { exact: true }).count()).toBeGreaterThan(0);
      expect(errors).toEqual([]);
      expect(outside).toEqual([]);
    } finally {
      await page.close();
    }
  });

  it.skipIf(!hasChromium)('when the front door is open, then its health line keeps itself current', async () => {
    const page = await browser!.newPage();
    const errors: string[] = [];
    page.on('pageerror', (err) => errors.push(err.message));
    try {
      await page.goto(`${hub.url}/`);
      const first = Number(await page.locator('#health-uptimeSeconds').textContent());
      await eventually(async () => Number(await page.locator('#health-uptimeSeconds').textContent()) > first, 'uptime to move on', 15_000, 250);
      expect(await page.locator('#health-status').textContent()).toBe('ok');
      expect(errors).toEqual([]);
    } finally {
      await page.close();
    }
  });
});
