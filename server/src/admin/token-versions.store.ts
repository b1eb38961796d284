import { and, eq, inArray, sql } from 'drizzle-orm';
import type { Database } from '../platform/db.js';
import { tokenVersions } from '../platform/schema.js';
import { slicesOf } from '../platform/slices.js';

export type VersionedRole = 'dispatcher' | 'admin';

/** Token versions of dispatchers (and admin JWTs): the only place that reads or writes them. */
export function createTokenVersionsStore(database: Database) {
  const { db } = database;
  return {
    /** Current version of each subject; one never revoked is at 0. */
    async versions(role: VersionedRole, subjects: readonly string[]): Promise<Map<string, number>> {
      const found = new Map<string, number>(subjects.map((s) => [s, 0]));
      const unique = [...new Set(subjects)];
      for (const slice of slicesOf(unique, 1000)) {
        const rows = await db
          .select({ subject: tokenVersions.subject, version: tokenVersions.version })
          .from(tokenVersions)
          .where(and(eq(tokenVersions.role, role), inArray(tokenVersions.subject, slice)));
        for (const row of rows) found.set(row.subject, row.version);
      }
      return found;
    },

    async version(role: VersionedRole, subject: string): Promise<number> {
      return (await this.versions(role, [subject])).get(subject) ?? 0;
    },

    /** Revokes every token of the subject issued so far; answers the new version. */
    async revoke(role: VersionedRole, subject: string): Promise<number> {
      const [row] = await db
        .insert(tokenVersions)
        .values({ role, subject, version: 1 })
        .onConflictDoUpdate({
          target: [tokenVersions.role, tokenVersions.subject],
          set: { version: sql`${tokenVersions.version} + 1`, updatedAt: new Date() },
        })
        .returning({ version: tokenVersions.version });
      return row.version;
    },
  };
}

export type TokenVersionsStore = ReturnType<typeof createTokenVersionsStore>;
