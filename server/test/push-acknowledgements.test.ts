import { randomUUID } from 'node:crypto';
import postgres from 'postgres';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createDeliveriesStore } from '../src/deliveries/deliveries.store.js';
import { createDriversStore } from '../src/drivers/drivers.store.js';
import { createOutboxStore } from '../src/outbox/outbox.store.js';
import { type Database, openDatabase } from '../src/platform/db.js';
import { createPushesStore } from '../src/pushes/pushes.store.js';
import { createTestDatabase, hasSharedPostgres, type TestDatabase } from './support/hub.js';

/** Two "nodes": each its own connection pool and its own stores, over one PostgreSQL. */
function node(database: Database) {
  const drivers = createDriversStore(database);
  const pushes = createPushesStore(database);
  return { drivers, pushes, deliveries: createDeliveriesStore({ database, drivers, outbox: createOutboxStore(database), pushes }) };
}

describe.skipIf(!hasSharedPostgres())('acknowledgements written in batches, racing transitions', () => {
  let db: TestDatabase;
  let first: Database;
  let second: Database;
  let a: ReturnType<typeof node>;
  let b: ReturnType<typeof node>;
  let sql: postgres.Sql;

  beforeAll(async () => {
    db = await createTestDatabase();
    first = openDatabase({ url: db.url, dataDir: db.dataDir, poolSize: 4 });
    await first.migrate();
    second = openDatabase({ url: db.url, dataDir: db.dataDir, poolSize: 4 });
    a = node(first);
    b = node(second);
    sql = postgres(db.url!, { max: 2, onnotice: () => {} });
  });
  afterAll(async () => {
    await first?.close();
    await second?.close();
    await sql?.end();
    await db?.drop();
  });

  /** An ASSIGNED delivery with its open assignment push, on a fresh driver. */
  async function assigned() {
    const { id: driverId } = await a.drivers.create({ name: 'Acknowledging' });
    await sql`update drivers set status = 'AVAILABLE', on_duty = true, session_id = ${`000000000000001.${driverId}`} where id = ${driverId}`;
    const created = await a.deliveries.createAndAssign(
      { sellerOrderId: `ack-${randomUUID()}`, orderCode: 'A', pickup: { lat: 1, lng: 1 }, dropoff: { lat: 1.01, lng: 1 } },
      [{ driverId, distanceMeters: 100 }],
    );
    if (!created.created || created.delivery.driverId !== driverId) throw new Error('the driver was claimed');
    return { deliveryId: created.delivery.id, driverId };
  }

  it('when a batch of acknowledgements races cancels of the same deliveries on another node, then every cancel succeeds and each push ends acknowledged or closed', async () => {
    for (let round = 0; round < 16; round++) {
      const jobs = await Promise.all(Array.from({ length: 6 }, () => assigned()));
      const keys = jobs.map((j) => ({ ...j, kind: 'assignment' as const }));
      // The acknowledgements land at different points of the cancels' transactions, round by round.
      const [acks, ...cancels] = await Promise.all([
        new Promise((r) => setTimeout(r, round % 4)).then(() => a.pushes.acknowledgeMany(keys)),
        ...jobs.map((j) =>
          b.deliveries.transition({ deliveryId: j.deliveryId, to: 'CANCELLED', allowedFrom: ['PENDING', 'OFFERED', 'ASSIGNED', 'PICKED_UP'], actor: 'test', reason: 'race' }),
        ),
      ]);
      for (const cancel of cancels) expect(cancel).toMatchObject({ changed: true, delivery: { status: 'CANCELLED' } });
      const rows = await sql<{ acknowledged: boolean; closed: boolean }[]>`
        select acknowledged_at is not null as acknowledged, closed_at is not null as closed from pushes
        where kind = 'assignment' and delivery_id = any(${jobs.map((j) => j.deliveryId)}::uuid[])`;
      expect(rows).toHaveLength(jobs.length);
      // Each push was acknowledged before its cancel closed it, or closed before the acknowledgement (which then changed nothing).
      for (const row of rows) expect(row.acknowledged || row.closed).toBe(true);
      expect(acks.filter((x) => x !== null).length).toBe(rows.filter((r) => r.acknowledged).length);
    }
  });
});
