import type { Socket } from 'socket.io-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTokenVersionsStore } from '../src/admin/token-versions.store.js';
import { openDatabase } from '../src/platform/db.js';
import {
  api,
  connectError,
  connectSocket,
  createTestDatabase,
  firstEvent,
  hasSharedPostgres,
  startCluster,
  type TestDatabase,
  type TestHub,
} from './support/hub.js';

async function mint(hub: TestHub, subject: string): Promise<string> {
  const res = await api<{ token: string }>(hub, 'POST', '/admin/tokens', { role: 'dispatcher', subject });
  expect(res.status).toBe(200);
  return res.body.token;
}

async function openMap(hub: TestHub, token: string): Promise<Socket> {
  const socket = connectSocket(hub, '/dispatch', { token });
  await firstEvent(socket, 'snapshot');
  return socket;
}

const closed = (socket: Socket) => new Promise<string>((resolve) => socket.once('disconnect', resolve));

describe.skipIf(!hasSharedPostgres())('dispatcher tokens can be revoked', () => {
  let db: TestDatabase;
  let hubs: TestHub[];

  beforeAll(async () => {
    db = await createTestDatabase();
    hubs = await startCluster(db, 2);
  });
  afterAll(async () => {
    await Promise.all(hubs?.map((h) => h.stop()) ?? []);
    await db?.drop();
  });

  it('when the admin revokes a dispatcher, then its maps close on every node, its old tokens are refused on sockets and HTTP, the fresh token works, and other dispatchers stay', async () => {
    const [a, b] = hubs;
    const [first, second] = [await mint(a, 'desk-7'), await mint(b, 'desk-7')];
    const colleague = await mint(a, 'desk-8');
    const mapOnA = await openMap(a, first);
    const mapOnB = await openMap(b, second);
    const colleagueMap = await openMap(b, colleague);
    const gone = Promise.all([closed(mapOnA), closed(mapOnB)]);

    const revoked = await api<{ revoked: boolean; token: string }>(a, 'POST', '/admin/dispatchers/desk-7/revoke-tokens');
    expect(revoked.status).toBe(200);
    expect(revoked.body.revoked).toBe(true);
    expect(await gone).toEqual(['io server disconnect', 'io server disconnect']);

    for (const hub of hubs) {
      for (const old of [first, second]) {
        expect((await connectError(connectSocket(hub, '/dispatch', { token: old }))).data).toMatchObject({ code: 'TOKEN_INVALID', message: 'token revoked' });
        expect((await api(hub, 'GET', '/admin/drivers', undefined, old)).status).toBe(401);
      }
    }
    const fresh = await openMap(b, revoked.body.token);
    expect((await api(a, 'GET', '/admin/deliveries', undefined, revoked.body.token)).status).toBe(200);
    expect(colleagueMap.connected).toBe(true);
    expect((await api(a, 'GET', '/admin/drivers', undefined, colleague)).status).toBe(200);
    for (const s of [fresh, colleagueMap]) s.disconnect();
  });

  it('when a revocation reaches PostgreSQL but not the sockets, then the periodic recheck closes the maps with an old token', async () => {
    const [a] = hubs;
    const token = await mint(a, 'desk-9');
    const map = await openMap(a, token);
    const gone = closed(map);
    // Straight into PostgreSQL: no event, as if the node that took the call died right after.
    const database = openDatabase({ url: db.url, dataDir: db.dataDir });
    try {
      await createTokenVersionsStore(database).revoke('dispatcher', 'desk-9');
    } finally {
      await database.close();
    }
    expect(map.connected).toBe(true);
    expect(await a.app.recheckSockets()).toBeGreaterThanOrEqual(1);
    expect(await gone).toBe('io server disconnect');
  });

  it('when revocation is asked without the admin token, by a dispatcher, or for a subject that is not one, then it is refused and nothing changes', async () => {
    const [a] = hubs;
    const token = await mint(a, 'desk-10');
    expect((await api(a, 'POST', '/admin/dispatchers/desk-10/revoke-tokens', undefined, null)).status).toBe(401);
    expect((await api(a, 'POST', '/admin/dispatchers/desk-10/revoke-tokens', undefined, token)).status).toBe(403);
    expect((await api(a, 'POST', `/admin/dispatchers/${'x'.repeat(201)}/revoke-tokens`)).status).toBe(400);
    expect((await api(a, 'GET', '/admin/drivers', undefined, token)).status).toBe(200);
  });
});
