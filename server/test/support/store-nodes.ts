import postgres from 'postgres';
import { afterAll, beforeAll } from 'vitest';
import { createDeliveriesStore } from '../../src/deliveries/deliveries.store.js';
import { createOffersStore } from '../../src/dispatch/offers.store.js';
import { createDriversStore } from '../../src/drivers/drivers.store.js';
import { createOutboxStore } from '../../src/outbox/outbox.store.js';
import { type Database, openDatabase } from '../../src/platform/db.js';
import { createPushesStore } from '../../src/pushes/pushes.store.js';
import { createTestDatabase, type TestDatabase } from './hub.js';

/** One "node"'s stores over its own connection pool. */
function storeNode(database: Database) {
  const drivers = createDriversStore(database);
  const pushes = createPushesStore(database);
  const outbox = createOutboxStore(database);
  return {
    drivers,
    pushes,
    deliveries: createDeliveriesStore({ database, drivers, outbox, pushes }),
    offers: createOffersStore({ database, drivers, pushes, outbox }),
  };
}

export type StoreNode = ReturnType<typeof storeNode>;

export interface StoreNodes {
  /** Two "nodes": each its own connection pool and its own stores, over one fresh PostgreSQL database. */
  a: StoreNode;
  b: StoreNode;
  /** A plain client on the same database, to arrange rows and read what the stores wrote. */
  sql: postgres.Sql;
}

/** Two store nodes for the enclosing `describe`, set up before its tests and torn down after. */
export function useStoreNodes(): StoreNodes {
  const nodes = {} as StoreNodes;
  let db: TestDatabase | undefined;
  let pools: Database[] = [];
  beforeAll(async () => {
    db = await createTestDatabase();
    pools = [openDatabase({ url: db.url, dataDir: db.dataDir, poolSize: 4 }), openDatabase({ url: db.url, dataDir: db.dataDir, poolSize: 4 })];
    await pools[0].migrate();
    nodes.a = storeNode(pools[0]);
    nodes.b = storeNode(pools[1]);
    nodes.sql = postgres(db.url!, { max: 2, onnotice: () => {} });
  });
  afterAll(async () => {
    for (const pool of pools) await pool.close();
    await nodes.sql?.end();
    await db?.drop();
  });
  return nodes;
}
