import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { type Context, Hono } from 'hono';
import type { TrackingState } from '#shared/schemas.js';
import type { AuthGate } from '../platform/auth-throttle.js';
import { HubError, rateLimitedError, toHubError } from '../platform/errors.js';
import { createLogThrottle } from '../platform/log-throttle.js';
import type { Logger } from '../platform/logger.js';
import type { Metrics } from '../platform/metrics.js';
import type { RateLimits } from '../platform/rate-limits.js';
import { tileOrigins } from '../realtime/map.routes.js';
import { TRACKING_TOKEN } from './tracking-links.js';
import type { TrackingService } from './tracking.service.js';

export interface TrackingRoutesDeps {
  tracking: Pick<TrackingService, 'state'>;
  limits: RateLimits;
  auth: AuthGate;
  logger: Logger;
  metrics: Metrics;
  /** Leaflet URL template (MAP_TILE_URL); the page is complete without tiles. */
  tileUrl: string;
  /** How often an open page asks for the state while the delivery is active. */
  pollMs?: number;
}

const PAGE_DIR = fileURLToPath(new URL('../../public/track/', import.meta.url));

function readAsset(path: string): Buffer {
  if (!existsSync(path)) throw new Error(`tracking page asset missing: ${path}`);
  return readFileSync(path);
}

/** JSON inside `<script type="application/json">`: nothing in it can close the element or open a comment. */
export function scriptSafeJson(value: unknown): string {
  return JSON.stringify(value)
    .replace(/</g, '\\u003c')
    .replace(/>/g, '\\u003e')
    .replace(/&/g, '\\u0026')
    .replace(/\u2028/g, '\\u2028')
    .replace(/\u2029/g, '\\u2029');
}

/** A page with a heading and a sentence, nothing from the request in it. */
function plainPage(title: string, text: string): string {
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><meta name="robots" content="noindex"><title>${title}</title></head>
<body style="font:16px/1.45 system-ui,sans-serif;max-width:560px;margin:0 auto;padding:16px"><h1 style="font-size:20px">${title}</h1><p>${text}</p></body></html>`;
}

const BUSY_PAGE = plainPage('Too many requests', 'Please try again in a minute.');
const UNAVAILABLE_PAGE = plainPage('Temporarily unavailable', 'Please try again in a moment.');

/**
 * The customer's tracking page (`/track/:token`), its state (`/track/:token/state`) and its
 * script and Leaflet (`/track/assets/...`), mounted at /track. A token
 * that is malformed, unknown or expired gets the same plain 404 and counts as a failed guess for
 * the caller's address (the admin bearer's throttle); every read of a valid token takes one point
 * of that token's budget first. Tokens never reach a log line: paths are logged with the token
 * replaced.
 */
export function createTrackingRoutes(deps: TrackingRoutesDeps): Hono {
  const require = createRequire(import.meta.url);
  const leafletDir = dirname(require.resolve('leaflet/dist/leaflet.js'));
  const template = readAsset(join(PAGE_DIR, 'index.html')).toString('utf8');
  const notFoundPage = readAsset(join(PAGE_DIR, 'not-found.html')).toString('utf8');
  if (!template.includes('__TRACKING_DATA__')) throw new Error('tracking page template lost its data placeholder');
  const JS = 'text/javascript; charset=utf-8';
  const assets: Record<string, { body: Buffer; type: string }> = {
    '/assets/app.js': { body: readAsset(join(PAGE_DIR, 'app.js')), type: JS },
    '/assets/leaflet.js': { body: readAsset(join(leafletDir, 'leaflet.js')), type: JS },
    '/assets/leaflet.css': { body: readAsset(join(leafletDir, 'leaflet.css')), type: 'text/css; charset=utf-8' },
  };

  const osm = /openstreetmap\.org/i.test(deps.tileUrl);
  const pageConfig = {
    tileUrl: deps.tileUrl,
    tileAttribution: osm ? '© OpenStreetMap contributors' : '',
    pollMs: deps.pollMs ?? 3000,
  };
  const pageHeaders = {
    'content-security-policy': [
      "default-src 'self'",
      "script-src 'self'",
      "style-src 'self' 'unsafe-inline'",
      `img-src 'self' data: ${tileOrigins(deps.tileUrl)}`,
      "connect-src 'self'",
      "frame-ancestors 'none'",
      "base-uri 'none'",
      "form-action 'none'",
    ].join('; '),
    // The token is in the address: no tile server or link target may see it.
    'referrer-policy': 'no-referrer',
    'cache-control': 'no-store',
    'x-content-type-options': 'nosniff',
    'x-robots-tag': 'noindex',
  };
  const log = deps.logger.child({ component: 'tracking' });
  const limitedLog = createLogThrottle();

  async function lookup(c: Context, token: string): Promise<TrackingState> {
    const address = deps.auth.httpAddress(c);
    await deps.auth.check(address);
    if (!TRACKING_TOKEN.test(token)) {
      await deps.auth.failed('tracking', address);
      throw new HubError('NOT_FOUND', 'no such tracking link');
    }
    const retryAfterMs = await deps.limits.consume('trackingRead', token);
    if (retryAfterMs !== null) {
      deps.metrics.rateLimited.inc({ event: 'tracking' });
      throw rateLimitedError('reads of this tracking link', retryAfterMs);
    }
    const state = await deps.tracking.state(token);
    if (!state) {
      await deps.auth.failed('tracking', address);
      throw new HubError('NOT_FOUND', 'no such tracking link');
    }
    return state;
  }

  /** Logs a refusal once (a flood of rate-limited reads: one line per window) and says how to answer it. */
  function refused(c: Context, err: unknown, path: string): { error: HubError; status: 404 | 429 | 500 | 503 } {
    const error = toHubError(err);
    const retryAfterMs = (error.details as { retryAfterMs?: unknown } | undefined)?.retryAfterMs;
    if (error.code === 'INTERNAL') log.error({ err, path }, 'tracking request failed');
    else if (error.code === 'RATE_LIMITED') {
      const address = deps.auth.httpAddress(c);
      const skipped = limitedLog.take(address, typeof retryAfterMs === 'number' ? retryAfterMs : 1000);
      if (skipped !== null) log.warn({ address, path, refusedSinceLastLine: skipped }, 'tracking request rate limited');
    } else log.info({ code: error.code, path }, 'tracking request refused');
    if (error.code === 'RATE_LIMITED' && typeof retryAfterMs === 'number') c.header('retry-after', String(Math.max(1, Math.ceil(retryAfterMs / 1000))));
    const status = error.code === 'NOT_FOUND' ? 404 : error.code === 'RATE_LIMITED' ? 429 : error.code === 'SERVICE_UNAVAILABLE' ? 503 : 500;
    return { error, status };
  }

  const app = new Hono();

  app.get('/:token', async (c) => {
    const token = c.req.param('token');
    try {
      const state = await lookup(c, token);
      const data = scriptSafeJson({ state, config: { ...pageConfig, serverTime: Date.now() } });
      return c.body(template.replace('__TRACKING_DATA__', () => data), 200, { ...pageHeaders, 'content-type': 'text/html; charset=utf-8' });
    } catch (err) {
      const { status } = refused(c, err, '/track/<token>');
      const headers = { ...pageHeaders, 'content-security-policy': "default-src 'none'; style-src 'unsafe-inline'", 'content-type': 'text/html; charset=utf-8' };
      if (status === 404) return c.body(notFoundPage, 404, headers);
      return c.body(status === 429 ? BUSY_PAGE : UNAVAILABLE_PAGE, status, headers);
    }
  });

  app.get('/:token/state', async (c) => {
    const token = c.req.param('token');
    try {
      return c.json(await lookup(c, token), 200, { 'cache-control': 'no-store', 'x-robots-tag': 'noindex' });
    } catch (err) {
      const { error, status } = refused(c, err, '/track/<token>/state');
      return c.json({ error: error.toBody() }, status, { 'cache-control': 'no-store' });
    }
  });

  for (const [path, asset] of Object.entries(assets)) {
    app.get(path, (c) =>
      c.body(new Uint8Array(asset.body), 200, {
        'content-type': asset.type,
        'x-content-type-options': 'nosniff',
        'cache-control': path.endsWith('/app.js') ? 'no-cache' : 'public, max-age=3600',
      }),
    );
  }
  return app;
}
