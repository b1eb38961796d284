import { createServer, type IncomingMessage, type Server } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { verifyWebhook } from '#shared/webhooks.js';
import { envFrom, spawnHub } from './support/child-hub.js';
import { api, createTestDatabase, hasSharedPostgres, onDutyDriver, order, postWebhook, startTestHub, type TestDatabase, type TestHub, testConfig } from './support/hub.js';
import { eventually } from './support/net.js';

const VENDURE_SECRET = `whsec_${Buffer.from('vendure-receiver-secret').toString('base64')}`;

describe('delivery status back to Vendure, end to end', () => {
  let db: TestDatabase;
  let hub: TestHub;
  let receiver: Server;
  const received: { headers: IncomingMessage['headers']; body: string }[] = [];

  beforeAll(async () => {
    receiver = createServer((req, res) => {
      let body = '';
      req.on('data', (c) => (body += c));
      req.on('end', () => {
        received.push({ headers: req.headers, body });
        res.writeHead(204).end();
      });
    });
    await new Promise<void>((resolve) => receiver.listen(0, '127.0.0.1', resolve));
    const port = (receiver.address() as { port: number }).port;
    db = await createTestDatabase();
    hub = await startTestHub(
      testConfig(db, { VENDURE_WEBHOOK_URL: `http://127.0.0.1:${port}/dispatch-events`, VENDURE_WEBHOOK_SECRET: VENDURE_SECRET, OUTBOX_POLL_MS: '50' }),
    );
  });
  afterAll(async () => {
    await hub?.stop();
    receiver?.close();
    await db?.drop();
  });

  it('when a delivery is assigned, picked up and delivered, then Vendure receives each step once, in order, signed', async () => {
    const place = { lat: 45.46, lng: 9.19 };
    const driver = await onDutyDriver(hub, place, 'Relay');
    const o = order({ pickup: place });
    const res = await postWebhook(hub, '/events/seller-order-ready', o);
    expect(res.body).toMatchObject({ status: 'ASSIGNED', driverId: driver.id });
    const deliveryId = res.body.deliveryId;
    expect(await driver.emitAck('delivery:update', { deliveryId, status: 'PICKED_UP' })).toMatchObject({ ok: true });
    expect(await driver.emitAck('delivery:update', { deliveryId, status: 'DELIVERED' })).toMatchObject({ ok: true });
    await eventually(() => received.length >= 3, 'three status events', 30_000);
    const events = received.map((r) => {
      const verdict = verifyWebhook([VENDURE_SECRET], {
        id: r.headers['webhook-id'] as string,
        timestamp: r.headers['webhook-timestamp'] as string,
        signature: r.headers['webhook-signature'] as string,
        body: r.body,
      });
      expect(verdict).toEqual({ ok: true });
      return JSON.parse(r.body);
    });
    expect(events.map((e) => e.type)).toEqual(['delivery.assigned', 'delivery.picked_up', 'delivery.delivered']);
    for (const e of events) expect(e.data).toMatchObject({ deliveryId, sellerOrderId: o.sellerOrderId, driverId: driver.id });
    expect(new Set(received.map((r) => r.headers['webhook-id'])).size).toBe(3);
    driver.close();
  });

  it.skipIf(!hasSharedPostgres())('when a relay process is killed mid-send, then another node delivers the event after the lease, with the same webhook-id', async () => {
    let hang = true;
    const seen: { id: string; body: string }[] = [];
    const flaky = createServer((req, res) => {
      let body = '';
      req.on('data', (c) => (body += c));
      req.on('end', () => {
        seen.push({ id: req.headers['webhook-id'] as string, body });
        if (hang) return; // the relay process dies while waiting for this answer
        res.writeHead(200).end();
      });
    });
    await new Promise<void>((resolve) => flaky.listen(0, '127.0.0.1', resolve));
    const url = `http://127.0.0.1:${(flaky.address() as { port: number }).port}/events`;
    const relayEnv = { VENDURE_WEBHOOK_URL: url, VENDURE_WEBHOOK_SECRET: VENDURE_SECRET, OUTBOX_POLL_MS: '50', OUTBOX_REQUEST_TIMEOUT_MS: '500' };
    // A database of its own, and a front node whose relay is idle: only the child relays at first.
    const ownDb = await createTestDatabase();
    const front = await startTestHub(testConfig(ownDb));
    const child = await spawnHub(envFrom(front.config, { ...relayEnv, NODE_ID: 'relay-victim' }));
    let survivor: TestHub | undefined;
    try {
      const place = { lat: 45.9, lng: 9.9 };
      const driver = await onDutyDriver(front, place, 'KillMidSend');
      const res = await postWebhook(front, '/events/seller-order-ready', order({ pickup: place }));
      expect(res.body.status).toBe('ASSIGNED');
      await eventually(() => seen.length === 1, 'child relay started sending', 10_000);
      await child.kill('SIGKILL');
      hang = false;
      survivor = await startTestHub(testConfig(ownDb, { ...relayEnv, REDIS_PREFIX: front.config.REDIS_PREFIX }));
      await eventually(() => seen.length >= 2, 'event delivered by the surviving node', 20_000);
      expect(seen[1].id).toBe(seen[0].id);
      expect(JSON.parse(seen[1].body).data.deliveryId).toBe(res.body.deliveryId);
      const dead = await api(front, 'GET', '/admin/outbox/dead');
      expect(dead.body.events).toHaveLength(0);
      driver.close();
    } finally {
      await child.kill('SIGKILL');
      await survivor?.stop();
      await front.stop();
      await ownDb.drop();
      flaky.close();
    }
  }, 60_000);
});
