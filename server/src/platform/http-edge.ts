import type { Context, Hono, MiddlewareHandler } from 'hono';
import { HubError } from './errors.js';

const tooLarge = (maxBytes: number) => new HubError('PAYLOAD_TOO_LARGE', `body larger than ${maxBytes} bytes`);

/** The bytes of a body stream, refused as soon as they pass `maxBytes`: nothing past the limit is kept. */
export async function readCapped(body: ReadableStream<Uint8Array>, maxBytes: number): Promise<Uint8Array<ArrayBuffer>> {
  const reader = body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      size += value.byteLength;
      if (size > maxBytes) {
        reader.cancel().catch(() => {});
        throw tooLarge(maxBytes);
      }
      chunks.push(value);
    }
  } catch (err) {
    if (err instanceof HubError) throw err;
    // The client went away or sent a broken chunked encoding: its request, not our failure.
    throw new HubError('VALIDATION_FAILED', 'request body could not be read');
  }
  const bytes = new Uint8Array(size);
  let offset = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return bytes;
}

/**
 * Times every request from the moment the hub reads it to its answer, labelled by the route
 * pattern (not the path, which carries ids). Against what a client measures, the difference is
 * time spent before the hub read the request: the accept queue and a busy event loop.
 */
export function requestTimer(observe: (labels: { route: string; method: string; status: string }, seconds: number) => void): MiddlewareHandler {
  return async (c, next) => {
    const started = performance.now();
    try {
      await next();
    } finally {
      observe({ route: c.req.routePath, method: c.req.method, status: String(c.res.status) }, (performance.now() - started) / 1000);
    }
  };
}

/**
 * Bodies larger than `maxBytes` get 413 before any route reads them. A declared Content-Length is
 * checked as is (Node reads no more than it says); a body without one (chunked, or none at all on
 * OPTIONS or DELETE) is read here with the same cap and handed on as a plain Request.
 *
 * Not hono's bodyLimit: it rebuilds the request with `new Request(c.req.raw, ...)`, which Node 20's
 * own Request refuses for @hono/node-server's request object (were the globals not overridden),
 * so every request without a Content-Length was a 500.
 */
export function bodyLimit(maxBytes: number): MiddlewareHandler {
  return async (c, next) => {
    const raw = c.req.raw;
    const declared = raw.headers.get('content-length');
    const chunked = raw.headers.has('transfer-encoding');
    // From a socket, HTTP/1.1 framing says whether there is a body: neither header, none. Asking
    // the request for its `body` would make @hono/node-server build a full web Request with a
    // stream for every call (the webhook's largest cost after the database); the route's own
    // arrayBuffer() then reads the socket directly.
    const fromSocket = (c.env as { incoming?: unknown } | undefined)?.incoming !== undefined;
    if (fromSocket ? declared === null && !chunked : !raw.body) return next();
    if (declared !== null && !chunked) {
      if (Number(declared) > maxBytes) throw tooLarge(maxBytes);
      return next();
    }
    const body = raw.body;
    if (!body) return next();
    const bytes = await readCapped(body, maxBytes);
    c.req.raw = new Request(raw.url, { method: raw.method, headers: raw.headers, body: bytes.byteLength > 0 ? bytes : null, signal: raw.signal });
    return next();
  };
}

/** A route path (`/admin/drivers/:id`, `/map/*`) as a regular expression over request paths. */
function pathPattern(path: string): RegExp {
  const source = path
    .split('/')
    .map((segment) => {
      if (segment === '*') return '.*';
      if (segment.startsWith(':')) {
        const custom = /^:[^{]+\{(.+)\}$/.exec(segment);
        return custom ? `(?:${custom[1]})` : '[^/]+';
      }
      return segment.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    })
    .join('/');
  return new RegExp(`^${source}/?$`);
}

/**
 * What the app answers for a method it has no route for: `Allow` for OPTIONS (204, before any
 * authentication, as a CORS preflight or a scanner expects), 405 in the error shape for other
 * methods on a known path, 404 for unknown paths. Routes are read from the app on first use,
 * after every feature has mounted its own.
 */
export function createMethodGuard(app: Hono) {
  let table: { method: string; pattern: RegExp }[] | null = null;
  const routes = () =>
    (table ??= app.routes.filter((route) => route.method !== 'ALL').map((route) => ({ method: route.method.toUpperCase(), pattern: pathPattern(route.path) })));

  function allowed(path: string): string[] {
    const methods = new Set<string>();
    for (const route of routes()) if (route.pattern.test(path)) methods.add(route.method);
    if (methods.size === 0) return [];
    if (methods.has('GET')) methods.add('HEAD');
    methods.add('OPTIONS');
    return [...methods].sort();
  }

  return {
    allowed,
    /** Answers OPTIONS for every path; other requests go on. */
    options: (async (c, next) => {
      if (c.req.method !== 'OPTIONS') return next();
      const methods = allowed(c.req.path);
      if (methods.length === 0) throw new HubError('NOT_FOUND', `no route for ${c.req.path}`);
      return c.body(null, 204, { allow: methods.join(', ') });
    }) satisfies MiddlewareHandler,
    /** The not-found answer: 405 with `Allow` when the path exists for other methods. */
    notFound(c: Context): Response {
      const methods = allowed(c.req.path);
      if (methods.length > 0) {
        c.header('allow', methods.join(', '));
        const error = new HubError('METHOD_NOT_ALLOWED', `${c.req.method} is not allowed on ${c.req.path}`);
        return c.json({ error: error.toBody() }, 405);
      }
      return c.json({ error: { code: 'NOT_FOUND', message: `no route for ${c.req.method} ${c.req.path}` } }, 404);
    },
  };
}
