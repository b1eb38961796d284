import { mkdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { PGlite } from '@electric-sql/pglite';
import { type ExtractTablesWithRelations, sql } from 'drizzle-orm';
import type { PgDatabase, PgQueryResultHKT, PgTransaction } from 'drizzle-orm/pg-core';
import { drizzle as drizzlePglite } from 'drizzle-orm/pglite';
import { migrate as migratePglite } from 'drizzle-orm/pglite/migrator';
import { drizzle as drizzlePostgres } from 'drizzle-orm/postgres-js';
import { migrate as migratePostgres } from 'drizzle-orm/postgres-js/migrator';
import postgres from 'postgres';
import { schema } from './schema.js';

export type Schema = typeof schema;
export type Db = PgDatabase<PgQueryResultHKT, Schema>;
export type Tx = PgTransaction<PgQueryResultHKT, Schema, ExtractTablesWithRelations<Schema>>;
/** Either the database or an open transaction: store functions accept both. */
export type DbOrTx = Db | Tx;

const MIGRATION_LOCK_KEY = 7_283_410_552;

export const MIGRATIONS_DIR = fileURLToPath(new URL('../../../migrations', import.meta.url));

export interface Database {
  readonly db: Db;
  readonly kind: 'postgres' | 'pglite';
  /** Rows of a raw query, the same shape whichever driver runs it. */
  rows<T>(query: ReturnType<typeof sql>, executor?: DbOrTx): Promise<T[]>;
  ping(timeoutMs?: number): Promise<boolean>;
  migrate(): Promise<void>;
  close(): Promise<void>;
}

export interface DatabaseOptions {
  url?: string;
  dataDir: string;
  poolSize?: number;
}

function rowsOf<T>(result: unknown): T[] {
  // postgres.js returns an array of rows; PGlite returns { rows }.
  return Array.isArray(result) ? (result as T[]) : ((result as { rows: T[] }).rows ?? []);
}

function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    promise,
    new Promise<T>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/** What both drivers do the same way once drizzle wraps them. */
function queries(db: Db): Pick<Database, 'db' | 'rows' | 'ping'> {
  return {
    db,
    rows: async (query, executor = db) => rowsOf(await executor.execute(query)),
    ping: (timeoutMs = 2000) =>
      withTimeout(db.execute(sql`select 1`), timeoutMs).then(
        () => true,
        () => false,
      ),
  };
}

export function openDatabase(opts: DatabaseOptions): Database {
  if (opts.url) {
    const client = postgres(opts.url, {
      max: opts.poolSize ?? 10,
      connect_timeout: 5,
      idle_timeout: 60,
      onnotice: () => {},
      connection: { application_name: 'dispatch-hub' },
    });
    const db = drizzlePostgres(client, { schema }) as unknown as Db;
    return {
      ...queries(db),
      kind: 'postgres',
      async migrate() {
        // Several replicas may start together: a session advisory lock lets one migrate at a time.
        const lock = await client.reserve();
        try {
          await lock`select pg_advisory_lock(${MIGRATION_LOCK_KEY})`;
          await migratePostgres(drizzlePostgres(client), { migrationsFolder: MIGRATIONS_DIR });
        } finally {
          await lock`select pg_advisory_unlock(${MIGRATION_LOCK_KEY})`.catch(() => {});
          lock.release();
        }
      },
      close: () => client.end({ timeout: 5 }),
    };
  }
  mkdirSync(opts.dataDir, { recursive: true });
  const client = new PGlite(`${opts.dataDir.replace(/\/$/, '')}/pglite`);
  const db = drizzlePglite(client, { schema }) as unknown as Db;
  return {
    ...queries(db),
    kind: 'pglite',
    migrate: () => migratePglite(drizzlePglite(client), { migrationsFolder: MIGRATIONS_DIR }),
    close: () => client.close(),
  };
}
