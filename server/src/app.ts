import type { Server as HttpServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createAdaptorServer } from '@hono/node-server';
import { RedisAdapter, type RedisAdapterOptions } from '@socket.io/redis-adapter';
import { Hono } from 'hono';
import { requestId } from 'hono/request-id';
import { Server, type Socket } from 'socket.io';
import { createAdminRoutes, requireRole } from './admin/admin.routes.js';
import type { TokenVersionsStore } from './admin/token-versions.store.js';
import type { DeliveriesService } from './deliveries/deliveries.service.js';
import type { DispatchService } from './dispatch/dispatch.service.js';
import { createDocsRoutes } from './docs/docs.routes.js';
import type { Config } from './platform/config.js';
import type { Database } from './platform/db.js';
import { createAuthGate, createAuthThrottle } from './platform/auth-throttle.js';
import { createClientAddress } from './platform/client-address.js';
import { HubError, toHubError } from './platform/errors.js';
import { bodyLimit, createMethodGuard } from './platform/http-edge.js';
import type { HubEvents } from './platform/hub-events.js';
import type { Logger } from './platform/logger.js';
import type { Metrics } from './platform/metrics.js';
import { createLogThrottle, createRateLimits, type RateLimitRules } from './platform/rate-limits.js';
import type { RedisClients } from './platform/redis.js';
import type { TokenService } from './platform/tokens.js';
import type { DriversStore } from './presence/drivers.store.js';
import { attachDriversNamespace, type DriversNamespace } from './presence/drivers.socket.js';
import { createLocationRoutes } from './presence/locations.routes.js';
import type { PresenceService } from './presence/presence.service.js';
import type { PushService } from './pushes/pushes.service.js';
import { attachDispatchNamespace, type DispatchNamespace } from './realtime/dispatch.socket.js';
import { createWebhookRoutes } from './webhooks/webhooks.routes.js';

export interface AppDeps {
  config: Config;
  logger: Logger;
  metrics: Metrics;
  database: Database;
  redis: RedisClients | null;
  tokens: TokenService;
  tokenVersions: TokenVersionsStore;
  events: HubEvents;
  drivers: DriversStore;
  presence: PresenceService;
  pushes: PushService;
  dispatch: DispatchService;
  deliveries: DeliveriesService;
  /** Extra feature routes mounted by the composition root: admin ones behind the admin token. */
  adminRoutes?: Hono[];
  publicRoutes?: Hono[];
  edge?: EdgeOptions;
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

/**
 * A broadcast with acknowledgements asks Redis how many nodes listen, and Socket.IO does not catch
 * that request's failure: with Redis away it would surface as an unhandled rejection. Counting no
 * other node then is right (the broadcast reaches this node's sockets and times out for the rest,
 * which the pushes' re-send covers).
 */
class QuietRedisAdapter extends RedisAdapter {
  override serverCount(): Promise<number> {
    return super.serverCount().catch(() => 1);
  }
}

/** True when a browser's Origin names the very host it connected to (a page the hub served). */
function sameOrigin(origin: string, host: string | undefined): boolean {
  if (!host) return false;
  try {
    return new URL(origin).host === host;
  } catch {
    return false;
  }
}

export function createApp(deps: AppDeps): HubApp {
  const { config, logger, metrics, database, redis } = deps;
  const hono = new Hono();

  const methods = createMethodGuard(hono);
  const auth = createAuthGate({
    throttle: createAuthThrottle({
      redis: redis?.command ?? null,
      breaker: redis?.breaker,
      prefix: config.REDIS_PREFIX,
      failures: config.AUTH_FAILURE_LIMIT,
      windowSeconds: config.AUTH_FAILURE_WINDOW_SECONDS,
    }),
    addressOf: createClientAddress(config.TRUSTED_PROXIES),
    metrics,
  });
  /** A throttled address's flood of refusals is one log line per window, not one per request. */
  const throttledLog = createLogThrottle();
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
  hono.get('/metrics', async (c) => c.text(await metrics.registry.metrics(), 200, { 'content-type': metrics.registry.contentType }));

  const limits = createRateLimits({
    redis: redis?.command ?? null,
    breaker: redis?.breaker,
    prefix: config.REDIS_PREFIX,
    rules: deps.edge?.rateLimits,
  });

  hono.route('/', createLocationRoutes({ tokens: deps.tokens, drivers: deps.drivers, presence: deps.presence, limits, metrics }));
  hono.route('/', createWebhookRoutes({ dispatch: deps.dispatch, deliveries: deps.deliveries, secrets: config.WEBHOOK_SECRETS, auth, logger, metrics }));
  hono.route('/', createAdminRoutes({ adminToken: config.ADMIN_TOKEN, auth, tokens: deps.tokens, tokenVersions: deps.tokenVersions, drivers: deps.drivers, deliveries: deps.deliveries, events: deps.events }));
  for (const routes of deps.adminRoutes ?? []) {
    const guarded = new Hono();
    guarded.use('/admin/*', requireRole({ adminToken: config.ADMIN_TOKEN, auth, tokens: deps.tokens, tokenVersions: deps.tokenVersions }, ['admin']));
    guarded.route('/', routes);
    hono.route('/', guarded);
  }
  for (const routes of deps.publicRoutes ?? []) hono.route('/', routes);
  // The front door, /openapi.json, /asyncapi.json and the pages showing them.
  hono.route('/', createDocsRoutes({ health }));

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

  const http = createAdaptorServer({ fetch: hono.fetch, overrideGlobalObjects: false }) as HttpServer;
  // Longer than the idle timeouts of the clients and proxies in front (nginx, load balancers, the
  // webhook sender's keep-alive pool): the side that closes an idle connection must be the client,
  // or a request sent as the server closes it dies with ECONNRESET (Node's default is 5 s).
  http.keepAliveTimeout = 65_000;
  http.headersTimeout = 66_000;
  const io = new Server(http, {
    transports: ['websocket'],
    serveClient: false,
    maxHttpBufferSize: 32 * 1024,
    pingInterval: 25_000,
    pingTimeout: 20_000,
    connectTimeout: 10_000,
    allowRequest: (req, callback) => {
      const origin = req.headers.origin;
      // Browsers always send Origin; native driver apps do not and are not affected. The hub's own
      // pages (the /map) are same-origin and need no entry in the list.
      if (origin && config.ALLOWED_ORIGINS.length > 0 && !config.ALLOWED_ORIGINS.includes(origin) && !sameOrigin(origin, req.headers.host)) {
        logger.info({ origin }, 'socket handshake refused: origin not allowed');
        return callback('origin not allowed', false);
      }
      callback(null, true);
    },
  });
  if (redis) {
    const options: Partial<RedisAdapterOptions> = { key: `${config.REDIS_PREFIX}socket.io`, requestsTimeout: 3000 };
    // Socket.IO constructs the adapter with `new`, so a function, not an arrow.
    io.adapter(function quietAdapter(nsp: unknown) {
      return new QuietRedisAdapter(nsp, redis.publisher, redis.subscriber, options);
    } as never);
  }

  /** The first step of every handshake: the address's failure budget, then the token (no database yet). */
  const authenticate = async (socket: Socket, next: (err?: Error) => void) => {
    const address = auth.handshakeAddress(socket.handshake);
    try {
      await auth.check(address);
      if (socket.handshake.query?.token !== undefined) throw new HubError('TOKEN_INVALID', 'tokens are accepted in the handshake auth only');
      const claims = await deps.tokens.verify((socket.handshake.auth as { token?: unknown } | undefined)?.token);
      socket.data = { role: claims.role, subject: claims.subject, tokenExpiresAt: claims.expiresAt, tokenVersion: claims.version };
      next();
    } catch (err) {
      const hubError = toHubError(err);
      metrics.inputRejected.inc({ event: 'handshake', code: hubError.code });
      if (hubError.code === 'RATE_LIMITED') {
        const skipped = throttledLog.take(address, (hubError.details as { retryAfterMs: number }).retryAfterMs);
        if (skipped !== null) logger.warn({ address, namespace: socket.nsp.name, refusedSinceLastLine: skipped }, 'socket handshake rate limited');
      } else {
        if (hubError.code.startsWith('TOKEN_')) await auth.failed('handshake', address);
        logger.info({ code: hubError.code, namespace: socket.nsp.name }, 'socket handshake refused');
      }
      next(Object.assign(new Error(hubError.code), { data: hubError.toBody() }));
    }
  };

  const driversNsp = io.of('/drivers') as unknown as DriversNamespace;
  const dispatchNsp = io.of('/dispatch') as unknown as DispatchNamespace;
  driversNsp.use(authenticate as never);
  dispatchNsp.use(authenticate as never);
  const driversSocket = attachDriversNamespace(driversNsp, {
    storedTickMs: config.LOCATION_CONFIRM_MS,
    presence: deps.presence,
    pushes: deps.pushes,
    drivers: deps.drivers,
    deliveries: deps.deliveries,
    events: deps.events,
    logger,
    metrics,
    limits,
    auth,
    clustered: redis !== null,
  });
  const dispatchSocket = attachDispatchNamespace(dispatchNsp, {
    presence: deps.presence,
    drivers: deps.drivers,
    deliveries: deps.deliveries,
    tokenVersions: deps.tokenVersions,
    events: deps.events,
    logger,
    metrics,
    tickMs: config.MAP_TICK_MS,
    clustered: redis !== null,
    limits,
    auth,
  });

  /**
   * A handshake checks the token once, but a socket can live for days: each node looks at its own
   * sockets again now and then, and closes those whose token expired, was revoked (the subject's
   * token version moved on) or names a driver that no longer exists.
   */
  async function recheckSockets(): Promise<number> {
    const now = Date.now();
    let closed = 0;
    const refuse = (socket: Socket<any, any, any, { subject: string }>, reason: string) => {
      logger.info({ socket: socket.id, namespace: socket.nsp.name, subject: socket.data.subject, reason }, 'socket closed on recheck');
      socket.disconnect(true);
      closed += 1;
    };
    const expired = (data: { tokenExpiresAt: number | null }) => data.tokenExpiresAt !== null && data.tokenExpiresAt <= now;
    const maps = [...dispatchNsp.sockets.values()].filter((socket) => {
      if (!expired(socket.data)) return true;
      refuse(socket, 'TOKEN_EXPIRED');
      return false;
    });
    for (const role of ['dispatcher', 'admin'] as const) {
      const mine = maps.filter((socket) => socket.data.role === role);
      if (mine.length === 0) continue;
      const versions = await deps.tokenVersions.versions(role, mine.map((socket) => socket.data.subject));
      for (const socket of mine) if ((socket.data.tokenVersion ?? 0) !== versions.get(socket.data.subject)) refuse(socket, 'TOKEN_REVOKED');
    }
    const live = [...driversNsp.sockets.values()].filter((socket) => {
      if (!expired(socket.data)) return true;
      refuse(socket, 'TOKEN_EXPIRED');
      return false;
    });
    const versions = await deps.drivers.tokenVersions([...new Set(live.map((socket) => socket.data.subject))]);
    for (const socket of live) {
      const current = versions.get(socket.data.subject);
      if (current === undefined) refuse(socket, 'DRIVER_REMOVED');
      else if ((socket.data.tokenVersion ?? 0) !== current) refuse(socket, 'TOKEN_REVOKED');
    }
    return closed;
  }
  let rechecking = false;
  const recheckTimer = setInterval(() => {
    if (rechecking) return;
    rechecking = true;
    // PostgreSQL being away is not a reason to drop anyone; the next round tries again.
    recheckSockets()
      .catch((err) => logger.warn({ err: (err as Error).message }, 'socket recheck failed'))
      .finally(() => {
        rechecking = false;
      });
  }, deps.edge?.tokenRecheckMs ?? 60_000);
  recheckTimer.unref();

  return {
    http,
    io,
    hono,
    health,
    recheckSockets,
    listen: () =>
      new Promise<number>((resolve, reject) => {
        http.once('error', reject);
        http.listen(config.PORT, config.HOST, () => {
          http.off('error', reject);
          resolve((http.address() as AddressInfo).port);
        });
      }),
    async close() {
      clearInterval(recheckTimer);
      dispatchSocket.stop();
      driversSocket.stop();
      const closing = new Promise<void>((resolve) => {
        io.close(() => resolve());
      });
      const bound = new Promise<void>((resolve) => setTimeout(resolve, config.SHUTDOWN_TIMEOUT_MS).unref());
      await Promise.race([closing, bound]);
      http.closeAllConnections?.();
    },
  };
}
