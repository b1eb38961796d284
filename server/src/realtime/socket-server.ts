import type { Server as HttpServer } from 'node:http';
import { createShardedAdapter, RedisAdapter, type RedisAdapterOptions } from '@socket.io/redis-adapter';
import { Server, type ServerOptions, type Socket } from 'socket.io';
import type { TokenVersionsStore } from '../admin/token-versions.store.js';
import type { DeliveriesService } from '../deliveries/deliveries.service.js';
import type { DriversStore } from '../drivers/drivers.store.js';
import type { AuthGate } from '../platform/auth-throttle.js';
import type { Config } from '../platform/config.js';
import { HubError, toHubError } from '../platform/errors.js';
import type { HubEvents } from '../platform/hub-events.js';
import type { LogThrottle } from '../platform/log-throttle.js';
import type { Logger } from '../platform/logger.js';
import type { Metrics } from '../platform/metrics.js';
import type { RateLimits } from '../platform/rate-limits.js';
import type { RedisClients } from '../platform/redis.js';
import { handshakeError } from '../platform/socket-edge.js';
import type { TokenService } from '../platform/tokens.js';
import { createTurnPacer } from '../platform/turn-pacer.js';
import type { PresenceService } from '../presence/presence.service.js';
import type { PushService } from '../pushes/pushes.service.js';
import { attachDispatchNamespace, type DispatchNamespace } from './dispatch.socket.js';
import { attachDriversNamespace, type DriversNamespace, sessionIdOf } from './drivers.socket.js';

/**
 * The engine options of every Socket.IO server the hub runs: websocket only, small frames, the
 * timeouts apps are built for. The benchmark's bare baseline server uses the same ones.
 */
/** Pending connections the kernel holds for the hub's port (capped by net.core.somaxconn, 4096 on current Linux). */
export const SOCKET_LISTEN_BACKLOG = 8192;

/**
 * Websocket upgrades a node starts per turn of its event loop; the rest wait for the next turns.
 * At roughly half a millisecond each, 16 keep a turn near 8 ms: a reconnect storm's burst of
 * thousands then interleaves with webhooks, pings and the bookkeeping of handshakes already in.
 */
export const HANDSHAKES_PER_TURN = 16;

export const SOCKET_ENGINE_OPTIONS = {
  transports: ['websocket'],
  serveClient: false,
  maxHttpBufferSize: 32 * 1024,
  pingInterval: 25_000,
  pingTimeout: 20_000,
  connectTimeout: 10_000,
} as const satisfies Partial<ServerOptions>;

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

export interface SocketServerDeps {
  config: Pick<Config, 'ALLOWED_ORIGINS' | 'REDIS_PREFIX' | 'LOCATION_CONFIRM_MS' | 'MAP_TICK_MS'>;
  logger: Logger;
  metrics: Metrics;
  redis: RedisClients | null;
  tokens: TokenService;
  tokenVersions: TokenVersionsStore;
  events: HubEvents;
  drivers: DriversStore;
  presence: PresenceService;
  pushes: PushService;
  deliveries: DeliveriesService;
  limits: RateLimits;
  auth: AuthGate;
  /** Rate-limited refusals per address, one log line per window; shared with the HTTP edge. */
  refusalLog: LogThrottle;
  /** How often long-lived sockets have their token (and, for drivers, their driver row) checked again. */
  tokenRecheckMs?: number;
}

export interface SocketServer {
  io: Server;
  /** Disconnects this node's sockets whose token expired or whose driver is gone; returns how many. */
  recheckSockets(): Promise<number>;
  /** Stops the namespaces' timers and closes every socket. */
  close(): Promise<void>;
}

/** The Socket.IO server on the hub's HTTP server: the adapter, handshake auth, both namespaces, the token recheck. */
export function createSocketServer(http: HttpServer, deps: SocketServerDeps): SocketServer {
  const { config, logger, metrics, redis, auth } = deps;
  const upgrades = createTurnPacer(HANDSHAKES_PER_TURN);
  const io = new Server(http, {
    ...SOCKET_ENGINE_OPTIONS,
    transports: [...SOCKET_ENGINE_OPTIONS.transports],
    allowRequest: (req, callback) => {
      const origin = req.headers.origin;
      // Browsers always send Origin; native driver apps do not and are not affected. The hub's own
      // pages (the /map) are same-origin and need no entry in the list.
      if (origin && config.ALLOWED_ORIGINS.length > 0 && !config.ALLOWED_ORIGINS.includes(origin) && !sameOrigin(origin, req.headers.host)) {
        logger.info({ origin }, 'socket handshake refused: origin not allowed');
        return callback('origin not allowed', false);
      }
      upgrades.admit(() => callback(null, true));
    },
  });
  if (redis?.layout === 'cluster') {
    // Sharded pub/sub (Redis 7 SPUBLISH/SSUBSCRIBE): each channel lives on the shard of its slot, so
    // fan-out grows with the shards instead of every message crossing every node of the cluster.
    const sharded = createShardedAdapter(redis.publisher, redis.subscriber, { channelPrefix: `${config.REDIS_PREFIX}socket.io`, subscriptionMode: 'dynamic' });
    io.adapter(function quietShardedAdapter(nsp: unknown) {
      const adapter = sharded(nsp) as { serverCount(): Promise<number> };
      const count = adapter.serverCount.bind(adapter);
      adapter.serverCount = () => count().catch(() => 1);
      return adapter;
    } as never);
  } else if (redis) {
    const options: Partial<RedisAdapterOptions> = {
      key: `${config.REDIS_PREFIX}socket.io`,
      requestsTimeout: 3000,
      // A node's answers to a broadcast with acknowledgement (its client count, the app's ack) go to
      // the asking node alone: on the shared response channel every node read and dropped every
      // answer, N-1 wake-ups and decodes for nothing per remote push. Every node listens on both
      // channels, so nodes of an older version mixed in during a rolling deploy still hear each other.
      publishOnSpecificResponseChannel: true,
    };
    // Socket.IO constructs the adapter with `new`, so a function, not an arrow.
    io.adapter(function quietAdapter(nsp: unknown) {
      return new QuietRedisAdapter(nsp, redis.publisher, redis.subscriber, options);
    } as never);
  }

  /** The first step of every handshake: the address's failure budget, then the token (no database yet). */
  const authenticate = async (socket: Socket, next: (err?: Error) => void) => {
    const address = auth.handshakeAddress(socket.handshake);
    const stopTimer = socket.nsp.name === '/drivers' ? metrics.handshakeSeconds.startTimer({ stage: 'auth' }) : null;
    try {
      await auth.check(address);
      if (socket.handshake.query?.token !== undefined) throw new HubError('TOKEN_INVALID', 'tokens are accepted in the handshake auth only');
      const claims = await deps.tokens.verify((socket.handshake.auth as { token?: unknown } | undefined)?.token);
      socket.data = { role: claims.role, subject: claims.subject, tokenExpiresAt: claims.expiresAt, tokenVersion: claims.version };
      stopTimer?.();
      next();
    } catch (err) {
      const hubError = toHubError(err);
      metrics.inputRejected.inc({ event: 'handshake', code: hubError.code });
      if (hubError.code === 'RATE_LIMITED') {
        const skipped = deps.refusalLog.take(address, (hubError.details as { retryAfterMs: number }).retryAfterMs);
        if (skipped !== null) logger.warn({ address, namespace: socket.nsp.name, refusedSinceLastLine: skipped }, 'socket handshake rate limited');
      } else {
        if (hubError.code.startsWith('TOKEN_')) await auth.failed('handshake', address);
        logger.info({ code: hubError.code, namespace: socket.nsp.name }, 'socket handshake refused');
      }
      next(handshakeError(hubError));
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
    deliveries: deps.deliveries,
    events: deps.events,
    logger,
    metrics,
    limits: deps.limits,
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
    limits: deps.limits,
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
    const states = await deps.drivers.tokenStates([...new Set(live.map((socket) => socket.data.subject))]);
    for (const socket of live) {
      const current = states.get(socket.data.subject);
      if (current === undefined) refuse(socket, 'DRIVER_REMOVED');
      else if ((socket.data.tokenVersion ?? 0) !== current.version) refuse(socket, 'TOKEN_REVOKED');
      // A newer connection took over on another node while the message that closes this one was
      // lost (Redis away): PostgreSQL, which judged the takeover, says so here.
      else if (current.sessionId !== null && current.sessionId > sessionIdOf(socket)) refuse(socket, 'SUPERSEDED');
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
  }, deps.tokenRecheckMs ?? 60_000);
  recheckTimer.unref();

  return {
    io,
    recheckSockets,
    async close() {
      clearInterval(recheckTimer);
      dispatchSocket.stop();
      driversSocket.stop();
      await new Promise<void>((resolve) => {
        io.close(() => resolve());
      });
    },
  };
}
