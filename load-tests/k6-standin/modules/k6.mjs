const rt = globalThis.__k6;

export function check(value, sets) {
  let all = true;
  for (const [name, condition] of Object.entries(sets)) {
    let ok;
    try {
      ok = Boolean(typeof condition === 'function' ? condition(value) : condition);
    } catch {
      ok = false;
    }
    rt.metric('checks', 'rate', ok ? 1 : 0);
    rt.metric(`check::${name}`, 'rate', ok ? 1 : 0);
    if (!ok) all = false;
  }
  return all;
}

export function fail(message) {
  throw new Error(message);
}

export function sleep(seconds) {
  rt.sleep(Number(seconds) * 1000);
}

export default { check, fail, sleep };
