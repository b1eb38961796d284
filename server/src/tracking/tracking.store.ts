import { sql } from 'drizzle-orm';
import type { DeliveryStatus } from '#shared/schemas.js';
import type { Database } from '../platform/db.js';

/** What a tracking link may show, read in one statement by its token; nothing else of the delivery. */
export interface TrackedDeliveryRow {
  status: DeliveryStatus;
  orderCode: string;
  pickupLat: number;
  pickupLng: number;
  pickupAddress: string | null;
  dropoffLat: number;
  dropoffLng: number;
  dropoffAddress: string | null;
  updatedAt: Date;
  driverName: string | null;
  driverLat: number | null;
  driverLng: number | null;
  driverHeading: number | null;
  driverPositionAt: Date | null;
}

type RawRow = Omit<TrackedDeliveryRow, 'updatedAt' | 'driverPositionAt'> & { updatedAt: Date | string; driverPositionAt: Date | string | null };

const asDate = (v: Date | string) => (v instanceof Date ? v : new Date(v));

/**
 * The tracking page's only SQL. The token's unique index finds the delivery; the driver's name and
 * last known position (flushed every POSITION_FLUSH_MS by whichever node holds the driver) come
 * along in the same round trip, so any node answers any link without Redis.
 */
export function createTrackingStore(database: Database) {
  return {
    async byToken(token: string): Promise<TrackedDeliveryRow | null> {
      const [row] = await database.rows<RawRow>(sql`
        select d.status, d.order_code as "orderCode",
          d.pickup_lat as "pickupLat", d.pickup_lng as "pickupLng", d.pickup_address as "pickupAddress",
          d.dropoff_lat as "dropoffLat", d.dropoff_lng as "dropoffLng", d.dropoff_address as "dropoffAddress",
          d.updated_at as "updatedAt",
          r.name as "driverName", p.lat as "driverLat", p.lng as "driverLng", p.heading as "driverHeading",
          p.position_at as "driverPositionAt"
        from deliveries d
        left join drivers r on r.id = d.driver_id
        left join driver_positions p on p.driver_id = d.driver_id
        where d.tracking_token = ${token}
        limit 1`);
      if (!row) return null;
      return {
        ...row,
        pickupLat: Number(row.pickupLat),
        pickupLng: Number(row.pickupLng),
        dropoffLat: Number(row.dropoffLat),
        dropoffLng: Number(row.dropoffLng),
        driverLat: row.driverLat === null ? null : Number(row.driverLat),
        driverLng: row.driverLng === null ? null : Number(row.driverLng),
        driverHeading: row.driverHeading === null ? null : Number(row.driverHeading),
        updatedAt: asDate(row.updatedAt),
        driverPositionAt: row.driverPositionAt === null ? null : asDate(row.driverPositionAt),
      };
    },
  };
}

export type TrackingStore = ReturnType<typeof createTrackingStore>;
