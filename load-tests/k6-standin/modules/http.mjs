const rt = globalThis.__k6;

function path(value, selector) {
  // gjson-style `a.b.0.c`, what the scripts pass to res.json(selector).
  return String(selector)
    .split('.')
    .reduce((v, key) => (v === null || v === undefined ? undefined : v[key]), value);
}

function toRequest(method, url, body, params = {}) {
  return { kind: 'http', method: String(method).toUpperCase(), url, body: body === undefined || body === null ? null : typeof body === 'string' ? body : JSON.stringify(body), headers: params.headers ?? {}, timeoutMs: 60_000 };
}

function toResponse(reply) {
  rt.metric('http_reqs', 'counter', 1);
  rt.metric('http_req_duration', 'trend', reply.durationMs, true);
  // k6's default expected statuses are 200-399; anything else, or no answer, is a failed request.
  rt.metric('http_req_failed', 'rate', reply.status >= 200 && reply.status < 400 ? 0 : 1);
  return {
    status: reply.status,
    body: reply.body,
    headers: reply.headers,
    error: reply.error ?? '',
    timings: { duration: reply.durationMs },
    json(selector) {
      const value = JSON.parse(reply.body);
      return selector === undefined ? value : path(value, selector);
    },
  };
}

export function request(method, url, body, params) {
  return toResponse(rt.request(toRequest(method, url, body, params)));
}
export const get = (url, params) => request('GET', url, null, params);
export const post = (url, body, params) => request('POST', url, body, params);
export const put = (url, body, params) => request('PUT', url, body, params);
export const del = (url, body, params) => request('DELETE', url, body, params);

export function batch(requests) {
  const list = requests.map((r) => (Array.isArray(r) ? toRequest(r[0], r[1], r[2], r[3]) : typeof r === 'string' ? toRequest('GET', r) : toRequest(r.method, r.url, r.body, r.params)));
  return rt.requestMany(list).map(toResponse);
}

export default { request, get, post, put, del, batch };
