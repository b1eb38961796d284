import postgres from 'postgres';
import { seededRandom } from '#shared/driver-client/fake-socket.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  api,
  connectDriver,
  createTestDatabase,
  hasSharedPostgres,
  onDutyDriver,
  order,
  postWebhook,
  startCluster,
  startTestHub,
  type TestDatabase,
  type TestHub,
  testConfig,
} from './support/hub.js';
import { eventually } from './support/net.js';

const READY = '/events/seller-order-ready';
const HOLD_KEY = 4242;

/**
 * Deterministic interleavings of a claim against a driver's own status writes. A trigger in the
 * test's database makes every write that assigns a delivery wait on an advisory lock the test holds
 * (when it holds it), so a claim stops inside its transaction after it has locked and updated the driver row; the test
 * then runs the driver's write against it, sees it wait on the row lock, and lets the claim commit.
 */
describe.skipIf(!hasSharedPostgres())('a claim racing the driver status writes', () => {
  let db: TestDatabase;
  let hub: TestHub;
  let sql: postgres.Sql;
  let holder: postgres.ReservedSql;
  let area = 0;

  beforeAll(async () => {
    db = await createTestDatabase();
    hub = await startTestHub(testConfig(db));
    sql = postgres(db.url!, { max: 4, onnotice: () => {} });
    await sql.unsafe(`
      create function test_hold_delivery_write() returns trigger language plpgsql as $$
      begin
        if new.status = 'ASSIGNED' then perform pg_advisory_xact_lock_shared(${HOLD_KEY}); end if;
        return new;
      end $$;
      create trigger test_hold_delivery_write after insert or update on deliveries
        for each row execute function test_hold_delivery_write();`);
    holder = await sql.reserve();
  });
  afterAll(async () => {
    holder?.release();
    await sql?.end({ timeout: 1 });
    await hub?.stop();
    await db?.drop();
  });

  const place = () => {
    area += 1;
    return { lat: 10 + area, lng: 20 + area };
  };

  /** Statements of the hub waiting on a lock, by what they wait for. */
  const waiting = async () =>
    sql<{ event: string; query: string }[]>`select wait_event as event, query from pg_stat_activity
      where datname = current_database() and wait_event_type = 'Lock' and pid <> pg_backend_pid()`;
  /** A claim held inside its transaction by the test's advisory lock. */
  const claimHeld = async () => (await waiting()).some((w) => w.event === 'advisory');
  /** The driver's own write (connect or duty change: both mark it heard from) queued behind the claim's row lock. */
  const driverWriteQueued = async () => (await waiting()).some((w) => w.event !== 'advisory' && w.query.includes('insert into driver_positions'));

  const availableWithActiveDelivery = async () =>
    sql`select d.id from drivers d join deliveries x on x.driver_id = d.id and x.status in ('ASSIGNED', 'PICKED_UP') where d.status = 'AVAILABLE'`;

  async function heldClaim(at: { lat: number; lng: number }) {
    await holder`select pg_advisory_lock(${HOLD_KEY})`;
    const reply = postWebhook(hub, READY, order({ pickup: at }));
    await eventually(claimHeld, 'the claim to wait inside its transaction');
    return { reply };
  }

  async function releaseClaim() {
    await holder`select pg_advisory_unlock(${HOLD_KEY})`;
  }

  it('when a driver goes on duty while a claim of it is being committed, then it ends BUSY with its delivery, never AVAILABLE', async () => {
    const at = place();
    const driver = await onDutyDriver(hub, at, 'Racer');
    const { reply } = await heldClaim(at);
    const duty = driver.emitAck('status', { status: 'AVAILABLE' });
    await eventually(driverWriteQueued, 'the duty change to wait on the driver row');
    await releaseClaim();
    // On a busy machine the webhook may find the driver not yet searchable and leave the order
    // PENDING; the held claim is then the pending retry's. Either way the same claim raced the duty change.
    const answer = await reply;
    expect([200, 202]).toContain(answer.status);
    await eventually(async () => (await api(hub, 'GET', `/admin/deliveries/${answer.body.deliveryId}`)).body.driverId === driver.id, 'the order to go to the driver');
    const ack = await duty;
    expect(ack).toMatchObject({ ok: true, status: 'BUSY' });
    expect(await availableWithActiveDelivery()).toHaveLength(0);
    const [row] = await sql`select status from drivers where id = ${driver.id}`;
    expect(row.status).toBe('BUSY');

    // The next order near the busy driver must not be given to it, and must not fail.
    const next = await postWebhook(hub, READY, order({ pickup: at }));
    expect(next.status).toBe(202);
    expect(next.body.status).toBe('PENDING');
    driver.close();
  });

  it('when a driver reconnects while a claim of it is being committed, then the new session says BUSY and carries the delivery', async () => {
    const at = place();
    const driver = await onDutyDriver(hub, at, 'Reconnecting racer');
    const { reply } = await heldClaim(at);
    const second = connectDriver(hub, driver.token);
    await eventually(driverWriteQueued, 'the reconnect to wait on the driver row');
    await releaseClaim();
    const answer = await reply;
    expect([200, 202]).toContain(answer.status);
    await eventually(async () => (await api(hub, 'GET', `/admin/deliveries/${answer.body.deliveryId}`)).body.driverId === driver.id, 'the order to go to the driver');
    const session = (await second).session;
    expect(session.status).toBe('BUSY');
    expect(session.activeDelivery?.deliveryId).toBe(answer.body.deliveryId);
    expect(await availableWithActiveDelivery()).toHaveLength(0);
    (await second).close();
    driver.close();
  });

  it('when a driver drops off, is given the oldest pending delivery, and sends AVAILABLE meanwhile (as apps do), then it ends BUSY', async () => {
    const at = place();
    const driver = await onDutyDriver(hub, at, 'Freed racer');
    const first = await postWebhook(hub, READY, order({ pickup: at }));
    expect(first.body.status).toBe('ASSIGNED');
    const waitingOrder = await postWebhook(hub, READY, order({ pickup: at }));
    expect(waitingOrder.body.status).toBe('PENDING');
    expect(await driver.emitAck('delivery:update', { deliveryId: first.body.deliveryId, status: 'PICKED_UP' })).toMatchObject({ ok: true });

    await holder`select pg_advisory_lock(${HOLD_KEY})`;
    expect(await driver.emitAck('delivery:update', { deliveryId: first.body.deliveryId, status: 'DELIVERED' })).toMatchObject({ ok: true });
    await eventually(claimHeld, 'the freed driver claim to wait inside its transaction');
    const duty = driver.emitAck('status', { status: 'AVAILABLE' });
    await eventually(driverWriteQueued, 'the duty change to wait on the driver row');
    await releaseClaim();
    expect(await duty).toMatchObject({ ok: true, status: 'BUSY' });
    await eventually(async () => (await api(hub, 'GET', `/admin/deliveries/${waitingOrder.body.deliveryId}`)).body.status === 'ASSIGNED', 'the pending delivery to go to the freed driver');
    expect(await availableWithActiveDelivery()).toHaveLength(0);
    driver.close();
  });
});

describe.skipIf(!hasSharedPostgres())('a claim that loses to a concurrent one', () => {
  let db: TestDatabase;
  let hub: TestHub;
  let sql: postgres.Sql;

  beforeAll(async () => {
    db = await createTestDatabase();
    hub = await startTestHub(testConfig(db));
    sql = postgres(db.url!, { max: 2, onnotice: () => {} });
    // Stands in for the losing side of a race: the next `failures` assigning writes break the
    // one-active-delivery index (or deadlock), as a claim of an already-taken driver would.
    await sql.unsafe(`
      create table test_claim_failures (failures int not null, code text not null);
      insert into test_claim_failures values (0, 'unique_violation');
      create sequence test_claim_attempts;
      create function test_fail_claim() returns trigger language plpgsql as $$
      declare f record;
      begin
        select * into f from test_claim_failures;
        if new.status = 'ASSIGNED' and nextval('test_claim_attempts') <= f.failures then
          if f.code = 'unique_violation' then
            raise exception 'duplicate key' using errcode = 'unique_violation', constraint = 'deliveries_one_active_per_driver';
          end if;
          raise exception 'deadlock detected' using errcode = 'deadlock_detected';
        end if;
        return new;
      end $$;
      create trigger test_fail_claim before insert or update on deliveries for each row execute function test_fail_claim();`);
  });
  afterAll(async () => {
    await sql?.end({ timeout: 1 });
    await hub?.stop();
    await db?.drop();
  });

  async function failNext(failures: number, code: 'unique_violation' | 'deadlock_detected') {
    await sql`update test_claim_failures set failures = ${failures}, code = ${code}`;
    await sql`alter sequence test_claim_attempts restart`;
  }

  it('when a claim loses once to the one-active-delivery index, then the webhook tries again and assigns', async () => {
    const at = { lat: 30, lng: 30 };
    const driver = await onDutyDriver(hub, at, 'Contested');
    await failNext(1, 'unique_violation');
    const res = await postWebhook(hub, READY, order({ pickup: at }));
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({ status: 'ASSIGNED', driverId: driver.id });
    driver.close();
  });

  it('when every claim attempt loses, then the order is recorded PENDING with 202, never a 5xx', async () => {
    const at = { lat: 31, lng: 31 };
    const driver = await onDutyDriver(hub, at, 'Always contested');
    for (const code of ['unique_violation', 'deadlock_detected'] as const) {
      await failNext(1000, code);
      const o = order({ pickup: at });
      const res = await postWebhook(hub, READY, o);
      expect(res.status).toBe(202);
      expect(res.body).toMatchObject({ status: 'PENDING', driverId: null });
      const again = await postWebhook(hub, READY, o);
      expect(again.body).toMatchObject({ deliveryId: res.body.deliveryId, idempotent: true });
    }
    const [row] = await sql`select status, current_delivery_id from drivers where id = ${driver.id}`;
    expect(row).toMatchObject({ status: 'AVAILABLE', current_delivery_id: null });
    await failNext(0, 'unique_violation');
    driver.close();
  });
});

describe.skipIf(!hasSharedPostgres())('drivers finishing and going on duty while orders claim them, on three hubs', () => {
  let db: TestDatabase;
  let hubs: TestHub[];
  let sql: postgres.Sql;

  beforeAll(async () => {
    db = await createTestDatabase();
    // The actors reconnect at random, a dozen times in a few seconds: past the production connect
    // budget (10 per 10 s per driver), which this test is not about.
    hubs = await startCluster(db, 3, {}, { edge: { rateLimits: { driverConnect: { points: 1000, seconds: 10 } } } });
    sql = postgres(db.url!, { max: 2, onnotice: () => {} });
  });
  afterAll(async () => {
    await sql?.end({ timeout: 1 });
    await Promise.all(hubs?.map((h) => h.stop()) ?? []);
    await db?.drop();
  });

  it('when drivers deliver, reconnect and toggle duty at random under a stream of orders, then no AVAILABLE driver ever holds a delivery and no webhook gets a 5xx', async () => {
    const PLACE = { lat: -33.87, lng: 151.21 };
    const random = seededRandom(0x5eed);
    const DRIVERS = 18;
    const actors = await Promise.all(
      Array.from({ length: DRIVERS }, async (_, i) => {
        const hub = hubs[i % 3];
        const d = await onDutyDriver(hub, { lat: PLACE.lat + (i % 6) * 0.0004, lng: PLACE.lng + Math.floor(i / 6) * 0.0004 }, `Chaos ${i}`);
        return { ...d, hub, client: d as DriverClientLike, done: new Set<string>() };
      }),
    );

    const violations: string[] = [];
    const statuses: number[] = [];
    let ordering = true;
    let checks = 0;

    const checker = (async () => {
      while (ordering || checks < 20) {
        const bad = await sql`select d.id, x.id as delivery from drivers d join deliveries x on x.driver_id = d.id
          and x.status in ('ASSIGNED', 'PICKED_UP') where d.status = 'AVAILABLE'`;
        for (const row of bad) violations.push(`${row.id} AVAILABLE holding ${row.delivery}`);
        checks += 1;
        await sleep(25);
      }
    })();

    // A fixed number of orders on a clock, not one after another: a slow answer must not slow the stream.
    const ORDERS = 150;
    const orders = (async () => {
      const sent: Promise<void>[] = [];
      for (let i = 0; i < ORDERS; i++) {
        const o = order({ pickup: PLACE });
        sent.push(postWebhook(hubs[i % 3], READY, o).then((r) => void statuses.push(r.status)));
        if (i % 5 === 0) sent.push(postWebhook(hubs[(i + 1) % 3], READY, o).then((r) => void statuses.push(r.status)));
        await sleep(20);
      }
      await Promise.all(sent);
      ordering = false;
    })();

    const driving = actors.map(async (actor) => {
      while (ordering) {
        const job = actor.client.assignments.find((a) => !actor.done.has(a.deliveryId));
        const roll = random();
        if (job) {
          actor.done.add(job.deliveryId);
          await actor.client.emitAck('delivery:update', { deliveryId: job.deliveryId, status: 'PICKED_UP' });
          const outcome = roll < 0.9 ? { status: 'DELIVERED' } : { status: 'FAILED', reason: 'customer absent' };
          // As real apps do: the drop-off and "I am available" sent back to back, not awaited in turn.
          await Promise.all([
            actor.client.emitAck('delivery:update', { deliveryId: job.deliveryId, ...outcome }),
            actor.client.emitAck('status', { status: 'AVAILABLE' }),
          ]);
        } else if (roll < 0.08) {
          await actor.client.emitAck('status', { status: 'OFFLINE' });
          await sleep(10);
          await actor.client.emitAck('status', { status: 'AVAILABLE' });
        } else if (roll < 0.12) {
          actor.client.close();
          const next = hubs[Math.floor(random() * 3)];
          const fresh = await connectDriver(next, actor.token);
          for (const a of actor.client.assignments) fresh.assignments.push(a);
          if (fresh.session.activeDelivery && !actor.done.has(fresh.session.activeDelivery.deliveryId)) fresh.assignments.push(fresh.session.activeDelivery);
          actor.client = fresh;
          await actor.client.emitAck('status', { status: 'AVAILABLE' });
        } else if (roll < 0.3) {
          await actor.client.emitAck('status', { status: 'AVAILABLE' });
        } else {
          await sleep(5 + Math.floor(random() * 20));
        }
      }
    });

    await Promise.all([orders, ...driving]);
    await checker;
    for (const a of actors) a.client.close();

    expect(statuses).toHaveLength(ORDERS + ORDERS / 5);
    expect(statuses.filter((s) => s >= 500)).toEqual([]);
    expect(checks).toBeGreaterThan(20);
    expect(violations).toEqual([]);
    const doubled = await sql`select driver_id from deliveries where status in ('ASSIGNED', 'PICKED_UP') group by driver_id having count(*) > 1`;
    expect(doubled).toHaveLength(0);
    const delivered = await sql`select count(*)::int as n from deliveries where status in ('DELIVERED', 'FAILED')`;
    expect(delivered[0].n).toBeGreaterThan(DRIVERS);
  }, 120_000);
});

interface DriverClientLike {
  assignments: { deliveryId: string }[];
  emitAck: (event: string, payload: unknown) => Promise<unknown>;
  close(): void;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
