import { pino } from 'pino';

export type Logger = pino.Logger;

/** Keys whose values never reach a log line, wherever they sit in a logged object. */
const REDACT = [
  'token',
  '*.token',
  'auth.token',
  'authorization',
  '*.authorization',
  'headers.authorization',
  'secret',
  '*.secret',
  'webhook-signature',
  '*["webhook-signature"]',
];

export function createLogger(opts: { level: string; nodeId: string }): Logger {
  return pino({
    level: opts.level,
    base: { node: opts.nodeId },
    redact: { paths: REDACT, censor: '[redacted]' },
  });
}
