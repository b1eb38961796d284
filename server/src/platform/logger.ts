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

/** `destination` defaults to stdout; tests pass a stream to read what would have been logged. */
export function createLogger(opts: { level: string; nodeId: string }, destination?: pino.DestinationStream): Logger {
  const options: pino.LoggerOptions = {
    level: opts.level,
    base: { node: opts.nodeId },
    redact: { paths: REDACT, censor: '[redacted]' },
  };
  return destination ? pino(options, destination) : pino(options);
}
