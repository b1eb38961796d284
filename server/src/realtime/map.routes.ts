import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Hono } from 'hono';

export interface MapRoutesOptions {
  /** Leaflet URL template, e.g. `https://tile.openstreetmap.org/{z}/{x}/{y}.png`. */
  tileUrl: string;
  /** Text shown in the map corner (never HTML); defaults to the OpenStreetMap credit when the tiles are theirs. */
  tileAttribution?: string;
  /** Where the credit links to (http or https only). */
  tileAttributionUrl?: string;
  /** A marker whose last ping is older than this is drawn as stale. */
  staleAfterMs?: number;
  /** How often the page re-checks staleness. */
  staleCheckMs?: number;
}

interface Asset {
  body: Buffer;
  type: string;
}

const PAGE_DIR = fileURLToPath(new URL('../../public/map/', import.meta.url));

function readAsset(path: string, type: string): Asset {
  if (!existsSync(path)) throw new Error(`map page asset missing: ${path}`);
  return { body: readFileSync(path), type };
}

/**
 * The origins tiles may come from, for the page's Content-Security-Policy. Leaflet's `{s}`
 * subdomain placeholder becomes a wildcard; an unparsable template falls back to any http(s)
 * origin rather than a page without a map.
 */
export function tileOrigins(tileUrl: string): string {
  const match = /^(https?):\/\/([^/?#]+)/i.exec(tileUrl.replace(/\{s\}/g, '*'));
  if (!match) return 'http: https:';
  const host = match[2].replace(/\{[^}]*\}/g, '*');
  return `${match[1].toLowerCase()}://${host}`;
}

/**
 * The dispatcher live map: a static page and its vendored libraries, all read once at startup
 * so a missing file fails the boot instead of a dispatcher's page load. No CDN: the hub often
 * runs where only it is reachable, and the socket client must match the server's protocol.
 */
export function createMapRoutes(opts: MapRoutesOptions): Hono {
  const require = createRequire(import.meta.url);
  const leafletDir = dirname(require.resolve('leaflet/dist/leaflet.js'));
  // socket.io-client's exports map hides dist/socket.io.min.js; its package.json is exported and marks the root.
  const ioRoot = dirname(require.resolve('socket.io-client/package.json'));

  const JS = 'text/javascript; charset=utf-8';
  const assets: Record<string, Asset> = {
    '/map': readAsset(join(PAGE_DIR, 'index.html'), 'text/html; charset=utf-8'),
    '/map/app.js': readAsset(join(PAGE_DIR, 'app.js'), JS),
    '/map/vendor/leaflet.js': readAsset(join(leafletDir, 'leaflet.js'), JS),
    '/map/vendor/leaflet.css': readAsset(join(leafletDir, 'leaflet.css'), 'text/css; charset=utf-8'),
    '/map/vendor/socket.io.min.js': readAsset(join(ioRoot, 'dist', 'socket.io.min.js'), JS),
  };
  // leaflet.css points at images/ next to itself (layer control, default marker icons).
  const imagesDir = join(leafletDir, 'images');
  if (existsSync(imagesDir)) {
    for (const file of readdirSync(imagesDir)) {
      if (file.endsWith('.png')) assets[`/map/vendor/images/${file}`] = readAsset(join(imagesDir, file), 'image/png');
    }
  }

  const osm = /openstreetmap\.org/i.test(opts.tileUrl);
  const config = {
    tileUrl: opts.tileUrl,
    tileAttribution: opts.tileAttribution ?? (osm ? '© OpenStreetMap contributors' : ''),
    tileAttributionUrl: opts.tileAttributionUrl ?? (osm ? 'https://www.openstreetmap.org/copyright' : ''),
    staleAfterMs: opts.staleAfterMs ?? 30_000,
    staleCheckMs: opts.staleCheckMs ?? 5_000,
  };
  const csp = [
    "default-src 'self'",
    "script-src 'self'",
    // Leaflet positions panes and tiles with inline styles.
    "style-src 'self' 'unsafe-inline'",
    `img-src 'self' data: ${tileOrigins(opts.tileUrl)}`,
    "connect-src 'self'",
    "frame-ancestors 'none'",
    "base-uri 'none'",
    "form-action 'none'",
  ].join('; ');

  const app = new Hono();
  app.get('/map/', (c) => c.redirect('/map', 301));
  app.get('/map/config.json', (c) =>
    // serverTime lets the page judge "last ping 30 s ago" against the hub's clock, not a skewed laptop's.
    c.json({ ...config, serverTime: Date.now() }, 200, { 'cache-control': 'no-store' }),
  );
  for (const [path, asset] of Object.entries(assets)) {
    const isPage = path === '/map';
    app.get(path, (c) => {
      const headers: Record<string, string> = {
        'content-type': asset.type,
        'x-content-type-options': 'nosniff',
        // The page and its script change with a deploy; the vendored libraries only with package.json.
        'cache-control': path.startsWith('/map/vendor/') ? 'public, max-age=3600' : 'no-cache',
      };
      if (isPage) {
        headers['content-security-policy'] = csp;
        headers['referrer-policy'] = 'no-referrer';
      }
      return c.body(new Uint8Array(asset.body), 200, headers);
    });
  }
  return app;
}
