import { and, desc, eq, isNull, type SQL, sql } from 'drizzle-orm';
import type { DriverStatus, DriverView } from '#shared/schemas.js';
import { type Database, type DbOrTx, retryOnConflict } from '../platform/db.js';
import { ACTIVE_STATUSES_SQL, driverPositions, drivers } from '../platform/schema.js';
import { slicesOf } from '../platform/slices.js';

export interface DriverPosition {
  id: string;
  lat: number;
  lng: number;
  heading: number | null;
  speed: number | null;
  /** When the hub took the fix, ms since the epoch (a number: no Date per ping). */
  atMs: number;
  /** The highest fix number this position covers, for apps that ask for cumulative confirmation. */
  seq?: number;
}

export interface DriverPresenceRow {
  id: string;
  status: DriverStatus;
  lat: number | null;
  lng: number | null;
}

/** A presence row with the delivery that holds the driver, as the row itself says after the write. */
export interface HeldPresenceRow extends DriverPresenceRow {
  currentDeliveryId: string | null;
  /** The session that speaks for the driver after the write. */
  sessionId: string | null;
}

/** A handshake's connect as PostgreSQL judged it: the driver's token version, and its row when a connection of it was written. */
export interface ConnectOutcome {
  tokenVersion: number;
  row: HeldPresenceRow | null;
}

const POSITIONS_PER_STATEMENT = 2000;

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** Great-circle distance in metres between a row's (lat, lng) columns and a point, in SQL. */
export function haversineSql(latCol: unknown, lngCol: unknown, lat: number, lng: number) {
  return sql<number>`(12742000 * asin(sqrt(
    power(sin(radians(${latCol} - ${lat}) / 2), 2) +
    cos(radians(${lat})) * cos(radians(${latCol})) * power(sin(radians(${lngCol} - ${lng}) / 2), 2))))`;
}

/**
 * The status a driver should have given its wish to work and the delivery that holds it, read from
 * the row the UPDATE locks: a write that waited for a claim re-evaluates this on the claimed row.
 * `onDuty` is passed in when the same UPDATE changes it (SET expressions see the old row).
 */
const resolvedStatus = (onDuty: boolean | null = null) => sql`case
  when drivers.current_delivery_id is not null then 'BUSY'
  when ${onDuty === null ? sql`drivers.on_duty` : sql`${onDuty}::boolean`} then 'AVAILABLE'
  else 'OFFLINE' end`;

/** A driver's last known coordinate, read beside a statement on `drivers`. */
const positionOf = (column: 'lat' | 'lng') =>
  sql<number | null>`(select p.${sql.raw(column)} from ${driverPositions} p where p.driver_id = ${drivers.id})`;

/**
 * Marks the drivers the `from` clause picks (aliased `d`) as heard from now; only existing drivers
 * get a row. The one heartbeat upsert behind connect, duty changes and the quiet drivers' touch.
 */
const heardFrom = (from: SQL) => sql`
  insert into driver_positions (driver_id, last_seen_at)
  select d.id, now() from ${from}
  on conflict (driver_id) do update set last_seen_at = excluded.last_seen_at`;

/** Every presence read: the driver's status beside its last known coordinate. */
const presenceSelect = sql`select d.id, d.status, p.lat, p.lng from drivers d left join driver_positions p on p.driver_id = d.id`;

/**
 * CONNECT_MANY: $1 [[driverId, sessionId, tokenVersion], ...], the handshakes at the door. Per
 * driver, the newest connection whose token carries the driver's current version is written (a
 * revoked token writes nothing); it is heard from and its row changed in the same statement, so a
 * sweep can never see one without the other. Every driver that exists answers its token version,
 * and its row after the write when one was made.
 */
const CONNECT_MANY = `
with input as (
  select (e->>0)::uuid as id, e->>1 as session_id, (e->>2)::int as version from jsonb_array_elements($1::jsonb) as e
), locked as materialized (
  select d.id, d.token_version from drivers d where d.id = any(array(select id from input)) order by d.id for update of d
), chosen as materialized (
  select distinct on (i.id) i.id, i.session_id from input i join locked l on l.id = i.id and l.token_version = i.version
  order by i.id, i.session_id collate "C" desc
), seen as (
  insert into driver_positions (driver_id, last_seen_at)
  select id, now() from chosen order by id
  on conflict (driver_id) do update set last_seen_at = excluded.last_seen_at
  returning driver_id, lat, lng
), changed as (
  update drivers set
    session_id = case
      when drivers.session_id is null or drivers.session_id !~ '^[0-9]{15}[.]' or drivers.session_id collate "C" < c.session_id collate "C" then c.session_id
      else drivers.session_id end,
    status = case when drivers.current_delivery_id is not null then 'BUSY' when drivers.on_duty then 'AVAILABLE' else 'OFFLINE' end,
    updated_at = now()
  from chosen c
  where drivers.id = any(array(select id from chosen)) and c.id = drivers.id
  returning drivers.id, drivers.status, drivers.current_delivery_id, drivers.session_id
)
select l.id, l.token_version as "tokenVersion", c.id is not null as written, c.status, s.lat, s.lng,
  c.current_delivery_id as "currentDeliveryId", c.session_id as "sessionId"
from locked l left join changed c on c.id = l.id left join seen s on s.driver_id = l.id`;

/**
 * DISCONNECT_MANY: $1 [[driverId, sessionId], ...], sockets that closed. Each takes its driver
 * offline only while its session still speaks for the driver (a newer connection's row is left
 * alone). Rows are locked in id order, as CONNECT_MANY locks them. Answers each row it changed,
 * with the driver's last known coordinate.
 */
const DISCONNECT_MANY = `
with input as (
  select (e->>0)::uuid as id, e->>1 as session_id from jsonb_array_elements($1::jsonb) as e
), locked as materialized (
  select d.id from drivers d where d.id = any(array(select id from input)) order by d.id for update of d
), changed as (
  update drivers set session_id = null, status = 'OFFLINE', updated_at = now()
  from input i
  where drivers.id = any(array(select id from locked)) and i.id = drivers.id and drivers.session_id = i.session_id
  returning drivers.id, drivers.status
)
select c.id, c.status, p.lat, p.lng from changed c left join driver_positions p on p.driver_id = c.id`;

/**
 * The fairness facts of the drivers `ids` names (a query for their ids): seconds since each last
 * came free (or was created), and its deliveries created and assigned since midnight UTC. Read on
 * its own (SCORE_FACTS) and inside the webhook's claim, which ranks by them without a round trip
 * of its own (deliveries.store.ts).
 */
export const fairnessFactsOf = (ids: string) => `
select d.id, greatest(0, extract(epoch from now() - coalesce(d.free_since, d.created_at)))::float8 as idle,
  (select count(*) from deliveries x
    where x.driver_id = d.id
      and x.created_at >= date_trunc('day', now() at time zone 'UTC') at time zone 'UTC'
      and x.assigned_at >= date_trunc('day', now() at time zone 'UTC') at time zone 'UTC')::int as today
from drivers d where d.id = any(array(${ids}))`;

/** The fairness facts of candidates ($1: a JSON array of ids), a prepared statement. */
const SCORE_FACTS = fairnessFactsOf('select jsonb_array_elements_text($1::jsonb)::uuid');

/*
 * Ids arrive as a JSON array and are matched with `= any(array(...))`, never `in (select ...)`: the
 * planner guesses 100 rows for a set from JSON and hashes the whole drivers table against it (one
 * sequential scan of every driver per order or handshake batch); an array it guesses at 10 ids
 * and looks each one up in the primary key.
 */
const TOKEN_VERSIONS = 'select id, token_version as version, session_id from drivers where id = any(array(select jsonb_array_elements_text($1::jsonb)::uuid))';

const numberOrNull = (v: unknown): number | null => (v === null || v === undefined ? null : Number(v));

export function createDriversStore(database: Database) {
  const { db } = database;

  /** Token version and the session that speaks for each driver (null: none connected); a driver missing no longer exists. */
  async function tokenStates(ids: readonly string[]): Promise<Map<string, { version: number; sessionId: string | null }>> {
    const found = new Map<string, { version: number; sessionId: string | null }>();
    const valid = ids.filter((id) => UUID.test(id));
    for (const slice of slicesOf(valid, 1000)) {
      const rows = await database.query<{ id: string; version: number; session_id: string | null }>(TOKEN_VERSIONS, [JSON.stringify(slice)]);
      for (const row of rows) found.set(row.id, { version: Number(row.version), sessionId: row.session_id });
    }
    return found;
  }

  const presenceColumns = { id: drivers.id, status: drivers.status, lat: positionOf('lat'), lng: positionOf('lng') };

  /**
   * One statement: the driver is heard from and its row changed together, so a sweep can never
   * see one without the other (a reconnect storm after a node dies is thousands of these).
   */
  async function heardAndSet(id: string, changes: SQL): Promise<HeldPresenceRow | null> {
    const [row] = await database.rows<HeldPresenceRow>(sql`
      with seen as (
        ${heardFrom(sql`drivers d where d.id = ${id}`)}
        returning driver_id, lat, lng
      ), changed as (
        update drivers set ${changes}, updated_at = now() where id = ${id} returning id, status, current_delivery_id, session_id
      )
      select changed.id, changed.status, seen.lat, seen.lng, changed.current_delivery_id as "currentDeliveryId", changed.session_id as "sessionId"
      from changed left join seen on seen.driver_id = changed.id`);
    return row ?? null;
  }

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
    async create(input: { name: string; phone?: string; vehicle?: string; fleet?: string | null }) {
      const [row] = await db
        .insert(drivers)
        .values({ name: input.name, phone: input.phone ?? null, vehicle: input.vehicle ?? null, fleet: input.fleet ?? null })
        .returning({ id: drivers.id, name: drivers.name, status: drivers.status, fleet: drivers.fleet, tokenVersion: drivers.tokenVersion });
      return row;
    },

    /** Moves a driver into a fleet, or (null) to the shared pool; null when there is no such driver. */
    async setFleet(id: string, fleet: string | null): Promise<{ id: string; name: string; status: DriverStatus; fleet: string | null } | null> {
      const [row] = await db
        .update(drivers)
        .set({ fleet, updatedAt: new Date() })
        .where(eq(drivers.id, id))
        .returning({ id: drivers.id, name: drivers.name, status: drivers.status, fleet: drivers.fleet });
      return row ?? null;
    },

    /** Current token versions of the given drivers; a driver missing from the map no longer exists. */
    async tokenVersions(ids: readonly string[]): Promise<Map<string, number>> {
      const found = new Map<string, number>();
      for (const [id, row] of await tokenStates(ids)) found.set(id, row.version);
      return found;
    },

    tokenStates,

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
          lat: driverPositions.lat,
          lng: driverPositions.lng,
          lastSeenAt: driverPositions.lastSeenAt,
        })
        .from(drivers)
        .leftJoin(driverPositions, eq(driverPositions.driverId, drivers.id))
        .orderBy(sql`${driverPositions.lastSeenAt} desc nulls last`, desc(drivers.createdAt))
        .limit(limit);
      return rows.map((r) => ({ ...r, lastSeenAt: r.lastSeenAt?.toISOString() ?? null }));
    },

    /**
     * Handshakes at the door: sockets now speak for their drivers, unless newer ones already do or
     * their token was revoked (its version is no longer the driver's). Session ids order by
     * handshake time as plain bytes (collate "C", as JavaScript compares them), and one from before
     * that ordering is older than any. One statement for many handshakes (a reconnect storm is
     * thousands a second). Answers, per driver that exists, its token version and, when a
     * connection of it was written, the session that speaks for it afterwards. Status comes back
     * from duty and deliveries, not from the app.
     */
    async connectMany(entries: readonly { driverId: string; sessionId: string; tokenVersion: number }[]): Promise<Map<string, ConnectOutcome>> {
      const valid = entries.filter((e) => UUID.test(e.driverId));
      if (valid.length === 0) return new Map();
      const input = JSON.stringify(valid.map((e) => [e.driverId, e.sessionId, e.tokenVersion]));
      // Rows are locked in id order, so two batches never wait on each other crosswise; a deadlock
      // with another writer changed nothing and is run again.
      const rows = await retryOnConflict(() => database.query<HeldPresenceRow & { tokenVersion: number; written: boolean }>(CONNECT_MANY, [input]));
      return new Map(
        rows.map(({ tokenVersion, written, ...row }) => [
          row.id,
          { tokenVersion, row: written ? { ...row, lat: numberOrNull(row.lat), lng: numberOrNull(row.lng) } : null },
        ]),
      );
    },

    /**
     * Sockets that closed, in one statement (a node's shutdown or a network cut closes thousands
     * at once): only the socket that still speaks for a driver may take it offline. Answers the
     * rows it changed.
     */
    async disconnectMany(entries: readonly { driverId: string; sessionId: string }[]): Promise<DriverPresenceRow[]> {
      const valid = entries.filter((e) => UUID.test(e.driverId));
      if (valid.length === 0) return [];
      const input = JSON.stringify(valid.map((e) => [e.driverId, e.sessionId]));
      const rows = await retryOnConflict(() => database.query<DriverPresenceRow>(DISCONNECT_MANY, [input]));
      return rows.map((row) => ({ ...row, lat: numberOrNull(row.lat), lng: numberOrNull(row.lng) }));
    },

    async setDuty(id: string, onDuty: boolean): Promise<HeldPresenceRow | null> {
      // Going on duty starts the idle clock the fairness term reads; staying on duty keeps it.
      return heardAndSet(
        id,
        sql`on_duty = ${onDuty}, status = ${resolvedStatus(onDuty)},
          free_since = case when ${onDuty}::boolean and not drivers.on_duty then now() else drivers.free_since end`,
      );
    },

    /**
     * The delivery that held the driver ended: the driver is free again, AVAILABLE if still
     * connected and on duty. Nothing changes when another delivery holds it (null then).
     */
    async release(executor: DbOrTx, id: string, deliveryId: string): Promise<DriverPresenceRow | null> {
      return updatePresence(
        executor,
        {
          currentDeliveryId: null,
          status: sql`case when drivers.session_id is not null and drivers.on_duty then 'AVAILABLE' else 'OFFLINE' end`,
          freeSince: sql`now()`,
        },
        and(eq(drivers.id, id), eq(drivers.currentDeliveryId, deliveryId)),
      );
    },

    /**
     * The claim: a conditional write, never read-then-write. Succeeds only for an AVAILABLE driver
     * that no delivery holds; concurrent claims on the same row serialize on its lock. The subquery
     * is a second guard for a fresh statement; the row's own columns are what a waiting claim re-checks.
     */
    async claim(executor: DbOrTx, id: string, deliveryId: string, pool?: { fleet: string | null }): Promise<boolean> {
      const rows = await executor
        .update(drivers)
        .set({ status: 'BUSY', currentDeliveryId: deliveryId, updatedAt: new Date() })
        .where(
          and(
            eq(drivers.id, id),
            eq(drivers.status, 'AVAILABLE'),
            isNull(drivers.currentDeliveryId),
            // The pool it was proposed from: a driver moved to another fleet meanwhile is not taken.
            pool === undefined ? undefined : sql`${drivers.fleet} is not distinct from ${pool.fleet}::text`,
            sql`not exists (select 1 from deliveries d where d.driver_id = ${drivers.id} and d.status in ${ACTIVE_STATUSES_SQL})`,
          ),
        )
        .returning({ id: drivers.id });
      return rows.length === 1;
    },

    /**
     * Last known positions of many drivers (drivers that no longer exist are skipped), a slice per
     * statement so neither the JSON building here nor the row locks there grow with the fleet.
     */
    async flushPositions(positions: readonly DriverPosition[]): Promise<void> {
      const sorted = [...positions].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
      for (const slice of slicesOf(sorted, POSITIONS_PER_STATEMENT)) {
        const json = JSON.stringify(slice.map((p) => [p.id, p.lat, p.lng, p.heading, p.speed, p.atMs]));
        await db.execute(sql`
          insert into driver_positions (driver_id, lat, lng, heading, speed, position_at, last_seen_at)
          select (v->>0)::uuid, (v->>1)::float8, (v->>2)::float8, (v->>3)::float8, (v->>4)::float8,
            to_timestamp((v->>5)::float8 / 1000), to_timestamp((v->>5)::float8 / 1000)
          from jsonb_array_elements(${json}::jsonb) as v
          where exists (select 1 from drivers d where d.id = (v->>0)::uuid)
          on conflict (driver_id) do update set lat = excluded.lat, lng = excluded.lng, heading = excluded.heading,
            speed = excluded.speed, position_at = excluded.position_at,
            last_seen_at = greatest(driver_positions.last_seen_at, excluded.last_seen_at)`);
      }
    },

    /** Connected but quiet drivers stay alive in PostgreSQL too (the sweeper's source of truth). */
    async touch(ids: readonly string[]): Promise<void> {
      // Sorted, so two batches never lock the same rows in opposite orders; a slice per statement,
      // as the position flush, so neither the statement nor its locks grow with the fleet.
      for (const slice of slicesOf([...ids].sort(), POSITIONS_PER_STATEMENT)) {
        await db.execute(heardFrom(sql`drivers d where d.id = any(array(select jsonb_array_elements_text(${JSON.stringify(slice)}::jsonb)::uuid)) order by d.id`));
      }
    },

    /**
     * Takes drivers whose heartbeat went silent offline; safe when several nodes run it at once.
     * The heartbeat is read in the sweep's snapshot, so a connect committing meanwhile is not seen
     * there; the row's own `updated_at`, which the connect sets and which PostgreSQL checks again on
     * the row it waited for, keeps that driver (it is swept a heartbeat later if it is silent then).
     */
    async sweepSilent(ttlSeconds: number): Promise<DriverPresenceRow[]> {
      return database.rows<DriverPresenceRow>(sql`
        update drivers set status = 'OFFLINE', session_id = null, updated_at = now()
        where status <> 'OFFLINE'
          and drivers.updated_at < now() - make_interval(secs => ${ttlSeconds})
          and not exists (select 1 from driver_positions p
            where p.driver_id = drivers.id and p.last_seen_at >= now() - make_interval(secs => ${ttlSeconds}))
        returning id, status, ${positionOf('lat')} as lat, ${positionOf('lng')} as lng`);
    },

    /** Nearest AVAILABLE drivers from PostgreSQL alone (Redis down or disabled): bounding box, then distance. */
    async nearestAvailable(
      point: { lat: number; lng: number },
      radiusMeters: number,
      limit: number,
      freshSeconds: number,
      /** Only drivers of this pool (a fleet, or null: the shared pool); absent: any driver. */
      pool?: { fleet: string | null },
    ): Promise<{ driverId: string; distanceMeters: number }[]> {
      const dLat = radiusMeters / 111_320;
      const dLng = radiusMeters / (111_320 * Math.max(0.01, Math.cos((point.lat * Math.PI) / 180)));
      const distance = haversineSql(sql`p.lat`, sql`p.lng`, point.lat, point.lng);
      const rows = await database.rows<{ id: string; distance: number }>(sql`
        select d.id, ${distance} as distance from drivers d join driver_positions p on p.driver_id = d.id
        where d.status = 'AVAILABLE'
          and p.lat between ${point.lat - dLat} and ${point.lat + dLat}
          and p.lng between ${point.lng - dLng} and ${point.lng + dLng}
          and p.last_seen_at > now() - make_interval(secs => ${freshSeconds})
          and ${distance} <= ${radiusMeters}
          and (${pool === undefined}::boolean or d.fleet is not distinct from ${pool?.fleet ?? null}::text)
        order by distance asc
        limit ${limit}`);
      return rows.map((r) => ({ driverId: r.id, distanceMeters: Number(r.distance) }));
    },

    /**
     * The fairness facts of the score (dispatch/scoring.ts): seconds since each driver last came
     * free (or was created), and its deliveries created and assigned since midnight UTC.
     */
    async scoreFacts(ids: readonly string[]): Promise<Map<string, { idleSeconds: number; deliveriesToday: number }>> {
      if (ids.length === 0) return new Map();
      const rows = await database.query<{ id: string; idle: number; today: number }>(SCORE_FACTS, [JSON.stringify(ids)]);
      return new Map(rows.map((r) => [r.id, { idleSeconds: Number(r.idle), deliveriesToday: Number(r.today) }]));
    },

    /** Current presence of the given drivers (missing ids are not returned). */
    async presenceOf(ids: readonly string[]): Promise<DriverPresenceRow[]> {
      if (ids.length === 0) return [];
      return database.rows<DriverPresenceRow>(sql`
        ${presenceSelect} where d.id = any(array(select jsonb_array_elements_text(${JSON.stringify(ids)}::jsonb)::uuid))`);
    },

    /** Live drivers with ids after `afterId`, in id order: the reconcile walks them a page at a time. */
    async livePage(afterId: string | null, limit: number): Promise<DriverPresenceRow[]> {
      return database.rows<DriverPresenceRow>(sql`
        ${presenceSelect} where d.status <> 'OFFLINE' and (${afterId}::uuid is null or d.id > ${afterId}::uuid)
        order by d.id
        limit ${limit}`);
    },

    /** Everyone the hub thinks is live, to rebuild Redis. */
    async live(): Promise<DriverPresenceRow[]> {
      return database.rows<DriverPresenceRow>(sql`${presenceSelect} where d.status <> 'OFFLINE'`);
    },
  };
}

export type DriversStore = ReturnType<typeof createDriversStore>;
