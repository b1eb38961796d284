import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { hasSharedPostgres } from './support/hub.js';
import { useStoreNodes } from './support/store-nodes.js';

describe.skipIf(!hasSharedPostgres())('acknowledgements written in batches, racing transitions', () => {
  const nodes = useStoreNodes();

  /** An ASSIGNED delivery with its open assignment push, on a fresh driver. */
  async function assigned() {
    const { id: driverId } = await nodes.a.drivers.create({ name: 'Acknowledging' });
    await nodes.sql`update drivers set status = 'AVAILABLE', on_duty = true, session_id = ${`000000000000001.${driverId}`} where id = ${driverId}`;
    const created = await nodes.a.deliveries.createAndAssign(
      { sellerOrderId: `ack-${randomUUID()}`, orderCode: 'A', pickup: { lat: 1, lng: 1 }, dropoff: { lat: 1.01, lng: 1 } },
      [{ driverId, distanceMeters: 100 }],
    );
    if (!created.created || created.delivery.driverId !== driverId) throw new Error('the driver was claimed');
    return { deliveryId: created.delivery.id, driverId };
  }

  it('when a batch of acknowledgements races cancels of the same deliveries on another node, then every cancel succeeds and each push ends acknowledged or closed', async () => {
    for (let round = 0; round < 16; round++) {
      const jobs = await Promise.all(Array.from({ length: 6 }, () => assigned()));
      const keys = jobs.map((j) => ({ ...j, kind: 'assignment' as const }));
      // The acknowledgements land at different points of the cancels' transactions, round by round.
      const [acks, ...cancels] = await Promise.all([
        new Promise((r) => setTimeout(r, round % 4)).then(() => nodes.a.pushes.acknowledgeMany(keys)),
        ...jobs.map((j) =>
          nodes.b.deliveries.transition({ deliveryId: j.deliveryId, to: 'CANCELLED', allowedFrom: ['PENDING', 'OFFERED', 'ASSIGNED', 'PICKED_UP'], actor: 'test', reason: 'race' }),
        ),
      ]);
      for (const cancel of cancels) expect(cancel).toMatchObject({ changed: true, delivery: { status: 'CANCELLED' } });
      const rows = await nodes.sql<{ acknowledged: boolean; closed: boolean }[]>`
        select acknowledged_at is not null as acknowledged, closed_at is not null as closed from pushes
        where kind = 'assignment' and delivery_id = any(${jobs.map((j) => j.deliveryId)}::uuid[])`;
      expect(rows).toHaveLength(jobs.length);
      // Each push was acknowledged before its cancel closed it, or closed before the acknowledgement (which then changed nothing).
      for (const row of rows) expect(row.acknowledged || row.closed).toBe(true);
      expect(acks.filter((x) => x !== null).length).toBe(rows.filter((r) => r.acknowledged).length);
    }
  });
});
