import { randomUUID } from 'node:crypto';
import postgres from 'postgres';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createDeliveriesStore } from '../src/deliveries/deliveries.store.js';
import { type CandidateInput, inFairnessBand, rankCandidates, type ScoredCandidate } from '../src/dispatch/scoring.js';
import { createDriversStore } from '../src/drivers/drivers.store.js';
import { createOutboxStore } from '../src/outbox/outbox.store.js';
import { type Database, openDatabase } from '../src/platform/db.js';
import { createPushesStore } from '../src/pushes/pushes.store.js';
import { createTestDatabase, hasSharedPostgres, type TestDatabase } from './support/hub.js';

const BAND = 500;

/** A small deterministic generator, so a failing draw can be replayed. */
function random(seed: number) {
  let s = seed;
  return () => {
    s = (s * 1103515245 + 12345) % 2 ** 31;
    return s / 2 ** 31;
  };
}

/**
 * The webhook's claim ranks the fairness band in SQL, on facts it reads in the same statement;
 * every other path ranks with dispatch/scoring.ts on facts read first. The two must agree.
 */
describe.skipIf(!hasSharedPostgres())('the claim ranks as scoring.ts does', () => {
  let db: TestDatabase;
  let database: Database;
  let sql: postgres.Sql;
  let stores: { drivers: ReturnType<typeof createDriversStore>; deliveries: ReturnType<typeof createDeliveriesStore> };

  beforeAll(async () => {
    db = await createTestDatabase();
    database = openDatabase({ url: db.url, dataDir: db.dataDir, poolSize: 4 });
    await database.migrate();
    sql = postgres(db.url!, { max: 2, onnotice: () => {} });
    await sql`insert into fleets (id) values ('ranking-fleet')`;
    const drivers = createDriversStore(database);
    stores = { drivers, deliveries: createDeliveriesStore({ database, drivers, outbox: createOutboxStore(database), pushes: createPushesStore(database) }) };
  });
  afterAll(async () => {
    await database?.close();
    await sql?.end();
    await db?.drop();
  });

  /**
   * An AVAILABLE driver that came free `idleSeconds` before `base` (null: never did) with `today`
   * deliveries since midnight UTC. One `base` per round, so equal idle times tie exactly.
   */
  async function driver(base: Date, idleSeconds: number | null, today: number, fleet: string | null): Promise<string> {
    const { id } = await stores.drivers.create({ name: 'Ranked', fleet });
    await sql`update drivers set status = 'AVAILABLE', on_duty = true, session_id = ${`000000000000001.${id}`},
      free_since = ${idleSeconds === null ? null : new Date(base.getTime() - idleSeconds * 1000)},
      created_at = now() - interval '1 day' where id = ${id}`;
    for (let i = 0; i < today; i++) {
      await sql`insert into deliveries (id, seller_order_id, order_code, status, driver_id, pickup_lat, pickup_lng, dropoff_lat, dropoff_lng, assigned_at, created_at, updated_at)
        values (${randomUUID()}, ${`past-${randomUUID()}`}, 'PAST', 'DELIVERED', ${id}, 1, 1, 1, 1, now(), now(), now())`;
    }
    return id;
  }

  it('when drivers share bands with mixed idle times, deliveries today, pools and distances, then the claim takes and stores the order scoring.ts gives', async () => {
    const draw = random(21);
    for (let round = 0; round < 12; round++) {
      const inputs: CandidateInput[] = [];
      const base = new Date();
      const count = 2 + Math.floor(draw() * 5);
      for (let i = 0; i < count; i++) {
        // Few distinct values, so ties on idle time, deliveries and distance all happen.
        const idle = draw() < 0.15 ? null : [60, 600, 600, 3600][Math.floor(draw() * 4)];
        const fleet = draw() < 0.3 ? 'ranking-fleet' : null;
        const id = await driver(base, idle, Math.floor(draw() * 3), fleet);
        inputs.push({ driverId: id, distanceMeters: [100, 100, 350, 700, 1200][Math.floor(draw() * 5)], pool: fleet ? 'fleet' : 'shared', fleet });
      }
      inputs.sort((a, b) => a.distanceMeters - b.distanceMeters);
      // What the webhook hands the claim: the ranking without facts, and which ones share a band.
      const unranked = rankCandidates(inputs, new Map(), BAND);
      const contenders = inFairnessBand(inputs, BAND);
      const expected = rankCandidates(inputs, await stores.drivers.scoreFacts(contenders.map((c) => c.driverId)), BAND);
      const created = await stores.deliveries.createAndAssign(
        { sellerOrderId: `rank-${round}-${randomUUID()}`, orderCode: 'R', pickup: { lat: 1, lng: 1 }, dropoff: { lat: 1.01, lng: 1 } },
        unranked.map((c) => ({ driverId: c.driverId, distanceMeters: c.distanceMeters })),
        { pooled: false, terms: new Map<string, ScoredCandidate>(unranked.map((c) => [c.driverId, c])) },
        contenders.length > 1 ? 'band' : 'as-given',
      );
      if (!created.created) throw new Error('the order was new');
      expect(created.delivery.driverId).toBe(expected[0].driverId);
      const stored = (await stores.deliveries.get(created.delivery.id))!.candidates as unknown as { driverId: string; rank: number; idleSeconds: number | null; deliveriesToday: number | null; outcome: string }[];
      expect(stored.map((c) => [c.driverId, c.rank, c.deliveriesToday])).toEqual(expected.map((c) => [c.driverId, c.rank, c.deliveriesToday]));
      expect(stored.map((c) => c.outcome)).toEqual(expected.map((_, i) => (i === 0 ? 'chosen' : 'not-tried')));
      stored.forEach((c, i) => expect(c.idleSeconds === null).toBe(expected[i].idleSeconds === null));
      // The chosen driver is busy now: the next round's drivers are all new.
    }
  });
});
