// k6/ws: ws.connect blocks, running the socket's handlers and timers, until the socket closes.
const rt = globalThis.__k6;

export function connect(url, params, callback) {
  if (typeof params === 'function') {
    callback = params;
    params = {};
  }
  const sid = rt.newSocketId();
  const handlers = new Map();
  const timers = [];
  let closing = false;
  let status = 0;
  let error = '';
  const started = Date.now();
  const socket = {
    on(event, handler) {
      if (!handlers.has(event)) handlers.set(event, []);
      handlers.get(event).push(handler);
    },
    send(data) {
      if (closing) return;
      rt.metric('ws_msgs_sent', 'counter', 1);
      rt.post({ type: 'ws-send', sid, data: String(data) });
    },
    close() {
      if (closing) return;
      closing = true;
      rt.post({ type: 'ws-close', sid });
    },
    ping() {},
    setTimeout(fn, ms) {
      timers.push({ at: Date.now() + Math.max(0, Number(ms) || 0), fn });
    },
    setInterval(fn, ms) {
      const every = Math.max(1, Number(ms) || 1);
      timers.push({ at: Date.now() + every, fn, every });
    },
  };
  const fire = (event, ...args) => {
    for (const handler of handlers.get(event) ?? []) handler(...args);
  };

  rt.post({ type: 'ws-open', sid, url, headers: params?.headers ?? {} });
  callback(socket);
  const queue = rt.wsQueue(sid);
  let done = false;
  while (!done) {
    const next = timers.reduce((min, t) => Math.min(min, t.at), Infinity);
    rt.waitFor(() => queue.length > 0, next);
    while (queue.length > 0 && !done) {
      const event = queue.shift();
      if (event.event === 'open') {
        status = event.status;
        rt.metric('ws_connecting', 'trend', Date.now() - started, true);
        rt.metric('ws_sessions', 'counter', 1);
        fire('open');
      } else if (event.event === 'message') {
        rt.metric('ws_msgs_received', 'counter', 1);
        fire('message', event.data);
      } else if (event.event === 'error') {
        error = event.message;
        if (event.status) status = event.status;
        fire('error', { error: () => event.message });
      } else if (event.event === 'close') {
        done = true;
        fire('close', event.code);
      }
    }
    if (done) break;
    const now = Date.now();
    for (const timer of timers.filter((t) => t.at <= now)) {
      if (timer.every) timer.at += timer.every;
      else timers.splice(timers.indexOf(timer), 1);
      timer.fn();
    }
  }
  rt.dropSocket(sid);
  return { status, url, error };
}

export default { connect };
