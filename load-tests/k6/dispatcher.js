// Dispatchers watching the live map.
//
// Each VU is one dispatcher map client: it joins the /dispatch namespace with a dispatcher token
// (Engine.IO v4 / Socket.IO v5 framing over k6's raw websocket), expects the `snapshot`, then counts
// the `drivers:moved` batches the hub streams (one per hub node per MAP_TICK_MS), their sizes and
// how old each position is when it arrives. Run it next to drivers.js so there is something to watch.
//
//   k6 run -e BASE_URL=http://127.0.0.1:3000 -e ADMIN_TOKEN=... -e DURATION=2m load-tests/k6/dispatcher.js

import { check, fail } from 'k6';
import http from 'k6/http';
import { Counter, Rate, Trend } from 'k6/metrics';
import { baseUrl, connectError, connectFrame, envNumber, eventFrame, parseDurationMs, readFrame, requireWithin, runSession, sessionEnd, socketUrl } from './lib.js';

const BASE_URL = baseUrl();
const WS_URL = socketUrl(BASE_URL);
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

export default function (data) {
  const endAt = sessionEnd(DURATION_MS);
  if (endAt === null) return;

  let joinedAt = 0;
  let gotSnapshot = false;

  runSession(WS_URL, 'dispatch socket', endAt, wsErrors, (socket) => {
    socket.on('message', (frame) => {
      // Engine.IO open: join the namespace with the token.
      const packet = readFrame(socket, frame, NSP, () => socket.send(connectFrame(NSP, data.token)));
      if (packet === null) return;
      switch (packet.type) {
        case '0': // 40/dispatch,{"sid":...}
          joinedAt = Date.now();
          if (VIEWPORT_BOX) socket.send(eventFrame(NSP, 'viewport', VIEWPORT_BOX, 0));
          return;
        case '4': // 44/dispatch,{"message":...,"data":{...}}
          connectError(socket, packet);
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

    requireWithin(socket, SNAPSHOT_TIMEOUT_MS, () => gotSnapshot, snapshotReceived, 'snapshot in time');
  });
}
