// Drivers connecting to the hub and streaming location pings.
//
// Each VU is one driver app: it opens a raw websocket to the hub and speaks Engine.IO v4 /
// Socket.IO v5 framing itself (k6 has no Socket.IO client), joins the /drivers namespace with its
// JWT, goes AVAILABLE, then sends a `location` every PING_INTERVAL_MS while random-walking around
// CENTER_LAT/CENTER_LNG. Assignments pushed by the hub are counted and, unless
// COMPLETE_AFTER_MS=0, driven to PICKED_UP and DELIVERED so the driver becomes free again.
//
//   k6 run -e BASE_URL=http://127.0.0.1:3000 -e ADMIN_TOKEN=... -e DRIVERS=500 -e DURATION=2m \
//     load-tests/k6/drivers.js
//
// See README.md in this folder for every option and what the thresholds mean.

import { check, fail, sleep } from 'k6';
import exec from 'k6/execution';
import http from 'k6/http';
import { Counter, Rate, Trend } from 'k6/metrics';
import { ackFrame, baseUrl, connectError, connectFrame, envNumber, eventFrame, parseDurationMs, readFrame, requireWithin, runSession, sessionEnd, socketUrl } from './lib.js';

// ---- configuration (environment) ----

const BASE_URL = baseUrl();
const WS_URL = socketUrl(BASE_URL);
const ADMIN_TOKEN = __ENV.ADMIN_TOKEN || '';
const DRIVERS = Math.max(1, Math.floor(envNumber('DRIVERS', 100)));
const DURATION = __ENV.DURATION || '60s';
const DURATION_MS = parseDurationMs(DURATION);
const PING_INTERVAL_MS = Math.max(10, envNumber('PING_INTERVAL_MS', 1000));
/** Every Nth location asks for an ack (1: all of them; 0: none). */
const ACK_EVERY = Math.max(0, Math.floor(envNumber('ACK_EVERY', 1)));
const CENTER_LAT = envNumber('CENTER_LAT', 52.52);
const CENTER_LNG = envNumber('CENTER_LNG', 13.405);
/** Drivers start and stay within this radius of the centre. */
const SPREAD_KM = Math.max(0.1, envNumber('SPREAD_KM', 5));
/** Driving speed of the random walk, metres per second. */
const SPEED_MPS = Math.max(0, envNumber('SPEED_MPS', 10));
/** Connections are spread over this many seconds at the start instead of all at once. */
const RAMP_SECONDS = Math.max(0, envNumber('RAMP_SECONDS', Math.min(30, DRIVERS / 200)));
/** Pickup this long after an assignment, delivered as long again; 0 leaves deliveries open. */
const COMPLETE_AFTER_MS = Math.max(0, envNumber('COMPLETE_AFTER_MS', 3000));
const CONNECT_TIMEOUT_MS = Math.max(100, envNumber('CONNECT_TIMEOUT_MS', 10000));
/**
 * Where driver tokens come from. `setup`: setup() creates every driver and hands the tokens to the
 * VUs in the setup data. `vu`: each VU creates its own driver on its first iteration. k6 gives every
 * VU its own copy of the setup data, so `setup` costs DRIVERS x DRIVERS tokens of memory in total;
 * the default switches to `vu` above 500 drivers.
 */
const TOKEN_SOURCE = __ENV.TOKEN_SOURCE || (DRIVERS <= 500 ? 'setup' : 'vu');
if (TOKEN_SOURCE !== 'setup' && TOKEN_SOURCE !== 'vu') throw new Error('TOKEN_SOURCE must be "setup" or "vu"');

const NSP = '/drivers';

export const options = {
  scenarios: {
    drivers: {
      executor: 'constant-vus',
      vus: DRIVERS,
      duration: DURATION,
      gracefulStop: '10s',
    },
  },
  setupTimeout: __ENV.SETUP_TIMEOUT || '5m',
  thresholds: {
    ws_connecting: ['p(95)<500'],
    namespace_connected: ['rate>0.99'],
    checks: ['rate>0.99'],
    ...(ACK_EVERY > 0 ? { location_ack: ['p(95)<50', 'p(99)<200'], location_ack_ok: ['rate>0.99'] } : {}),
  },
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'max'],
};

// ---- metrics ----

const sessionsReceived = new Counter('sessions_received');
const assignmentsReceived = new Counter('assignments_received');
const cancellationsReceived = new Counter('cancellations_received');
const deliveriesCompleted = new Counter('deliveries_completed');
const locationsSent = new Counter('locations_sent');
const locationAck = new Trend('location_ack', true);
const locationAckOk = new Rate('location_ack_ok');
const ackTimeouts = new Counter('ack_timeouts');
const namespaceConnected = new Rate('namespace_connected');
const namespaceConnect = new Trend('namespace_connect', true);
/** Hub clock (assignedAt) to this VU's clock: meaningful when both share a clock (same host, NTP). */
const assignmentAge = new Trend('assignment_age', true);
const wsErrors = new Counter('ws_errors');

// ---- setup: driver tokens ----

function adminHeaders() {
  return { 'Content-Type': 'application/json', Authorization: `Bearer ${ADMIN_TOKEN}` };
}

function createDriverRequest(name) {
  return ['POST', `${BASE_URL}/admin/drivers`, JSON.stringify({ name }), { headers: adminHeaders(), tags: { name: 'POST /admin/drivers' } }];
}

function tokenFrom(res, what) {
  if (res.status !== 201) fail(`${what}: POST /admin/drivers answered ${res.status}: ${String(res.body).slice(0, 300)}`);
  const token = res.json('token');
  if (typeof token !== 'string' || token === '') fail(`${what}: no token in the reply`);
  return token;
}

export function setup() {
  if (!ADMIN_TOKEN) fail('ADMIN_TOKEN is required (-e ADMIN_TOKEN=...): drivers are created through the admin API');
  const health = http.get(`${BASE_URL}/health`, { tags: { name: 'GET /health' } });
  if (health.status !== 200) fail(`hub at ${BASE_URL} is not healthy: ${health.status} ${String(health.body).slice(0, 300)}`);

  const runId = `${Date.now().toString(36)}${Math.floor(Math.random() * 1e6).toString(36)}`;
  const tokens = [];
  if (TOKEN_SOURCE === 'setup') {
    const chunk = 50;
    for (let start = 0; start < DRIVERS; start += chunk) {
      const requests = [];
      for (let i = start; i < Math.min(DRIVERS, start + chunk); i++) requests.push(createDriverRequest(`k6 driver ${runId}-${i + 1}`));
      for (const res of http.batch(requests)) tokens.push(tokenFrom(res, 'setup'));
    }
  }
  return { runId, tokens };
}

// ---- per-VU state (each VU has its own copy of module scope) ----

let myToken = null;
let position = null;
let headingDeg = Math.random() * 360;
let firstIteration = true;

function driverToken(data) {
  if (myToken) return myToken;
  if (data.tokens.length > 0) {
    myToken = data.tokens[(exec.vu.idInTest - 1) % data.tokens.length];
  } else {
    const [method, url, body, params] = createDriverRequest(`k6 driver ${data.runId}-${exec.vu.idInTest}`);
    myToken = tokenFrom(http.request(method, url, body, params), `VU ${exec.vu.idInTest}`);
  }
  return myToken;
}

const EARTH_RADIUS_M = 6371000;
const toRad = (d) => (d * Math.PI) / 180;
const toDeg = (r) => (r * 180) / Math.PI;

function offsetKm(lat, lng, northKm, eastKm) {
  return {
    lat: lat + toDeg((northKm * 1000) / EARTH_RADIUS_M),
    lng: lng + toDeg((eastKm * 1000) / (EARTH_RADIUS_M * Math.cos(toRad(lat)))),
  };
}

function randomStart() {
  // Uniform over the disc: radius ~ sqrt(u).
  const r = SPREAD_KM * Math.sqrt(Math.random());
  const a = Math.random() * 2 * Math.PI;
  return offsetKm(CENTER_LAT, CENTER_LNG, r * Math.cos(a), r * Math.sin(a));
}

/** One random-walk step: drift the heading, move, and turn back towards the centre at the edge. */
function step(seconds) {
  headingDeg = (headingDeg + (Math.random() - 0.5) * 40 + 360) % 360;
  const km = (SPEED_MPS * seconds) / 1000;
  let next = offsetKm(position.lat, position.lng, km * Math.cos(toRad(headingDeg)), km * Math.sin(toRad(headingDeg)));
  const northKm = (toRad(next.lat - CENTER_LAT) * EARTH_RADIUS_M) / 1000;
  const eastKm = (toRad(next.lng - CENTER_LNG) * EARTH_RADIUS_M * Math.cos(toRad(CENTER_LAT))) / 1000;
  if (Math.hypot(northKm, eastKm) > SPREAD_KM) {
    // Past the edge: head straight back towards the centre.
    headingDeg = (toDeg(Math.atan2(-eastKm, -northKm)) + 360) % 360;
    next = offsetKm(position.lat, position.lng, km * Math.cos(toRad(headingDeg)), km * Math.sin(toRad(headingDeg)));
  }
  position = next;
}

function fix() {
  return {
    lat: Math.round(position.lat * 1e6) / 1e6,
    lng: Math.round(position.lng * 1e6) / 1e6,
    heading: Math.round(headingDeg * 10) / 10 % 360,
    speed: SPEED_MPS,
    accuracy: 5,
    ts: Date.now(),
  };
}

export default function (data) {
  if (firstIteration) {
    firstIteration = false;
    // Spread the connection storm; token creation (TOKEN_SOURCE=vu) is spread with it.
    if (RAMP_SECONDS > 0) sleep(((exec.vu.idInTest - 1) / DRIVERS) * RAMP_SECONDS);
  }
  // Close a moment before the scenario ends so sessions end cleanly, not by interruption.
  const endAt = sessionEnd(DURATION_MS);
  if (endAt === null) return;

  let token;
  try {
    token = driverToken(data);
  } catch (err) {
    sleep(1); // a failing admin API must not turn this VU into a hot loop
    throw err;
  }
  if (position === null) position = randomStart();

  let nextAckId = 0;
  const pending = new Map(); // ackId -> { event, sentAt, onAck }
  const handledDeliveries = new Set();
  let connected = false;
  let connectSentAt = 0;
  let locationsInSession = 0;

  runSession(WS_URL, 'drivers socket', endAt, wsErrors, (socket) => {
    function emit(event, payload, onAck) {
      if (onAck) {
        const id = nextAckId++;
        pending.set(id, { event, sentAt: Date.now(), onAck });
        socket.send(eventFrame(NSP, event, payload, id));
      } else {
        socket.send(eventFrame(NSP, event, payload));
      }
    }

    function sendLocation() {
      step(PING_INTERVAL_MS / 1000);
      locationsInSession++;
      locationsSent.add(1);
      if (ACK_EVERY > 0 && locationsInSession % ACK_EVERY === 0) {
        emit('location', fix(), (reply, latency) => {
          locationAck.add(latency);
          locationAckOk.add(reply !== null && reply.ok === true);
        });
      } else {
        emit('location', fix());
      }
    }

    function updateDelivery(deliveryId, status, then) {
      emit('delivery:update', { deliveryId, status }, (reply) => {
        // INVALID_TRANSITION: already past this step (e.g. after a reconnect); carry on.
        const ok = reply !== null && (reply.ok === true || (reply.error && reply.error.code === 'INVALID_TRANSITION'));
        check(reply, { [`delivery:update ${status} accepted`]: () => ok });
        if (ok && then) then();
      });
    }

    function onAssignment(assignment) {
      assignmentsReceived.add(1);
      const assignedAt = Date.parse(assignment.assignedAt);
      if (Number.isFinite(assignedAt)) assignmentAge.add(Math.max(0, Date.now() - assignedAt));
      if (COMPLETE_AFTER_MS === 0 || handledDeliveries.has(assignment.deliveryId)) return;
      handledDeliveries.add(assignment.deliveryId);
      socket.setTimeout(() => {
        updateDelivery(assignment.deliveryId, 'PICKED_UP', () => {
          socket.setTimeout(() => {
            updateDelivery(assignment.deliveryId, 'DELIVERED', () => deliveriesCompleted.add(1));
          }, COMPLETE_AFTER_MS);
        });
      }, COMPLETE_AFTER_MS);
    }

    function onNamespaceConnected() {
      connected = true;
      namespaceConnected.add(true);
      namespaceConnect.add(Date.now() - connectSentAt);
      // A first position, then on duty: the hub puts an AVAILABLE driver into the GEO set where it is.
      sendLocation();
      emit('status', { status: 'AVAILABLE' }, (reply) => {
        check(reply, { 'status AVAILABLE accepted': (r) => r !== null && r.ok === true });
      });
      socket.setInterval(sendLocation, PING_INTERVAL_MS);
    }

    socket.on('message', (frame) => {
      // Engine.IO: 0 open, 1 close, 2 ping (answer 3), 4 message (Socket.IO packet inside).
      const packet = readFrame(socket, frame, NSP, () => {
        connectSentAt = Date.now();
        socket.send(connectFrame(NSP, token));
      });
      if (packet === null) return;
      switch (packet.type) {
        case '0': // CONNECT ack: 40/drivers,{"sid":...}
          onNamespaceConnected();
          return;
        case '4': {
          // CONNECT_ERROR: 44/drivers,{"message":"TOKEN_INVALID","data":{...}}
          namespaceConnected.add(false);
          connectError(socket, packet);
          return;
        }
        case '1': // DISCONNECT: the hub dropped us from the namespace (a newer connection, shutdown)
          socket.close();
          return;
        case '2': {
          // EVENT: 42/drivers,["session",{...}]
          const [event, payload] = Array.isArray(packet.data) ? packet.data : [];
          // 42/drivers,5["assignment",{...}]: the hub asks for an ack and sends the push again until
          // it gets one (the contract: pushes are delivered, not just sent). Acknowledge once stored.
          if (packet.id !== null) socket.send(ackFrame(NSP, packet.id, { ok: true }));
          if (event === 'session') sessionsReceived.add(1);
          else if (event === 'assignment' && payload) onAssignment(payload);
          else if (event === 'delivery:cancelled') cancellationsReceived.add(1);
          return;
        }
        case '3': {
          // ACK: 43/drivers,<id>[{"ok":true,...}]
          const entry = packet.id === null ? undefined : pending.get(packet.id);
          if (!entry) return;
          pending.delete(packet.id);
          const reply = Array.isArray(packet.data) && packet.data.length > 0 ? packet.data[0] : null;
          entry.onAck(reply, Date.now() - entry.sentAt);
          return;
        }
        default:
      }
    });

    requireWithin(socket, CONNECT_TIMEOUT_MS, () => connected, namespaceConnected, 'namespace connected in time');

    // Acks older than 5 s count as lost.
    socket.setInterval(() => {
      const cutoff = Date.now() - 5000;
      for (const [id, entry] of pending) {
        if (entry.sentAt >= cutoff) continue;
        pending.delete(id);
        ackTimeouts.add(1, { event: entry.event });
        if (entry.event === 'location') locationAckOk.add(false);
      }
    }, 1000);
  });
}
