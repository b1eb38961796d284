import { describe, expect, it } from 'vitest';
import { api, connectDriver, createDriver, hasSharedPostgres, order, postWebhook, redisFor, useCluster } from './support/hub.js';
import { eventually } from './support/net.js';

const PLACE = { lat: 47.3769, lng: 8.5417 };

describe.skipIf(!hasSharedPostgres())('pushes to a driver on another node', () => {
  // No re-send pass within the test: an acknowledgement recorded can only be the first send's.
  const cluster = useCluster(3, { PUSH_RETRY_MS: '60000' });

  it('when an order lands on one node and its driver is on another, then the push is acknowledged at once and the answers reach the asking node alone', async () => {
    const [held, asking] = cluster.hubs;
    const prefix = held.config.REDIS_PREFIX;
    // The adapter's shared response channel, which every node reads, and each node's own (the
    // shared name followed by the node's adapter id).
    const shared = `${prefix}socket.io-response#/drivers#`;
    const listener = redisFor(held);
    const heard: string[] = [];
    listener.on('pmessage', (_pattern: string, channel: string) => heard.push(channel));
    await listener.psubscribe(`${shared}*`);
    try {
      const { id, token } = await createDriver(held, 'Elsewhere');
      const driver = await connectDriver(held, token);
      await driver.emitAck('location', PLACE);
      await driver.emitAck('status', { status: 'AVAILABLE' });

      const res = await postWebhook(asking, '/events/seller-order-ready', order({ pickup: PLACE }));
      expect(res.body).toMatchObject({ status: 'ASSIGNED', driverId: id });
      await eventually(() => driver.assignments.length === 1, 'the push at the driver');
      const detail = async () => (await api(asking, 'GET', `/admin/deliveries/${res.body.deliveryId}`)).body;
      await eventually(async () => (await detail()).acknowledgedAt !== null, 'the acknowledgement recorded');
      expect((await detail()).pushes).toEqual([expect.objectContaining({ kind: 'assignment', driverId: id, resends: 0 })]);

      // The node holding the socket answered (its client count, then the app's acknowledgement),
      // and so did the third node (no client): all on the asking node's own channel.
      await eventually(() => heard.length >= 3, 'the answers on the wire');
      expect(heard.filter((channel) => channel === shared)).toEqual([]);
      expect(new Set(heard).size).toBe(1);
      expect(driver.assignments).toHaveLength(1);
      driver.close();
    } finally {
      listener.disconnect();
    }
  });
});
