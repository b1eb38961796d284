import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';

/**
 * Standard Webhooks (https://www.standardwebhooks.com) signing, shared by the hub (which verifies
 * Vendure's calls and signs its own) and by receivers written against it.
 */
export const WEBHOOK_TOLERANCE_SECONDS = 5 * 60;

export type WebhookVerifyFailure =
  | 'MISSING_HEADERS'
  | 'BAD_TIMESTAMP'
  | 'TIMESTAMP_TOO_OLD'
  | 'TIMESTAMP_TOO_NEW'
  | 'NO_MATCHING_SIGNATURE';

export interface WebhookHeaders {
  'webhook-id': string;
  'webhook-timestamp': string;
  'webhook-signature': string;
}

export function decodeWebhookSecret(secret: string): Buffer {
  const base64 = secret.startsWith('whsec_') ? secret.slice('whsec_'.length) : secret;
  const key = Buffer.from(base64, 'base64');
  if (key.length === 0) throw new Error('webhook secret is empty');
  return key;
}

export function generateWebhookSecret(): string {
  return `whsec_${randomBytes(24).toString('base64')}`;
}

function signature(key: Buffer, id: string, timestamp: string, body: string | Uint8Array): Buffer {
  return createHmac('sha256', key)
    .update(`${id}.${timestamp}.`)
    .update(body)
    .digest();
}

export function signWebhook(
  secret: string,
  id: string,
  timestampSeconds: number,
  body: string | Uint8Array,
): WebhookHeaders {
  const timestamp = String(Math.floor(timestampSeconds));
  const sig = signature(decodeWebhookSecret(secret), id, timestamp, body).toString('base64');
  return { 'webhook-id': id, 'webhook-timestamp': timestamp, 'webhook-signature': `v1,${sig}` };
}

export interface VerifyInput {
  id: string | null | undefined;
  timestamp: string | null | undefined;
  signature: string | null | undefined;
  body: string | Uint8Array;
  nowSeconds?: number;
  toleranceSeconds?: number;
}

/** Checks the headers against one or more secrets (several during a rotation). Constant-time per candidate. */
export function verifyWebhook(
  secrets: readonly string[],
  input: VerifyInput,
): { ok: true } | { ok: false; reason: WebhookVerifyFailure } {
  const { id, timestamp, signature: header, body } = input;
  if (!id || !timestamp || !header) return { ok: false, reason: 'MISSING_HEADERS' };
  if (!/^\d{1,15}$/.test(timestamp)) return { ok: false, reason: 'BAD_TIMESTAMP' };
  const now = input.nowSeconds ?? Math.floor(Date.now() / 1000);
  const tolerance = input.toleranceSeconds ?? WEBHOOK_TOLERANCE_SECONDS;
  const ts = Number(timestamp);
  if (ts < now - tolerance) return { ok: false, reason: 'TIMESTAMP_TOO_OLD' };
  if (ts > now + tolerance) return { ok: false, reason: 'TIMESTAMP_TOO_NEW' };

  const offered = header
    .split(' ')
    .filter((part) => part.startsWith('v1,'))
    .map((part) => Buffer.from(part.slice(3), 'base64'));
  for (const secret of secrets) {
    const expected = signature(decodeWebhookSecret(secret), id, timestamp, body);
    for (const candidate of offered) {
      if (candidate.length === expected.length && timingSafeEqual(candidate, expected)) return { ok: true };
    }
  }
  return { ok: false, reason: 'NO_MATCHING_SIGNATURE' };
}
