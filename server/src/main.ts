import { randomBytes } from 'node:crypto';
import { pathToFileURL } from 'node:url';
import { isMainThread } from 'node:worker_threads';
import type { Registry } from 'prom-client';
import type { Hono } from 'hono';
import { createTokenVersionsStore } from './admin/token-versions.store.js';
import { createApp, createHttpApi, type EdgeOptions, type HttpApiDeps, type HubApp, listenOn } from './app.js';
import { createDeliveriesService } from './deliveries/deliveries.service.js';
import { createDeliveriesStore, toAssignmentPush } from './deliveries/deliveries.store.js';
import { createDeliveryAnnouncer } from './deliveries/delivery-announcer.js';
import { createDispatchService } from './dispatch/dispatch.service.js';
import { createOffersStore } from './dispatch/offers.store.js';
import { createFleetDirectory } from './fleets/fleet-directory.js';
import { createFleetsStore } from './fleets/fleets.store.js';
import { createOutboxRelay } from './outbox/outbox.relay.js';
import { createOutboxRoutes } from './outbox/outbox.routes.js';
import { createOutboxStore } from './outbox/outbox.store.js';
import { type ApiThread, type MainThreadLink, startApiThread } from './platform/api-thread.js';
import { type Config, ConfigError, parseConfig } from './platform/config.js';
import { openDatabase } from './platform/db.js';
import { HubEvents } from './platform/hub-events.js';
import { createLoadGauge, neverOverloaded } from './platform/load-gauge.js';
import { createLogger, type Logger, wantsPrettyLogs } from './platform/logger.js';
import { createMetrics } from './platform/metrics.js';
import { connectRedis, createRedisClients, createRedisClusterClients, type RedisClients } from './platform/redis.js';
import { logStartupNotes } from './platform/startup-notes.js';
import { registerStateGauges } from './platform/state-gauges.js';
import { createTokenService } from './platform/tokens.js';
import { createDriversStore } from './drivers/drivers.store.js';
import { createPushService } from './pushes/pushes.service.js';
import { createPushesStore } from './pushes/pushes.store.js';
import { createPresenceService } from './presence/presence.service.js';
import { createClusterPresenceStore } from './presence/presence-cluster.store.js';
import { createNoopPresenceStore, createPresenceStore, type PresenceStore } from './presence/presence.store.js';
import { createMapRoutes } from './realtime/map.routes.js';
import { createTrackingLinks } from './tracking/tracking-links.js';
import { createTrackingService } from './tracking/tracking.service.js';
import { createTrackingStore } from './tracking/tracking.store.js';

export interface RunningHub {
  app: HubApp;
  port: number;
  config: Config;
  stop(): Promise<void>;
}

export interface HubExtensions {
  /** Public routes with paths from the root; by default the dispatcher map page. */
  publicRoutes?: Hono[];
  /** Rate limits and token recheck period; production defaults when absent. */
  edge?: EdgeOptions;
}

/** The composition root: clients, stores, services, then the app. Nothing connects at import time. */
export async function startHub(config: Config, logger: Logger, extensions: HubExtensions = {}): Promise<RunningHub> {
  const parts = await composeHub(config, logger, null);
  const { metrics, redis, events, deliveriesStore, outboxStore, pushesStore, presence, dispatch, links } = parts;
  // The pushes' tracking lives where the sockets are: the API thread's pushes come here as events.
  const pushes = createPushService({
    store: pushesStore,
    events,
    logger,
    metrics,
    config: { retryMs: config.PUSH_RETRY_MS, maxResends: config.PUSH_MAX_RESENDS },
  });
  const relay = createOutboxRelay({
    store: outboxStore,
    logger,
    metrics,
    config: {
      url: config.VENDURE_WEBHOOK_URL,
      secret: config.VENDURE_WEBHOOK_SECRET,
      pollMs: config.OUTBOX_POLL_MS,
      requestTimeoutMs: config.OUTBOX_REQUEST_TIMEOUT_MS,
      maxAgeSeconds: config.OUTBOX_MAX_AGE_SECONDS,
    },
    trackingUrl: (token) => links.urlFor(token),
  });

  const clusterRedis = redis?.layout === 'cluster' ? redis : null;
  const breakerView = clusterRedis
    ? {
        get state() {
          return clusterRedis.breaker.state === 'open' || clusterRedis.shards.anyOpen() ? ('open' as const) : ('closed' as const);
        },
      }
    : redis?.breaker;
  registerStateGauges(metrics, { pendingDeliveries: deliveriesStore.countPending, outboxLag: outboxStore.lag, breaker: breakerView });

  let apiThread: ApiThread | null = null;
  const app = createApp({
    ...parts.httpDeps,
    pushes,
    routes: [
      { path: '/admin/outbox', routes: createOutboxRoutes({ store: outboxStore }) },
      ...(extensions.publicRoutes ?? [createMapRoutes({ tileUrl: config.MAP_TILE_URL })]).map((routes) => ({ path: '/', routes })),
    ],
    edge: extensions.edge,
    ...(config.API_THREAD
      ? { apiThread: { port: () => apiThread?.port() ?? null }, metricsText: () => (apiThread ? apiThread.metricsText() : metrics.registry.metrics()) }
      : {}),
  });
  const port = await app.listen();
  parts.listeningOn(port);
  presence.start();
  pushes.start();
  dispatch.start();
  relay.start();
  if (config.API_THREAD) {
    try {
      apiThread = await startApiThread({
        entry: new URL(import.meta.url.endsWith('.ts') ? './api-thread-entry.ts' : './api-thread-entry.js', import.meta.url),
        data: { config, mainPort: port },
        logger,
        events,
        registry: metrics.registry,
        restarted: () => metrics.apiThreadRestarts.inc(),
        shutdownTimeoutMs: config.SHUTDOWN_TIMEOUT_MS,
      });
    } catch (err) {
      await stopParts();
      throw err;
    }
  }

  async function stopParts(): Promise<void> {
    dispatch.stop();
    await app.close();
    await pushes.stop();
    await relay.stop();
    await parts.close();
  }
  let stopping: Promise<void> | null = null;
  return {
    app,
    port,
    config,
    stop() {
      stopping ??= (async () => {
        // The API first: no webhook is taken while the rest closes.
        await apiThread?.stop();
        await stopParts();
      })();
      return stopping;
    },
  };
}

/**
 * The API thread's hub (API_THREAD=true): the same stores and services on connections of its own,
 * serving HTTP_PORT only. It runs no background work (pending retries, sweeps, the outbox): the
 * main thread of every node does, and its events go to the main thread's sockets.
 */
export async function startApiThreadHub(config: Config, logger: Logger, link: (registry: Registry) => MainThreadLink, mainPort: number): Promise<{ port: number; stopRequested: Promise<void>; stop(): Promise<void> }> {
  const parts = await composeHub(config, logger, link);
  parts.listeningOn(mainPort);
  const api = createHttpApi({ ...parts.httpDeps, metricsText: parts.thread!.metricsText });
  const server = api.server();
  const port = await listenOn(server, config.HTTP_PORT!, config.HOST, 511);
  parts.presence.start('positions-only');
  parts.thread!.listening(port);
  return {
    port,
    stopRequested: parts.thread!.stopRequested,
    async stop() {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeIdleConnections?.();
      await Promise.race([closed, new Promise<void>((resolve) => setTimeout(resolve, config.SHUTDOWN_TIMEOUT_MS).unref())]);
      server.closeAllConnections?.();
      await parts.close();
    },
  };
}

/** Clients, stores and services, shared by the hub and its API thread. */
async function composeHub(config: Config, logger: Logger, link: ((registry: Registry) => MainThreadLink) | null) {
  // With an API thread each thread's series carry a `thread` label: /metrics merges the two.
  const metrics = createMetrics(config.NODE_ID, config.API_THREAD ? (link ? 'api' : 'main') : undefined);
  const thread = link ? link(metrics.registry) : null;
  const database = openDatabase({ url: config.DATABASE_URL, dataDir: config.DATA_DIR });
  try {
    if (!(await database.ping(database.kind === 'pglite' ? 60_000 : 10_000))) throw new Error('database unreachable');
    // The main thread migrated before it started the API thread.
    if (config.RUN_MIGRATIONS && !thread) await database.migrate();
  } catch (err) {
    await database.close().catch(() => {});
    throw new Error(`PostgreSQL is not usable (${database.kind}): ${(err as Error).message}`, { cause: err });
  }

  let redis: RedisClients | null = null;
  if (config.REDIS_URL) {
    redis = createRedisClients({ url: config.REDIS_URL, commandTimeoutMs: config.REDIS_COMMAND_TIMEOUT_MS, logger });
  } else if (config.REDIS_CLUSTER_NODES) {
    redis = createRedisClusterClients({ nodes: config.REDIS_CLUSTER_NODES, commandTimeoutMs: config.REDIS_COMMAND_TIMEOUT_MS, logger });
  }
  if (redis && !(await connectRedis(redis, 3000))) logger.warn('redis unreachable at start; running degraded until it returns');
  const presenceStore = ((): PresenceStore => {
    if (!redis) return createNoopPresenceStore();
    const common = { breaker: redis.breaker, prefix: config.REDIS_PREFIX, heartbeatTtlSeconds: config.HEARTBEAT_TTL_SECONDS };
    if (redis.layout === 'single') return createPresenceStore({ ...common, redis: redis.command });
    return createClusterPresenceStore({
      ...common,
      cluster: redis.command,
      shards: redis.shards,
      cellDegrees: config.REDIS_CELL_DEGREES,
      commandTimeoutMs: config.REDIS_COMMAND_TIMEOUT_MS,
    });
  })();

  // Unset, PUBLIC_URL names the port the hub listens on, known only once it listens (PORT=0).
  let publicUrl = config.PUBLIC_URL ?? `http://localhost:${config.PORT}`;
  const links = createTrackingLinks(() => publicUrl);

  const events = thread?.events ?? new HubEvents();
  const drivers = createDriversStore(database);
  const outboxStore = createOutboxStore(database);
  const pushesStore = createPushesStore(database);
  const deliveriesStore = createDeliveriesStore({ database, drivers, outbox: outboxStore, pushes: pushesStore });
  const offersStore = createOffersStore({ database, drivers, pushes: pushesStore, outbox: outboxStore });
  const fleetsStore = createFleetsStore(database);
  const fleetDirectory = createFleetDirectory({ store: fleetsStore, logger });
  await fleetDirectory.start();
  // Past this lag the loop is not keeping up: positions are refused until it does (sessions,
  // heartbeats and claims go on), rather than acknowledged and written seconds late.
  const load = config.SHED_LAG_MS > 0 ? createLoadGauge({ lagLimitMs: config.SHED_LAG_MS }) : neverOverloaded;
  const presence = createPresenceService({
    load,
    drivers,
    store: presenceStore,
    events,
    logger,
    metrics,
    activeAssignments: async (driverIds) => {
      const rows = await deliveriesStore.activeForDrivers(driverIds);
      return new Map([...rows].map(([driverId, row]) => [driverId, toAssignmentPush(row)]));
    },
    openOffers: offersStore.openForDrivers,
    fleets: fleetDirectory.membership,
    config: {
      heartbeatTtlSeconds: config.HEARTBEAT_TTL_SECONDS,
      locationTickMs: config.LOCATION_TICK_MS,
      positionFlushMs: config.POSITION_FLUSH_MS,
      reconcileMs: config.RECONCILE_MS,
      maxRadiusKm: config.ASSIGN_MAX_RADIUS_KM,
      fairnessBandMeters: config.FAIRNESS_BAND_METERS,
    },
  });
  if (redis) metrics.watchRedis(presence.redisHealthy);
  const announce = createDeliveryAnnouncer({ events, presence });
  const dispatch = createDispatchService({
    deliveries: deliveriesStore,
    presence,
    announce,
    events,
    logger,
    metrics,
    links,
    scoreFacts: drivers.scoreFacts,
    pools: fleetDirectory,
    offers: offersStore,
    config: {
      maxRadiusKm: config.ASSIGN_MAX_RADIUS_KM,
      pendingRetryMs: config.PENDING_RETRY_MS,
      fairnessBandMeters: config.FAIRNESS_BAND_METERS,
      mode: config.DISPATCH_MODE,
      offerTimeoutSeconds: config.OFFER_TIMEOUT_SECONDS,
      offerMaxAttempts: config.OFFER_MAX_ATTEMPTS,
      offerSweepMs: Math.min(500, Math.max(50, Math.floor(config.PENDING_RETRY_MS / 4))),
    },
  });
  const deliveries = createDeliveriesService({
    store: deliveriesStore,
    offers: offersStore,
    offerAnswers: { store: offersStore, ended: dispatch.offerEnded },
    metrics,
    pushes: pushesStore,
    announce,
    events,
    logger,
    assignNow: (deliveryId) => dispatch.assignPendingDelivery(deliveryId),
  });
  const tracking = createTrackingService({ store: createTrackingStore(database), ttlHours: config.TRACKING_TTL_HOURS });

  const httpDeps = {
    config,
    logger,
    metrics,
    database,
    redis,
    tokens: createTokenService(config.JWT_SECRET),
    tokenVersions: createTokenVersionsStore(database),
    events,
    drivers,
    presence,
    dispatch,
    deliveries,
    tracking,
    links,
    fleets: { store: fleetsStore, changed: fleetDirectory.refresh },
  } satisfies HttpApiDeps;
  return {
    metrics,
    thread,
    redis,
    events,
    deliveriesStore,
    outboxStore,
    pushesStore,
    presence,
    dispatch,
    links,
    httpDeps,
    /** Unset, PUBLIC_URL names the port the hub listens on, known only once it listens (PORT=0). */
    listeningOn(port: number) {
      if (!config.PUBLIC_URL) publicUrl = `http://localhost:${port}`;
    },
    /** Stops what was composed here and closes its clients, once the edges that use them are closed. */
    async close(): Promise<void> {
      fleetDirectory.stop();
      await presence.stop();
      await redis?.close();
      await database.close();
      load.stop();
    },
  };
}

async function run(): Promise<void> {
  let config: Config;
  try {
    config = parseConfig(process.env, () => randomBytes(32).toString('base64url'));
  } catch (err) {
    if (err instanceof ConfigError) {
      console.error(err.message);
      process.exit(2);
    }
    throw err;
  }
  const logger = createLogger({
    level: config.LOG_LEVEL,
    nodeId: config.NODE_ID,
    pretty: wantsPrettyLogs({ production: config.production, isTTY: process.stdout.isTTY }),
  });
  process.on('unhandledRejection', (err) => logger.error({ err }, 'unhandled rejection'));

  let hub: RunningHub;
  try {
    hub = await startHub(config, logger);
  } catch (err) {
    logger.fatal({ reason: (err as Error).message }, 'hub could not start');
    process.exit(1);
  }
  logger.info(
    {
      port: hub.port,
      ...(hub.app.apiPort() !== null ? { apiPort: hub.app.apiPort() } : {}),
      database: config.DATABASE_URL ? 'postgres' : `embedded PGlite in ${config.DATA_DIR}`,
      redis: config.REDIS_URL ? 'shared (multi-node)' : config.REDIS_CLUSTER_NODES ? 'redis cluster (multi-node, sharded)' : 'disabled (single node)',
      vendure: config.VENDURE_WEBHOOK_URL ? 'status events sent' : 'status events kept, not sent',
    },
    `dispatch hub listening on ${hub.port}`,
  );
  // Webhooks belong on the API port when there is one.
  logStartupNotes(config, logger, `http://localhost:${hub.app.apiPort() ?? hub.port}`);

  const shutdown = (signal: string) => {
    logger.info({ signal }, 'shutting down');
    const force = setTimeout(() => process.exit(1), config.SHUTDOWN_TIMEOUT_MS + 2000);
    force.unref();
    hub.stop().then(
      () => process.exit(0),
      (err) => {
        logger.error({ err }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.once('SIGTERM', () => shutdown('SIGTERM'));
  process.once('SIGINT', () => shutdown('SIGINT'));
}

// A worker thread sees the process's argv too: only the main thread runs the hub from here.
if (isMainThread && process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  await run();
}
