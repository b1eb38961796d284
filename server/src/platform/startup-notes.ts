import { decodeWebhookSecret } from '#shared/webhooks.js';
import type { Config } from './config.js';
import type { Logger } from './logger.js';

/**
 * A bash snippet that signs a sample `seller-order-ready` webhook with `secret` (Standard Webhooks:
 * HMAC-SHA256 over "{id}.{timestamp}.{body}" keyed with the secret's decoded bytes) and posts it.
 * It signs at paste time, so it keeps working past the 5-minute timestamp tolerance; a new order id
 * per run, so each paste creates a delivery instead of replaying the first one.
 */
export function webhookCurlExample(secret: string, baseUrl: string): string {
  const keyHex = decodeWebhookSecret(secret).toString('hex');
  return [
    `ts=$(date +%s); id="msg_demo_$ts"`,
    `body='{"sellerOrderId":"demo-'$ts'","orderCode":"DEMO-'$ts'","pickup":{"lat":52.52,"lng":13.405,"address":"Shop"},"dropoff":{"lat":52.53,"lng":13.41}}'`,
    `sig=$(printf '%s' "$id.$ts.$body" | openssl dgst -sha256 -mac HMAC -macopt hexkey:${keyHex} -binary | base64)`,
    `curl -s -X POST ${baseUrl}/events/seller-order-ready -H 'content-type: application/json' -H "webhook-id: $id" -H "webhook-timestamp: $ts" -H "webhook-signature: v1,$sig" -d "$body"; echo`,
  ].join('\n');
}

/**
 * What a person starting the hub must know once: secrets the hub made up for local development (the
 * only secrets ever logged) and a webhook secret missing where nothing will be made up for it.
 */
export function logStartupNotes(config: Config, logger: Logger, baseUrl: string, scope = 'this process'): void {
  if (config.adminTokenGenerated) {
    logger.warn({ adminToken: config.ADMIN_TOKEN }, `ADMIN_TOKEN not set; generated one for ${scope}`);
  }
  if (config.jwtSecretGenerated) logger.warn(`JWT_SECRET not set; tokens die with ${scope}`);
  if (config.webhookSecretGenerated) {
    const [secret] = config.WEBHOOK_SECRETS;
    logger.warn(
      { webhookSecret: secret },
      `WEBHOOK_SECRET not set; generated one for ${scope} (development only: set NODE_ENV=production to refuse instead).` +
        ` Give Vendure the same secret, or send a signed test order from a shell:\n\n${webhookCurlExample(secret, baseUrl)}\n`,
    );
  } else if (config.WEBHOOK_SECRETS.length === 0) {
    logger.error(
      'WEBHOOK_SECRET not set in production: every Vendure webhook is refused with 503 SERVICE_UNAVAILABLE until it is set to the whsec_... secret Vendure signs with',
    );
  }
  if (config.production && !config.PUBLIC_URL) {
    logger.warn('PUBLIC_URL not set in production: tracking links given to customers name http://localhost, which they cannot open');
  }
}
