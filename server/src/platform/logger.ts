import { createRequire } from 'node:module';
import { pino } from 'pino';

export type Logger = pino.Logger;

/** Keys whose values never reach a log line, wherever they sit in a logged object. */
const REDACT = [
  'token',
  '*.token',
  'auth.token',
  '*.auth.token',
  'query.token',
  '*.query.token',
  'authorization',
  '*.authorization',
  'headers.authorization',
  '*.headers.authorization',
  'secret',
  '*.secret',
  'webhook-signature',
  '*["webhook-signature"]',
  '*.headers["webhook-signature"]',
  // The parsed configuration, should anyone log it whole. `adminToken` (lower case) is not here on
  // purpose: main.ts prints a token it generated itself, once, for local development.
  'ADMIN_TOKEN',
  '*.ADMIN_TOKEN',
  'JWT_SECRET',
  '*.JWT_SECRET',
  'WEBHOOK_SECRETS',
  '*.WEBHOOK_SECRETS',
  'VENDURE_WEBHOOK_SECRET',
  '*.VENDURE_WEBHOOK_SECRET',
];

export interface LoggerOptions {
  level: string;
  nodeId: string;
  /**
   * Human-readable lines through the pino-pretty transport (a worker thread fed the same JSON
   * lines, so redaction and levels are unchanged). For a terminal in development; production and
   * anything piped keep the JSON lines log shippers expect.
   */
  pretty?: boolean;
}

/** Whether pino-pretty can be loaded: a development dependency, absent from a production install. */
export function prettyAvailable(): boolean {
  try {
    createRequire(import.meta.url).resolve('pino-pretty');
    return true;
  } catch {
    return false;
  }
}

/** Pretty output when asked for and not in production, on a terminal, with pino-pretty installed. */
export function wantsPrettyLogs(opts: { production: boolean; isTTY: boolean | undefined }): boolean {
  return !opts.production && opts.isTTY === true && prettyAvailable();
}

/**
 * Lines wait in memory until this much is buffered, or LOG_FLUSH_MS: an unbuffered line costs a
 * write on libuv's thread pool and two thread wake-ups, which at hundreds of orders per second
 * was a measurable share of an assignment's CPU. Pino flushes what is left when the process
 * exits; only a SIGKILL loses up to LOG_FLUSH_MS of lines.
 */
const LOG_BUFFER_BYTES = 4096;
const LOG_FLUSH_MS = 200;

/** `destination` defaults to stdout, buffered; tests pass a stream to read what would have been logged. */
export function createLogger(opts: LoggerOptions, destination?: pino.DestinationStream): Logger {
  const options: pino.LoggerOptions = {
    level: opts.level,
    base: { node: opts.nodeId },
    redact: { paths: REDACT, censor: '[redacted]' },
  };
  if (destination) return pino(options, destination);
  if (opts.pretty) {
    return pino({
      ...options,
      transport: { target: 'pino-pretty', options: { colorize: true, translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname', singleLine: false } },
    });
  }
  return pino(options, pino.destination({ dest: 1, sync: false, minLength: LOG_BUFFER_BYTES, periodicFlush: LOG_FLUSH_MS }));
}
