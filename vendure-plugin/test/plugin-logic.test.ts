import { createServer, type Server } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { signWebhook, verifyWebhook } from '../../shared/src/webhooks.js';
import { backoffDelayMs } from '../src/backoff.js';
import { createHubClient } from '../src/hub-client.js';
import { CustomFieldLocationStrategy } from '../src/location-strategy.js';
import { resolveOptions } from '../src/options.js';
import { buildReadyPayload } from '../src/ready-payload.js';
import { readStatusEvent } from '../src/status-event.js';

const SECRET = `whsec_${Buffer.from('plugin-logic-secret').toString('base64')}`;
const OTHER = `whsec_${Buffer.from('some-other-secret').toString('base64')}`;

describe('the seller-order-ready payload', () => {
  const base = { sellerOrderId: '42', orderCode: 'ABC123', pickup: { lat: 52.5, lng: 13.4, address: ' Shop ' }, dropoff: { lat: 52.51, lng: 13.41 } };

  it('when both places have coordinates, then the payload is what the hub accepts', () => {
    const result = buildReadyPayload({ ...base, customer: { name: 'Grace', phone: null } });
    expect(result).toEqual({
      ok: true,
      payload: { sellerOrderId: '42', orderCode: 'ABC123', pickup: { lat: 52.5, lng: 13.4, address: 'Shop' }, dropoff: { lat: 52.51, lng: 13.41 }, customer: { name: 'Grace' } },
    });
  });

  it('when a coordinate is missing, then the refusal names what to set', () => {
    const noDropoff = buildReadyPayload({ ...base, dropoff: { lat: null, lng: 13.4 } });
    expect(noDropoff).toEqual({ ok: false, message: expect.stringContaining('missing dropoff coordinates (the shipping address needs dispatchLatitude and dispatchLongitude)') });
    const neither = buildReadyPayload({ ...base, pickup: undefined, dropoff: undefined });
    expect(neither.ok === false && neither.message).toMatch(/missing pickup coordinates .* and dropoff coordinates/);
  });

  it('when a coordinate is out of range, then the hub schema refuses it here, before anything is queued', () => {
    const result = buildReadyPayload({ ...base, pickup: { lat: 91, lng: 13.4 } });
    expect(result).toEqual({ ok: false, message: expect.stringMatching(/^Order ABC123 cannot be sent for delivery: pickup\.lat: /) });
  });
});

describe('the default location strategy', () => {
  const strategy = new CustomFieldLocationStrategy();
  const ctx = {} as any;

  it("when a seller order has its seller's channel, then the pickup comes from that channel, else from its seller", () => {
    const defaultChannel = { code: '__default_channel__', customFields: { dispatchPickupLatitude: 1, dispatchPickupLongitude: 1 } };
    const sellerChannel = { code: 'bakery', customFields: {}, seller: { customFields: { dispatchPickupLatitude: 2, dispatchPickupLongitude: 3, dispatchPickupAddress: 'Bakery' } } };
    expect(strategy.pickup(ctx, { channels: [defaultChannel, sellerChannel] } as any)).toEqual({ lat: 2, lng: 3, address: 'Bakery' });
    expect(strategy.pickup(ctx, { channels: [defaultChannel] } as any)).toEqual({ lat: 1, lng: 1, address: undefined });
    expect(strategy.pickup(ctx, { channels: [] } as any)).toBeUndefined();
  });

  it('when the shipping address has coordinates, then the dropoff has them and a readable address', () => {
    const order = { shippingAddress: { streetLine1: 'Torstrasse 1', postalCode: '10119', city: 'Berlin', countryCode: 'DE', customFields: { dispatchLatitude: 52.5, dispatchLongitude: 13.4 } } };
    expect(strategy.dropoff(ctx, order as any)).toEqual({ lat: 52.5, lng: 13.4, address: 'Torstrasse 1, 10119 Berlin, DE' });
  });
});

describe('reading a status event', () => {
  const event = {
    id: 'evt_1',
    type: 'delivery.picked_up',
    deliveryId: 'd1',
    sequence: 7,
    occurredAt: '2026-01-01T00:00:00.000Z',
    data: { deliveryId: 'd1', sellerOrderId: '42', orderCode: 'ABC123', status: 'PICKED_UP', previousStatus: 'ASSIGNED', driverId: 'x', reason: null, at: '2026-01-01T00:00:00.000Z', somethingNew: 1 },
  };
  const signed = (body: string, opts: { id?: string; secret?: string; at?: number } = {}) => {
    const headers = signWebhook(opts.secret ?? SECRET, opts.id ?? 'evt_1', opts.at ?? Date.now() / 1000, body);
    return { id: headers['webhook-id'], timestamp: headers['webhook-timestamp'], signature: headers['webhook-signature'], body: Buffer.from(body) };
  };

  it('when it is signed with one of the secrets, then it is read, unknown fields and all', () => {
    const verdict = readStatusEvent([OTHER, SECRET], signed(JSON.stringify(event)));
    expect(verdict).toMatchObject({ ok: true, event: { sequence: 7, data: { status: 'PICKED_UP', somethingNew: 1 } } });
  });

  it('when the signature, the secret or the timestamp is wrong, then it is refused as unauthenticated', () => {
    const body = JSON.stringify(event);
    expect(readStatusEvent([SECRET], signed(body, { secret: OTHER }))).toMatchObject({ ok: false, status: 401 });
    expect(readStatusEvent([SECRET], { ...signed(body), body: Buffer.from(body.replace('PICKED_UP', 'DELIVERED')) })).toMatchObject({ ok: false, status: 401 });
    expect(readStatusEvent([SECRET], signed(body, { at: Date.now() / 1000 - 301 }))).toMatchObject({ ok: false, status: 401, message: expect.stringContaining('TIMESTAMP_TOO_OLD') });
    expect(readStatusEvent([SECRET], { ...signed(body), signature: undefined })).toMatchObject({ ok: false, status: 401, message: expect.stringContaining('MISSING_HEADERS') });
  });

  it('when a signed body is not a status event, then it is a 400 naming the field', () => {
    expect(readStatusEvent([SECRET], signed('not json'))).toMatchObject({ ok: false, status: 400, code: 'VALIDATION_FAILED' });
    const bad = JSON.stringify({ ...event, data: { ...event.data, status: 'TELEPORTED' } });
    expect(readStatusEvent([SECRET], signed(bad))).toMatchObject({ ok: false, status: 400, message: expect.stringContaining('data.status') });
    expect(readStatusEvent([SECRET], signed(JSON.stringify(event), { id: 'evt_other' }))).toMatchObject({ ok: false, status: 400, message: expect.stringContaining('webhook-id') });
  });
});

describe('the hub client', () => {
  let server: Server;
  let url: string;
  const seen: { headers: Record<string, string | string[] | undefined>; body: string }[] = [];
  let answer: { status: number; body: string } = { status: 200, body: '{}' };

  beforeAll(async () => {
    server = createServer((req, res) => {
      let body = '';
      req.on('data', (c) => (body += c));
      req.on('end', () => {
        seen.push({ headers: req.headers, body });
        res.writeHead(answer.status, { 'content-type': 'application/json' }).end(answer.body);
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    url = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
  });
  afterAll(() => server.close());

  it('when the hub answers, then 2xx is accepted, 5xx and 429 are retried, other 4xx are refused for good', async () => {
    const client = createHubClient({ hubUrl: `${url}/`, webhookSecret: SECRET, requestTimeoutMs: 2000 });
    answer = { status: 202, body: JSON.stringify({ status: 'PENDING', deliveryId: 'd1' }) };
    expect(await client.post('/events/seller-order-ready', 'msg_1', { a: 1 })).toEqual({ kind: 'accepted', status: 202, body: { status: 'PENDING', deliveryId: 'd1' } });
    const last = seen.at(-1)!;
    expect(verifyWebhook([SECRET], { id: last.headers['webhook-id'] as string, timestamp: last.headers['webhook-timestamp'] as string, signature: last.headers['webhook-signature'] as string, body: last.body })).toEqual({ ok: true });
    for (const status of [500, 503, 429]) {
      answer = { status, body: JSON.stringify({ error: { code: 'SERVICE_UNAVAILABLE', message: 'database down' } }) };
      expect(await client.post('/events/seller-order-ready', 'msg_1', {})).toMatchObject({ kind: 'retry', status, message: `HTTP ${status}: database down` });
    }
    for (const status of [400, 401, 409]) {
      answer = { status, body: JSON.stringify({ error: { code: 'CONFLICT', message: 'different pickup' } }) };
      expect(await client.post('/events/seller-order-ready', 'msg_1', {})).toEqual({ kind: 'refused', status, code: 'CONFLICT', message: 'different pickup' });
    }
  });

  it('when nothing listens, then the attempt is retried', async () => {
    const client = createHubClient({ hubUrl: 'http://127.0.0.1:1', webhookSecret: SECRET, requestTimeoutMs: 2000 });
    expect(await client.post('/x', 'msg_2', {})).toMatchObject({ kind: 'retry', status: null });
  });
});

describe('backoff and options', () => {
  it('when attempts add up, then the delay stays under a doubling ceiling and the same attempt always waits the same', () => {
    for (let attempt = 1; attempt <= 12; attempt++) {
      const delay = backoffDelayMs('job-1', attempt, { baseMs: 1000, capMs: 60_000 });
      expect(delay).toBeGreaterThanOrEqual(0);
      expect(delay).toBeLessThan(Math.min(60_000, 1000 * 2 ** (attempt - 1)));
      expect(backoffDelayMs('job-1', attempt, { baseMs: 1000, capMs: 60_000 })).toBe(delay);
    }
    const spread = new Set(Array.from({ length: 20 }, (_, i) => backoffDelayMs(`job-${i}`, 5)));
    expect(spread.size).toBeGreaterThan(10);
  });

  it('when options are wrong, then init says every problem at once', () => {
    expect(() => resolveOptions({ hubUrl: 'not a url', webhookSecret: 'secret', statusSecret: [], retries: -1 })).toThrow(
      /hubUrl is not a URL[\s\S]*webhookSecret must look like whsec_[\s\S]*statusSecret is required[\s\S]*retries must be/,
    );
    expect(resolveOptions({ hubUrl: 'https://hub.example.com/', webhookSecret: SECRET, statusSecret: SECRET })).toMatchObject({
      hubUrl: 'https://hub.example.com',
      statusSecrets: [SECRET],
      trigger: { orderState: 'PaymentSettled' },
      retries: 30,
    });
  });
});
