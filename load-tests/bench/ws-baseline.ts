/**
 * Baseline 2: a raw `ws` server that parses each message as JSON and counts it: the ceiling for
 * "a websocket message in, a little JavaScript" on this machine. PORT comes from the environment.
 */
import { WebSocketServer } from 'ws';
import { emitEvent } from './lib.js';

const port = Number(process.env.PORT);
const counters = globalThis as { __benchReceived?: number };
counters.__benchReceived = 0;
let lastLat = 0;

const wss = new WebSocketServer({ port, host: '127.0.0.1', perMessageDeflate: false, maxPayload: 32 * 1024 });
wss.on('connection', (ws) => {
  ws.on('message', (data) => {
    const fix = JSON.parse(data.toString()) as { lat: number; lng: number };
    lastLat = fix.lat;
    counters.__benchReceived = (counters.__benchReceived ?? 0) + 1;
  });
});
wss.on('listening', () => emitEvent('ready', { port }));
process.once('SIGTERM', () => {
  wss.close();
  if (lastLat === Number.POSITIVE_INFINITY) console.log(lastLat);
  process.exit(0);
});
