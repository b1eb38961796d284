import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { api, onDutyDriver, order, postWebhook, startTestHub, type TestHub, testConfig } from './support/hub.js';
import { eventually } from './support/net.js';

describe('embedded mode: PGlite and a single node', () => {
  let hub: TestHub;
  let dataDir: string;

  beforeAll(async () => {
    dataDir = mkdtempSync(join(tmpdir(), 'hub-embedded-'));
    hub = await startTestHub(testConfig({ url: undefined, dataDir, drop: async () => {} }, { DATABASE_URL: '', REDIS_URL: '' }));
  });
  afterAll(async () => {
    await hub?.stop();
    rmSync(dataDir, { recursive: true, force: true });
  });

  it('when neither DATABASE_URL nor REDIS_URL is set, then health says redis disabled and the hub still assigns and pushes', async () => {
    const health = await api(hub, 'GET', '/health', undefined, null);
    expect(health.body).toMatchObject({ status: 'ok', postgres: 'up', redis: 'disabled' });
    const place = { lat: 51.5, lng: -0.12 };
    const driver = await onDutyDriver(hub, place, 'Solo');
    await eventually(async () => (await api(hub, 'GET', '/admin/drivers')).body.drivers[0].lat === place.lat, 'position flushed');
    const res = await postWebhook(hub, '/events/seller-order-ready', order({ pickup: { lat: 51.501, lng: -0.12 } }));
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({ status: 'ASSIGNED', driverId: driver.id });
    await eventually(() => driver.assignments.length === 1, 'assignment pushed');
    driver.close();
  });
});
