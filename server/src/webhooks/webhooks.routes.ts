import { Hono } from 'hono';
import { sellerOrderCancelled, sellerOrderReady } from '#shared/schemas.js';
import { verifyWebhook } from '#shared/webhooks.js';
import type { DeliveriesService } from '../deliveries/deliveries.service.js';
import type { DispatchService } from '../dispatch/dispatch.service.js';
import type { AuthGate } from '../platform/auth-throttle.js';
import { HubError } from '../platform/errors.js';
import type { Logger } from '../platform/logger.js';
import type { Metrics } from '../platform/metrics.js';
import { parsePayload } from '../platform/payload.js';
import type { TrackingLinks } from '../tracking/tracking-links.js';

export interface WebhookDeps {
  dispatch: DispatchService;
  deliveries: DeliveriesService;
  secrets: readonly string[];
  auth: AuthGate;
  logger: Logger;
  metrics: Metrics;
  links: TrackingLinks;
}

/** Vendure's calls, signed per Standard Webhooks over the raw body; mounted at /events. */
export function createWebhookRoutes(deps: WebhookDeps) {
  const app = new Hono();

  async function verifiedJson(c: { env: unknown; req: { raw: Request; header(name: string): string | undefined } }, event: string): Promise<unknown> {
    if (deps.secrets.length === 0) {
      throw new HubError('SERVICE_UNAVAILABLE', 'WEBHOOK_SECRET is not configured on this hub');
    }
    // Before the body is even read: an address that keeps sending bad signatures costs nothing more.
    const address = deps.auth.httpAddress(c);
    await deps.auth.check(address);
    // The signature covers the bytes as sent; decoding first would drop a BOM or mend bad UTF-8 and break it.
    const body = new Uint8Array(await c.req.raw.arrayBuffer());
    const verdict = verifyWebhook(deps.secrets, {
      id: c.req.header('webhook-id'),
      timestamp: c.req.header('webhook-timestamp'),
      signature: c.req.header('webhook-signature'),
      body,
    });
    if (!verdict.ok) {
      deps.metrics.webhookRequests.inc({ event, outcome: 'bad-signature' });
      await deps.auth.failed('webhook', address);
      throw new HubError('INVALID_SIGNATURE', `webhook signature rejected: ${verdict.reason}`);
    }
    try {
      return JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(body));
    } catch {
      throw new HubError('VALIDATION_FAILED', 'body is not valid UTF-8 JSON');
    }
  }

  app.post('/seller-order-ready', async (c) => {
    const order = parsePayload(sellerOrderReady, await verifiedJson(c, 'seller-order-ready'), 'seller order');
    const reply = await deps.dispatch.orderReady(order);
    deps.metrics.webhookRequests.inc({ event: 'seller-order-ready', outcome: reply.idempotent ? 'retry' : reply.status });
    return c.json(reply, reply.status === 'PENDING' || reply.status === 'OFFERED' ? 202 : 200);
  });

  app.post('/seller-order-cancelled', async (c) => {
    const cancellation = parsePayload(sellerOrderCancelled, await verifiedJson(c, 'seller-order-cancelled'), 'cancellation');
    const { delivery, idempotent, trackingToken } = await deps.deliveries.cancel(cancellation.sellerOrderId, cancellation.reason);
    deps.metrics.webhookRequests.inc({ event: 'seller-order-cancelled', outcome: idempotent ? 'retry' : 'CANCELLED' });
    return c.json({ status: delivery.status, deliveryId: delivery.id, sellerOrderId: delivery.sellerOrderId, idempotent, trackingUrl: deps.links.urlFor(trackingToken) });
  });

  return app;
}
