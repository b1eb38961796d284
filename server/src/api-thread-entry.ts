import { writeFileSync } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';
import { startApiThreadHub } from './main.js';
import { type ApiThreadData, connectToMainThread } from './platform/api-thread.js';
import { createLogger, wantsPrettyLogs } from './platform/logger.js';

/** The API thread's entry (API_THREAD=true): started by the main thread, never run by hand. */
const { config, mainPort } = workerData as ApiThreadData;
const logger = createLogger({
  level: config.LOG_LEVEL,
  nodeId: config.NODE_ID,
  pretty: wantsPrettyLogs({ production: config.production, isTTY: process.stdout.isTTY }),
}).child({ thread: 'api' });
process.on('unhandledRejection', (err) => logger.error({ err }, 'unhandled rejection'));
// Every thread of a Node process is called `node`: named, the API thread's CPU stands apart in
// `top -H` and `ps -L` (Linux only; elsewhere it keeps its name).
try {
  writeFileSync('/proc/thread-self/comm', 'hub-api');
} catch {}

try {
  const hub = await startApiThreadHub(config, logger, (registry) => connectToMainThread(parentPort!, registry), mainPort);
  logger.info({ apiPort: hub.port }, 'api thread listening');
  await hub.stopRequested;
  await hub.stop();
  process.exit(0);
} catch (err) {
  logger.fatal({ reason: (err as Error).message }, 'api thread could not start');
  process.exit(1);
}
