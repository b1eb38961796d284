import { describe, expect, it } from 'vitest';
import { presenceKeys } from '../src/presence/presence.store.js';
import { hasSharedPostgres, metricOf, onDutyDriver, redisFor, type TestHub, useCluster } from './support/hub.js';
import { eventually } from './support/net.js';

const PERIOD_MS = 500;
const PLACE = { lat: 59.3293, lng: 18.0686 };

const total = async (hubs: TestHub[]) => (await Promise.all(hubs.map((hub) => metricOf(hub, 'hub_presence_reconciles_total')))).reduce((a, b) => a + b, 0);

describe.skipIf(!hasSharedPostgres())('the periodic reconcile across nodes', () => {
  const cluster = useCluster(3, { RECONCILE_MS: String(PERIOD_MS) });

  it('when three nodes run, then one of them reconciles each period for all, and drift is still put right', async () => {
    const { hubs } = cluster;
    const driver = await onDutyDriver(hubs[1], PLACE, 'Drifting');
    const direct = redisFor(hubs[0]);
    try {
      const keys = presenceKeys(hubs[0].config.REDIS_PREFIX);
      // A Redis that lost a free driver: a reconcile pass, whichever node runs it, puts it back.
      await direct.zrem(keys.geo, driver.id);
      await direct.hdel(keys.status, driver.id);
      await eventually(async () => (await direct.geopos(keys.geo, driver.id))[0] !== null, 'the driver back in GEO', 10_000);
      expect(await direct.hget(keys.status, driver.id)).toBe('AVAILABLE');

      const before = await total(hubs);
      const started = performance.now();
      await new Promise((r) => setTimeout(r, PERIOD_MS * 10));
      const passes = (await total(hubs)) - before;
      const periods = (performance.now() - started) / PERIOD_MS;
      // Each node on its own would run one pass per period (three per period here); a turn lapses
      // after 80 % of the period, so at most one pass per 0.8 of a period, plus the one running.
      expect(passes).toBeGreaterThan(0);
      expect(passes).toBeLessThanOrEqual(Math.ceil(periods / 0.8) + 1);
      expect(passes).toBeLessThan(periods * 3 * 0.6);
    } finally {
      driver.close();
      direct.disconnect();
    }
  });
});
