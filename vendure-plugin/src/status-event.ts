import { type DeliveryStatusEvent, deliveryStatusEvent } from '../../shared/src/schemas.js';
import { verifyWebhook } from '../../shared/src/webhooks.js';

export interface StatusRequest {
  id: string | undefined;
  timestamp: string | undefined;
  signature: string | undefined;
  body: Buffer;
}

export type StatusEventVerdict =
  | { ok: true; event: DeliveryStatusEvent }
  | { ok: false; status: 400 | 401; code: 'INVALID_SIGNATURE' | 'VALIDATION_FAILED'; message: string };

/**
 * Checks a status event as the hub sent it: the Standard Webhooks signature over the raw bytes
 * (before any JSON parsing), the timestamp within five minutes either way, then the body's shape.
 */
export function readStatusEvent(secrets: readonly string[], request: StatusRequest, nowSeconds?: number): StatusEventVerdict {
  const verdict = verifyWebhook(secrets, { ...request, nowSeconds });
  if (!verdict.ok) return { ok: false, status: 401, code: 'INVALID_SIGNATURE', message: `status event signature rejected: ${verdict.reason}` };
  let json: unknown;
  try {
    json = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(request.body));
  } catch {
    return { ok: false, status: 400, code: 'VALIDATION_FAILED', message: 'body is not valid UTF-8 JSON' };
  }
  const parsed = deliveryStatusEvent.safeParse(json);
  if (!parsed.success) {
    const issues = parsed.error.issues.map((i) => `${i.path.join('.') || '(body)'}: ${i.message}`).join('; ');
    return { ok: false, status: 400, code: 'VALIDATION_FAILED', message: `not a status event: ${issues}` };
  }
  if (parsed.data.id !== request.id) {
    return { ok: false, status: 400, code: 'VALIDATION_FAILED', message: 'body id differs from the webhook-id header' };
  }
  return { ok: true, event: parsed.data };
}
