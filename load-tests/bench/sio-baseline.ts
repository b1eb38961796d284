/**
 * Baseline 1: a bare Socket.IO server (websocket transport only, the hub's engine options) whose
 * `location` handler does one ioredis GEOADD with auto-pipelining. No auth check, no validation,
 * no presence bookkeeping: the naive "one Redis command per ping" design the hub must beat.
 * Started by the bench with `--import ./instrument.ts`; PORT, REDIS_URL and REDIS_PREFIX come
 * from the environment.
 */
import { createServer } from 'node:http';
import { Redis } from 'ioredis';
import { Server } from 'socket.io';
import { presenceKeys } from '../../server/src/presence/presence.store.js';
import { SOCKET_ENGINE_OPTIONS, SOCKET_LISTEN_BACKLOG } from '../../server/src/realtime/socket-server.js';
import { emitEvent } from './lib.js';

const port = Number(process.env.PORT);
const key = presenceKeys(process.env.REDIS_PREFIX ?? '').geo;
const withRedis = process.env.BASELINE_REDIS !== '0';
const redis = withRedis ? new Redis(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379', { enableAutoPipelining: true, lazyConnect: false }) : null;
/** `__benchReceived` counts GEOADDs Redis has answered: a ping is done when its position is in Redis. */
const counters = globalThis as { __benchReceived?: number; __benchExtra?: () => Record<string, number> };
counters.__benchReceived = 0;
let socketReceived = 0;
let redisFailed = 0;
counters.__benchExtra = () => ({ socketReceived, redisPending: socketReceived - (counters.__benchReceived ?? 0) - redisFailed, redisFailed });
const done = () => {
  counters.__benchReceived = (counters.__benchReceived ?? 0) + 1;
};
const failed = () => {
  redisFailed += 1;
};

/** The driver id from the token's payload, decoded without verification (a bare server). */
function subjectOf(token: unknown): string {
  if (typeof token !== 'string') return 'anonymous';
  try {
    return JSON.parse(Buffer.from(token.split('.')[1] ?? '', 'base64url').toString()).sub ?? 'anonymous';
  } catch {
    return 'anonymous';
  }
}

const http = createServer((_req, res) => {
  res.writeHead(404).end();
});
const io = new Server(http, { ...SOCKET_ENGINE_OPTIONS, transports: [...SOCKET_ENGINE_OPTIONS.transports] });

io.of('/drivers').on('connection', (socket) => {
  const id = subjectOf((socket.handshake.auth as { token?: unknown }).token);
  socket.on('location', (fix: { lat: number; lng: number }, ack?: (reply: unknown) => void) => {
    socketReceived += 1;
    if (redis) redis.geoadd(key, fix.lng, fix.lat, id).then(done, failed);
    else done();
    ack?.({ ok: true, accepted: 1 });
  });
  socket.on('status', (_payload: unknown, ack?: (reply: unknown) => void) => ack?.({ ok: true, status: 'AVAILABLE' }));
});

http.listen({ port, host: '127.0.0.1', backlog: SOCKET_LISTEN_BACKLOG }, () => emitEvent('ready', { port }));
process.once('SIGTERM', () => {
  io.close();
  redis?.disconnect();
  process.exit(0);
});
