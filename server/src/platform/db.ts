import { mkdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { PGlite } from '@electric-sql/pglite';
import { type ExtractTablesWithRelations, getTableColumns, sql } from 'drizzle-orm';
import type { PgDatabase, PgQueryResultHKT, PgTable, PgTransaction } from 'drizzle-orm/pg-core';
import { drizzle as drizzlePglite } from 'drizzle-orm/pglite';
import { migrate as migratePglite } from 'drizzle-orm/pglite/migrator';
import { drizzle as drizzlePostgres } from 'drizzle-orm/postgres-js';
import { migrate as migratePostgres } from 'drizzle-orm/postgres-js/migrator';
import postgres from 'postgres';
import { causeChain } from './errors.js';
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
  /**
   * A hot statement written as plain text with $1..$n: no query building per call, and on
   * PostgreSQL a named prepared statement per connection (parsed and planned once). Values come
   * back as the driver gives them (timestamps may be strings): map them with `rowMapper`.
   */
  query<T = Record<string, unknown>>(text: string, params: readonly unknown[]): Promise<T[]>;
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

/** The columns of `table` but those in `omit`, as [property, column]. */
function columnsBut<TTable extends PgTable>(table: TTable, omit: readonly PropertyKey[]) {
  return Object.entries(getTableColumns(table)).filter(([key]) => !omit.includes(key));
}

/**
 * Maps raw snake_case rows of `table` (from `Database.query`) to what drizzle's own selects return,
 * without the columns in `omit` (a statement that does not read them; see `columnNames`).
 */
export function rowMapper<TTable extends PgTable, TOmit extends keyof TTable['$inferSelect'] = never>(
  table: TTable,
  omit: readonly TOmit[] = [],
): (raw: Record<string, unknown>) => Omit<TTable['$inferSelect'], TOmit> {
  const columns = columnsBut(table, omit).map(([key, column]) => ({ key, name: column.name, column }));
  return (raw) => {
    const row: Record<string, unknown> = {};
    for (const { key, name, column } of columns) {
      const value = raw[name];
      row[key] = value === null || value === undefined ? null : column.mapFromDriverValue(value);
    }
    return row as Omit<TTable['$inferSelect'], TOmit>;
  };
}

/** The column list (`a, b, c`) a statement selects or returns for `rowMapper(table, omit)`. */
export function columnNames<TTable extends PgTable>(table: TTable, omit: readonly (keyof TTable['$inferSelect'])[] = []): string {
  return columnsBut(table, omit)
    .map(([, column]) => column.name)
    .join(', ');
}

/** The constraint a unique violation (SQLSTATE 23505) broke, wherever the driver put it; null for any other error. */
export function uniqueViolation(err: unknown): string | null {
  for (const e of causeChain(err)) if (e.code === '23505') return String(e.constraint_name ?? e.constraint ?? '');
  return null;
}

/** PostgreSQL gave up on a statement to break a deadlock or a serialization conflict: running it again is safe. */
export function isRetryableConflict(err: unknown): boolean {
  for (const e of causeChain(err)) if (e.code === '40P01' || e.code === '40001') return true;
  return false;
}

/**
 * Runs a single statement again when PostgreSQL cancelled it to break a deadlock (the statement
 * changed nothing). A claim that passed over a taken driver keeps that row locked until it
 * commits, so two claims walking overlapping candidates in opposite orders can deadlock.
 * `retryable` widens what counts as safe to run again (a whole transaction, say).
 */
export async function retryOnConflict<T>(run: () => Promise<T>, attempts = 3, retryable: (err: unknown) => boolean = isRetryableConflict): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await run();
    } catch (err) {
      if (attempt >= attempts || !retryable(err)) throw err;
    }
  }
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
      query: async <T>(text: string, params: readonly unknown[]) =>
        (await client.unsafe(text, params as never[], { prepare: true })) as unknown as T[],
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
    query: async <T>(text: string, params: readonly unknown[]) => (await client.query<T>(text, params as unknown[])).rows,
    migrate: () => migratePglite(drizzlePglite(client), { migrationsFolder: MIGRATIONS_DIR }),
    close: () => client.close(),
  };
}
