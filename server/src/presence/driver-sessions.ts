import type { DriverSession } from '#shared/events.js';
import type { DriverStatus } from '#shared/schemas.js';
import type { DriverPresenceRow, DriversStore } from '../drivers/drivers.store.js';
import { BUSY_WINDOW_MS, createBatchWindow, HANDSHAKES_PER_BATCH } from '../platform/batch-window.js';
import { HubError } from '../platform/errors.js';
import type { HubEvents } from '../platform/hub-events.js';
import type { HeartbeatChange, KnownStatuses, PositionPipeline } from './position-pipeline.js';
import type { PresenceStore } from './presence.store.js';
import type { RedisRepair } from './redis-repair.js';

/**
 * Who is connected and on duty: a driver's connections, duty changes, claims and releases, each
 * written to PostgreSQL first, then to Redis (best effort) and announced as `driver:status`.
 */
export interface DriverSessions {
  /**
   * A driver's handshake at the door, its token carrying `tokenVersion`: from now on it speaks for
   * the driver, status following duty and deliveries. `sessionId` orders the driver's connections
   * (newest greatest); null when a newer one already speaks for the driver in PostgreSQL, and this
   * one is to be closed. Throws TOKEN_INVALID when the driver's tokens moved on past this one,
   * NOT_FOUND when there is no such driver.
   */
  connect(driverId: string, sessionId: string, tokenVersion: number): Promise<DriverSession | null>;
  disconnect(driverId: string, sessionId: string): Promise<void>;
  setDuty(driverId: string, status: 'AVAILABLE' | 'OFFLINE'): Promise<DriverStatus>;
  /** After a delivery ended: the driver's new status goes to Redis and the map. */
  released(row: DriverPresenceRow): Promise<void>;
  /** A claim made BUSY in PostgreSQL: Redis follows so no node picks the driver again. */
  claimed(driverId: string): Promise<void>;
  /** A driver's status as PostgreSQL just wrote it, to Redis and the map. */
  publishStatus(row: DriverPresenceRow, heartbeat: HeartbeatChange): Promise<void>;
  /** Drivers whose socket lives on this node. */
  localDrivers(): Iterable<string>;
  /** Waits for disconnect bookkeeping still running (shutdown, before PostgreSQL closes). */
  settle(): Promise<void>;
}

export interface DriverSessionsDeps {
  drivers: Pick<DriversStore, 'connectMany' | 'disconnectMany' | 'setDuty'>;
  store: Pick<PresenceStore, 'setStatus' | 'setStatuses'>;
  positions: Pick<PositionPipeline, 'flushToPostgres' | 'heartbeatChanged' | 'heartbeatsWritten' | 'forget' | 'restartConfirmations'>;
  repair: Pick<RedisRepair, 'bestEffort'>;
  statuses: KnownStatuses;
  events: HubEvents;
  /** The delivery that holds each of the given drivers, as its app receives it (those one holds). */
  activeAssignments: (driverIds: readonly string[]) => Promise<Map<string, NonNullable<DriverSession['activeDelivery']>>>;
  /** The open offer of each of the given drivers (offer mode; those that have one). */
  openOffers?: (driverIds: readonly string[]) => Promise<Map<string, NonNullable<DriverSession['offer']>>>;
  /** How long a connect waits for others to share its round trips (default CONNECT_WINDOW_MS). */
  connectWindowMs?: number;
}

/**
 * Connects gather this long, so a reconnect storm costs a few statements per batch rather than per
 * driver; alone, a connect waits this long plus its round trips.
 */
export const CONNECT_WINDOW_MS = 2;
const CONNECTS_PER_BATCH = HANDSHAKES_PER_BATCH;

interface Connecting {
  driverId: string;
  sessionId: string;
  tokenVersion: number;
}

export function createDriverSessions(deps: DriverSessionsDeps): DriverSessions {
  const { drivers, store, positions, repair, statuses, events } = deps;
  /** driverId -> session id of the connection that speaks for it, for drivers whose socket lives on this node. */
  const local = new Map<string, string>();

  async function publishStatus(row: DriverPresenceRow, heartbeat: HeartbeatChange): Promise<void> {
    await publishStatuses([row], heartbeat);
  }

  /** Statuses PostgreSQL just wrote, to Redis (one pipelined round trip for all) and then the map. */
  async function publishStatuses(rows: readonly DriverPresenceRow[], heartbeat: HeartbeatChange): Promise<void> {
    const positionOf = (row: DriverPresenceRow) => (row.lat !== null && row.lng !== null ? { lat: row.lat, lng: row.lng } : null);
    for (const row of rows) {
      statuses.set(row.id, row.status);
      positions.heartbeatChanged(row.id, heartbeat);
    }
    // One script call for a batch of connects (on a cluster, one per driver, sent together).
    const sentAt = Date.now();
    const written = await repair.bestEffort('setStatus', () => store.setStatuses(rows.map((row) => ({ id: row.id, status: row.status, position: positionOf(row), heartbeat }))));
    // A refresh follows a statement that heard from the drivers (a connect, a duty change).
    if (heartbeat === 'refresh') positions.heartbeatsWritten(rows.map((row) => row.id), written ? sentAt : null);
    for (const row of rows) events.emit('driver:status', { driverId: row.id, status: row.status, position: positionOf(row) });
  }

  /**
   * One batch of connects: one statement for every connect write (the token versions checked in
   * it), one for the deliveries that hold any of the drivers, one Redis round trip for their
   * statuses. Two connects of one driver in a batch are one write, with the newer session: the
   * older one answers as superseded, as it would had the newer been written after it.
   */
  async function connectBatch(items: readonly Connecting[]): Promise<(DriverSession | null | HubError)[]> {
    // The deliveries are read after the connect write, and only for drivers whose row says one holds
    // them: the write waited for any claim in flight, so this read sees what that claim committed.
    // An assignment committed later reaches the socket as a push: through its room once it
    // connected, or from the open pushes read when it connects.
    const outcomes = await drivers.connectMany(items);
    // The statement wrote each driver's newest connection with a current token; where the row now
    // names one of this batch's sessions, that connection speaks for the driver (else a newer one
    // from elsewhere does).
    const ours = new Set(items.map((item) => item.sessionId));
    const winners = [...outcomes.values()].flatMap(({ row }) => (row?.sessionId && ours.has(row.sessionId) ? [row] : []));
    const holding = winners.filter((row) => row.currentDeliveryId !== null).map((row) => row.id);
    const active = holding.length > 0 ? await deps.activeAssignments(holding) : new Map<string, never>();
    // A driver held by no active delivery is held by an offer (offer mode): its session carries it.
    const offered = holding.filter((id) => !active.has(id));
    const offers = offered.length > 0 && deps.openOffers ? await deps.openOffers(offered) : new Map<string, never>();
    for (const row of winners) {
      // Two connections on this node may finish in either order: the newer one stays local.
      const current = local.get(row.id);
      if (current === undefined || current < row.sessionId!) local.set(row.id, row.sessionId!);
    }
    await publishStatuses(winners, 'refresh');
    for (const row of winners) positions.restartConfirmations(row.id);
    return items.map(({ driverId, sessionId, tokenVersion }) => {
      const outcome = outcomes.get(driverId);
      if (!outcome) return new HubError('NOT_FOUND', 'driver not found');
      if (outcome.tokenVersion !== tokenVersion) return new HubError('TOKEN_INVALID', 'token revoked');
      if (outcome.row?.sessionId !== sessionId) return null;
      return { driverId, status: outcome.row.status, activeDelivery: active.get(driverId) ?? null, offer: offers.get(driverId) ?? null, locationConfirmation: 'cumulative' as const };
    });
  }

  /**
   * One batch of disconnects: one statement for every write, one Redis round trip for the statuses
   * of the drivers it took offline. A driver with a newer socket on this node by then keeps the
   * status that socket gave it.
   */
  async function disconnectBatch(items: readonly { driverId: string; sessionId: string }[]): Promise<void[]> {
    const rows = await drivers.disconnectMany(items);
    const dropped = rows.filter((row) => !local.has(row.id));
    if (dropped.length > 0) await publishStatuses(dropped, 'drop');
    return items.map(() => undefined);
  }

  /** Connects and disconnects gather alike: a short window alone, a longer one under a storm. */
  const windowMs = deps.connectWindowMs ?? CONNECT_WINDOW_MS;
  const sessionWindow = { windowMs, maxWindowMs: Math.max(windowMs, BUSY_WINDOW_MS), maxBatch: CONNECTS_PER_BATCH, concurrency: 2 };
  const disconnecting = createBatchWindow<{ driverId: string; sessionId: string }, void>({ ...sessionWindow, run: disconnectBatch });
  const connecting = createBatchWindow<Connecting, DriverSession | null | HubError>({ ...sessionWindow, run: connectBatch });

  return {
    async connect(driverId, sessionId, tokenVersion) {
      const outcome = await connecting.add({ driverId, sessionId, tokenVersion });
      if (outcome instanceof HubError) throw outcome;
      return outcome;
    },

    async disconnect(driverId, sessionId) {
      if (local.get(driverId) === sessionId) local.delete(driverId);
      // A newer connection on this node still speaks for the driver: its heartbeat and fixes stay.
      if (!local.has(driverId)) positions.forget(driverId);
      await disconnecting.add({ driverId, sessionId });
    },

    async setDuty(driverId, status) {
      // The newest position goes first, so an AVAILABLE driver enters the GEO set where it is now.
      await positions.flushToPostgres();
      const row = await drivers.setDuty(driverId, status === 'AVAILABLE');
      if (!row) throw new HubError('NOT_FOUND', 'driver not found');
      await publishStatus(row, 'refresh');
      return row.status;
    },

    async released(row) {
      await publishStatus(row, 'keep');
    },

    async claimed(driverId) {
      statuses.set(driverId, 'BUSY');
      await repair.bestEffort('claimed', () => store.setStatus(driverId, 'BUSY'));
      events.emit('driver:status', { driverId, status: 'BUSY', position: null });
    },

    publishStatus,

    localDrivers: () => local.keys(),

    async settle() {
      await connecting.settle();
      await disconnecting.settle();
    },
  };
}
