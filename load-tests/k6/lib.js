// Helpers shared by the k6 scripts in this folder: environment parsing, the hub's URLs, and the
// Engine.IO v4 / Socket.IO v5 framing that drivers.js and dispatcher.js speak over k6/ws.
// A local module: the scripts import it with `import { ... } from './lib.js';`.

import { check, sleep } from 'k6';
import exec from 'k6/execution';
import ws from 'k6/ws';

// ---- configuration (environment) ----

export function envNumber(name, def) {
  const raw = __ENV[name];
  if (raw === undefined || raw === '') return def;
  const n = Number(raw);
  if (!Number.isFinite(n)) throw new Error(`${name} must be a number, got ${JSON.stringify(raw)}`);
  return n;
}

/** Go-style durations as k6 takes them: "90s", "2m", "1h30m", "500ms". */
export function parseDurationMs(text) {
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

/** The hub's HTTP base: `BASE_URL` (default http://127.0.0.1:3000) without trailing slashes. */
export function baseUrl() {
  return (__ENV.BASE_URL || 'http://127.0.0.1:3000').replace(/\/+$/, '');
}

/** The Engine.IO websocket endpoint under an HTTP base (http -> ws, https -> wss). */
export function socketUrl(base) {
  return `${base.replace(/^http/, 'ws')}/socket.io/?EIO=4&transport=websocket`;
}

// ---- sessions: one websocket per iteration, closed before the scenario ends ----

/**
 * When this iteration's session should close: a moment before the scenario ends, so sessions end
 * cleanly, not by interruption. Returns null (after sleeping out the rest) when too little is left.
 */
export function sessionEnd(durationMs) {
  const endAt = exec.scenario.startTime + durationMs - 1000;
  const remaining = endAt - Date.now();
  if (remaining < 1000) {
    sleep(Math.max(0, remaining + 1000) / 1000);
    return null;
  }
  return endAt;
}

/**
 * One websocket session to `url` (tagged `name`): `onSocket(socket)` sets up the handlers; errors
 * (not the close k6 reports for our own close) are counted in `wsErrors` and the first ones logged;
 * the socket closes at `endAt`. Then checks the upgrade and, if the session ended early (refused,
 * dropped, hub restarted), pauses a second before the next iteration reconnects, as apps do.
 */
export function runSession(url, name, endAt, wsErrors, onSocket) {
  const res = ws.connect(url, { tags: { name } }, (socket) => {
    socket.on('error', (e) => {
      const message = e && typeof e.error === 'function' ? e.error() : String(e);
      if (message !== 'websocket: close sent') {
        wsErrors.add(1);
        if (exec.vu.iterationInScenario === 0) console.warn(`VU ${exec.vu.idInTest}: websocket error: ${message}`);
      }
    });
    onSocket(socket);
    socket.setTimeout(() => socket.close(), endAt - Date.now());
  });

  check(res, { 'websocket upgraded (101)': (r) => r && r.status === 101 });
  if (Date.now() < endAt) sleep(1);
}

/** Unless `isDone()` by `ms` from now: records false in `rate`, fails the check `checkName`, closes. */
export function requireWithin(socket, ms, isDone, rate, checkName) {
  socket.setTimeout(() => {
    if (!isDone()) {
      rate.add(false);
      check(null, { [checkName]: () => false });
      socket.close();
    }
  }, ms);
}

// ---- Socket.IO framing over the raw websocket ----

/**
 * Parses one Engine.IO "message" (type 4) carrying a Socket.IO packet for namespace `nsp`:
 * `4<type><nsp>,[<ackId>][<json>]` -> { type, id, data }. Returns null for anything else.
 */
export function parsePacket(frame, nsp) {
  if (frame.length < 2 || frame[0] !== '4') return null;
  const type = frame[1];
  let rest = frame.slice(2);
  if (!rest.startsWith(`${nsp},`)) return null;
  rest = rest.slice(nsp.length + 1);
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

/**
 * Handles the Engine.IO layer of one websocket frame: 0 open (calls `onOpen`), 1 close, 2 ping
 * (answered 3), 4 message. Returns the Socket.IO packet inside a message for `nsp`, else null.
 */
export function readFrame(socket, frame, nsp, onOpen) {
  switch (frame[0]) {
    case '0':
      onOpen();
      return null;
    case '2':
      socket.send('3');
      return null;
    case '1':
      socket.close();
      return null;
    case '4':
      return parsePacket(frame, nsp);
    default:
      return null;
  }
}

/** Socket.IO CONNECT to namespace `nsp` with `{ token }` as the auth payload. */
export function connectFrame(nsp, token) {
  return `40${nsp},${JSON.stringify({ token })}`;
}

/** Socket.IO EVENT `[event, payload]` to namespace `nsp`, asking for an ack when `ackId` is given. */
export function eventFrame(nsp, event, payload, ackId) {
  return `42${nsp},${ackId === undefined ? '' : ackId}${JSON.stringify([event, payload])}`;
}

/** Socket.IO ACK for the hub's event `ackId`: how an app acknowledges a push (`43<nsp>,<id>[<payload>]`). */
export function ackFrame(nsp, ackId, payload) {
  return `43${nsp},${ackId}${JSON.stringify([payload])}`;
}

/** A CONNECT_ERROR packet (`44<nsp>,{"message":...}`): fails a check, logs the first one, closes. */
export function connectError(socket, packet) {
  check(packet.data, { 'no connect_error': () => false });
  if (exec.vu.iterationInScenario === 0) console.warn(`VU ${exec.vu.idInTest}: connect_error ${JSON.stringify(packet.data)}`);
  socket.close();
}
