/**
 * `npm run demo`: the whole system on one machine with no services. Starts the hub in this process
 * (embedded PGlite in a temporary DATA_DIR, single node, no Redis), runs the driver simulation
 * against it with orders every few seconds, and prints one link: the dispatcher map, already
 * authorised. Ctrl+C stops the simulation, then the hub, and removes the temporary data.
 *
 * Environment: PORT (default 3000, 0 for any free port), DATA_DIR (default: a fresh temporary
 * directory, removed on exit), DEMO_DRIVERS (25), DEMO_ORDERS_PER_MINUTE (20),
 * DEMO_CENTRE ("52.52,13.405"), LOG_LEVEL (warn).
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startHub, type RunningHub } from '../server/src/main.js';
import { ConfigError, parseConfig } from '../server/src/platform/config.js';
import { createLogger } from '../server/src/platform/logger.js';
import { type Simulation, startSimulation } from './simulation.js';

const secret = () => randomBytes(32).toString('base64url');

function numberFromEnv(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isFinite(n) || n < 0) {
    console.error(`demo: ${name} must be a number, got "${raw}"`);
    process.exit(2);
  }
  return n;
}

async function main(): Promise<void> {
  const temporaryDataDir = process.env.DATA_DIR ? null : mkdtempSync(join(tmpdir(), 'dispatch-demo-'));
  const removeData = () => {
    if (temporaryDataDir) rmSync(temporaryDataDir, { recursive: true, force: true });
  };
  const [lat, lng] = (process.env.DEMO_CENTRE ?? '52.52,13.405').split(',').map(Number);
  if (!Number.isFinite(lat) || !Number.isFinite(lng)) {
    console.error('demo: DEMO_CENTRE must be "lat,lng"');
    process.exit(2);
  }

  let config;
  try {
    config = parseConfig(
      {
        ...process.env,
        HOST: process.env.HOST ?? '127.0.0.1',
        PORT: process.env.PORT ?? '3000',
        DATA_DIR: temporaryDataDir ?? process.env.DATA_DIR,
        // A demo is one machine with nothing installed: embedded database, single node.
        DATABASE_URL: '',
        REDIS_URL: '',
        ADMIN_TOKEN: secret(),
        JWT_SECRET: secret(),
        WEBHOOK_SECRET: `whsec_${randomBytes(24).toString('base64')}`,
        VENDURE_WEBHOOK_URL: '',
        LOG_LEVEL: process.env.LOG_LEVEL ?? 'warn',
      },
      secret,
    );
  } catch (err) {
    removeData();
    if (err instanceof ConfigError) {
      console.error(`demo: ${err.message}`);
      process.exit(2);
    }
    throw err;
  }
  const logger = createLogger({ level: config.LOG_LEVEL, nodeId: config.NODE_ID });

  // Kept as promises so a Ctrl+C during startup waits for what is starting, then stops it.
  let hubStarting: Promise<RunningHub | null> = Promise.resolve(null);
  let simulationStarting: Promise<Simulation | null> = Promise.resolve(null);
  let stopping = false;
  const shutdown = async (signal: string, exitCode = 0) => {
    if (stopping) return;
    stopping = true;
    console.log(`\ndemo: ${signal}, stopping`);
    const force = setTimeout(() => {
      console.error('demo: could not stop in time');
      process.exit(1);
    }, config.SHUTDOWN_TIMEOUT_MS + 5000);
    force.unref();
    try {
      const summary = await (await simulationStarting)?.stop();
      await (await hubStarting)?.stop();
      removeData();
      if (summary) console.log(`demo: ${summary.seconds} s, ${summary.deliveries.assignments} assignments, ${summary.deliveries.delivered} delivered, ${summary.pings.confirmed}/${summary.pings.sent} fixes stored`);
      process.exit(exitCode);
    } catch (err) {
      console.error(`demo: stopping failed: ${(err as Error).message}`);
      process.exit(1);
    }
  };
  process.once('SIGINT', () => void shutdown('SIGINT'));
  process.once('SIGTERM', () => void shutdown('SIGTERM'));
  process.on('unhandledRejection', (err) => logger.error({ err }, 'unhandled rejection'));

  console.log('demo: starting the hub (embedded database, single node)...');
  hubStarting = startHub(config, logger).catch((err: Error) => {
    removeData();
    console.error(`demo: the hub could not start: ${err.message}`);
    process.exit(1);
  });
  const hub = await hubStarting;
  if (!hub || stopping) return;
  // Bound to 127.0.0.1 unless HOST says otherwise; the link is for this machine's browser.
  const url = `http://127.0.0.1:${hub.port}`;

  const drivers = Math.max(1, Math.floor(numberFromEnv('DEMO_DRIVERS', 25)));
  console.log(`demo: ${drivers} drivers coming on duty around ${lat},${lng}...`);
  simulationStarting = startSimulation({
    drivers,
    url,
    adminToken: config.ADMIN_TOKEN,
    ordersPerMinute: numberFromEnv('DEMO_ORDERS_PER_MINUTE', 20),
    webhookSecret: config.WEBHOOK_SECRETS[0],
    centre: { lat, lng },
    radiusKm: 2.5,
    // Brisk, so jobs visibly complete within a few minutes.
    speed: 15,
    pingMs: 1000,
    namePrefix: 'Driver',
  }).catch((err: Error) => {
    console.error(`demo: the simulation could not start: ${err.message}`);
    return null;
  });
  const simulation = await simulationStarting;
  if (!simulation) return shutdown('no simulation', 1);
  if (stopping) return;

  const res = await fetch(`${url}/admin/tokens`, {
    method: 'POST',
    headers: { authorization: `Bearer ${config.ADMIN_TOKEN}`, 'content-type': 'application/json' },
    body: JSON.stringify({ role: 'dispatcher', subject: 'demo' }),
  });
  if (!res.ok) {
    console.error(`demo: could not mint a dispatcher token: ${res.status} ${await res.text()}`);
    return shutdown('no dispatcher token', 1);
  }
  const { token } = (await res.json()) as { token: string };
  console.log(`\nOpen the live map: ${url}/map#token=${token}\n`);
  const perMinute = numberFromEnv('DEMO_ORDERS_PER_MINUTE', 20);
  const orders = perMinute > 0 ? `an order every ${Math.round((60 / perMinute) * 10) / 10} s` : 'no orders';
  console.log(`demo: ${simulation.stats.driversConnected} drivers on duty, ${orders}. Press Ctrl+C to stop.`);
}

await main();
