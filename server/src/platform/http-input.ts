import type { Context } from 'hono';
import { HubError } from './errors.js';

/** The request's JSON body; anything unparsable is the client's error, never a 5xx. */
export async function jsonBody(req: { json(): Promise<unknown> }): Promise<unknown> {
  try {
    return await req.json();
  } catch {
    throw new HubError('VALIDATION_FAILED', 'body is not valid JSON');
  }
}

/** The bearer token of the Authorization header, or '' when there is none. */
export function bearerToken(c: Context): string {
  const header = c.req.header('authorization') ?? '';
  return header.startsWith('Bearer ') ? header.slice('Bearer '.length).trim() : '';
}
