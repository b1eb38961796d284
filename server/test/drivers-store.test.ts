import postgres from 'postgres';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createDriversStore, type DriversStore } from '../src/drivers/drivers.store.js';
import { type Database, openDatabase } from '../src/platform/db.js';
import { createTestDatabase, hasSharedPostgres, type TestDatabase } from './support/hub.js';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe.skipIf(!hasSharedPostgres())('drivers in PostgreSQL: the heartbeat sweep against connects', () => {
  let db: TestDatabase;
  let database: Database;
  let drivers: DriversStore;
  let sql: postgres.Sql;

  beforeAll(async () => {
    db = await createTestDatabase();
    database = openDatabase({ url: db.url, dataDir: db.dataDir, poolSize: 4 });
    await database.migrate();
    drivers = createDriversStore(database);
    sql = postgres(db.url!, { max: 2, onnotice: () => {} });
  });
  afterAll(async () => {
    await database?.close();
    await sql?.end();
    await db?.drop();
  });

  it('when a sweep runs while a driver is connecting, then the driver the connect just heard from is not taken offline', async () => {
    const driver = await drivers.create({ name: 'Late but alive' });
    // On duty, silent for a minute: the sweep's candidate.
    await sql`update drivers set status = 'AVAILABLE', on_duty = true, session_id = '000000000000001.old', updated_at = now() - interval '1 minute' where id = ${driver.id}`;
    await sql`insert into driver_positions (driver_id, last_seen_at) values (${driver.id}, now() - interval '1 minute')`;

    // The connect holds the driver's row (as CONNECT_MANY does inside its statement) while the sweep starts.
    const connected = sql.begin(async (tx) => {
      await tx`select id from drivers where id = ${driver.id} for update`;
      await tx`update driver_positions set last_seen_at = now() where driver_id = ${driver.id}`;
      await tx`update drivers set session_id = '000000000000002.new', status = 'AVAILABLE', updated_at = now() where id = ${driver.id}`;
      await sleep(300);
    });
    await sleep(100);
    const sweep = drivers.sweepSilent(30);
    await connected;
    const swept = await sweep;

    expect(swept.map((row) => row.id)).not.toContain(driver.id);
    const [row] = await sql<{ status: string; session_id: string | null }[]>`select status, session_id from drivers where id = ${driver.id}`;
    expect(row).toEqual({ status: 'AVAILABLE', session_id: '000000000000002.new' });
  });

  it('when thousands of quiet drivers are touched, then every one is heard from now and none is swept', async () => {
    const ids = (
      await sql<{ id: string }[]>`
        insert into drivers (name, status, on_duty, session_id, updated_at)
        select 'Quiet ' || i, 'AVAILABLE', true, '000000000000001.q', now() - interval '1 minute' from generate_series(1, 4500) as i
        returning id`
    ).map((row) => row.id);
    await sql`insert into driver_positions (driver_id, last_seen_at) select id, now() - interval '1 minute' from drivers where id = any(${ids}::uuid[])`;
    await drivers.touch(ids);
    const [{ stale }] = await sql<{ stale: number }[]>`select count(*)::int as stale from driver_positions where driver_id = any(${ids}::uuid[]) and last_seen_at < now() - interval '10 seconds'`;
    expect(stale).toBe(0);
    const swept = new Set((await drivers.sweepSilent(30)).map((row) => row.id));
    expect(ids.filter((id) => swept.has(id))).toEqual([]);
    await sql`delete from drivers where id = any(${ids}::uuid[])`;
  });

  it('when many sockets close at once, then one statement takes offline exactly the drivers whose closing socket still speaks for them', async () => {
    const inserted = await sql<{ id: string; session_id: string }[]>`
      insert into drivers (name, status, on_duty, session_id)
      select 'Closing ' || i, 'AVAILABLE', true, '000000000000002.s' || i from generate_series(1, 300) as i
      returning id, session_id`;
    const ids = inserted.map((row) => row.id);
    await sql`insert into driver_positions (driver_id, lat, lng, last_seen_at) select id, 52.5, 13.4, now() from drivers where id = any(${ids}::uuid[])`;
    // Every third socket closing is an older connection: its driver has a newer one and stays.
    const closing = inserted.map((row, i) => ({ driverId: row.id, sessionId: i % 3 === 0 ? '000000000000001.old' : row.session_id }));
    const rows = await drivers.disconnectMany([...closing, { driverId: 'not-a-uuid', sessionId: 'x' }]);

    const expected = closing.filter((_, i) => i % 3 !== 0).map((c) => c.driverId);
    expect(rows.map((row) => row.id).sort()).toEqual([...expected].sort());
    expect(rows.every((row) => row.status === 'OFFLINE' && row.lat === 52.5 && row.lng === 13.4)).toBe(true);
    const states = await sql<{ id: string; status: string; session_id: string | null }[]>`select id, status, session_id from drivers where id = any(${ids}::uuid[])`;
    for (const state of states) {
      const kept = ids.indexOf(state.id) % 3 === 0;
      expect(kept ? state.status === 'AVAILABLE' && state.session_id !== null : state.status === 'OFFLINE' && state.session_id === null).toBe(true);
    }
    await sql`delete from drivers where id = any(${ids}::uuid[])`;
  });

  it('when a driver stays silent past the heartbeat, then the sweep takes it offline', async () => {
    const driver = await drivers.create({ name: 'Gone quiet' });
    await sql`update drivers set status = 'AVAILABLE', on_duty = true, session_id = '000000000000001.x', updated_at = now() - interval '1 minute' where id = ${driver.id}`;
    await sql`insert into driver_positions (driver_id, last_seen_at) values (${driver.id}, now() - interval '1 minute')`;
    const swept = await drivers.sweepSilent(30);
    expect(swept.map((row) => row.id)).toContain(driver.id);
  });
});
