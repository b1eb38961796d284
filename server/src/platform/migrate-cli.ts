import { randomBytes } from 'node:crypto';
import { parseConfig } from './config.js';
import { openDatabase } from './db.js';

/** `npm run migrate`: applies migrations/ to DATABASE_URL (or the embedded database) and exits. */
const config = parseConfig(process.env, () => randomBytes(32).toString('base64url'));
const database = openDatabase({ url: config.DATABASE_URL, dataDir: config.DATA_DIR });
try {
  await database.migrate();
  console.log(`migrations applied (${database.kind})`);
} catch (err) {
  console.error(`migration failed: ${(err as Error).message}`);
  process.exitCode = 1;
} finally {
  await database.close();
}
