import { eq, isNotNull, sql } from 'drizzle-orm';
import type { Database } from '../platform/db.js';
import { drivers, fleets } from '../platform/schema.js';

export interface FleetView {
  fleet: string;
  exclusive: boolean;
  drivers: number;
}

/** Seller fleets in PostgreSQL: the fleets and which drivers belong to one. */
export function createFleetsStore(database: Database) {
  const { db } = database;
  return {
    /** Creates the fleet or changes whether it is exclusive. */
    async put(fleet: string, exclusive: boolean): Promise<{ created: boolean }> {
      const [row] = await database.rows<{ created: boolean }>(sql`
        insert into fleets (id, exclusive) values (${fleet}, ${exclusive})
        on conflict (id) do update set exclusive = excluded.exclusive, updated_at = now()
        returning (xmax = 0) as created`);
      return { created: row?.created === true };
    },

    async get(fleet: string): Promise<FleetView | null> {
      const [row] = await database.rows<{ id: string; exclusive: boolean; drivers: number }>(sql`
        select f.id, f.exclusive, (select count(*) from drivers d where d.fleet = f.id)::int as drivers from fleets f where f.id = ${fleet}`);
      return row ? { fleet: row.id, exclusive: row.exclusive, drivers: Number(row.drivers) } : null;
    },

    async exists(fleet: string): Promise<boolean> {
      const [row] = await db.select({ id: fleets.id }).from(fleets).where(eq(fleets.id, fleet)).limit(1);
      return row !== undefined;
    },

    /** Every fleet driver and every fleet, for the directory each node keeps. */
    async snapshot(): Promise<{ members: { id: string; fleet: string }[]; fleets: { id: string; exclusive: boolean }[] }> {
      const [members, all] = await Promise.all([
        db.select({ id: drivers.id, fleet: drivers.fleet }).from(drivers).where(isNotNull(drivers.fleet)),
        db.select({ id: fleets.id, exclusive: fleets.exclusive }).from(fleets),
      ]);
      return { members: members.map((m) => ({ id: m.id, fleet: m.fleet! })), fleets: all };
    },
  };
}

export type FleetsStore = ReturnType<typeof createFleetsStore>;
