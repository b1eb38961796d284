import type { OrderState } from '@vendure/core';
import { decodeWebhookSecret } from '../../shared/src/webhooks.js';
import { type BackoffOptions, DEFAULT_BACKOFF } from './backoff.js';
import type { DispatchLocationStrategy } from './location-strategy.js';

/** When an order counts as ready for delivery. */
export type DispatchTrigger =
  /** When the order (a seller order in a multi-vendor shop) enters this state. */
  | { orderState: OrderState }
  /** Only when an administrator or seller calls the Admin API mutation `markReadyForDelivery`. */
  | 'manual';

export interface DispatchHubPluginOptions {
  /** The hub's base URL, for example `https://dispatch.example.com`. */
  hubUrl: string;
  /** `whsec_...` secret the plugin signs its webhooks with: the hub's `WEBHOOK_SECRET`. */
  webhookSecret: string;
  /** `whsec_...` secret(s) the hub signs status events with (its `VENDURE_WEBHOOK_SECRET`); several during a rotation. */
  statusSecret: string | string[];
  /** Default `{ orderState: 'PaymentSettled' }`. `markReadyForDelivery` works whatever the trigger. */
  trigger?: DispatchTrigger;
  /** Where pickup and dropoff coordinates come from. Default: custom fields (see docs). */
  locationStrategy?: DispatchLocationStrategy;
  /** Attempts after the first before a webhook job is given up on. Default 30: about an hour on average with the default backoff, two at most. */
  retries?: number;
  /** Delay between attempts, for Vendure's polling job queues (the default and SQL ones). */
  backoff?: Partial<BackoffOptions>;
  /** Per-request timeout towards the hub. Default 10 000 ms. */
  requestTimeoutMs?: number;
}

export interface ResolvedOptions {
  hubUrl: string;
  webhookSecret: string;
  statusSecrets: string[];
  trigger: DispatchTrigger;
  locationStrategy?: DispatchLocationStrategy;
  retries: number;
  backoff: BackoffOptions;
  requestTimeoutMs: number;
}

/** Checks the options once, at `init`, so a typo stops the server at start rather than failing every order. */
export function resolveOptions(options: DispatchHubPluginOptions): ResolvedOptions {
  const problems: string[] = [];
  let hubUrl = '';
  try {
    const url = new URL(options.hubUrl);
    if (url.protocol !== 'http:' && url.protocol !== 'https:') problems.push('hubUrl must be an http(s) URL');
    hubUrl = url.toString().replace(/\/+$/, '');
  } catch {
    problems.push(`hubUrl is not a URL: ${JSON.stringify(options.hubUrl)}`);
  }
  const statusSecrets = (Array.isArray(options.statusSecret) ? options.statusSecret : [options.statusSecret]).filter(Boolean);
  for (const [name, secrets] of [
    ['webhookSecret', [options.webhookSecret]],
    ['statusSecret', statusSecrets],
  ] as const) {
    if (secrets.length === 0) problems.push(`${name} is required`);
    for (const secret of secrets) {
      if (typeof secret !== 'string' || !/^whsec_[A-Za-z0-9+/=]+$/.test(secret)) {
        problems.push(`${name} must look like whsec_<base64>`);
        continue;
      }
      try {
        decodeWebhookSecret(secret);
      } catch (err) {
        problems.push(`${name}: ${(err as Error).message}`);
      }
    }
  }
  const retries = options.retries ?? 30;
  if (!Number.isInteger(retries) || retries < 0) problems.push('retries must be a whole number, 0 or more');
  const requestTimeoutMs = options.requestTimeoutMs ?? 10_000;
  if (!(requestTimeoutMs > 0)) problems.push('requestTimeoutMs must be positive');
  const backoff = { ...DEFAULT_BACKOFF, ...options.backoff };
  if (!(backoff.baseMs > 0) || !(backoff.capMs >= backoff.baseMs)) problems.push('backoff needs 0 < baseMs <= capMs');
  const trigger = options.trigger ?? { orderState: 'PaymentSettled' };
  if (trigger !== 'manual' && !(typeof trigger === 'object' && typeof trigger.orderState === 'string')) {
    problems.push("trigger must be { orderState: '<state>' } or 'manual'");
  }
  if (problems.length) throw new Error(`DispatchHubPlugin: invalid options:\n${problems.map((p) => `  - ${p}`).join('\n')}`);
  return {
    hubUrl,
    webhookSecret: options.webhookSecret,
    statusSecrets,
    trigger,
    locationStrategy: options.locationStrategy,
    retries,
    backoff,
    requestTimeoutMs,
  };
}
