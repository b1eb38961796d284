import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { envFrom, spawnHub, type ChildHub } from './support/child-hub.js';
import {
  api,
  connectDriver,
  connectSocket,
  createDriver,
  createTestDatabase,
  hasSharedPostgres,
  order,
  postWebhook,
  startCluster,
  type TestDatabase,
  type TestHub,
} from './support/hub.js';
import { eventually } from './support/net.js';

const PLACE = { lat: 59.33, lng: 18.06 };

describe.skipIf(!hasSharedPostgres())('a node dies', () => {
  let db: TestDatabase;
  let hubs: TestHub[];
  let victim: ChildHub;

  beforeAll(async () => {
    db = await createTestDatabase();
    hubs = await startCluster(db, 2, { HEARTBEAT_TTL_SECONDS: '3' });
    victim = await spawnHub(envFrom(hubs[0].config, { NODE_ID: 'victim' }));
  });
  afterAll(async () => {
    await victim?.kill('SIGKILL');
    await Promise.all(hubs?.map((h) => h.stop()) ?? []);
    await db?.drop();
  });

  it('when a node is killed with SIGKILL, then its drivers reconnect to another node, keep their deliveries, and the map converges', async () => {
    const victimUrl = { url: victim.url };
    const token = (await api(hubs[1], 'POST', '/admin/tokens', { role: 'dispatcher', subject: 'watcher' })).body.token;
    const dispatcher = connectSocket(hubs[1], '/dispatch', { token });
    const statuses: { id: string; status: string }[] = [];
    const moves: { id: string; lat: number }[] = [];
    dispatcher.on('driver:status', (s) => statuses.push(s));
    dispatcher.on('drivers:moved', (batch) => moves.push(...batch));
    await new Promise((resolve) => dispatcher.once('snapshot', resolve));

    const busy = await createDriver(victimUrl, 'Busy');
    const idle = await createDriver(victimUrl, 'Idle');
    const busyClient = await connectDriver(victimUrl, busy.token);
    const idleClient = await connectDriver(victimUrl, idle.token);
    for (const [i, c] of [busyClient, idleClient].entries()) {
      await c.emitAck('location', { lat: PLACE.lat + i * 0.01, lng: PLACE.lng });
      await c.emitAck('status', { status: 'AVAILABLE' });
    }
    const res = await postWebhook(hubs[0], '/events/seller-order-ready', order({ pickup: PLACE }));
    expect(res.body.driverId).toBe(busy.id);
    await eventually(() => busyClient.assignments.length === 1, 'assignment on the victim node');
    await eventually(() => moves.some((m) => m.id === idle.id), 'map saw the idle driver move');

    await victim.kill('SIGKILL');
    // The apps notice the dead connection and reconnect, to another node.
    await eventually(() => !busyClient.socket.connected && !idleClient.socket.connected, 'sockets dropped');
    const busyAgain = await connectDriver(hubs[0], busy.token);
    const idleAgain = await connectDriver(hubs[1], idle.token);
    expect(busyAgain.session).toMatchObject({ status: 'BUSY', activeDelivery: { deliveryId: res.body.deliveryId } });
    await eventually(() => busyAgain.assignments.length === 1, 'assignment re-sent on the new node');
    expect(idleAgain.session.status).toBe('AVAILABLE');

    // The map converges: the idle driver moves again from its new node; statuses are current.
    await idleAgain.emitAck('location', { lat: PLACE.lat + 0.02, lng: PLACE.lng });
    await eventually(() => moves.some((m) => m.id === idle.id && Math.abs(m.lat - (PLACE.lat + 0.02)) < 1e-9), 'map sees the move via the new node');
    const drivers = (await api(hubs[1], 'GET', '/admin/drivers')).body.drivers as any[];
    expect(drivers.find((d) => d.id === busy.id).status).toBe('BUSY');
    expect(drivers.find((d) => d.id === idle.id).status).toBe('AVAILABLE');
    const detail = (await api(hubs[1], 'GET', `/admin/deliveries/${res.body.deliveryId}`)).body;
    expect(detail).toMatchObject({ status: 'ASSIGNED', driverId: busy.id });
    // The dead node's drivers went through the new nodes, never left as ghosts.
    await eventually(() => statuses.some((s) => s.id === idle.id && s.status === 'AVAILABLE'), 'status seen on the map');

    busyAgain.close();
    idleAgain.close();
    busyClient.close();
    idleClient.close();
    dispatcher.disconnect();
  });
});
