// Vendure "seller order ready" webhooks at a constant arrival rate.
//
// Every iteration posts one new order, signed per Standard Webhooks exactly as Vendure signs it:
//   webhook-id: unique per message, webhook-timestamp: unix seconds,
//   webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{raw body}">
// keyed with the base64-decoded bytes of the `whsec_...` secret. A share of the orders
// (RETRY_RATIO) is delivered a second time with the same id and body, as a webhook sender retries;
// the hub must answer those with `idempotent: true` and the same delivery.
//
//   k6 run -e BASE_URL=http://127.0.0.1:3000 -e WEBHOOK_SECRET=whsec_... -e RATE=200 -e DURATION=1m \
//     load-tests/k6/orders.js
//
// Run load-tests/k6/drivers.js at the same time (same CENTER_LAT/CENTER_LNG) to have drivers to
// assign; without drivers every order is answered 202 PENDING, which is also a valid result.

import { check, fail } from 'k6';
import crypto from 'k6/crypto';
import encoding from 'k6/encoding';
import exec from 'k6/execution';
import http from 'k6/http';
import { Counter, Rate } from 'k6/metrics';
import { baseUrl, envNumber } from './lib.js';

const BASE_URL = baseUrl();
const RATE = Math.max(1, Math.floor(envNumber('RATE', 50)));
const DURATION = __ENV.DURATION || '60s';
const RETRY_RATIO = Math.min(1, Math.max(0, envNumber('RETRY_RATIO', 0.02)));
/** Every RETRY_EVERY-th order is delivered twice: a deterministic share, so short runs see retries too. */
const RETRY_EVERY = RETRY_RATIO > 0 ? Math.max(1, Math.round(1 / RETRY_RATIO)) : 0;
const CENTER_LAT = envNumber('CENTER_LAT', 52.52);
const CENTER_LNG = envNumber('CENTER_LNG', 13.405);
const SPREAD_KM = Math.max(0.1, envNumber('SPREAD_KM', 5));

// The signing key: the bytes the `whsec_` secret's base64 encodes, not the text itself. With several
// space-separated secrets (a rotation on the hub side), the first one signs.
const WEBHOOK_SECRET = (__ENV.WEBHOOK_SECRET || '').trim().split(/\s+/)[0];
if (!/^whsec_[A-Za-z0-9+/]+=*$/.test(WEBHOOK_SECRET)) {
  throw new Error('WEBHOOK_SECRET must be set to the hub\'s whsec_<base64> secret (-e WEBHOOK_SECRET=whsec_...)');
}
// Decode without padding so secrets written with or without trailing "=" both work.
const SIGNING_KEY = encoding.b64decode(WEBHOOK_SECRET.slice('whsec_'.length).replace(/=+$/, ''), 'rawstd');

export const options = {
  scenarios: {
    orders: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: DURATION,
      preAllocatedVUs: Math.max(5, Math.floor(envNumber('PRE_VUS', Math.ceil(RATE / 4)))),
      maxVUs: Math.max(10, Math.floor(envNumber('MAX_VUS', RATE * 2))),
      gracefulStop: '10s',
    },
  },
  thresholds: {
    http_req_duration: ['p(95)<100', 'p(99)<250'],
    http_req_failed: ['rate<0.01'],
    checks: ['rate>0.99'],
    // The hub answering slower than the arrival rate needs shows up as dropped iterations, not as
    // latency: allow less than one second's worth.
    dropped_iterations: [`count<${RATE}`],
    ...(RETRY_EVERY > 0 ? { retries_idempotent: ['rate>0.99'] } : {}),
  },
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'max'],
};

const ordersAssigned = new Counter('orders_assigned');
const ordersPending = new Counter('orders_pending');
const retriesIdempotent = new Rate('retries_idempotent');

export function setup() {
  const health = http.get(`${BASE_URL}/health`, { tags: { name: 'GET /health' } });
  if (health.status !== 200) fail(`hub at ${BASE_URL} is not healthy: ${health.status} ${String(health.body).slice(0, 300)}`);
  // One id for the whole run (module scope is per VU): sellerOrderIds never collide with earlier runs.
  return { runId: __ENV.RUN_ID || `${Date.now().toString(36)}${Math.floor(Math.random() * 1e6).toString(36)}` };
}

const EARTH_RADIUS_M = 6371000;

function randomPlace() {
  const r = SPREAD_KM * Math.sqrt(Math.random());
  const a = Math.random() * 2 * Math.PI;
  const lat = CENTER_LAT + ((r * 1000 * Math.cos(a)) / EARTH_RADIUS_M) * (180 / Math.PI);
  const lng = CENTER_LNG + ((r * 1000 * Math.sin(a)) / (EARTH_RADIUS_M * Math.cos((CENTER_LAT * Math.PI) / 180))) * (180 / Math.PI);
  return { lat: Math.round(lat * 1e6) / 1e6, lng: Math.round(lng * 1e6) / 1e6 };
}

function post(webhookId, body, kind) {
  const timestamp = String(Math.floor(Date.now() / 1000));
  const signature = crypto.hmac('sha256', SIGNING_KEY, `${webhookId}.${timestamp}.${body}`, 'base64');
  return http.post(`${BASE_URL}/events/seller-order-ready`, body, {
    headers: {
      'Content-Type': 'application/json',
      'webhook-id': webhookId,
      'webhook-timestamp': timestamp,
      'webhook-signature': `v1,${signature}`,
    },
    tags: { name: 'POST /events/seller-order-ready', kind },
  });
}

function replyOf(res) {
  try {
    return res.json();
  } catch (_) {
    return null;
  }
}

export default function (data) {
  const n = exec.scenario.iterationInTest;
  const sellerOrderId = `k6-${data.runId}-${n}`;
  const webhookId = `msg_k6_${data.runId}_${n}`;
  const body = JSON.stringify({
    sellerOrderId,
    orderCode: `K6-${n}`,
    pickup: randomPlace(),
    dropoff: randomPlace(),
  });

  const res = post(webhookId, body, 'order');
  const reply = replyOf(res);
  const ok = check(res, {
    'status is 200 or 202': (r) => r.status === 200 || r.status === 202,
    'reply names the delivery': () => reply !== null && typeof reply.deliveryId === 'string',
    'first delivery is not idempotent': () => reply !== null && reply.idempotent === false,
  });
  if (!ok) {
    if (res.status !== 200 && res.status !== 202 && exec.vu.iterationInScenario < 3) {
      console.warn(`order ${sellerOrderId}: ${res.status} ${String(res.body).slice(0, 300)}`);
    }
    return;
  }
  if (reply.status === 'ASSIGNED') ordersAssigned.add(1);
  else ordersPending.add(1);

  if (RETRY_EVERY > 0 && n % RETRY_EVERY === RETRY_EVERY - 1) {
    // The sender did not see our answer and delivers the same message again (same id, same body,
    // signed anew with the current timestamp).
    const again = post(webhookId, body, 'retry');
    const retryReply = replyOf(again);
    const same =
      (again.status === 200 || again.status === 202) &&
      retryReply !== null &&
      retryReply.idempotent === true &&
      retryReply.deliveryId === reply.deliveryId;
    retriesIdempotent.add(same);
    check(again, {
      'retry is 200 or 202': (r) => r.status === 200 || r.status === 202,
      'retry answers idempotent: true with the same delivery': () => same,
    });
  }
}
