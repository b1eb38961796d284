/**
 * Driver simulator, for demos and load:
 *
 *   npm run simulate -- --drivers 50 [--url http://127.0.0.1:3000] [--admin-token T]
 *     [--orders-per-minute 30 --webhook-secret whsec_...] [--duration-s 60]
 *     [--centre 52.52,13.405] [--radius-km 3] [--speed 10] [--ping-ms 1000]
 *
 * Creates drivers through the admin API, connects each through the driver client (as a driver app
 * would), puts them on duty and drives them between random waypoints around the centre. An
 * assignment is played through: drive to the pickup, PICKED_UP, drive to the dropoff, DELIVERED.
 * With a webhook secret it also posts signed "seller order ready" webhooks at the given rate.
 * Stops by itself after --duration-s (or on Ctrl+C) and prints a summary. The simulation itself
 * lives in simulation.ts, shared with `npm run demo`.
 */
import { parseArgs } from 'node:util';
import { SimulationError, type SimulationOptions, runSimulation } from './simulation.js';

type Options = SimulationOptions & { durationS: number };

function fail(message: string): never {
  console.error(`simulate: ${message}`);
  process.exit(2);
}

function positiveNumber(name: string, raw: string | undefined, fallback: number, { integer = false, allowZero = false } = {}): number {
  if (raw === undefined) return fallback;
  const n = Number(raw);
  if (!Number.isFinite(n) || n < 0 || (!allowZero && n === 0) || (integer && !Number.isInteger(n))) {
    fail(`--${name} must be a ${integer ? 'whole ' : ''}number${allowZero ? '' : ' above 0'}, got "${raw}"`);
  }
  return n;
}

function parseOptions(argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    options: {
      drivers: { type: 'string' },
      url: { type: 'string' },
      'admin-token': { type: 'string' },
      'orders-per-minute': { type: 'string' },
      'webhook-secret': { type: 'string' },
      'duration-s': { type: 'string' },
      centre: { type: 'string' },
      center: { type: 'string' },
      'radius-km': { type: 'string' },
      speed: { type: 'string' },
      'ping-ms': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help) {
    console.log('usage: npm run simulate -- --drivers N [--url URL] [--admin-token T] [--orders-per-minute M --webhook-secret whsec_...] [--duration-s S] [--centre lat,lng] [--radius-km R] [--speed m/s] [--ping-ms MS]');
    process.exit(0);
  }
  const adminToken = values['admin-token'] ?? process.env.ADMIN_TOKEN;
  if (!adminToken) fail('an admin token is needed to create drivers: --admin-token or ADMIN_TOKEN');
  const webhookSecret = values['webhook-secret'] ?? process.env.WEBHOOK_SECRET?.split(/\s+/)[0];
  const ordersPerMinute = positiveNumber('orders-per-minute', values['orders-per-minute'], 0, { allowZero: true });
  if (ordersPerMinute > 0 && !webhookSecret) fail('--orders-per-minute needs --webhook-secret (or WEBHOOK_SECRET) to sign the webhooks');
  const centreRaw = values.centre ?? values.center ?? '52.52,13.405';
  const [lat, lng] = centreRaw.split(',').map(Number);
  if (!Number.isFinite(lat) || !Number.isFinite(lng) || Math.abs(lat) > 85 || Math.abs(lng) > 180) fail(`--centre must be "lat,lng", got "${centreRaw}"`);
  return {
    drivers: positiveNumber('drivers', values.drivers, 10, { integer: true }),
    url: (values.url ?? process.env.HUB_URL ?? 'http://127.0.0.1:3000').replace(/\/+$/, ''),
    adminToken,
    ordersPerMinute,
    webhookSecret,
    durationS: positiveNumber('duration-s', values['duration-s'], 60),
    centre: { lat, lng },
    radiusKm: positiveNumber('radius-km', values['radius-km'], 3),
    speed: positiveNumber('speed', values.speed, 10),
    pingMs: positiveNumber('ping-ms', values['ping-ms'], 1000, { integer: true }),
  };
}

async function main(): Promise<void> {
  const opts = parseOptions(process.argv.slice(2));

  const health = await fetch(`${opts.url}/health`, { signal: AbortSignal.timeout(5000) }).catch((err: Error) => fail(`hub not reachable at ${opts.url}: ${err.message}`));
  if (!health.ok) fail(`hub at ${opts.url} is unhealthy: ${health.status} ${await health.text()}`);

  console.log(`simulate: ${opts.drivers} drivers around ${opts.centre.lat},${opts.centre.lng} (r=${opts.radiusKm} km) for ${opts.durationS} s against ${opts.url}`);
  const stop = new AbortController();
  process.once('SIGINT', () => stop.abort());
  process.once('SIGTERM', () => stop.abort());
  try {
    const summary = await runSimulation(opts, { signal: stop.signal, log: (line) => console.log(`simulate: ${line}`) });
    console.log(JSON.stringify(summary, null, 2));
    process.exit(summary.drivers.connected === 0 ? 1 : 0);
  } catch (err) {
    if (err instanceof SimulationError) fail(err.message);
    throw err;
  }
}

await main();
