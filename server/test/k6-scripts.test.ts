import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type K6RunResult, runK6Script } from '../../load-tests/k6-standin/run.js';
import { ADMIN_TOKEN, createTestDatabase, type TestDatabase, type TestHub, startTestHub, testConfig, WEBHOOK_SECRET } from './support/hub.js';

/**
 * The k6 scripts in load-tests/k6/, unchanged, run for a few iterations against a real hub through
 * the stand-in in load-tests/k6-standin/ (k6 itself cannot be installed here). Their own checks
 * must all pass and their correctness thresholds (rates, counts) must be met. Their latency
 * thresholds are evaluated and printed, but asserted only with K6_STANDIN_STRICT=1: speed is
 * measured in benchmarks, on a quiet machine, never in the shared test run.
 */
const STRICT = process.env.K6_STANDIN_STRICT === '1';

function expectPassed(name: string, result: K6RunResult, wanted: Record<string, number>) {
  expect(result.iterationErrors, `${name}: iterations that threw`).toEqual([]);
  const failedChecks = Object.entries(result.checks).filter(([, c]) => c.fails > 0);
  expect(failedChecks, `${name}: failed checks`).toEqual([]);
  expect(Object.keys(result.checks).length, `${name}: checks ran`).toBeGreaterThan(0);
  for (const t of result.thresholds) {
    const timing = result.metric(t.metric)?.type === 'trend';
    const line = `${name}: ${t.metric} ${t.expression} -> ${t.value === null ? 'no samples' : t.value.toFixed(2)} (${t.samples} samples) ${t.ok ? 'met' : 'NOT met'}`;
    if (timing && !STRICT) {
      if (!t.ok) console.warn(`${line} (latency, not asserted without K6_STANDIN_STRICT=1)`);
      continue;
    }
    expect(t.ok, line).toBe(true);
  }
  for (const [counter, atLeast] of Object.entries(wanted)) {
    expect(result.counters[counter] ?? 0, `${name}: ${counter}`).toBeGreaterThanOrEqual(atLeast);
  }
}

describe('k6 scripts through the stand-in', () => {
  let db: TestDatabase;
  let hub: TestHub;

  beforeAll(async () => {
    db = await createTestDatabase();
    hub = await startTestHub(testConfig(db, { MAP_TICK_MS: '100' }));
  });
  afterAll(async () => {
    await hub?.stop();
    await db?.drop();
  });

  it('when drivers.js, dispatcher.js and orders.js run together against a hub, then their checks pass and their thresholds are met', async () => {
    const common = { BASE_URL: hub.url, ADMIN_TOKEN };
    // Drivers first, so orders find someone; the map watches them all along.
    const drivers = runK6Script({ script: 'load-tests/k6/drivers.js', env: { ...common, DRIVERS: '3', DURATION: '12s', PING_INTERVAL_MS: '500', COMPLETE_AFTER_MS: '300' } });
    const dispatcher = runK6Script({ script: 'load-tests/k6/dispatcher.js', env: { ...common, DURATION: '11s' } });
    await new Promise((r) => setTimeout(r, 4000));
    const orders = runK6Script({ script: 'load-tests/k6/orders.js', env: { BASE_URL: hub.url, WEBHOOK_SECRET, RATE: '1', DURATION: '4s', RETRY_RATIO: '0.5' } });

    const results = { orders: await orders, drivers: await drivers, dispatcher: await dispatcher };
    expectPassed('orders.js', results.orders, { orders_assigned: 1, iterations: 3 });
    expect(results.orders.thresholds.find((t) => t.metric === 'retries_idempotent')?.samples, 'retried orders').toBeGreaterThan(0);
    expectPassed('drivers.js', results.drivers, { sessions_received: 3, locations_sent: 10, assignments_received: 1, deliveries_completed: 1 });
    expectPassed('dispatcher.js', results.dispatcher, { drivers_moved_messages: 1, drivers_moved_positions: 1, delivery_updated_messages: 1 });
  }, 90_000);
});
