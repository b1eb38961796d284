import { randomUUID } from 'node:crypto';
import fc from 'fast-check';
import type { Socket } from 'socket.io-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { signWebhook } from '#shared/webhooks.js';
import { createLogger } from '../src/platform/logger.js';
import { startHub } from '../src/main.js';
import {
  api,
  connectSocket,
  createDriver,
  createTestDatabase,
  type DriverClient,
  firstEvent,
  onDutyDriver,
  type TestDatabase,
  type TestHub,
  testConfig,
  WEBHOOK_SECRET,
} from './support/hub.js';

/**
 * Property-based fuzzing of every HTTP body and socket payload. The generators build values that
 * are invalid by construction (one mutation away from a valid body), so "no row written" holds
 * for every run; odd but valid input has its own property, which only forbids a 5xx.
 */

const RUNS = 150;
const BERLIN = { lat: 52.52, lng: 13.405 };

// ---------- a tiny model of the shared schemas, to mutate bodies with intent ----------

type Spec =
  | { t: 'str'; min?: number; max: number; trim?: boolean; opt?: boolean }
  | { t: 'num'; min: number; max: number; int?: boolean; opt?: boolean }
  | { t: 'enum'; values: readonly string[]; opt?: boolean }
  | { t: 'uuid'; opt?: boolean }
  | { t: 'obj'; fields: Record<string, Spec>; opt?: boolean };
type ObjSpec = Extract<Spec, { t: 'obj' }>;

const str = (max: number, extra: Partial<Extract<Spec, { t: 'str' }>> = {}): Spec => ({ t: 'str', max, ...extra });
const num = (min: number, max: number, extra: Partial<Extract<Spec, { t: 'num' }>> = {}): Spec => ({ t: 'num', min, max, ...extra });
const obj = (fields: Record<string, Spec>, opt = false): ObjSpec => ({ t: 'obj', fields, opt });

const LAT = 85.05112878;
const place = (opt = false) => obj({ lat: num(-LAT, LAT), lng: num(-180, 180), address: str(500, { opt: true }) }, opt);
const SPECS = {
  orderReady: obj({
    sellerOrderId: str(200, { min: 1 }),
    orderCode: str(200, { min: 1 }),
    sellerId: str(200, { min: 1, opt: true }),
    pickup: place(),
    dropoff: place(),
    customer: obj({ name: str(200, { opt: true }), phone: str(50, { opt: true }) }, true),
    notes: str(2000, { opt: true }),
  }),
  orderCancelled: obj({ sellerOrderId: str(200, { min: 1 }), reason: str(500, { opt: true }) }),
  createDriver: obj({ name: str(200, { min: 1, trim: true }), phone: str(50, { opt: true }), vehicle: str(100, { opt: true }) }),
  mintToken: obj({ role: { t: 'enum', values: ['dispatcher', 'driver'] }, subject: str(200, { min: 1 }) }),
  fix: obj({
    lat: num(-LAT, LAT),
    lng: num(-180, 180),
    heading: num(0, 360, { opt: true }),
    speed: num(0, 1000, { opt: true }),
    accuracy: num(0, 100_000, { opt: true }),
    ts: num(0, 8.64e15, { int: true, opt: true }),
  }),
  status: obj({ status: { t: 'enum', values: ['AVAILABLE', 'OFFLINE'] } }),
  deliveryUpdate: obj({
    deliveryId: { t: 'uuid' },
    status: { t: 'enum', values: ['PICKED_UP', 'DELIVERED', 'FAILED'] },
    reason: str(500, { opt: true }),
  }),
  viewport: obj({ minLat: num(-LAT, LAT), minLng: num(-180, 180), maxLat: num(-LAT, LAT), maxLng: num(-180, 180) }),
} as const;

/** JSON text placed verbatim in an HTTP body (1e999, NaN, broken nesting): things JSON.stringify cannot make. */
class Raw {
  constructor(readonly text: string) {}
}

/** HTTP bodies may carry raw JSON text; socket payloads travel through socket.io's JSON and may not. */
interface Ctx {
  http: boolean;
}

function toJson(value: unknown): string {
  if (value instanceof Raw) return value.text;
  if (Array.isArray(value)) return `[${value.map(toJson).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    return `{${Object.keys(value)
      .map((k) => `${JSON.stringify(k)}:${toJson((value as Record<string, unknown>)[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(value) ?? 'null';
}

/** Sets `key` as an own property even when it is `__proto__`. */
function withKey(target: object, key: string, value: unknown): Record<string, unknown> {
  const copy: Record<string, unknown> = { ...target };
  Object.defineProperty(copy, key, { value, enumerable: true, writable: true, configurable: true });
  return copy;
}

function without(target: object, key: string): Record<string, unknown> {
  const copy: Record<string, unknown> = { ...target };
  delete copy[key];
  return copy;
}

const ODD = [
  '\u0000',
  '\ud800',
  '\udfff',
  '\u202e',
  '\u200f',
  '\u200b',
  '\ufeff',
  '\u2028',
  '\uffff',
  '\u0301',
  '𝒳',
  '🏳️‍🌈',
  'ﷺ',
  '"',
  '\\',
  "'; drop table drivers; --",
  '<script>',
  '%00',
];
const oddText = (maxLength: number) =>
  fc
    .array(fc.oneof(fc.constantFrom(...ODD), fc.string({ unit: 'binary', maxLength: 3 }), fc.string({ maxLength: 3 })), { maxLength: 8 })
    .map((parts) => parts.join('').slice(0, maxLength));

const deepText = (maxDepth: number) =>
  fc.oneof(
    fc.integer({ min: 50, max: maxDepth }).map((d) => `${'['.repeat(d)}${']'.repeat(d)}`),
    fc.integer({ min: 50, max: maxDepth }).map((d) => `${'{"a":'.repeat(d)}1${'}'.repeat(d)}`),
  );
const deep = (ctx: Ctx) => deepText(ctx.http ? 5000 : 1000).map((t) => (ctx.http ? new Raw(t) : JSON.parse(t)));

/** Values of no use anywhere in a body: wrong types, deep nesting, and the numbers JSON cannot carry. */
const junk = (ctx: Ctx) =>
  fc.oneof(
    fc.jsonValue({ maxDepth: 3 }),
    fc.constantFrom<unknown>(NaN, Infinity, -Infinity, {}, [], { polluted: true }, { __proto__: null }),
    deep(ctx),
  );

function validValue(spec: Spec, odd: boolean): fc.Arbitrary<unknown> {
  switch (spec.t) {
    case 'str': {
      const min = spec.min ?? 0;
      const base = odd ? oddText(Math.min(spec.max, 40)) : fc.string({ maxLength: Math.min(spec.max, 20) });
      return base
        .map((s) => (s.length < min ? s.padEnd(min, 'x') : s))
        .filter((s) => s.length >= min && s.length <= spec.max && (!spec.trim || s.trim().length >= min));
    }
    case 'num':
      return spec.int ? fc.integer({ min: spec.min, max: Math.min(spec.max, Number.MAX_SAFE_INTEGER) }) : fc.double({ min: spec.min, max: spec.max, noNaN: true });
    case 'enum':
      return fc.constantFrom(...spec.values);
    case 'uuid':
      return fc.uuid({ version: 4 });
    case 'obj': {
      const fields = Object.fromEntries(Object.entries(spec.fields).map(([k, s]) => [k, validValue(s, odd)]));
      const requiredKeys = Object.entries(spec.fields)
        .filter(([, s]) => !s.opt)
        .map(([k]) => k);
      return fc.record(fields, { requiredKeys }) as fc.Arbitrary<unknown>;
    }
  }
}

function invalidValue(spec: Spec, ctx: Ctx): fc.Arbitrary<unknown> {
  const notString = fc.oneof(fc.double(), fc.boolean(), fc.constant(null), fc.array(fc.string(), { maxLength: 3 }), fc.constant({}), deep(ctx));
  switch (spec.t) {
    case 'str': {
      const options: fc.Arbitrary<unknown>[] = [notString, fc.string({ maxLength: 20 }).map((s) => 'x'.repeat(spec.max + 1) + s)];
      if ((spec.min ?? 0) >= 1) options.push(fc.constantFrom('', ...(spec.trim ? [' ', '\t\n', '   '] : [])));
      return fc.oneof(...options);
    }
    case 'num': {
      const options: fc.Arbitrary<unknown>[] = [
        fc.oneof(fc.string({ maxLength: 10 }), fc.constantFrom('1', '0', '-1', 'NaN', 'Infinity', '1e3'), fc.boolean(), fc.constant(null), fc.constant([1]), fc.constant({ n: 1 })),
        fc.double({ min: spec.max + 1, max: Number.MAX_VALUE, noNaN: true }),
        fc.double({ min: -Number.MAX_VALUE, max: spec.min - 1, noNaN: true }),
        fc.constantFrom(NaN, Infinity, -Infinity, Number.MAX_VALUE, -Number.MAX_VALUE),
      ];
      if (spec.int) options.push(fc.double({ min: spec.min, max: Math.min(spec.max, 1e9), noNaN: true }).filter((n) => !Number.isInteger(n)));
      if (ctx.http) options.push(fc.constantFrom('1e999', '-1e999', 'NaN', 'Infinity', '0x10', '01', '1.', '.5', '+1', 'undefined').map((t) => new Raw(t)));
      return fc.oneof(...options);
    }
    case 'enum':
      return fc.oneof(
        notString,
        fc.string({ maxLength: 12 }).filter((s) => !spec.values.includes(s)),
        fc.constantFrom(...spec.values).map((v) => (v === v.toLowerCase() ? v.toUpperCase() : v.toLowerCase())),
        fc.constantFrom(...spec.values).map((v) => ` ${v}`),
        fc.constantFrom(...spec.values).map((v) => [v]),
      );
    case 'uuid':
      return fc.oneof(
        notString,
        fc.uuid({ version: 4 }).map((u) => `${u}x`),
        fc.uuid({ version: 4 }).map((u) => u.slice(1)),
        fc.uuid({ version: 4 }).map((u) => u.replace(/-/g, '')),
        fc.constantFrom('not-a-uuid', "' or 1=1 --", '../../etc/passwd'),
      );
    case 'obj':
      return fc.oneof(fc.oneof(fc.string(), fc.double(), fc.boolean(), fc.constant(null), fc.array(fc.integer(), { maxLength: 3 })), invalidObject(spec, ctx));
  }
}

const POLLUTING_KEYS = ['__proto__', 'constructor', 'prototype', 'toString', 'hasOwnProperty', 'valueOf', 'driverId', 'id', 'sub', 'role', ''];

/** A valid object with exactly one thing wrong: an unknown key, a bad field (at any depth), a missing field. */
function invalidObject(spec: ObjSpec, ctx: Ctx): fc.Arbitrary<Record<string, unknown>> {
  const keys = Object.keys(spec.fields);
  const required = keys.filter((k) => !spec.fields[k].opt);
  const base = validValue(spec, false) as fc.Arbitrary<Record<string, unknown>>;
  const extraKey = fc.oneof(fc.constantFrom(...POLLUTING_KEYS), fc.string({ maxLength: 12 })).filter((k) => !keys.includes(k));
  const options: fc.Arbitrary<Record<string, unknown>>[] = [
    fc.tuple(base, extraKey, junk(ctx)).map(([b, k, v]) => withKey(b, k, v)),
    fc.tuple(base, fc.constantFrom(...keys)).chain(([b, k]) => invalidValue(spec.fields[k], ctx).map((v) => withKey(b, k, v))),
  ];
  if (required.length > 0) options.push(fc.tuple(base, fc.constantFrom(...required)).map(([b, k]) => without(b, k)));
  return fc.oneof(...options);
}

/** Whole bodies that are not the object at all. `allowNull` and `allowArrays` say what the payload itself would accept. */
function notAnObject(spec: ObjSpec, ctx: Ctx, opts: { nullIsValid?: boolean; arraysOfValidAreValid?: boolean } = {}): fc.Arbitrary<unknown> {
  const options: fc.Arbitrary<unknown>[] = [
    // Infinity and NaN travel as null in JSON: where null is valid they are not a bad payload.
    fc.oneof(fc.string({ maxLength: 30 }), oddText(30), fc.double({ noDefaultInfinity: opts.nullIsValid, noNaN: opts.nullIsValid }), fc.integer(), fc.boolean()),
    fc.array(fc.oneof(fc.integer(), fc.string({ maxLength: 5 })), { maxLength: 5 }),
    deep(ctx),
  ];
  if (!opts.nullIsValid) options.push(fc.constant(null));
  if (!opts.arraysOfValidAreValid) options.push(fc.array(validValue(spec, false), { minLength: 1, maxLength: 3 }));
  return fc.oneof(...options);
}

function invalidBody(spec: ObjSpec, ctx: Ctx): fc.Arbitrary<unknown> {
  return fc.oneof({ weight: 5, arbitrary: invalidObject(spec, ctx) }, { weight: 1, arbitrary: notAnObject(spec, ctx) });
}

/** HTTP only: text that is not JSON at all, or not only JSON. */
const notJson = fc.oneof(
  fc.string({ maxLength: 40 }),
  oddText(40),
  fc.constantFrom('', '{', '}', '[', 'NaN', 'undefined', '{"a":1}{"a":2}', '{"a":1,}', "{'a':1}", '\ufeff{}', '{"a":"\\ud800"'),
  fc.jsonValue().map((v) => JSON.stringify(v).slice(0, -1)),
).filter((t) => {
  try {
    JSON.parse(t);
    return false;
  } catch {
    return true;
  }
});

// ---------- the hub under fuzz ----------

describe('fuzzing every body and payload', () => {
  let db: TestDatabase;
  let hub: TestHub;
  let driver: DriverClient & { id: string };
  let dispatcher: Socket;

  // Rate limits are proven elsewhere; here they would only turn VALIDATION_FAILED into RATE_LIMITED.
  const unlimited = { points: 1_000_000, seconds: 1 };

  beforeAll(async () => {
    db = await createTestDatabase();
    const config = testConfig(db);
    const logger = createLogger({ level: config.LOG_LEVEL, nodeId: config.NODE_ID });
    const running = await startHub(config, logger, {
      edge: { rateLimits: { location: unlimited, driverAction: unlimited, viewport: unlimited, driverConnect: unlimited } },
    });
    hub = { ...running, url: `http://127.0.0.1:${running.port}` };
    driver = await onDutyDriver(hub, BERLIN, 'Fuzzed');
    const { token } = (await api(hub, 'POST', '/admin/tokens', { role: 'dispatcher', subject: 'fuzz-map' })).body;
    dispatcher = connectSocket(hub, '/dispatch', { token });
    await firstEvent(dispatcher, 'snapshot');
  }, 60_000);
  afterAll(async () => {
    driver?.close();
    dispatcher?.disconnect();
    await hub?.stop();
    await db?.drop();
  });

  const counts = async () => ({
    drivers: (await api(hub, 'GET', '/admin/drivers')).body.drivers.length as number,
    deliveries: (await api(hub, 'GET', '/admin/deliveries?limit=1000')).body.deliveries.length as number,
  });

  async function expectUnharmed(before: { drivers: number; deliveries: number }) {
    expect(await counts()).toEqual(before);
    expect((await fetch(`${hub.url}/health`)).status).toBe(200);
    // The hub runs in this process: a polluted prototype would show here.
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  }

  async function postRaw(path: string, body: string, opts: { signed?: boolean } = {}) {
    const headers: Record<string, string> = { 'content-type': 'application/json' };
    if (opts.signed) Object.assign(headers, signWebhook(WEBHOOK_SECRET, `msg_${randomUUID()}`, Date.now() / 1000, body));
    else headers.authorization = `Bearer ${hub.config.ADMIN_TOKEN}`;
    const res = await fetch(`${hub.url}${path}`, { method: 'POST', headers, body });
    const text = await res.text();
    return { status: res.status, text };
  }

  const http: Ctx = { http: true };
  const socket: Ctx = { http: false };
  const httpBodies = (spec: ObjSpec) => fc.oneof({ weight: 6, arbitrary: invalidBody(spec, http).map(toJson) }, { weight: 1, arbitrary: notJson });

  const routes = [
    { path: '/events/seller-order-ready', spec: SPECS.orderReady, signed: true },
    { path: '/events/seller-order-cancelled', spec: SPECS.orderCancelled, signed: true },
    { path: '/admin/drivers', spec: SPECS.createDriver, signed: false },
    { path: '/admin/tokens', spec: SPECS.mintToken, signed: false },
  ];

  for (const route of routes) {
    it(`when ${route.path} gets a malformed body${route.signed ? ' that is correctly signed' : ' with the admin token'}, then 400 with an error body, no row, and the hub stays up`, async () => {
      const before = await counts();
      await fc.assert(
        fc.asyncProperty(httpBodies(route.spec), async (body) => {
          const res = await postRaw(route.path, body, { signed: route.signed });
          expect(res.status, `${res.status} ${res.text} for ${body.slice(0, 300)}`).toBe(400);
          expect(JSON.parse(res.text).error.code).toBe('VALIDATION_FAILED');
        }),
        { numRuns: RUNS },
      );
      await expectUnharmed(before);
    });
  }

  it('when valid bodies carry odd Unicode (NUL, lone surrogates, RTL, zero-width), then the answer is never a 5xx', async () => {
    const ready = validValue(SPECS.orderReady, true);
    const newDriver = validValue(SPECS.createDriver, true);
    await fc.assert(
      fc.asyncProperty(fc.oneof(ready.map((b) => ['/events/seller-order-ready', b] as const), newDriver.map((b) => ['/admin/drivers', b] as const)), async ([path, body]) => {
        const text = toJson(body);
        const res = await postRaw(path, text, { signed: path.startsWith('/events') });
        expect(res.status, `${res.status} ${res.text} for ${text.slice(0, 300)}`).toBeLessThan(500);
      }),
      { numRuns: 100 },
    );
    expect((await fetch(`${hub.url}/health`)).status).toBe(200);
  });

  const payloads = [
    {
      event: 'location',
      arb: fc.oneof(
        { weight: 4, arbitrary: invalidObject(SPECS.fix, socket) },
        { weight: 1, arbitrary: notAnObject(SPECS.fix, socket, { arraysOfValidAreValid: true }) },
        {
          weight: 1,
          arbitrary: fc
            .tuple(fc.array(validValue(SPECS.fix, false), { maxLength: 4 }), invalidObject(SPECS.fix, socket), fc.array(validValue(SPECS.fix, false), { maxLength: 4 }))
            .map(([a, bad, b]) => [...a, bad, ...b]),
        },
        { weight: 1, arbitrary: fc.constantFrom([], Array.from({ length: 101 }, () => ({ lat: 1, lng: 1 }))) },
      ),
    },
    { event: 'status', arb: invalidBody(SPECS.status, socket) },
    { event: 'delivery:update', arb: invalidBody(SPECS.deliveryUpdate, socket) },
  ];

  for (const { event, arb } of payloads) {
    it(`when a driver sends a malformed ${event}, then the ack is ok:false VALIDATION_FAILED and nothing about the driver changes`, async () => {
      const before = await counts();
      await fc.assert(
        fc.asyncProperty(arb, async (payload) => {
          const ack = await driver.emitAck(event, payload);
          expect(ack.ok, JSON.stringify(payload)?.slice(0, 300)).toBe(false);
          if (!ack.ok) expect(ack.error.code).toBe('VALIDATION_FAILED');
        }),
        { numRuns: RUNS },
      );
      expect(driver.socket.connected).toBe(true);
      await new Promise((r) => setTimeout(r, 300)); // past a position flush
      const row = (await api(hub, 'GET', '/admin/drivers')).body.drivers.find((d: { id: string }) => d.id === driver.id);
      expect(row).toMatchObject({ status: 'AVAILABLE', lat: BERLIN.lat, lng: BERLIN.lng });
      await expectUnharmed(before);
    });
  }

  it('when a dispatcher sends a malformed viewport, then the ack is ok:false VALIDATION_FAILED and the socket stays open', async () => {
    const viewports = fc.oneof(
      { weight: 5, arbitrary: invalidObject(SPECS.viewport, socket) },
      { weight: 1, arbitrary: notAnObject(SPECS.viewport, socket, { nullIsValid: true }) },
    );
    await fc.assert(
      fc.asyncProperty(viewports, async (payload) => {
        const ack = await dispatcher.timeout(10_000).emitWithAck('viewport', payload);
        expect(ack.ok, JSON.stringify(payload)?.slice(0, 300)).toBe(false);
        expect(ack.error.code).toBe('VALIDATION_FAILED');
      }),
      { numRuns: RUNS },
    );
    expect(dispatcher.connected).toBe(true);
    expect((await fetch(`${hub.url}/health`)).status).toBe(200);
  });

  it('when a driver sends events the hub does not know, with any payload, then FORBIDDEN acks and the socket stays open', async () => {
    const { token } = await createDriver(hub, 'Prober');
    const prober = connectSocket(hub, '/drivers', { token });
    await firstEvent(prober, 'session');
    await fc.assert(
      fc.asyncProperty(
        fc.oneof(fc.string({ maxLength: 20 }), fc.constantFrom('error', 'connection', 'session', 'assignment', 'drivers:moved', '__proto__', 'constructor', 'toString')),
        fc.jsonValue({ maxDepth: 2 }),
        async (event, payload) => {
          // Handled events are fuzzed above; reserved ones the client library refuses to send.
          fc.pre(!['location', 'status', 'delivery:update', 'connect', 'connect_error', 'disconnect', 'disconnecting', 'newListener', 'removeListener'].includes(event));
          const ack = await prober.timeout(10_000).emitWithAck(event, payload);
          expect(ack).toMatchObject({ ok: false, error: { code: 'FORBIDDEN' } });
        },
      ),
      { numRuns: 100 },
    );
    expect(prober.connected).toBe(true);
    prober.disconnect();
  });
});
