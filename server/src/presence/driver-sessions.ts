import type { DriverSession } from '#shared/events.js';
import type { DriverStatus } from '#shared/schemas.js';
import type { DriverPresenceRow, DriversStore } from '../drivers/drivers.store.js';
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
   * A driver socket connected: it now speaks for the driver, status following duty and deliveries.
   * `sessionId` orders the driver's connections (newest greatest); null when a newer one already
   * speaks for the driver in PostgreSQL, and this one is to be closed.
   */
  connect(driverId: string, sessionId: string): Promise<DriverSession | null>;
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
  drivers: Pick<DriversStore, 'connect' | 'disconnect' | 'setDuty'>;
  store: Pick<PresenceStore, 'setStatus'>;
  positions: Pick<PositionPipeline, 'flushToPostgres' | 'heartbeatChanged' | 'forget' | 'restartConfirmations'>;
  repair: Pick<RedisRepair, 'bestEffort'>;
  statuses: KnownStatuses;
  events: HubEvents;
  /** The delivery that holds the driver, as its app receives it. */
  activeAssignment: (driverId: string) => Promise<DriverSession['activeDelivery']>;
}

export function createDriverSessions(deps: DriverSessionsDeps): DriverSessions {
  const { drivers, store, positions, repair, statuses, events } = deps;
  /** driverId -> session id of the connection that speaks for it, for drivers whose socket lives on this node. */
  const local = new Map<string, string>();
  /** Disconnect bookkeeping still running; shutdown waits for it before closing PostgreSQL. */
  const inflight = new Set<Promise<unknown>>();

  async function publishStatus(row: DriverPresenceRow, heartbeat: HeartbeatChange): Promise<void> {
    statuses.set(row.id, row.status);
    positions.heartbeatChanged(row.id, heartbeat);
    const position = row.lat !== null && row.lng !== null ? { lat: row.lat, lng: row.lng } : null;
    await repair.bestEffort('setStatus', () => store.setStatus(row.id, row.status, { position, heartbeat }));
    events.emit('driver:status', { driverId: row.id, status: row.status, position });
  }

  return {
    async connect(driverId, sessionId) {
      // The delivery is read after the connect, and only when the driver row says one holds it: the
      // connect waited for any claim in flight, so this read sees what that claim committed. An
      // assignment committed later reaches the socket as a push (it already joined its room).
      const row = await drivers.connect(driverId, sessionId);
      if (!row) throw new HubError('NOT_FOUND', 'driver not found');
      if (row.sessionId !== sessionId) return null;
      const activeDelivery = row.currentDeliveryId ? await deps.activeAssignment(driverId) : null;
      // Two connections on this node may finish in either order: the newer one stays local.
      const current = local.get(driverId);
      if (current === undefined || current < sessionId) local.set(driverId, sessionId);
      await publishStatus(row, 'refresh');
      positions.restartConfirmations(driverId);
      return { driverId, status: row.status, activeDelivery, offer: null, locationConfirmation: 'cumulative' };
    },

    async disconnect(driverId, sessionId) {
      if (local.get(driverId) === sessionId) local.delete(driverId);
      // A newer connection on this node still speaks for the driver: its heartbeat and fixes stay.
      if (!local.has(driverId)) positions.forget(driverId);
      const work = (async () => {
        const row = await drivers.disconnect(driverId, sessionId);
        // A newer socket on this node already speaks for the driver: its status must not be overwritten.
        if (row && !local.has(driverId)) await publishStatus(row, 'drop');
      })();
      inflight.add(work);
      try {
        await work;
      } finally {
        inflight.delete(work);
      }
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
      await Promise.allSettled([...inflight]);
    },
  };
}
