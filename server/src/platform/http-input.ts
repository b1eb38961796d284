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

/** Like jsonBody, but an empty body is `{}`: for routes whose every field is optional. */
export async function optionalJsonBody(req: { text(): Promise<string> }): Promise<unknown> {
  const text = await req.text();
  if (text.trim() === '') return {};
  try {
    return JSON.parse(text);
  } catch {
    throw new HubError('VALIDATION_FAILED', 'body is not valid JSON');
  }
}

/** The bearer token of the Authorization header, or '' when there is none. */
export function bearerToken(c: Context): string {
  const header = c.req.header('authorization') ?? '';
  return header.startsWith('Bearer ') ? header.slice('Bearer '.length).trim() : '';
}
