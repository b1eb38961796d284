import { randomBytes, randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { Writable } from 'node:stream';
import { Hono } from 'hono';
import { pino } from 'pino';
import postgres from 'postgres';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { verifyWebhook } from '#shared/webhooks.js';
import { backoffDelayMs, createOutboxRelay, type OutboxRelay, type OutboxRelayConfig, type OutboxWebhookBody, retryAfterMs } from '../src/outbox/outbox.relay.js';
import { createOutboxRoutes } from '../src/outbox/outbox.routes.js';
import { createOutboxStore, type OutboxEventType, type OutboxStore } from '../src/outbox/outbox.store.js';
import { type Database, openDatabase } from '../src/platform/db.js';
import { HubError } from '../src/platform/errors.js';
import { createMetrics } from '../src/platform/metrics.js';
import { outbox } from '../src/platform/schema.js';

const ADMIN_URL = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
const SECRET = `whsec_${Buffer.from('outbox-test-secret-0123456789abcdef').toString('base64')}`;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Bounded wait: polls `check` until it is truthy or fails naming `what`. */
async function until<T>(check: () => Promise<T> | T, what: string, timeoutMs = 8000, everyMs = 10): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const value = await check();
    if (value) return value;
    await sleep(everyMs);
  }
  throw new Error(`timed out waiting for ${what}`);
}

// ---------------------------------------------------------------------------------------------
// A real HTTP receiver the test controls.

interface Arrival {
  id: string;
  body: OutboxWebhookBody;
  at: number;
  signatureOk: boolean;
  status: number;
}

type Reply = { status: number; headers?: Record<string, string>; delayMs?: number } | 'hang';

interface Receiver {
  url: string;
  port: number;
  arrivals: Arrival[];
  /** Violations of "never the same event, nor two events of one delivery, at the same time". */
  overlaps: string[];
  reply: (arrival: Omit<Arrival, 'status'>, n: number) => Reply;
  close(): Promise<void>;
}

async function startReceiver(reply: Receiver['reply'], port = 0): Promise<Receiver> {
  const inProgressIds = new Set<string>();
  const inProgressDeliveries = new Set<string>();
  const receiver = { arrivals: [], overlaps: [], reply } as unknown as Receiver;
  let n = 0;
  const server: Server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', async () => {
      // The raw bytes, as a receiver must verify them (not a re-serialised object).
      const raw = Buffer.concat(chunks).toString('utf8');
      const body = JSON.parse(raw) as OutboxWebhookBody;
      const id = String(req.headers['webhook-id']);
      const verdict = verifyWebhook([SECRET], {
        id,
        timestamp: req.headers['webhook-timestamp'] as string,
        signature: req.headers['webhook-signature'] as string,
        body: raw,
      });
      const arrival = { id, body, at: Date.now(), signatureOk: verdict.ok && body.id === id && req.headers['content-type'] === 'application/json' };
      if (inProgressIds.has(id)) receiver.overlaps.push(`event ${id} sent twice at once`);
      if (inProgressDeliveries.has(body.deliveryId)) receiver.overlaps.push(`delivery ${body.deliveryId} had two events in flight`);
      inProgressIds.add(id);
      inProgressDeliveries.add(body.deliveryId);
      const answer = receiver.reply(arrival, n++);
      if (answer === 'hang') {
        receiver.arrivals.push({ ...arrival, status: 0 });
        // Frees the in-progress marks once the client gives up, so a retry is not counted as an overlap.
        res.on('close', () => {
          inProgressIds.delete(id);
          inProgressDeliveries.delete(body.deliveryId);
        });
        return;
      }
      if (answer.delayMs) await sleep(answer.delayMs);
      receiver.arrivals.push({ ...arrival, status: answer.status });
      inProgressIds.delete(id);
      inProgressDeliveries.delete(body.deliveryId);
      res.writeHead(answer.status, { 'content-type': 'text/plain', ...answer.headers });
      res.end(answer.status < 300 ? 'ok' : 'nope');
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve());
  });
  receiver.port = (server.address() as AddressInfo).port;
  receiver.url = `http://127.0.0.1:${receiver.port}/vendure/dispatch-status`;
  receiver.close = () =>
    new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    });
  return receiver;
}

async function closedPort(): Promise<number> {
  const r = await startReceiver(() => ({ status: 200 }));
  await r.close();
  return r.port;
}

// ---------------------------------------------------------------------------------------------

function capturingLogger() {
  const lines: string[] = [];
  const stream = new Writable({
    write(chunk, _enc, cb) {
      lines.push(chunk.toString());
      cb();
    },
  });
  return { logger: pino({ level: 'debug' }, stream), lines };
}

describe('outbox relay', () => {
  let admin: postgres.Sql;
  let dbName: string;
  let database: Database;
  let store: OutboxStore;
  const relays: OutboxRelay[] = [];
  const receivers: Receiver[] = [];

  beforeAll(async () => {
    admin = postgres(ADMIN_URL, { max: 1, onnotice: () => {} });
    dbName = `outbox_test_${randomBytes(6).toString('hex')}`;
    await admin.unsafe(`create database ${dbName}`);
    const url = new URL(ADMIN_URL);
    url.pathname = `/${dbName}`;
    database = openDatabase({ url: url.toString(), dataDir: tmpdir(), poolSize: 12 });
    await database.migrate();
    store = createOutboxStore(database);
  });

  afterAll(async () => {
    await database?.close().catch(() => {});
    if (admin) {
      await admin.unsafe(`drop database if exists ${dbName} with (force)`).catch(() => {});
      await admin.end();
    }
  });

  beforeEach(async () => {
    await database.db.delete(outbox);
  });

  afterEach(async () => {
    await Promise.all(relays.splice(0).map((r) => r.stop()));
    await Promise.all(receivers.splice(0).map((r) => r.close()));
  });

  async function receiver(reply: Receiver['reply'], port = 0): Promise<Receiver> {
    const r = await startReceiver(reply, port);
    receivers.push(r);
    return r;
  }

  function relay(config: Partial<OutboxRelayConfig> & { url?: string }, extra: { now?: () => number; fetch?: typeof fetch; logger?: pino.Logger } = {}) {
    const metrics = createMetrics(`outbox-test-${randomBytes(3).toString('hex')}`);
    const r = createOutboxRelay({
      store,
      logger: extra.logger ?? pino({ level: 'silent' }),
      metrics,
      config: {
        secret: SECRET,
        pollMs: 20,
        requestTimeoutMs: 1000,
        maxAgeSeconds: 3600,
        backoffBaseMs: 20,
        backoffCapMs: 80,
        ...config,
      },
      fetch: extra.fetch,
      now: extra.now,
      random: () => 0.999,
    });
    relays.push(r);
    return { relay: r, metrics };
  }

  const TYPES: OutboxEventType[] = ['delivery.assigned', 'delivery.picked_up', 'delivery.delivered'];

  async function enqueue(deliveryId: string, type: OutboxEventType): Promise<string> {
    return store.enqueue(database.db, { deliveryId, type, payload: { deliveryId, status: type.split('.')[1].toUpperCase() } });
  }

  /** Runs the relay by hand until the table has nothing PENDING; bounded. */
  async function drain(r: OutboxRelay, what: string, timeoutMs = 8000): Promise<void> {
    await until(
      async () => {
        await r.runOnce();
        return (await store.stats()).pending === 0;
      },
      what,
      timeoutMs,
    );
  }

  /** Every event arrived with a good signature, and per delivery arrivals never went back in seq. */
  function expectOrderedAndSigned(arrivals: Arrival[], expectedIds: string[]) {
    expect(arrivals.every((a) => a.signatureOk)).toBe(true);
    const delivered = new Set(arrivals.filter((a) => a.status >= 200 && a.status < 300).map((a) => a.id));
    expect([...delivered].sort()).toEqual([...expectedIds].sort());
    const lastSeq = new Map<string, number>();
    for (const a of arrivals) {
      const previous = lastSeq.get(a.body.deliveryId) ?? -1;
      expect(a.body.sequence, `delivery ${a.body.deliveryId} went back in order`).toBeGreaterThanOrEqual(previous);
      lastSeq.set(a.body.deliveryId, a.body.sequence);
    }
  }

  it('when the receiver answers 500 twice then 200, then the event is delivered on the third attempt and its successor only after it', async () => {
    const rx = await receiver((_a, n) => ({ status: n < 2 ? 500 : 200 }));
    const { logger, lines } = capturingLogger();
    const { relay: r, metrics } = relay({ url: rx.url }, { logger });
    const deliveryId = randomUUID();
    const first = await enqueue(deliveryId, 'delivery.assigned');
    const second = await enqueue(deliveryId, 'delivery.picked_up');

    await drain(r, 'both events sent');

    expect(rx.arrivals.map((a) => [a.id, a.status])).toEqual([
      [first, 500],
      [first, 500],
      [first, 200],
      [second, 200],
    ]);
    expectOrderedAndSigned(rx.arrivals, [first, second]);
    const row = await store.get(first);
    expect(row).toMatchObject({ status: 'SENT', attempts: 3, lastError: null });
    expect(row?.sentAt).toBeInstanceOf(Date);
    expect((await store.get(second))?.attempts).toBe(1);
    expect(rx.arrivals[0].body).toMatchObject({ id: first, type: 'delivery.assigned', deliveryId, data: { deliveryId, status: 'ASSIGNED' } });
    expect(Date.parse(rx.arrivals[0].body.occurredAt)).not.toBeNaN();
    expect((await metrics.outboxFailures.get()).values[0].value).toBe(2);
    expect((await metrics.outboxSent.get()).values[0].value).toBe(2);
    const log = lines.join('');
    expect(log).toContain('"component":"outbox"');
    expect(log).toContain('HTTP 500');
    expect(log).not.toContain(SECRET);
    expect(log).not.toContain(SECRET.slice('whsec_'.length));
  });

  it('when the receiver hangs, then the request times out and the retry delivers it', async () => {
    const rx = await receiver((_a, n) => (n === 0 ? 'hang' : { status: 204 }));
    const { relay: r } = relay({ url: rx.url, requestTimeoutMs: 250 });
    const id = await enqueue(randomUUID(), 'delivery.assigned');

    const started = Date.now();
    expect(await r.runOnce()).toBe(1);
    expect(Date.now() - started).toBeGreaterThanOrEqual(240);
    const failed = await store.get(id);
    expect(failed).toMatchObject({ status: 'PENDING', attempts: 1 });
    expect(failed?.lastError).toMatch(/timed out after 250 ms/);

    await drain(r, 'the retry');
    expect(rx.arrivals.map((a) => [a.id, a.status])).toEqual([
      [id, 0],
      [id, 204],
    ]);
    expectOrderedAndSigned(rx.arrivals, [id]);
  });

  it('when the receiver answers 429 with Retry-After, then the next attempt does not come before it', async () => {
    const rx = await receiver((_a, n) => (n === 0 ? { status: 429, headers: { 'retry-after': '1' } } : { status: 200 }));
    const { relay: r } = relay({ url: rx.url });
    const deliveryId = randomUUID();
    const id = await enqueue(deliveryId, 'delivery.assigned');

    await r.runOnce();
    // The whole endpoint asked for a pause: an event of another delivery waits for it too.
    const other = await enqueue(randomUUID(), 'delivery.assigned');
    const failed = await store.get(id);
    expect(failed?.lastError).toMatch(/HTTP 429/);
    expect(failed!.nextAttemptAt.getTime()).toBeGreaterThanOrEqual(rx.arrivals[0].at + 990);

    await drain(r, 'the retry after Retry-After');
    const tries = rx.arrivals.filter((a) => a.id === id);
    expect(tries.map((a) => a.status)).toEqual([429, 200]);
    expect(tries[1].at - tries[0].at).toBeGreaterThanOrEqual(990);
    expect(rx.arrivals.find((a) => a.id === other)!.at - tries[0].at).toBeGreaterThanOrEqual(990);
    expectOrderedAndSigned(rx.arrivals, [id, other]);
  });

  it('when Retry-After is an HTTP date or seconds, then it is read as a delay, and backoff grows with full jitter up to the cap', () => {
    const now = Date.parse('2030-01-01T00:00:00Z');
    expect(retryAfterMs('3', now)).toBe(3000);
    expect(retryAfterMs('Tue, 01 Jan 2030 00:00:05 GMT', now)).toBe(5000);
    expect(retryAfterMs('Mon, 31 Dec 2029 00:00:00 GMT', now)).toBe(0);
    expect(retryAfterMs('soon', now)).toBeNull();
    expect(retryAfterMs(null, now)).toBeNull();
    expect(backoffDelayMs(1, 1000, 300_000, () => 0.999)).toBe(999);
    expect(backoffDelayMs(4, 1000, 300_000, () => 0.5)).toBe(4000);
    expect(backoffDelayMs(30, 1000, 300_000, () => 0.999)).toBe(299_700);
    expect(backoffDelayMs(3, 1000, 300_000, () => 0)).toBe(0);
  });

  it('when the receiver refuses connections and then comes up, then the event is delivered', async () => {
    const port = await closedPort();
    const { relay: r } = relay({ url: `http://127.0.0.1:${port}/hook` });
    const id = await enqueue(randomUUID(), 'delivery.delivered');

    await r.runOnce();
    await r.runOnce();
    await sleep(100);
    await r.runOnce();
    const failed = await store.get(id);
    expect(failed?.status).toBe('PENDING');
    expect(failed!.attempts).toBeGreaterThanOrEqual(2);
    expect(failed?.lastError).toMatch(/ECONNREFUSED|fetch failed/);

    const rx = await receiver(() => ({ status: 200 }), port);
    await drain(r, 'delivery once the receiver is up');
    expectOrderedAndSigned(rx.arrivals, [id]);
    expect((await store.get(id))?.status).toBe('SENT');
  });

  it('when a relay dies mid-send, then after its lease another relay delivers everything, in order per delivery, none lost', async () => {
    const rx = await receiver(() => ({ status: 200 }));
    const deliveries = [randomUUID(), randomUUID(), randomUUID()];
    const ids: string[] = [];
    for (const type of TYPES) for (const d of deliveries) ids.push(await enqueue(d, type));

    // The doomed relay's requests reach the receiver, then the process "dies": no response is
    // ever read and nothing is marked.
    const dying = relay(
      { url: rx.url, requestTimeoutMs: 300, leaseMs: 600 },
      {
        fetch: ((url: string, init: RequestInit) => {
          void fetch(url, { ...init, signal: undefined }).catch(() => {});
          return new Promise<Response>(() => {});
        }) as typeof fetch,
      },
    );
    const diedAt = Date.now();
    void dying.relay.runOnce();
    await until(() => rx.arrivals.length === 3, 'the dying relay to send the three heads');
    relays.splice(relays.indexOf(dying.relay), 1);
    expect((await store.stats()).pending).toBe(9);

    const { relay: survivor } = relay({ url: rx.url });
    expect(await survivor.runOnce()).toBe(0); // leased and blocking their successors
    await drain(survivor, 'the survivor to deliver everything');

    const late = rx.arrivals.slice(3);
    expect(Math.min(...late.map((a) => a.at)) - diedAt).toBeGreaterThanOrEqual(590);
    expectOrderedAndSigned(rx.arrivals, ids);
    // The three heads arrived twice (same webhook-id, for the receiver to dedupe); the rest once.
    const counts = new Map<string, number>();
    for (const a of rx.arrivals) counts.set(a.id, (counts.get(a.id) ?? 0) + 1);
    expect([...counts.values()].sort()).toEqual([1, 1, 1, 1, 1, 1, 2, 2, 2]);
    expect(await store.stats()).toEqual({ pending: 0, sent: 9, dead: 0 });
  });

  it('when events are older than the horizon and keep failing, then they become DEAD, listDead shows them, and replay re-sends them', async () => {
    let healthy = false;
    const rx = await receiver(() => ({ status: healthy ? 200 : 500 }));
    const twoHoursLater = () => Date.now() + 2 * 3600_000;
    const { relay: old, metrics } = relay({ url: rx.url, maxAgeSeconds: 3600 }, { now: twoHoursLater });
    const d1 = randomUUID();
    const d2 = randomUUID();
    const a1 = await enqueue(d1, 'delivery.assigned');
    const a2 = await enqueue(d1, 'delivery.picked_up');
    const b1 = await enqueue(d2, 'delivery.assigned');

    await drain(old, 'every event to die');
    expect(await store.stats()).toEqual({ pending: 0, sent: 0, dead: 3 });
    expect((await metrics.outboxDead.get()).values[0].value).toBe(3);
    // A dead predecessor does not block: d1's second event was tried after the first died.
    expect(rx.arrivals.map((a) => a.id)).toEqual(expect.arrayContaining([a1, a2, b1]));
    const dead = await store.listDead(10);
    expect(dead.map((e) => e.id)).toEqual([b1, a2, a1]);
    expect(dead[0]).toMatchObject({ deliveryId: d2, type: 'delivery.assigned', attempts: 1, lastError: 'HTTP 500: nope' });

    expect(await store.replay(randomUUID())).toBe(false);
    expect(await store.replay('not-a-uuid')).toBe(false);
    healthy = true;
    expect(await store.replay(a2)).toBe(true);
    expect(await store.replay(a1)).toBe(true);
    expect(await store.replay(a1)).toBe(false); // not dead any more
    expect((await store.get(a1))?.attempts).toBe(0);

    rx.arrivals.length = 0;
    const { relay: fresh } = relay({ url: rx.url });
    await drain(fresh, 'the replayed events');
    // Replay restores the order: a1 (lower seq) goes before a2.
    expect(rx.arrivals.map((a) => a.id)).toEqual([a1, a2]);
    expectOrderedAndSigned(rx.arrivals, [a1, a2]);
    expect(await store.stats()).toEqual({ pending: 0, sent: 2, dead: 1 });
  });

  it('when an admin lists dead events and replays one over HTTP, then it answers the contract shapes', async () => {
    const id = await enqueue(randomUUID(), 'delivery.failed');
    await store.markDead(id, 'HTTP 410');
    const app = new Hono();
    app.route('/admin/outbox', createOutboxRoutes({ store }));
    app.onError((err, c) =>
      err instanceof HubError ? c.json({ error: err.toBody() }, err.httpStatus as 404) : c.json({ error: { code: 'INTERNAL', message: 'x' } }, 500),
    );

    const list = await app.request('/admin/outbox/dead?limit=5');
    expect(list.status).toBe(200);
    const body = (await list.json()) as { events: Record<string, unknown>[] };
    expect(body.events).toHaveLength(1);
    expect(body.events[0]).toMatchObject({ id, type: 'delivery.failed', lastError: 'HTTP 410', attempts: 0 });
    expect((await app.request('/admin/outbox/dead?limit=0')).status).toBe(400);

    const ok = await app.request(`/admin/outbox/${id}/replay`, { method: 'POST' });
    expect(ok.status).toBe(200);
    expect(await ok.json()).toEqual({ replayed: true });
    const again = await app.request(`/admin/outbox/${id}/replay`, { method: 'POST' });
    expect(again.status).toBe(404);
    expect(((await again.json()) as { error: { code: string } }).error.code).toBe('NOT_FOUND');
    expect((await app.request('/admin/outbox/nope/replay', { method: 'POST' })).status).toBe(404);
    expect((await store.get(id))?.status).toBe('PENDING');
  });

  it('when two relays run concurrently on one table, then no event is sent twice at once and per-delivery order holds', async () => {
    let calls = 0;
    const rx = await receiver(() => {
      calls++;
      // Some failures, so a failing head must hold back its delivery's successors under contention.
      return { status: calls % 5 === 0 ? 500 : 200, delayMs: 2 + (calls % 7) * 3 };
    });
    const ids: string[] = [];
    const deliveries = Array.from({ length: 6 }, () => randomUUID());
    for (const type of [...TYPES, 'delivery.delivered', 'delivery.cancelled'] as OutboxEventType[]) {
      for (const d of deliveries) ids.push(await enqueue(d, type));
    }
    const a = relay({ url: rx.url, pollMs: 10, concurrency: 4 });
    const b = relay({ url: rx.url, pollMs: 10, concurrency: 4 });
    a.relay.start();
    b.relay.start();

    await until(async () => (await store.stats()).sent === ids.length, 'every event sent', 15_000, 25);
    await Promise.all([a.relay.stop(), b.relay.stop()]);

    expect(rx.overlaps).toEqual([]);
    expectOrderedAndSigned(rx.arrivals, ids);
    // Nothing was delivered twice: leases held, so every event got exactly one 2xx.
    const delivered = rx.arrivals.filter((x) => x.status === 200).map((x) => x.id);
    expect(new Set(delivered).size).toBe(delivered.length);
    // Per delivery, the successful sends are in enqueue order.
    for (const d of deliveries) {
      const expected = ids.filter((_, i) => i % deliveries.length === deliveries.indexOf(d));
      expect(rx.arrivals.filter((x) => x.body.deliveryId === d && x.status === 200).map((x) => x.id)).toEqual(expected);
    }
    const sentByA = (await a.metrics.outboxSent.get()).values[0]?.value ?? 0;
    const sentByB = (await b.metrics.outboxSent.get()).values[0]?.value ?? 0;
    expect(sentByA + sentByB).toBe(ids.length);
  });

  it('when no Vendure URL is configured, then the relay says so once at start, stays idle, and keeps the events', async () => {
    const { logger, lines } = capturingLogger();
    const { relay: r } = relay({ url: undefined }, { logger });
    const id = await enqueue(randomUUID(), 'delivery.assigned');
    r.start();
    r.start();
    expect(await r.runOnce()).toBe(0);
    await sleep(60);
    expect(lines.filter((l) => l.includes('VENDURE_WEBHOOK_URL is not set'))).toHaveLength(1);
    expect(await store.get(id)).toMatchObject({ status: 'PENDING', attempts: 0 });
  });

  it('when an unknown event type is enqueued, then it is refused', async () => {
    await expect(
      store.enqueue(database.db, { deliveryId: randomUUID(), type: 'delivery.teleported' as OutboxEventType, payload: {} }),
    ).rejects.toThrow(/unknown outbox event type/);
  });
});
