import { z } from 'zod';
import { validationError } from './errors.js';

/** A UTF-16 half without its other half: not Unicode at all (jsonb refuses it, text would mangle it). */
const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;

/** The path of the first string in `value` that PostgreSQL could not store faithfully, or null. */
export function findUnstorableText(value: unknown): PropertyKey[] | null {
  // PostgreSQL text and jsonb cannot hold a NUL.
  if (typeof value === 'string') return value.includes('\u0000') || LONE_SURROGATE.test(value) ? [] : null;
  if (value === null || typeof value !== 'object') return null;
  // Runs on every location ping: the path is built only on the way back from a bad string.
  for (const key in value) {
    const inner = (value as Record<string, unknown>)[key];
    if (inner === null || (typeof inner !== 'string' && typeof inner !== 'object')) continue;
    const found = findUnstorableText(inner);
    if (found) return [Array.isArray(value) ? Number(key) : key, ...found];
  }
  return null;
}

/**
 * Parses a client payload (socket event or HTTP body) with its shared schema; a bad one is a
 * VALIDATION_FAILED HubError. Text the schemas let through but the database would choke on is
 * refused here too, so it is a 400 and not a 500 halfway through a transaction.
 */
export function parsePayload<S extends z.ZodType>(schema: S, payload: unknown, what: string): z.infer<S> {
  let data: z.infer<S>;
  try {
    // Not safeParse: its failure result is an object with a getter of its own, which V8 keeps alive
    // through young collections, with the payload, until a full one: a flood of bad payloads cost
    // the collector far more than good ones (docs/performance.md, tenth pass).
    data = schema.parse(payload);
  } catch (err) {
    if (err instanceof z.ZodError) throw validationError(err.issues, what);
    throw err;
  }
  // After the schema: only known, bounded fields are left to walk.
  const bad = findUnstorableText(data);
  if (bad) throw validationError([{ path: bad, message: 'text must be valid Unicode without NUL characters' }], what);
  return data;
}
