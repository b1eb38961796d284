import { describe, expect, it } from 'vitest';
import { api, hasSharedPostgres, connectDriver, createDriver, order, postWebhook, useCluster } from './support/hub.js';
import { eventually } from './support/net.js';

const PLACE = { lat: 48.137, lng: 11.575 };

describe.skipIf(!hasSharedPostgres())('many orders racing for few drivers across three hubs', () => {
  const cluster = useCluster(3);

  it('when 40 orders hit 3 nodes at once for 6 drivers, then no driver has two deliveries, no order two drivers, and each is ASSIGNED or PENDING', async () => {
    const { hubs } = cluster;
    const drivers = [];
    for (let i = 0; i < 6; i++) {
      const hub = hubs[i % 3];
      const { id, token } = await createDriver(hub, `Racer ${i}`);
      const client = await connectDriver(hub, token);
      await client.emitAck('location', { lat: PLACE.lat + i * 0.0005, lng: PLACE.lng });
      await client.emitAck('status', { status: 'AVAILABLE' });
      drivers.push({ id, client });
    }
    const orders = Array.from({ length: 40 }, () => order({ pickup: PLACE }));
    // Each order is also retried on another node at the same moment.
    const replies = await Promise.all(
      orders.flatMap((o, i) => [postWebhook(hubs[i % 3], '/events/seller-order-ready', o), postWebhook(hubs[(i + 1) % 3], '/events/seller-order-ready', o)]),
    );
    for (const r of replies) expect([200, 202]).toContain(r.status);
    for (let i = 0; i < orders.length; i++) {
      const [a, b] = [replies[2 * i].body, replies[2 * i + 1].body];
      expect(a.deliveryId).toBe(b.deliveryId);
      expect(a.driverId).toBe(b.driverId);
    }
    const all = (await api(hubs[0], 'GET', '/admin/deliveries?limit=1000')).body.deliveries as any[];
    expect(all).toHaveLength(40);
    const assigned = all.filter((d) => d.status === 'ASSIGNED');
    expect(assigned).toHaveLength(6);
    expect(new Set(assigned.map((d) => d.driverId)).size).toBe(6);
    expect(all.filter((d) => d.status === 'PENDING')).toHaveLength(34);
    // Every driver got exactly its own assignment pushed, wherever the webhook landed.
    for (const d of drivers) {
      await eventually(() => d.client.assignments.length === 1, `push to ${d.id}`);
      const mine = assigned.find((x) => x.driverId === d.id);
      expect(d.client.assignments[0].deliveryId).toBe(mine.id);
    }
    await new Promise((r) => setTimeout(r, 200));
    for (const d of drivers) {
      expect(d.client.assignments).toHaveLength(1);
      d.client.close();
    }
  });
});
