import { and, desc, eq, inArray, type SQL, sql } from 'drizzle-orm';
import type { DriverStatus, DriverView } from '../../../shared/src/schemas.js';
import type { Database, DbOrTx } from '../platform/db.js';
import { drivers } from '../platform/schema.js';

export interface DriverPosition {
  id: string;
  lat: number;
  lng: number;
  heading: number | null;
  speed: number | null;
  at: Date;
}

export interface DriverPresenceRow {
  id: string;
  status: DriverStatus;
  lat: number | null;
  lng: number | null;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** Great-circle distance in metres between a row's (lat, lng) columns and a point, in SQL. */
export function haversineSql(latCol: unknown, lngCol: unknown, lat: number, lng: number) {
  return sql<number>`(12742000 * asin(sqrt(
    power(sin(radians(${latCol} - ${lat}) / 2), 2) +
    cos(radians(${lat})) * cos(radians(${latCol})) * power(sin(radians(${lngCol} - ${lng}) / 2), 2))))`;
}

/**
 * The status a driver should have given its wish to work and its active delivery. `onDuty` is
 * passed in when the same UPDATE changes it (SET expressions see the old row).
 */
const resolvedStatus = (onDuty: boolean | null = null) => sql`case
  when exists (select 1 from deliveries d where d.driver_id = drivers.id and d.status in ('ASSIGNED', 'PICKED_UP')) then 'BUSY'
  when ${onDuty === null ? sql`drivers.on_duty` : sql`${onDuty}::boolean`} then 'AVAILABLE'
  else 'OFFLINE' end`;

export function createDriversStore(database: Database) {
  const { db } = database;
  const presenceColumns = { id: drivers.id, status: drivers.status, lat: drivers.lat, lng: drivers.lng };

  /** One conditional update of a driver row, answering its new presence (null when no row matched). */
  async function updatePresence(
    executor: DbOrTx,
    values: Partial<typeof drivers.$inferInsert> | Record<string, unknown>,
    where: SQL | undefined,
  ): Promise<DriverPresenceRow | null> {
    const [row] = await executor
      .update(drivers)
      .set({ ...values, updatedAt: new Date() })
      .where(where)
      .returning(presenceColumns);
    return row ?? null;
  }

  return {
    async create(input: { name: string; phone?: string; vehicle?: string }) {
      const [row] = await db
        .insert(drivers)
        .values({ name: input.name, phone: input.phone ?? null, vehicle: input.vehicle ?? null })
        .returning({ id: drivers.id, name: drivers.name, status: drivers.status, tokenVersion: drivers.tokenVersion });
      return row;
    },

    /** Current token versions of the given drivers; a driver missing from the map no longer exists. */
    async tokenVersions(ids: readonly string[]): Promise<Map<string, number>> {
      const found = new Map<string, number>();
      const valid = ids.filter((id) => UUID.test(id));
      for (let i = 0; i < valid.length; i += 1000) {
        const rows = await db
          .select({ id: drivers.id, version: drivers.tokenVersion })
          .from(drivers)
          .where(inArray(drivers.id, valid.slice(i, i + 1000)));
        for (const row of rows) found.set(row.id, row.version);
      }
      return found;
    },

    /** Revokes every token issued to the driver so far; answers the new version (null: no such driver). */
    async revokeTokens(id: string): Promise<number | null> {
      const [row] = await db
        .update(drivers)
        .set({ tokenVersion: sql`${drivers.tokenVersion} + 1`, updatedAt: new Date() })
        .where(eq(drivers.id, id))
        .returning({ version: drivers.tokenVersion });
      return row?.version ?? null;
    },


    async list(limit = 10_000): Promise<DriverView[]> {
      const rows = await db
        .select({
          id: drivers.id,
          name: drivers.name,
          status: drivers.status,
          lat: drivers.lat,
          lng: drivers.lng,
          lastSeenAt: drivers.lastSeenAt,
        })
        .from(drivers)
        .orderBy(desc(drivers.lastSeenAt))
        .limit(limit);
      return rows.map((r) => ({ ...r, lastSeenAt: r.lastSeenAt?.toISOString() ?? null }));
    },

    /** A socket now speaks for the driver; status comes back from duty and deliveries, not from the app. */
    async connect(id: string, sessionId: string): Promise<DriverPresenceRow | null> {
      return updatePresence(db, { sessionId, lastSeenAt: new Date(), status: resolvedStatus() }, eq(drivers.id, id));
    },

    /** Only the socket that still speaks for the driver may take it offline. */
    async disconnect(id: string, sessionId: string): Promise<DriverPresenceRow | null> {
      return updatePresence(db, { sessionId: null, status: 'OFFLINE' }, and(eq(drivers.id, id), eq(drivers.sessionId, sessionId)));
    },

    async setDuty(id: string, onDuty: boolean): Promise<DriverPresenceRow | null> {
      return updatePresence(db, { onDuty, status: resolvedStatus(onDuty), lastSeenAt: new Date() }, eq(drivers.id, id));
    },

    /** A BUSY driver whose delivery ended: back to AVAILABLE if still connected and on duty. */
    async release(executor: DbOrTx, id: string): Promise<DriverPresenceRow | null> {
      return updatePresence(
        executor,
        { status: sql`case when drivers.session_id is null then 'OFFLINE' else ${resolvedStatus()} end` },
        eq(drivers.id, id),
      );
    },

    /**
     * The claim: a conditional write, never read-then-write. Succeeds only for an AVAILABLE driver
     * without an active delivery; concurrent claims on the same row serialize on its lock.
     */
    async claim(executor: DbOrTx, id: string): Promise<boolean> {
      const rows = await executor
        .update(drivers)
        .set({ status: 'BUSY', updatedAt: new Date() })
        .where(
          and(
            eq(drivers.id, id),
            eq(drivers.status, 'AVAILABLE'),
            sql`not exists (select 1 from deliveries d where d.driver_id = ${drivers.id} and d.status in ('ASSIGNED', 'PICKED_UP'))`,
          ),
        )
        .returning({ id: drivers.id });
      return rows.length === 1;
    },

    async position(id: string): Promise<{ lat: number; lng: number } | null> {
      const [row] = await db.select({ lat: drivers.lat, lng: drivers.lng }).from(drivers).where(eq(drivers.id, id));
      return row && row.lat !== null && row.lng !== null ? { lat: row.lat, lng: row.lng } : null;
    },

    /** Last known positions of many drivers in one statement. */
    async flushPositions(positions: readonly DriverPosition[]): Promise<void> {
      if (positions.length === 0) return;
      const json = JSON.stringify(
        positions.map((p) => ({ id: p.id, lat: p.lat, lng: p.lng, heading: p.heading, speed: p.speed, at: p.at.toISOString() })),
      );
      await db.execute(sql`
        update drivers set lat = v.lat, lng = v.lng, heading = v.heading, speed = v.speed,
          position_at = v.at, last_seen_at = greatest(drivers.last_seen_at, v.at)
        from jsonb_to_recordset(${json}::jsonb) as v(id uuid, lat float8, lng float8, heading float8, speed float8, at timestamptz)
        where drivers.id = v.id`);
    },

    /** Connected but quiet drivers stay alive in PostgreSQL too (the sweeper's source of truth). */
    async touch(ids: readonly string[]): Promise<void> {
      if (ids.length === 0) return;
      await db.execute(sql`update drivers set last_seen_at = now()
        where id in (select jsonb_array_elements_text(${JSON.stringify(ids)}::jsonb)::uuid)`);
    },

    /** Takes drivers whose heartbeat went silent offline; safe when several nodes run it at once. */
    async sweepSilent(ttlSeconds: number): Promise<DriverPresenceRow[]> {
      return database.rows<DriverPresenceRow>(sql`
        update drivers set status = 'OFFLINE', session_id = null, updated_at = now()
        where status <> 'OFFLINE'
          and (last_seen_at is null or last_seen_at < now() - make_interval(secs => ${ttlSeconds}))
        returning id, status, lat, lng`);
    },

    /** Nearest AVAILABLE drivers from PostgreSQL alone (Redis down or disabled): bounding box, then distance. */
    async nearestAvailable(
      point: { lat: number; lng: number },
      radiusMeters: number,
      limit: number,
      freshSeconds: number,
    ): Promise<{ driverId: string; distanceMeters: number }[]> {
      const dLat = radiusMeters / 111_320;
      const dLng = radiusMeters / (111_320 * Math.max(0.01, Math.cos((point.lat * Math.PI) / 180)));
      const distance = haversineSql(drivers.lat, drivers.lng, point.lat, point.lng);
      const rows = await database.rows<{ id: string; distance: number }>(sql`
        select id, ${distance} as distance from drivers
        where status = 'AVAILABLE'
          and lat between ${point.lat - dLat} and ${point.lat + dLat}
          and lng between ${point.lng - dLng} and ${point.lng + dLng}
          and last_seen_at > now() - make_interval(secs => ${freshSeconds})
          and ${distance} <= ${radiusMeters}
        order by distance asc
        limit ${limit}`);
      return rows.map((r) => ({ driverId: r.id, distanceMeters: Number(r.distance) }));
    },

    /** Current presence of the given drivers (missing ids are not returned). */
    async presenceOf(ids: readonly string[]): Promise<DriverPresenceRow[]> {
      if (ids.length === 0) return [];
      return database.rows<DriverPresenceRow>(sql`
        select id, status, lat, lng from drivers
        where id in (select jsonb_array_elements_text(${JSON.stringify(ids)}::jsonb)::uuid)`);
    },

    /** Everyone the hub thinks is live, to rebuild Redis. */
    async live(): Promise<DriverPresenceRow[]> {
      return db
        .select(presenceColumns)
        .from(drivers)
        .where(sql`${drivers.status} <> 'OFFLINE'`);
    },
  };
}

export type DriversStore = ReturnType<typeof createDriversStore>;
