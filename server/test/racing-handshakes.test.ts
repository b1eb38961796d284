import type { Socket as ServerSocket } from 'socket.io';
import type { Socket } from 'socket.io-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sessionIdOf } from '../src/realtime/drivers.socket.js';
import {
  api,
  connectDriver,
  connectSocket,
  createDriver,
  createTestDatabase,
  hasSharedPostgres,
  startCluster,
  startTestHub,
  testConfig,
  type TestDatabase,
  type TestHub,
} from './support/hub.js';
import { eventually } from './support/net.js';

/** Room for 20 handshakes at once (the production budget is 10 per 10 s per driver). */
const edge = { rateLimits: { driverConnect: { points: 1000, seconds: 10 } } };
const COUNTS = [2, 5, 20];

/**
 * Opens `count` handshakes of one driver at the same moment, spread over `hubs`, and waits until
 * they have settled. Answers the client sockets and what the hubs saw: every connection the
 * driver got, with its session id (handshake time, then socket id).
 */
async function race(hubs: TestHub[], token: string, driverId: string, count: number) {
  const seen: { id: string; sessionId: string }[] = [];
  const watchers = hubs.map((hub) => {
    const watch = (socket: ServerSocket) => {
      if (socket.data.subject === driverId) seen.push({ id: socket.id, sessionId: sessionIdOf(socket) });
    };
    hub.app.io.of('/drivers').on('connection', watch);
    return () => hub.app.io.of('/drivers').off('connection', watch);
  });
  const sockets: Socket[] = [];
  const sessions = new Set<Socket>();
  const ended = new Set<Socket>();
  for (let i = 0; i < count; i++) {
    const socket = connectSocket(hubs[i % hubs.length], '/drivers', { token });
    socket.on('session', () => sessions.add(socket));
    socket.on('disconnect', () => ended.add(socket));
    socket.on('connect_error', () => ended.add(socket));
    sockets.push(socket);
  }
  try {
    await eventually(() => seen.length === count && ended.size === count - 1 && sockets.some((s) => s.connected && sessions.has(s)), `${count} handshakes to settle`, 15_000);
    // Nothing late may close the survivor: wait past any takeover still on its way between nodes.
    await new Promise((r) => setTimeout(r, 400));
  } finally {
    for (const stop of watchers) stop();
  }
  return { sockets, seen, sessions };
}

function describeRaces(topology: string, nodes: number) {
  describe.skipIf(nodes > 1 && !hasSharedPostgres())(`simultaneous handshakes of one driver, ${topology}`, () => {
    let db: TestDatabase;
    let hubs: TestHub[];

    beforeAll(async () => {
      db = await createTestDatabase();
      hubs = await startCluster(db, nodes, {}, { edge });
    });
    afterAll(async () => {
      await Promise.all(hubs?.map((h) => h.stop()) ?? []);
      await db?.drop();
    });

    it.each(COUNTS)('when %i handshakes arrive at once, then exactly one socket stays connected, the newest by handshake time, and the driver stays on duty', async (count) => {
      const { id, token } = await createDriver(hubs[0], `Racer ${count}`);
      // On duty first, so a connection that wrongly takes the driver offline shows.
      const first = await connectDriver(hubs[0], token);
      expect((await first.emitAck('status', { status: 'AVAILABLE' })).ok).toBe(true);
      first.close();
      await eventually(async () => (await api(hubs[0], 'GET', '/admin/drivers')).body.drivers.find((d: any) => d.id === id)?.status === 'OFFLINE', 'the first connection gone');

      const { sockets, seen } = await race(hubs, token, id, count);
      const connected = sockets.filter((s) => s.connected);
      expect(connected).toHaveLength(1);
      const newest = seen.reduce((a, b) => (b.sessionId > a.sessionId ? b : a));
      expect(connected[0].id).toBe(newest.id);
      // On the hubs too: one socket of this driver in the whole cluster.
      const serverSide = hubs.flatMap((hub) => [...hub.app.io.of('/drivers').sockets.values()].filter((s) => s.data.subject === id));
      expect(serverSide.map((s) => s.id)).toEqual([newest.id]);
      // PostgreSQL agrees: the survivor speaks for the driver, which is on duty and AVAILABLE.
      await new Promise((r) => setTimeout(r, 300));
      expect((await api(hubs[0], 'GET', '/admin/drivers')).body.drivers.find((d: any) => d.id === id)?.status).toBe('AVAILABLE');
      const ack = await connected[0].timeout(5000).emitWithAck('status', { status: 'AVAILABLE' });
      expect(ack).toMatchObject({ ok: true, status: 'AVAILABLE' });
      for (const s of sockets) s.disconnect();
    });
  });
}

describeRaces('on one node', 1);
describeRaces('across three nodes', 3);

describe.skipIf(!hasSharedPostgres())('a takeover whose message between nodes is lost', () => {
  let db: TestDatabase;
  let hubs: TestHub[];

  beforeAll(async () => {
    db = await createTestDatabase();
    // Two hubs on one database that share no Redis: the message that closes the older connection
    // on the other node never arrives, as when Redis was away at the moment of the takeover.
    hubs = [await startTestHub(testConfig(db, { NODE_ID: 'left' }), { edge }), await startTestHub(testConfig(db, { NODE_ID: 'right' }), { edge })];
  });
  afterAll(async () => {
    await Promise.all(hubs?.map((h) => h.stop()) ?? []);
    await db?.drop();
  });

  it('when a newer connection took over on another node, then the recheck closes the older one and leaves the newer and other drivers alone', async () => {
    const [left, right] = hubs;
    const { id, token } = await createDriver(left, 'Twice');
    const bystander = await createDriver(left, 'Bystander');
    const older = await connectDriver(left, token);
    const other = await connectDriver(left, bystander.token);
    await new Promise((r) => setTimeout(r, 5));
    const newer = await connectDriver(right, token);
    // The newer session is written in PostgreSQL once its bookkeeping is done.
    await eventually(async () => (await newer.emitAck('status', { status: 'AVAILABLE' })).ok === true, 'the newer connection on duty');
    expect(older.socket.connected).toBe(true);

    expect(await right.app.recheckSockets()).toBe(0);
    expect(await left.app.recheckSockets()).toBe(1);
    await eventually(() => !older.socket.connected, 'the older connection closed');
    expect(newer.socket.connected).toBe(true);
    expect(other.socket.connected).toBe(true);
    expect((await api(left, 'GET', '/admin/drivers')).body.drivers.find((d: any) => d.id === id)?.status).toBe('AVAILABLE');
    for (const c of [newer, other]) c.close();
  });
});
