// One k6 VU: a worker thread where the script's blocking calls (http, sleep, ws.connect) really
// block. The main thread does the network I/O; this side waits for its answers with Atomics.wait
// and receiveMessageOnPort, so the script runs in the synchronous world k6 gives it.
import { register } from 'node:module';
import { pathToFileURL } from 'node:url';
import { receiveMessageOnPort, workerData } from 'node:worker_threads';

register('./loader.mjs', import.meta.url);

const { script, env, vuId, port, signal: signalBuffer } = workerData;
const signal = new Int32Array(signalBuffer);

let nextId = 1;
const replies = new Map();
const wsQueues = new Map();
const commands = [];
let pendingMetrics = [];
const vu = { idInTest: vuId, iterationInScenario: 0, iterationInTest: 0, scenarioStartTime: Date.now(), scenario: 'default' };

function dispatch(message) {
  if (message.type === 'reply') replies.set(message.id, message);
  else if (message.type === 'ws') {
    if (!wsQueues.has(message.sid)) wsQueues.set(message.sid, []);
    wsQueues.get(message.sid).push(message);
  } else if (message.type === 'command') commands.push(message);
}

/** Blocks until `ready()` or `deadline` (ms since epoch); messages arriving meanwhile are sorted, none lost. */
function waitFor(ready, deadline = Infinity) {
  for (;;) {
    const seen = Atomics.load(signal, 0);
    for (let m = receiveMessageOnPort(port); m; m = receiveMessageOnPort(port)) dispatch(m.message);
    if (ready()) return true;
    const now = Date.now();
    if (now >= deadline) return false;
    Atomics.wait(signal, 0, seen, deadline === Infinity ? 1000 : Math.min(1000, deadline - now));
  }
}

function post(message) {
  port.postMessage(message);
}

function flushMetrics() {
  const batch = pendingMetrics;
  pendingMetrics = [];
  return batch;
}

globalThis.__ENV = env;
globalThis.__VU = vuId;
globalThis.__ITER = 0;
globalThis.__k6 = {
  vu,
  metric(name, type, value, isTime = false) {
    pendingMetrics.push([name, type, Number(value), isTime]);
  },
  sleep(ms) {
    waitFor(() => false, Date.now() + ms);
  },
  /** One request to the main thread, answered in order. */
  request(payload) {
    const id = nextId++;
    post({ ...payload, type: 'request', id });
    waitFor(() => replies.has(id));
    const reply = replies.get(id);
    replies.delete(id);
    return reply;
  },
  requestMany(payloads) {
    const ids = payloads.map((payload) => {
      const id = nextId++;
      post({ ...payload, type: 'request', id });
      return id;
    });
    waitFor(() => ids.every((id) => replies.has(id)));
    return ids.map((id) => {
      const reply = replies.get(id);
      replies.delete(id);
      return reply;
    });
  },
  newSocketId: () => nextId++,
  post,
  waitFor,
  wsQueue(sid) {
    if (!wsQueues.has(sid)) wsQueues.set(sid, []);
    return wsQueues.get(sid);
  },
  dropSocket(sid) {
    wsQueues.delete(sid);
  },
};

const mod = await import(pathToFileURL(script).href);
post({ type: 'ready', options: JSON.parse(JSON.stringify(mod.options ?? {})), hasSetup: typeof mod.setup === 'function', hasTeardown: typeof mod.teardown === 'function' });

for (;;) {
  waitFor(() => commands.length > 0);
  const command = commands.shift();
  if (command.cmd === 'stop') break;
  if (command.cmd === 'setup' || command.cmd === 'teardown') {
    try {
      const data = command.cmd === 'setup' ? mod.setup() : mod.teardown(command.data);
      post({ type: 'done', cmd: command.cmd, data: data === undefined ? null : JSON.parse(JSON.stringify(data)), metrics: flushMetrics() });
    } catch (err) {
      post({ type: 'done', cmd: command.cmd, error: String(err && err.stack ? err.stack : err), metrics: flushMetrics() });
    }
    continue;
  }
  // iterate
  vu.iterationInTest = command.iterationInTest;
  vu.scenarioStartTime = command.scenarioStartTime;
  vu.scenario = command.scenario;
  globalThis.__ITER = vu.iterationInScenario;
  let error;
  try {
    mod.default(command.data);
  } catch (err) {
    error = String(err && err.stack ? err.stack : err);
  }
  vu.iterationInScenario += 1;
  post({ type: 'done', cmd: 'iterate', error, metrics: flushMetrics() });
}
