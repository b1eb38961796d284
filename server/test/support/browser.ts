import { existsSync, mkdirSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { deflateSync } from 'node:zlib';
import { type Browser, chromium, type Page } from 'playwright-core';

/** Debian's chromium, driven by playwright-core; browser tests skip when it is absent. */
export const CHROMIUM = '/usr/bin/chromium';
export const hasChromium = existsSync(CHROMIUM);

/** Nothing listens on port 9 (discard): every tile request fails, which the pages must shrug off. */
export const DEAD_TILES = 'http://127.0.0.1:9/{z}/{x}/{y}.png';

/** Where test runs leave screenshots for a reviewer (git-ignored). */
export const SCREENSHOT_DIR = fileURLToPath(new URL('../../../test-results/screenshots/', import.meta.url));

export function launchChromium(): Promise<Browser> {
  return chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}

export async function screenshot(page: Page, name: string): Promise<string> {
  mkdirSync(SCREENSHOT_DIR, { recursive: true });
  const path = join(SCREENSHOT_DIR, `${name}.png`);
  await page.screenshot({ path });
  return path;
}

/**
 * Records the id of every element ever added to the page (before any script runs), so markup that
 * a page parsed from hostile text is caught even if it was removed again.
 */
export async function recordAddedIds(page: Page): Promise<void> {
  await page.addInitScript(() => {
    (window as any).addedIds = [];
    new MutationObserver((records) => {
      for (const r of records)
        for (const node of Array.from(r.addedNodes)) {
          if (!(node instanceof Element)) continue;
          for (const el of [node, ...Array.from(node.querySelectorAll('[id]'))]) if (el.id) (window as any).addedIds.push(el.id);
        }
    }).observe(document, { childList: true, subtree: true });
  });
}

// ---- a tile server of our own: the hub has no internet in tests ----

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function crc32(bytes: Buffer): number {
  let c = 0xffffffff;
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function chunk(type: string, data: Buffer): Buffer {
  const length = Buffer.alloc(4);
  length.writeUInt32BE(data.length);
  const body = Buffer.concat([Buffer.from(type, 'ascii'), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(body));
  return Buffer.concat([length, body, crc]);
}

/** A 256 px RGB tile: a pale ground with a street every 64 px, so a screenshot reads as a map. */
export function gridTilePng(): Buffer {
  const size = 256;
  const rows: Buffer[] = [];
  for (let y = 0; y < size; y++) {
    const row = Buffer.alloc(1 + size * 3);
    for (let x = 0; x < size; x++) {
      const street = x % 64 < 3 || y % 64 < 3;
      const [r, g, b] = street ? [255, 255, 255] : [236, 232, 222];
      row.set([r, g, b], 1 + x * 3);
    }
    rows.push(row);
  }
  const header = Buffer.alloc(13);
  header.writeUInt32BE(size, 0);
  header.writeUInt32BE(size, 4);
  header.set([8, 2, 0, 0, 0], 8);
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', header),
    chunk('IDAT', deflateSync(Buffer.concat(rows))),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}

/** Serves the same tile for every `/{z}/{x}/{y}.png`; answers `tileUrl` and counts requests. */
export async function startTileServer(): Promise<{ tileUrl: string; requests: () => number; close(): Promise<void> }> {
  const tile = gridTilePng();
  let requests = 0;
  const server: Server = createServer((_req, res) => {
    requests += 1;
    res.writeHead(200, { 'content-type': 'image/png', 'cache-control': 'max-age=3600' }).end(tile);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as { port: number }).port;
  return {
    tileUrl: `http://127.0.0.1:${port}/{z}/{x}/{y}.png`,
    requests: () => requests,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
