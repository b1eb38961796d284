import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Hono } from 'hono';
import { accepts } from 'hono/accepts';
import type { HealthBody } from '../app.js';
import { HubError } from '../platform/errors.js';
import { buildAsyncApiDocument, messageKey, NAMESPACES, type SocketEvent } from './asyncapi.js';
import { buildOpenApiDocument } from './openapi.js';
import { type FrontDoorIndex, guideName } from './page-schemas.js';

export interface DocsRoutesDeps {
  health(): Promise<{ body: HealthBody; httpStatus: 200 | 503 }>;
}

const PUBLIC_DIR = fileURLToPath(new URL('../../public/docs/', import.meta.url));

/** The folder holding the hub's package.json: the source tree, or the image's /app (also from dist/). */
function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const candidate = join(dir, 'package.json');
    if (existsSync(candidate) && JSON.parse(readFileSync(candidate, 'utf8')).name === 'dispatch-hub') return dir;
    const parent = dirname(dir);
    if (parent === dir) throw new Error('package.json of dispatch-hub not found above the docs routes');
    dir = parent;
  }
}

function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** The guides in docs/ (absent from an install that did not ship them): file name -> title and text. */
function readGuides(root: string): Map<string, { title: string; text: string }> {
  const dir = join(root, 'docs');
  const guides = new Map<string, { title: string; text: string }>();
  if (!existsSync(dir)) return guides;
  for (const file of readdirSync(dir).sort()) {
    if (!guideName.safeParse(file).success) continue;
    const text = readFileSync(join(dir, file), 'utf8');
    guides.set(file, { title: /^#\s+(.+)$/m.exec(text)?.[1]?.trim() ?? file, text });
  }
  return guides;
}

const PAGE_STYLE = `
  body { margin: 0 auto; max-width: 880px; padding: 24px; font: 15px/1.5 system-ui, sans-serif; color: #222; }
  h1 { margin: 0 0 4px; font-size: 24px; }
  h2 { margin: 28px 0 8px; font-size: 17px; }
  code, pre { font: 13px/1.4 ui-monospace, monospace; background: #f4f4f4; border-radius: 4px; }
  code { padding: 1px 4px; }
  pre { padding: 10px; overflow-x: auto; }
  a { color: #0b5cad; }
  table { border-collapse: collapse; width: 100%; }
  td, th { text-align: left; padding: 6px 8px; border-bottom: 1px solid #e3e3e3; vertical-align: top; }
  .v { font-weight: 600; }
  .ok, .up { color: #1a7f37; } .degraded, .disabled { color: #9a6700; } .down, .unreachable { color: #cf222e; }
  .muted { color: #666; }
`;

/** Pages carry no inline script; their own scripts come from the hub, nothing from elsewhere. */
function securityHeaders(styleInline: boolean): Record<string, string> {
  return {
    'content-security-policy': [
      "default-src 'self'",
      "script-src 'self'",
      `style-src 'self'${styleInline ? " 'unsafe-inline'" : ''}`,
      "img-src 'self' data:",
      "connect-src 'self'",
      "frame-ancestors 'none'",
      "base-uri 'none'",
      "form-action 'none'",
    ].join('; '),
    'x-content-type-options': 'nosniff',
    'referrer-policy': 'no-referrer',
    'cache-control': 'no-cache',
  };
}

/** Escaped text with `code` spans, as the descriptions are written. */
function prose(text: string): string {
  return escapeHtml(text).replace(/`([^`]+)`/g, '<code>$1</code>');
}

function page(title: string, body: string, scripts: string[] = [], head = ''): string {
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${escapeHtml(title)}</title>
<link rel="icon" href="data:,">
<style>${PAGE_STYLE}</style>
${head}
</head>
<body>
${body}
${scripts.map((src) => `<script src="${src}"></script>`).join('\n')}
</body>
</html>
`;
}

function frontDoorPage(index: FrontDoorIndex): string {
  const h = index.health;
  const healthRow = (field: keyof typeof h, label: string) =>
    `<tr><td>${label}</td><td><span id="health-${field}" class="v ${escapeHtml(String(h[field]))}">${escapeHtml(String(h[field]))}</span></td></tr>`;
  const guides = index.links.guides.map((g) => `<li><a href="${escapeHtml(g.href)}">${escapeHtml(g.title)}</a></li>`).join('\n');
  return page(
    'Dispatch hub',
    `<h1>Dispatch hub</h1>
<p class="muted">version ${escapeHtml(index.version)}</p>
<p>${escapeHtml(index.description)}</p>

<h2>Health</h2>
<table>
${healthRow('status', 'status')}
${healthRow('postgres', 'PostgreSQL')}
${healthRow('redis', 'Redis')}
${healthRow('node', 'this node')}
${healthRow('uptimeSeconds', 'uptime (s)')}
</table>

<h2>Use it</h2>
<ul>
<li><a href="${index.links.map}">Live map</a>: open it with a dispatcher token, <code>/map#token=&lt;token&gt;</code>. Mint one with
<code>POST /admin/tokens {"role":"dispatcher","subject":"me"}</code> and the admin token (the start log prints a generated one).</li>
<li>Send a signed test order: in development the start log prints the webhook secret and a ready-to-paste <code>curl</code>.</li>
<li><a href="${index.links.apiReference}">API reference</a> (HTTP, from <a href="${index.links.openapi}">openapi.json</a>)
and <a href="${index.links.socketEvents}">socket events</a> (from <a href="${index.links.asyncapi}">asyncapi.json</a>).</li>
<li><a href="${index.links.health}">/health</a> and <a href="${index.links.metrics}">/metrics</a> (Prometheus).</li>
</ul>

<h2>Guides</h2>
${guides ? `<ul>\n${guides}\n</ul>` : '<p class="muted">The guides (docs/) are not shipped with this build.</p>'}
`,
    ['/docs/front-door.js'],
  );
}

function socketEventsPage(asyncapi: Record<string, any>): string {
  const json = (value: unknown) => `<pre>${escapeHtml(JSON.stringify(value, null, 2))}</pre>`;
  const row = (channelId: string, direction: string, spec: SocketEvent) => {
    const messages = asyncapi.channels[channelId].messages;
    const key = messageKey(spec.event);
    return `<tr id="${channelId}-${key}"><td><code>${escapeHtml(spec.event)}</code><br><span class="muted">${direction}</span></td>
<td>${prose(spec.summary)}<details><summary>payload</summary>${json(messages[key].payload)}</details>${
      spec.ack ? `<details><summary>acknowledgement</summary><p>${prose(spec.ack.description)}</p>${json(messages[`${key}Ack`].payload)}</details>` : ''
    }</td></tr>`;
  };
  const sections = Object.entries(NAMESPACES).map(
    ([channelId, nsp]) => `<h2><code>${escapeHtml(nsp.address)}</code>: ${escapeHtml(nsp.title)}</h2>
<p>${prose(nsp.description)}</p>
<table>
${Object.values(nsp.fromClient).map((spec) => row(channelId, 'client -> hub', spec)).join('\n')}
${Object.values(nsp.fromHub).map((spec) => row(channelId, 'hub -> client', spec)).join('\n')}
</table>`,
  );
  const components = Object.entries(asyncapi.components.schemas as Record<string, unknown>)
    .map(([id, schema]) => `<h3 id="schema-${escapeHtml(id)}">${escapeHtml(id)}</h3>${json(schema)}`)
    .join('\n');
  return page(
    'Dispatch hub · socket events',
    `<h1>Socket events</h1>
<p>${prose(asyncapi.info.description)}</p>
<p>Machine-readable: <a href="/asyncapi.json">/asyncapi.json</a> (AsyncAPI 3.0). HTTP: <a href="/docs">API reference</a>. Back to <a href="/">the hub</a>.</p>
${sections.join('\n')}
<h2>Schemas</h2>
${components}
`,
  );
}

/**
 * The front door (`GET /`), the API documents and the pages that show them. Everything is built
 * once here, from the schemas the hub validates with; the reference UI is Swagger UI from the
 * swagger-ui-dist package, served by the hub itself (no CDN: hubs often run where only they are
 * reachable).
 */
export function createDocsRoutes(deps: DocsRoutesDeps): Hono {
  const root = packageRoot();
  const version = (JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { version: string }).version;
  const openapi = JSON.stringify(buildOpenApiDocument({ version }));
  const asyncapiDoc = buildAsyncApiDocument({ version });
  const asyncapi = JSON.stringify(asyncapiDoc);
  const socketsPage = socketEventsPage(asyncapiDoc);
  const guides = readGuides(root);

  const swaggerDir = dirname(createRequire(import.meta.url).resolve('swagger-ui-dist/package.json'));
  const JS = 'text/javascript; charset=utf-8';
  const files: Record<string, { body: Buffer; type: string; immutable: boolean }> = {
    '/docs/vendor/swagger-ui-bundle.js': { body: readFileSync(join(swaggerDir, 'swagger-ui-bundle.js')), type: JS, immutable: true },
    '/docs/vendor/swagger-ui.css': { body: readFileSync(join(swaggerDir, 'swagger-ui.css')), type: 'text/css; charset=utf-8', immutable: true },
    '/docs/api-reference.js': { body: readFileSync(join(PUBLIC_DIR, 'api-reference.js')), type: JS, immutable: false },
    '/docs/front-door.js': { body: readFileSync(join(PUBLIC_DIR, 'front-door.js')), type: JS, immutable: false },
  };

  const apiReferencePage = page(
    'Dispatch hub · API reference',
    `<p style="margin:0 0 8px"><a href="/">Dispatch hub</a> · <a href="/docs/sockets">socket events</a> · <a href="/openapi.json">openapi.json</a></p>
<div id="api-reference"></div>`,
    ['/docs/vendor/swagger-ui-bundle.js', '/docs/api-reference.js'],
    '<link rel="stylesheet" href="/docs/vendor/swagger-ui.css">',
  ).replace('max-width: 880px', 'max-width: 1200px');

  const app = new Hono();

  app.get('/', async (c) => {
    const { body: health } = await deps.health();
    const index: FrontDoorIndex = {
      name: 'dispatch-hub',
      description:
        'A realtime dispatch hub for delivery driver apps, for shops built on Vendure: driver apps stream their positions over Socket.IO, Vendure signals orders ready by webhook, the hub assigns the nearest available driver, pushes the job to the app, records every step and streams the live picture to dispatcher maps.',
      version,
      health,
      links: {
        map: '/map',
        apiReference: '/docs',
        socketEvents: '/docs/sockets',
        openapi: '/openapi.json',
        asyncapi: '/asyncapi.json',
        health: '/health',
        metrics: '/metrics',
        guides: [...guides].map(([file, guide]) => ({ title: guide.title, href: `/docs/guides/${file}` })),
      },
    };
    c.header('vary', 'Accept');
    // Browsers ask for text/html first; curl's */* and API clients get the JSON index.
    if (accepts(c, { header: 'Accept', supports: ['text/html', 'application/json'], default: 'application/json' }) === 'text/html') {
      return c.html(frontDoorPage(index), 200, securityHeaders(false));
    }
    return c.json(index);
  });

  app.get('/openapi.json', (c) => c.body(openapi, 200, { 'content-type': 'application/json; charset=utf-8', 'access-control-allow-origin': '*' }));
  app.get('/asyncapi.json', (c) => c.body(asyncapi, 200, { 'content-type': 'application/json; charset=utf-8', 'access-control-allow-origin': '*' }));
  // Swagger UI sets styles inline.
  app.get('/docs', (c) => c.html(apiReferencePage, 200, securityHeaders(true)));
  app.get('/docs/sockets', (c) => c.html(socketsPage, 200, securityHeaders(false)));
  app.get('/docs/guides/:name', (c) => {
    const guide = guides.get(c.req.param('name'));
    if (!guide) throw new HubError('NOT_FOUND', 'no such guide');
    return c.body(guide.text, 200, { 'content-type': 'text/markdown; charset=utf-8', 'x-content-type-options': 'nosniff' });
  });
  for (const [path, file] of Object.entries(files)) {
    app.get(path, (c) =>
      c.body(new Uint8Array(file.body), 200, {
        'content-type': file.type,
        'x-content-type-options': 'nosniff',
        'cache-control': file.immutable ? 'public, max-age=3600' : 'no-cache',
      }),
    );
  }
  return app;
}
