import { randomUUID } from 'node:crypto';
import { signWebhook } from '../../shared/src/webhooks.js';

/** What one attempt to call the hub came to. */
export type HubOutcome =
  | { kind: 'accepted'; status: number; body: HubReply }
  /** Worth another attempt: no answer, a timeout, 408, 425, 429 or 5xx. */
  | { kind: 'retry'; status: number | null; message: string }
  /** The hub said no for good (400, 401, 404, 409, 413, ...): retrying would get the same answer. */
  | { kind: 'refused'; status: number; code: string | null; message: string };

export interface HubReply {
  status?: string;
  deliveryId?: string;
  driverId?: string | null;
  trackingUrl?: string;
  [key: string]: unknown;
}

export interface HubClientOptions {
  hubUrl: string;
  webhookSecret: string;
  requestTimeoutMs: number;
  fetch?: typeof fetch;
  now?: () => number;
}

const RETRYABLE_STATUSES = new Set([408, 425, 429]);

export function newWebhookId(): string {
  return `msg_${randomUUID()}`;
}

/** Posts signed webhooks to the hub. The id stays the same across attempts; each attempt is signed afresh. */
export function createHubClient(options: HubClientOptions) {
  const doFetch = options.fetch ?? fetch;
  const now = options.now ?? Date.now;
  const base = options.hubUrl.replace(/\/+$/, '');

  return {
    async post(path: string, webhookId: string, payload: unknown): Promise<HubOutcome> {
      const body = JSON.stringify(payload);
      const headers = signWebhook(options.webhookSecret, webhookId, now() / 1000, body);
      let res: Response;
      try {
        res = await doFetch(`${base}${path}`, {
          method: 'POST',
          headers: { 'content-type': 'application/json', ...headers },
          body,
          redirect: 'manual',
          signal: AbortSignal.timeout(options.requestTimeoutMs),
        });
      } catch (err) {
        return { kind: 'retry', status: null, message: describeFetchError(err, options.requestTimeoutMs) };
      }
      const text = await res.text().catch(() => '');
      const parsed = parseJson(text);
      if (res.status >= 200 && res.status < 300) {
        return { kind: 'accepted', status: res.status, body: (parsed ?? {}) as HubReply };
      }
      const error = (parsed as { error?: { code?: unknown; message?: unknown } } | null)?.error;
      const message = typeof error?.message === 'string' ? error.message : text.trim().slice(0, 300) || res.statusText;
      if (res.status >= 500 || RETRYABLE_STATUSES.has(res.status)) {
        return { kind: 'retry', status: res.status, message: `HTTP ${res.status}: ${message}` };
      }
      return { kind: 'refused', status: res.status, code: typeof error?.code === 'string' ? error.code : null, message };
    },
  };
}

export type HubClient = ReturnType<typeof createHubClient>;

function parseJson(text: string): unknown {
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

function describeFetchError(err: unknown, timeoutMs: number): string {
  const e = err as { name?: string; message?: string; cause?: { code?: string; message?: string } };
  if (e?.name === 'TimeoutError' || e?.name === 'AbortError') return `no answer within ${timeoutMs} ms`;
  const cause = e?.cause?.code ?? e?.cause?.message;
  return cause ? `${e?.message ?? 'fetch failed'} (${cause})` : (e?.message ?? String(err));
}
