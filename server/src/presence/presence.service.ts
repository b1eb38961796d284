import type { DriverSession } from '#shared/events.js';
import type { DriverStatus } from '#shared/schemas.js';
import type { DriversStore } from '../drivers/drivers.store.js';
import type { HubEvents } from '../platform/hub-events.js';
import type { Logger } from '../platform/logger.js';
import { type LoadGauge, neverOverloaded } from '../platform/load-gauge.js';
import type { Metrics } from '../platform/metrics.js';
import { createDriverSessions, type DriverSessions, type DriverSessionsDeps } from './driver-sessions.js';
import { type CandidatePool, createCandidateSearch, type FleetMembership, type NearestCandidates } from './nearest-candidates.js';
import { createPositionPipeline, type PositionPipeline } from './position-pipeline.js';
import type { PresenceStore } from './presence.store.js';
import { createRedisRepair, type RedisRepair } from './redis-repair.js';

/** How long an app is told to wait before sending a fix the hub refused while shedding load. */
export const SHED_RETRY_MS = 2000;

export interface PresenceDeps {
  drivers: DriversStore;
  /** Redis, or in single-node mode (no REDIS_URL) the store that keeps nothing: PostgreSQL alone holds the picture. */
  store: PresenceStore;
  events: HubEvents;
  logger: Logger;
  metrics: Metrics;
  /** The delivery that holds each of the given drivers, as its app receives it (those one holds). */
  activeAssignments: (driverIds: readonly string[]) => Promise<Map<string, NonNullable<DriverSession['activeDelivery']>>>;
  config: { heartbeatTtlSeconds: number; locationTickMs: number; positionFlushMs: number; reconcileMs: number; maxRadiusKm: number; fairnessBandMeters?: number };
  /** Who belongs to which seller's fleet (absent: nobody does). */
  fleets?: FleetMembership;
  /** The open offer of each of the given drivers (offer mode), for their `session`. */
  openOffers?: DriverSessionsDeps['openOffers'];
  /** This process's load: past its capacity, positions are refused (default: never). */
  load?: LoadGauge;
}

/** Who is where and free: what the socket edges, dispatch and deliveries ask of presence. */
export interface PresenceService
  extends Pick<PositionPipeline, 'acceptFixes' | 'drainStored' | 'drainMoves' | 'discardMoves'>,
    Pick<DriverSessions, 'connect' | 'disconnect' | 'setDuty' | 'released' | 'claimed'>,
    Pick<RedisRepair, 'redisHealthy'> {
  /**
   * Whether fixes should be refused now: the event loop runs late or the position writes are
   * behind. Sessions, heartbeats and claims go on regardless; positions wait (the app keeps them).
   */
  shedding(): boolean;
  /**
   * The `count` nearest free drivers to a point: Redis GEO when it answers, PostgreSQL's last
   * known positions when Redis is away, disabled or fails. Proposals only; the claim decides.
   */
  nearestCandidates(point: { lat: number; lng: number }, count: number, passOver?: ReadonlySet<string>, pool?: CandidatePool): Promise<NearestCandidates>;
  /**
   * The background work. `positions-only`: the API thread, which holds no sockets, flushes the
   * fixes posted over HTTP; the heartbeat, sweep, repair and reconcile rounds are the main thread's.
   */
  start(scope?: 'all' | 'positions-only'): void;
  /** Stops the background work and writes out what is pending; PostgreSQL may close after. */
  stop(): Promise<void>;
}

/**
 * Presence in three parts with one store each way: the position pipeline (fixes in, GEO writes,
 * position flush, map moves), driver sessions (connect, disconnect, duty, claims, status events)
 * and Redis repair (rebuild, reconcile, sweep, local heartbeats); and the one search for nearest
 * candidates. This module wires them and runs their background work.
 */
export function createPresenceService(deps: PresenceDeps): PresenceService {
  const { drivers, store, events, metrics, config } = deps;
  const logger = deps.logger.child({ component: 'presence' });
  const statuses = new Map<string, DriverStatus>();
  const timers: NodeJS.Timeout[] = [];

  // The three parts call each other only through these late-bound functions, used once running.
  const repair = createRedisRepair({
    drivers,
    store,
    events,
    logger,
    metrics,
    config,
    localDrivers: () => sessions.localDrivers(),
    takeKeptAlive: () => positions.takeKeptAlive(),
    sweptOffline: (row) => sessions.publishStatus(row, 'drop'),
  });
  const positions = createPositionPipeline({ drivers, store, statuses, redisWriteFailed: repair.redisWriteFailed, logger, metrics, config });
  const sessions = createDriverSessions({ drivers, store, positions, repair, statuses, events, activeAssignments: deps.activeAssignments, openOffers: deps.openOffers });
  const nearestCandidates = createCandidateSearch({ store, drivers, fleets: deps.fleets, logger, config });

  function every(ms: number, task: () => Promise<void>, name: string): void {
    let running = false;
    const timer = setInterval(() => {
      if (running) return;
      running = true;
      task()
        .catch((err) => logger.warn({ task: name, err: (err as Error).message }, 'background task failed'))
        .finally(() => {
          running = false;
        });
    }, ms);
    timer.unref();
    timers.push(timer);
  }

  return {
    acceptFixes: positions.acceptFixes,
    drainStored: positions.drainStored,
    drainMoves: positions.drainMoves,
    discardMoves: positions.discardMoves,
    connect: sessions.connect,
    disconnect: sessions.disconnect,
    setDuty: sessions.setDuty,
    released: sessions.released,
    claimed: sessions.claimed,
    redisHealthy: repair.redisHealthy,
    nearestCandidates,
    shedding: () => positions.behind() || (deps.load ?? neverOverloaded).overloaded,

    start(scope = 'all'): void {
      const ttlMs = config.heartbeatTtlSeconds * 1000;
      every(config.positionFlushMs, positions.flushToPostgres, 'positions');
      if (scope === 'positions-only') return;
      every(Math.max(200, ttlMs / 3), repair.keepLocalAlive, 'heartbeat');
      every(Math.max(200, ttlMs / 3), repair.sweep, 'sweep');
      every(1000, repair.repairRedis, 'repair');
      // The full comparison reads every live driver from both stores: a safety net, not the main
      // path (a failed write asks for a reconcile on the next repair round by itself). It covers
      // the whole fleet, so one node per period runs it.
      every(config.reconcileMs, () => repair.reconcileInTurn(config.reconcileMs), 'reconcile');
      if (store.available) repair.repairRedis().catch(() => {});
    },

    async stop(): Promise<void> {
      for (const timer of timers) clearInterval(timer);
      timers.length = 0;
      await positions.halt();
      await sessions.settle();
      await positions.flushAll();
    },
  };
}
