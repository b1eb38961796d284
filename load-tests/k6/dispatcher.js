// Dispatchers watching the live map.
//
// Each VU is one dispatcher map client: it joins the /dispatch namespace with a dispatcher token
// (Engine.IO v4 / Socket.IO v5 framing over k6's raw websocket), expects the `snapshot`, then counts
// the `drivers:moved` batches the hub streams (one per hub node per MAP_TICK_MS), their sizes and
// how old each position is when it arrives. Run it next to drivers.js so there is something to watch.
//
//   k6 run -e BASE_URL=http://127.0.0.1:3000 -e ADMIN_TOKEN=... -e DURATION=2m load-tests/k6/dispatcher.js

import { check, fail, sleep } from 'k6';
import exec from 'k6/execution';
import http from 'k6/http';
import { Counter, Rate, Trend } from 'k6/metrics';
import ws from 'k6/ws';

function envNumber(name, def) {
  const raw = __ENV[name];
  if (raw === undefined || raw === '') return def;
  const n = Number(raw);
  if (!Number.isFinite(n)) throw new Error(`${name} must be a number, got ${JSON.stringify(raw)}`);
  return n;
}

/** Go-style durations as k6 takes them: "90s", "2m", "1h30m", "500ms". */
function parseDurationMs(text) {
  const s = String(text).trim();
  const re = /(\d+(?:\.\d+)?)(ms|h|m|s)/g;
  const unit = { ms: 1, s: 1000, m: 60000, h: 3600000 };
  let total = 0;
  let consumed = 0;
  let match = re.exec(s);
  while (match !== null) {
    if (match.index !== consumed) break;
    total += Number(match[1]) * unit[match[2]];
    consumed = re.lastIndex;
    match = re.exec(s);
  }
  if (consumed === 0 || consumed !== s.length) throw new Error(`DURATION ${JSON.stringify(text)} is not a duration like 90s, 2m or 1h30m`);
  return total;
}

const BASE_URL = (__ENV.BASE_URL || 'http://127.0.0.1:3000').replace(/\/+$/, '');
const WS_URL = `${BASE_URL.replace(/^http/, 'ws')}/socket.io/?EIO=4&transport=websocket`;
const ADMIN_TOKEN = __ENV.ADMIN_TOKEN || '';
const DISPATCHERS = Math.max(1, Math.floor(envNumber('DISPATCHERS', 1)));
const DURATION = __ENV.DURATION || '60s';
const DURATION_MS = parseDurationMs(DURATION);
const SNAPSHOT_TIMEOUT_MS = Math.max(100, envNumber('SNAPSHOT_TIMEOUT_MS', 10000));
/** Optional "minLat,minLng,maxLat,maxLng": sent as a `viewport` so only drivers inside it stream. */
const VIEWPORT = __ENV.VIEWPORT || '';
/** Ping -> map budget for the `move_age` threshold: hub batching (LOCATION_TICK_MS + MAP_TICK_MS) plus transit. */
const MOVE_AGE_P95_MS = envNumber('MOVE_AGE_P95_MS', 1000);

function parseViewport(text) {
  if (!text) return null;
  const parts = text.split(',').map((p) => Number(p.trim()));
  if (parts.length !== 4 || parts.some((p) => !Number.isFinite(p))) throw new Error('VIEWPORT must be "minLat,minLng,maxLat,maxLng"');
  const [minLat, minLng, maxLat, maxLng] = parts;
  return { minLat, minLng, maxLat, maxLng };
}
const VIEWPORT_BOX = parseViewport(VIEWPORT);

const NSP = '/dispatch';

export const options = {
  scenarios: {
    dispatchers: {
      executor: 'constant-vus',
      vus: DISPATCHERS,
      duration: DURATION,
      gracefulStop: '10s',
    },
  },
  thresholds: {
    ws_connecting: ['p(95)<500'],
    snapshot_received: ['rate>0.99'],
    snapshot_wait: ['p(95)<1000'],
    move_age: [`p(95)<${MOVE_AGE_P95_MS}`],
    checks: ['rate>0.99'],
  },
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'max'],
};

const snapshotReceived = new Rate('snapshot_received');
/** From joining the namespace to the snapshot arriving. */
const snapshotWait = new Trend('snapshot_wait', true);
const snapshotDrivers = new Trend('snapshot_drivers');
const snapshotDeliveries = new Trend('snapshot_deliveries');
const movedMessages = new Counter('drivers_moved_messages');
const movedPositions = new Counter('drivers_moved_positions');
const movedBatchSize = new Trend('drivers_moved_batch_size');
/** Hub receive time of a ping (`ts`) to arrival here: meaningful when both share a clock (same host, NTP). */
const moveAge = new Trend('move_age', true);
const statusMessages = new Counter('driver_status_messages');
const deliveryMessages = new Counter('delivery_updated_messages');
const wsErrors = new Counter('ws_errors');

export function setup() {
  if (!ADMIN_TOKEN) fail('ADMIN_TOKEN is required (-e ADMIN_TOKEN=...): the dispatcher token is minted through the admin API');
  const res = http.post(`${BASE_URL}/admin/tokens`, JSON.stringify({ role: 'dispatcher', subject: 'k6-dispatcher' }), {
    headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${ADMIN_TOKEN}` },
    tags: { name: 'POST /admin/tokens' },
  });
  if (res.status !== 200) fail(`POST /admin/tokens answered ${res.status}: ${String(res.body).slice(0, 300)}`);
  const token = res.json('token');
  if (typeof token !== 'string' || token === '') fail('POST /admin/tokens: no token in the reply');
  return { token };
}

/** `4<type>/dispatch,[<ackId>][<json>]` -> { type, id, data }, or null for anything else. */
function parsePacket(frame) {
  if (frame.length < 2 || frame[0] !== '4') return null;
  const type = frame[1];
  let rest = frame.slice(2);
  if (!rest.startsWith(`${NSP},`)) return null;
  rest = rest.slice(NSP.length + 1);
  let i = 0;
  while (i < rest.length && rest.charCodeAt(i) >= 48 && rest.charCodeAt(i) <= 57) i++;
  const id = i > 0 ? Number(rest.slice(0, i)) : null;
  const json = rest.slice(i);
  let data = null;
  if (json !== '') {
    try {
      data = JSON.parse(json);
    } catch (_) {
      return null;
    }
  }
  return { type, id, data };
}

export default function (data) {
  const endAt = exec.scenario.startTime + DURATION_MS - 1000;
  const remaining = endAt - Date.now();
  if (remaining < 1000) {
    sleep(Math.max(0, remaining + 1000) / 1000);
    return;
  }

  let joinedAt = 0;
  let gotSnapshot = false;

  const res = ws.connect(WS_URL, { tags: { name: 'dispatch socket' } }, (socket) => {
    socket.on('message', (frame) => {
      switch (frame[0]) {
        case '0': // Engine.IO open: join the namespace with the token
          socket.send(`40${NSP},${JSON.stringify({ token: data.token })}`);
          return;
        case '2': // Engine.IO ping
          socket.send('3');
          return;
        case '1':
          socket.close();
          return;
        case '4':
          break;
        default:
          return;
      }
      const packet = parsePacket(frame);
      if (packet === null) return;
      switch (packet.type) {
        case '0': // 40/dispatch,{"sid":...}
          joinedAt = Date.now();
          if (VIEWPORT_BOX) socket.send(`42${NSP},0${JSON.stringify(['viewport', VIEWPORT_BOX])}`);
          return;
        case '4': // 44/dispatch,{"message":...,"data":{...}}
          check(packet.data, { 'no connect_error': () => false });
          if (exec.vu.iterationInScenario === 0) console.warn(`VU ${exec.vu.idInTest}: connect_error ${JSON.stringify(packet.data)}`);
          socket.close();
          return;
        case '1':
          socket.close();
          return;
        case '3': // 43/dispatch,0[{"ok":...}]: the viewport ack
          check(packet.data, { 'viewport accepted': (d) => Array.isArray(d) && d[0] && d[0].ok === true });
          return;
        case '2': {
          const [event, payload] = Array.isArray(packet.data) ? packet.data : [];
          if (event === 'snapshot') {
            if (!gotSnapshot) {
              gotSnapshot = true;
              snapshotReceived.add(true);
              snapshotWait.add(Date.now() - joinedAt);
            }
            const ok = check(payload, {
              'snapshot has drivers and deliveries': (p) => p && Array.isArray(p.drivers) && Array.isArray(p.deliveries),
            });
            if (ok) {
              snapshotDrivers.add(payload.drivers.length);
              snapshotDeliveries.add(payload.deliveries.length);
            }
          } else if (event === 'drivers:moved' && Array.isArray(payload)) {
            const now = Date.now();
            movedMessages.add(1);
            movedPositions.add(payload.length);
            movedBatchSize.add(payload.length);
            for (const move of payload) {
              if (move && typeof move.ts === 'number') moveAge.add(Math.max(0, now - move.ts));
            }
          } else if (event === 'driver:status') {
            statusMessages.add(1);
          } else if (event === 'delivery:updated') {
            deliveryMessages.add(1);
          }
          return;
        }
        default:
      }
    });

    socket.on('error', (e) => {
      const message = e && typeof e.error === 'function' ? e.error() : String(e);
      if (message !== 'websocket: close sent') {
        wsErrors.add(1);
        if (exec.vu.iterationInScenario === 0) console.warn(`VU ${exec.vu.idInTest}: websocket error: ${message}`);
      }
    });

    socket.setTimeout(() => {
      if (!gotSnapshot) {
        snapshotReceived.add(false);
        check(null, { 'snapshot in time': () => false });
        socket.close();
      }
    }, SNAPSHOT_TIMEOUT_MS);

    socket.setTimeout(() => socket.close(), endAt - Date.now());
  });

  check(res, { 'websocket upgraded (101)': (r) => r && r.status === 101 });
  if (Date.now() < endAt) sleep(1);
}
