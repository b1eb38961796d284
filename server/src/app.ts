import type { Server as HttpServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createAdaptorServer } from '@hono/node-server';
import { Hono } from 'hono';
import { requestId } from 'hono/request-id';
import type { Server } from 'socket.io';
import { createAdminRoutes } from './admin/admin.routes.js';
import type { DispatchService } from './dispatch/dispatch.service.js';
import { createDocsRoutes } from './docs/docs.routes.js';
import { createFleetRoutes } from './fleets/fleets.routes.js';
import type { FleetsStore } from './fleets/fleets.store.js';
import type { Config } from './platform/config.js';
import type { Database } from './platform/db.js';
import { type AuthGate, createAuthGate, createAuthThrottle } from './platform/auth-throttle.js';
import { createClientAddress } from './platform/client-address.js';
import { toHubError } from './platform/errors.js';
import { bodyLimit, createMethodGuard, requestTimer } from './platform/http-edge.js';
import { createLogThrottle, type LogThrottle } from './platform/log-throttle.js';
import { createRateLimits, type RateLimitRules, type RateLimits } from './platform/rate-limits.js';
import { requireRole } from './platform/require-role.js';
import { createLocationRoutes } from './presence/locations.routes.js';
import { createSocketServer, SOCKET_LISTEN_BACKLOG, type SocketServerDeps } from './realtime/socket-server.js';
import type { TrackingLinks } from './tracking/tracking-links.js';
import { createTrackingRoutes } from './tracking/tracking.routes.js';
import type { TrackingService } from './tracking/tracking.service.js';
import { createWebhookRoutes } from './webhooks/webhooks.routes.js';

/** What the socket server gets from the app rather than from the composition root. */
type BuiltByTheApp = 'config' | 'limits' | 'auth' | 'refusalLog' | 'tokenRecheckMs';

export interface AppDeps extends Omit<SocketServerDeps, BuiltByTheApp> {
  config: Config;
  database: Database;
  dispatch: DispatchService;
  tracking: TrackingService;
  links: TrackingLinks;
  /** Seller fleets (`/admin/fleets/:fleet`, and a driver's fleet on `/admin/drivers`). */
  fleets?: { store: FleetsStore; changed: () => Promise<void> };
  /** Further features' routes from the composition root, mounted after the hub's own (see MountedRoutes). */
  routes?: MountedRoutes[];
  edge?: EdgeOptions;
  /**
   * The exposition text of /metrics; by default this registry's. A hub with an API thread serves
   * both threads' metrics from either port.
   */
  metricsText?: () => Promise<string>;
  /** Set when the API thread serves HTTP_PORT: this app then opens no listener of its own there. */
  apiThread?: { port(): number | null };
}

/** What the HTTP API needs: the app's deps without the sockets' own (the API thread has no sockets). */
export type HttpApiDeps = Omit<AppDeps, 'pushes' | 'apiThread'>;

export interface HttpApi {
  hono: Hono;
  health(): Promise<{ body: HealthBody; httpStatus: 200 | 503 }>;
  limits: RateLimits;
  auth: AuthGate;
  /** A throttled address's flood of refusals is one log line per window, not one per request (HTTP and handshakes alike). */
  refusalLog: LogThrottle;
  /** An HTTP server answering with this API, its timeouts set for the clients and proxies in front. */
  server(): HttpServer;
}

/**
 * A feature's routes: a Hono sub-app whose paths are relative to `path`, mounted there. Everything
 * under /admin that its own route does not guard otherwise is admin-only (the admin routes' catch-all).
 */
export interface MountedRoutes {
  path: string;
  routes: Hono;
}

/** Abuse controls at the socket edge; the defaults are the production values, tests shorten them. */
export interface EdgeOptions {
  /** How often long-lived sockets have their token (and, for drivers, their driver row) checked again. */
  tokenRecheckMs?: number;
  rateLimits?: RateLimitRules;
}

export interface HubApp {
  http: HttpServer;
  io: Server;
  hono: Hono;
  listen(): Promise<number>;
  /** The port of the API-only listener (HTTP_PORT), once listening; null without one. */
  apiPort(): number | null;
  /** Graceful: stop accepting, close sockets, drain background work; bounded by SHUTDOWN_TIMEOUT_MS. */
  close(): Promise<void>;
  health(): Promise<{ body: HealthBody; httpStatus: 200 | 503 }>;
  /** Disconnects this node's sockets whose token expired or whose driver is gone; returns how many. */
  recheckSockets(): Promise<number>;
}

export interface HealthBody {
  status: 'ok' | 'degraded';
  postgres: 'up' | 'down';
  redis: 'up' | 'down' | 'disabled';
  node: string;
  uptimeSeconds: number;
}

const startedAt = Date.now();

/** The HTTP API alone: middlewares, every route, the error answer. No listener, no sockets. */
export function createHttpApi(deps: HttpApiDeps): HttpApi {
  const { config, logger, metrics, database, redis } = deps;
  const hono = new Hono();

  const methods = createMethodGuard(hono);
  const auth = createAuthGate({
    throttle: createAuthThrottle({
      redis: redis?.command ?? null,
      breaker: redis?.breaker,
      breakerFor: redis?.breakerFor,
      prefix: config.REDIS_PREFIX,
      failures: config.AUTH_FAILURE_LIMIT,
      windowSeconds: config.AUTH_FAILURE_WINDOW_SECONDS,
    }),
    addressOf: createClientAddress(config.TRUSTED_PROXIES),
    metrics,
  });
  const throttledLog = createLogThrottle();
  hono.use('*', requestTimer((labels, seconds) => metrics.httpRequestSeconds.observe(labels, seconds)));
  hono.use('*', requestId());
  hono.use('*', bodyLimit(config.MAX_BODY_BYTES));
  hono.use('*', methods.options);

  async function health(): Promise<{ body: HealthBody; httpStatus: 200 | 503 }> {
    const postgresUp = await database.ping(2000);
    const redisState: HealthBody['redis'] = !redis ? 'disabled' : deps.presence.redisHealthy() ? 'up' : 'down';
    metrics.redisUp.set(redisState === 'up' ? 1 : 0);
    const body: HealthBody = {
      status: postgresUp && redisState !== 'down' ? 'ok' : 'degraded',
      postgres: postgresUp ? 'up' : 'down',
      redis: redisState,
      node: config.NODE_ID,
      uptimeSeconds: Math.round((Date.now() - startedAt) / 1000),
    };
    return { body, httpStatus: postgresUp ? 200 : 503 };
  }

  hono.get('/health', async (c) => {
    const { body, httpStatus } = await health();
    return c.json(body, httpStatus);
  });
  const metricsText = deps.metricsText ?? (() => metrics.registry.metrics());
  hono.get('/metrics', async (c) => c.text(await metricsText(), 200, { 'content-type': metrics.registry.contentType }));

  const limits = createRateLimits({
    redis: redis?.command ?? null,
    breaker: redis?.breaker,
    breakerFor: redis?.breakerFor,
    prefix: config.REDIS_PREFIX,
    rules: deps.edge?.rateLimits,
  });

  const roleGate = { adminToken: config.ADMIN_TOKEN, auth, tokens: deps.tokens, tokenVersions: deps.tokenVersions };
  const fleets = deps.fleets;
  const admin = createAdminRoutes({
    ...roleGate,
    drivers: deps.drivers,
    deliveries: deps.deliveries,
    events: deps.events,
    fleets: fleets ? { exists: fleets.store.exists, changed: fleets.changed } : undefined,
  });
  // After the admin routes: the rest of /admin (further features' admin routes, and the methods a
  // path does not serve: 401 before 405) needs the admin token.
  admin.use('*', requireRole(roleGate, ['admin']));
  const mounts: MountedRoutes[] = [
    { path: '/drivers', routes: createLocationRoutes({ tokens: deps.tokens, drivers: deps.drivers, presence: deps.presence, limits, metrics }) },
    { path: '/events', routes: createWebhookRoutes({ dispatch: deps.dispatch, deliveries: deps.deliveries, secrets: config.WEBHOOK_SECRETS, auth, logger, metrics, links: deps.links }) },
    { path: '/track', routes: createTrackingRoutes({ tracking: deps.tracking, limits, auth, logger, metrics, tileUrl: config.MAP_TILE_URL }) },
    // Before /admin, whose catch-all would let only the admin read a fleet.
    ...(fleets ? [{ path: '/admin/fleets', routes: createFleetRoutes({ ...roleGate, store: fleets.store, changed: fleets.changed }) }] : []),
    { path: '/admin', routes: admin },
    ...(deps.routes ?? []),
    // The front door, /openapi.json, /asyncapi.json and the pages showing them.
    { path: '/', routes: createDocsRoutes({ health }) },
  ];
  for (const { path, routes } of mounts) hono.route(path, routes);

  hono.notFound((c) => methods.notFound(c));
  hono.onError((err, c) => {
    const hubError = toHubError(err);
    const log = logger.child({ requestId: c.get('requestId') });
    const retryAfterMs = (hubError.details as { retryAfterMs?: unknown } | undefined)?.retryAfterMs;
    if (hubError.code === 'INTERNAL') log.error({ err, path: c.req.path }, 'request failed');
    else if (hubError.code !== 'RATE_LIMITED') log.info({ code: hubError.code, path: c.req.path, message: hubError.message }, 'request refused');
    else {
      const address = auth.httpAddress(c);
      const skipped = throttledLog.take(address, typeof retryAfterMs === 'number' ? retryAfterMs : 1000);
      if (skipped !== null) log.warn({ address, path: c.req.path, refusedSinceLastLine: skipped }, 'request rate limited');
    }
    if (hubError.code === 'RATE_LIMITED' && typeof retryAfterMs === 'number') c.header('retry-after', String(Math.max(1, Math.ceil(retryAfterMs / 1000))));
    // The rest of an oversized body is never read: the connection cannot carry another request
    // after it, and a client that reused it would see its next request fail.
    if (hubError.code === 'PAYLOAD_TOO_LARGE') c.header('connection', 'close');
    return c.json({ error: hubError.toBody() }, hubError.httpStatus as 400);
  });

  const httpServer = (): HttpServer => {
    // @hono/node-server's own Request and Response stand in for the global ones (its default): a
    // JSON answer is then written straight to the socket. With undici's Response every answer built
    // a web ReadableStream and was read back out of it: 99-136 us of CPU per request against 39-50
    // (`npm run bench -- edge`).
    const server = createAdaptorServer({ fetch: hono.fetch }) as HttpServer;
    // Longer than the idle timeouts of the clients and proxies in front (nginx, load balancers, the
    // webhook sender's keep-alive pool): the side that closes an idle connection must be the client,
    // or a request sent as the server closes it dies with ECONNRESET (Node's default is 5 s).
    server.keepAliveTimeout = 65_000;
    server.headersTimeout = 66_000;
    return server;
  };
  return { hono, health, limits, auth, refusalLog: throttledLog, server: httpServer };
}

export function createApp(deps: AppDeps): HubApp {
  const { config } = deps;
  const api = createHttpApi(deps);
  const { hono, health, limits, auth } = api;
  const http = api.server();
  const apiOnly = config.HTTP_PORT === undefined || deps.apiThread ? null : api.server();
  // No websocket on the API port: an upgrade there is closed at once.
  apiOnly?.on('upgrade', (_req, socket) => socket.destroy());
  let apiPort: number | null = null;
  const sockets = createSocketServer(http, { ...deps, limits, auth, refusalLog: api.refusalLog, tokenRecheckMs: deps.edge?.tokenRecheckMs });

  return {
    http,
    io: sockets.io,
    hono,
    health,
    recheckSockets: sockets.recheckSockets,
    async listen() {
      // A reconnect storm is thousands of connections in a second: with Node's default queue of
      // 511 the kernel drops the rest, and each dropped SYN costs its app a 1, 3, 7 s retransmit.
      const port = await listenOn(http, config.PORT, config.HOST, SOCKET_LISTEN_BACKLOG);
      if (apiOnly) apiPort = await listenOn(apiOnly, config.HTTP_PORT!, config.HOST, 511);
      return port;
    },
    apiPort: () => (deps.apiThread ? deps.apiThread.port() : apiPort),
    async close() {
      const bound = new Promise<void>((resolve) => setTimeout(resolve, config.SHUTDOWN_TIMEOUT_MS).unref());
      apiOnly?.close();
      await Promise.race([sockets.close(), bound]);
      http.closeAllConnections?.();
      apiOnly?.closeAllConnections?.();
    },
  };
}

/** Listens and resolves with the port (the one the OS chose for port 0). */
export function listenOn(server: HttpServer, port: number, host: string, backlog: number): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ port, host, backlog }, () => {
      server.off('error', reject);
      resolve((server.address() as AddressInfo).port);
    });
  });
}
