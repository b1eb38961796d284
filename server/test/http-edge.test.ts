import { randomUUID } from 'node:crypto';
import { request } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { signWebhook } from '#shared/webhooks.js';
import { ADMIN_TOKEN, createTestDatabase, order, type TestDatabase, type TestHub, startTestHub, testConfig, WEBHOOK_SECRET } from './support/hub.js';
import { type LogSink, logSink } from './support/log-sink.js';

interface RawReply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: any;
}

/**
 * One request through node:http exactly as given: no Content-Length unless the headers carry one,
 * the body as chunks (`Transfer-Encoding: chunked` when there are any), and optionally left open
 * after them so the test can see the answer arrive before the body ends.
 */
function raw(
  hub: TestHub,
  method: string,
  path: string,
  opts: { headers?: Record<string, string>; chunks?: (string | Buffer)[]; keepOpen?: boolean } = {},
): Promise<RawReply> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port: hub.port, method, path, headers: opts.headers ?? {} }, (res) => {
      const parts: Buffer[] = [];
      res.on('data', (c: Buffer) => parts.push(c));
      res.on('end', () => {
        const text = Buffer.concat(parts).toString();
        let body: unknown = text;
        try {
          body = text ? JSON.parse(text) : null;
        } catch {}
        resolve({ status: res.statusCode!, headers: res.headers, body });
        req.destroy();
      });
    });
    // The hub may answer and close while a test still writes the rest of an oversized body.
    req.on('error', (err) => (req.writableEnded || opts.keepOpen ? undefined : reject(err)));
    if (opts.chunks && opts.chunks.length > 0 && !opts.headers?.['content-length']) req.setHeader('transfer-encoding', 'chunked');
    for (const chunk of opts.chunks ?? []) req.write(chunk);
    if (!opts.keepOpen) req.end();
  });
}

const bearer = { authorization: `Bearer ${ADMIN_TOKEN}` };

describe('requests without a Content-Length', () => {
  let db: TestDatabase;
  let hub: TestHub;
  let sink: LogSink;

  beforeAll(async () => {
    db = await createTestDatabase();
    sink = logSink();
    hub = await startTestHub(testConfig(db), { sink });
  });
  afterAll(async () => {
    await hub?.stop();
    await db?.drop();
  });

  const failures = () => sink.lines().filter((l) => l.level >= 50);

  it('when OPTIONS is sent to any route, then the allowed methods come back before authentication, and an unknown path is a 404 in the error shape', async () => {
    const expected: Record<string, string> = {
      '/health': 'GET, HEAD, OPTIONS',
      '/admin/drivers': 'GET, HEAD, OPTIONS, POST',
      [`/admin/drivers/${randomUUID()}/revoke-tokens`]: 'OPTIONS, POST',
      '/events/seller-order-ready': 'OPTIONS, POST',
      '/map': 'GET, HEAD, OPTIONS',
    };
    for (const [path, allow] of Object.entries(expected)) {
      const reply = await raw(hub, 'OPTIONS', path, { headers: { origin: 'https://shop.example.com', 'access-control-request-method': 'POST' } });
      expect(reply.status, path).toBe(204);
      expect(reply.headers.allow, path).toBe(allow);
      // No CORS grant: browsers on other origins stay refused, as before.
      expect(reply.headers['access-control-allow-origin'], path).toBeUndefined();
    }
    const unknown = await raw(hub, 'OPTIONS', '/nowhere');
    expect(unknown.status).toBe(404);
    expect(unknown.body.error.code).toBe('NOT_FOUND');
    expect(failures()).toEqual([]);
  });

  it('when DELETE or another method a path does not serve is sent, then 405 with Allow in the error shape, or 401 first where the path needs a token', async () => {
    const health = await raw(hub, 'DELETE', '/health');
    expect(health.status).toBe(405);
    expect(health.headers.allow).toBe('GET, HEAD, OPTIONS');
    expect(health.body.error.code).toBe('METHOD_NOT_ALLOWED');
    expect((await raw(hub, 'PUT', '/events/seller-order-ready')).status).toBe(405);
    expect((await raw(hub, 'DELETE', '/admin/drivers')).status).toBe(401);
    const asAdmin = await raw(hub, 'DELETE', '/admin/drivers', { headers: bearer });
    expect(asAdmin.status).toBe(405);
    expect(asAdmin.headers.allow).toBe('GET, HEAD, OPTIONS, POST');
    expect((await raw(hub, 'DELETE', '/nowhere')).status).toBe(404);
    expect((await raw(hub, 'PROPFIND', '/health')).status).toBe(405);
    expect((await raw(hub, 'HEAD', '/health')).status).toBe(200);
    expect(failures()).toEqual([]);
  });

  it('when a bodyless POST arrives, then it is an ordinary 400 or 401', async () => {
    const admin = await raw(hub, 'POST', '/admin/drivers', { headers: bearer });
    expect(admin.status).toBe(400);
    expect(admin.body.error.code).toBe('VALIDATION_FAILED');
    expect((await raw(hub, 'POST', '/events/seller-order-ready')).status).toBe(401);
    expect(failures()).toEqual([]);
  });

  it('when a validly signed webhook and an admin call arrive chunked, then they are read and answered as with a Content-Length', async () => {
    const body = JSON.stringify(order());
    const headers = { 'content-type': 'application/json', ...signWebhook(WEBHOOK_SECRET, `msg_${randomUUID()}`, Date.now() / 1000, body) };
    const chunks = [body.slice(0, 10), body.slice(10, 40), body.slice(40)];
    const first = await raw(hub, 'POST', '/events/seller-order-ready', { headers, chunks });
    expect(first.status).toBe(202);
    expect(first.body).toMatchObject({ status: 'PENDING', idempotent: false });
    const retry = await raw(hub, 'POST', '/events/seller-order-ready', { headers, chunks });
    expect(retry.body).toMatchObject({ deliveryId: first.body.deliveryId, idempotent: true });

    const tampered = await raw(hub, 'POST', '/events/seller-order-ready', { headers, chunks: [body.replace('"sellerOrderId":"', '"sellerOrderId":"x')] });
    expect(tampered.status).toBe(401);

    const created = await raw(hub, 'POST', '/admin/drivers', { headers: { ...bearer, 'content-type': 'application/json' }, chunks: ['{"name":', '"Chunky"}'] });
    expect(created.status).toBe(201);
    expect(created.body.name).toBe('Chunky');
    expect(failures()).toEqual([]);
  });

  it('when a declared body is over the limit, then 413 closes the connection, so a keep-alive client never reuses it mid-body', async () => {
    const big = JSON.stringify({ name: 'x'.repeat(200_000) });
    const reply = await raw(hub, 'POST', '/admin/drivers', { headers: { ...bearer, 'content-type': 'application/json', 'content-length': String(big.length) }, chunks: [big] });
    expect(reply.status).toBe(413);
    expect(reply.headers.connection).toBe('close');
    // The same keep-alive pool (fetch) goes on working.
    for (let i = 0; i < 3; i++) {
      const res = await fetch(`${hub.url}/admin/drivers`, { method: 'POST', headers: { ...bearer, 'content-type': 'application/json' }, body: big });
      expect(res.status).toBe(413);
      await res.arrayBuffer();
      expect((await fetch(`${hub.url}/admin/drivers`, { headers: bearer })).status).toBe(200);
    }
  });

  it('when a chunked body passes the limit, then 413 comes back while the client is still sending, and the hub keeps serving', async () => {
    const limit = hub.config.MAX_BODY_BYTES;
    const chunk = Buffer.alloc(16 * 1024, 'x');
    const chunks = Array.from({ length: Math.ceil(limit / chunk.length) + 2 }, () => chunk);
    // The body never ends: a 413 can only come from a hub that stopped reading at the limit.
    const reply = await raw(hub, 'POST', '/admin/drivers', { headers: { ...bearer, 'content-type': 'application/json' }, chunks, keepOpen: true });
    expect(reply.status).toBe(413);
    expect(reply.body.error.code).toBe('PAYLOAD_TOO_LARGE');
    expect(reply.headers.connection).toBe('close');
    const webhook = await raw(hub, 'POST', '/events/seller-order-ready', { headers: { 'content-type': 'application/json' }, chunks, keepOpen: true });
    expect(webhook.status).toBe(413);
    // Exactly at the limit is still fine (and then a validation error, not a size one).
    const atLimit = await raw(hub, 'POST', '/admin/drivers', { headers: { ...bearer, 'content-type': 'application/json' }, chunks: [Buffer.alloc(limit, ' ')] });
    expect(atLimit.status).toBe(400);
    expect((await raw(hub, 'GET', '/health')).status).toBe(200);
    expect(failures()).toEqual([]);
  });
});
