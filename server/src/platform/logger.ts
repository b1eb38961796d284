import { createRequire } from 'node:module';
import { pino } from 'pino';

export type Logger = pino.Logger;

/**
 * Keys whose values never reach a log line, at the top of a logged object or nested up to
 * SECRET_LEVELS deep: tokens (the handshake's `auth.token`, a query's `token`), authorization and
 * signature headers, and the parsed configuration's secrets should anyone log it whole.
 * `adminToken` (lower case) is not here on purpose: main.ts prints a token it generated itself,
 * once, for local development.
 */
const SECRET_KEYS: ReadonlySet<string> = new Set([
  'token',
  'authorization',
  'secret',
  'webhook-signature',
  'ADMIN_TOKEN',
  'JWT_SECRET',
  'WEBHOOK_SECRETS',
  'VENDURE_WEBHOOK_SECRET',
]);
const SECRET_LEVELS = 4;
const CENSOR = '[redacted]';

/** A copy to censor in: an Error stays an Error of its class (message, stack and all), for pino's serializer. */
function copyOf(value: object): Record<string, unknown> {
  if (!(value instanceof Error)) return { ...value } as Record<string, unknown>;
  return Object.defineProperties(Object.create(Object.getPrototypeOf(value) as object) as Record<string, unknown>, Object.getOwnPropertyDescriptors(value));
}

/**
 * `value` with the value of every key in SECRET_KEYS censored. The same object when it holds none,
 * which is nearly always: nothing is copied then, and the caller's object is never changed. (Pino's
 * own `redact` with wildcard paths costs about 10 us per line, six times the line itself: a
 * webhook's assignment logs one.)
 */
export function redactSecrets<T>(value: T, levels = SECRET_LEVELS): T {
  if (levels === 0 || value === null || typeof value !== 'object' || ArrayBuffer.isView(value)) return value;
  if (Array.isArray(value)) {
    let copy: unknown[] | null = null;
    for (let i = 0; i < value.length; i++) {
      const inner = redactSecrets(value[i] as unknown, levels - 1);
      if (inner !== value[i]) (copy ??= value.slice())[i] = inner;
    }
    return (copy ?? value) as T;
  }
  let copy: Record<string, unknown> | null = null;
  for (const key in value) {
    if (!Object.hasOwn(value, key)) continue;
    const current = (value as Record<string, unknown>)[key];
    const next = SECRET_KEYS.has(key) ? (current === undefined ? current : CENSOR) : redactSecrets(current, levels - 1);
    if (next !== current) (copy ??= copyOf(value))[key] = next;
  }
  return (copy ?? value) as T;
}

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

/**
 * Pino formats a child's bindings without the `bindings` formatter (it resets it for children), so
 * the root's `child` censors them first; children inherit it from the root.
 */
function censorChildBindings(logger: Logger): Logger {
  const original = logger.child;
  logger.child = function censoredChild(this: Logger, bindings, options) {
    return original.call(this, redactSecrets(bindings), options);
  } as Logger['child'];
  return logger;
}

/** `destination` defaults to stdout, buffered; tests pass a stream to read what would have been logged. */
export function createLogger(opts: LoggerOptions, destination?: pino.DestinationStream): Logger {
  const options: pino.LoggerOptions = {
    level: opts.level,
    base: { node: opts.nodeId },
    formatters: { log: redactSecrets },
  };
  if (destination) return censorChildBindings(pino(options, destination));
  if (opts.pretty) {
    return censorChildBindings(
      pino({
        ...options,
        transport: { target: 'pino-pretty', options: { colorize: true, translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname', singleLine: false } },
      }),
    );
  }
  return censorChildBindings(pino(options, pino.destination({ dest: 1, sync: false, minLength: LOG_BUFFER_BYTES, periodicFlush: LOG_FLUSH_MS })));
}
