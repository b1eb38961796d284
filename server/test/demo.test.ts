import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { eventually, freePort } from './support/net.js';

/** True when something accepts connections on 127.0.0.1:port. */
function portOpen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection({ host: '127.0.0.1', port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

function exitOf(child: ChildProcess): Promise<number | null> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(child.exitCode);
  return new Promise((resolve) => child.once('exit', (code) => resolve(code)));
}

describe('npm run demo', () => {
  let child: ChildProcess | undefined;
  const dataDir = mkdtempSync(join(tmpdir(), 'hub-demo-test-'));

  afterAll(async () => {
    if (child && child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await exitOf(child);
    }
    rmSync(dataDir, { recursive: true, force: true });
  });

  it(
    'when the demo runs, then it prints an authorised map link, drivers come on duty, an order is assigned, and Ctrl+C stops everything with exit code 0',
    async () => {
      const port = await freePort();
      const env: Record<string, string | undefined> = { ...process.env, PORT: String(port), DATA_DIR: dataDir, DEMO_DRIVERS: '5', DEMO_ORDERS_PER_MINUTE: '60', LOG_LEVEL: 'warn' };
      // The demo must not need them; leave none of the test services' settings behind.
      delete env.DATABASE_URL;
      delete env.REDIS_URL;
      // One process (no npm or tsx wrapper in between), so SIGINT reaches the demo itself.
      child = spawn(process.execPath, ['--import', 'tsx', 'load-tests/demo.ts'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
      let output = '';
      child.stdout!.on('data', (chunk: Buffer) => (output += chunk.toString()));
      child.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString()));

      // Generous: booting the embedded database is slow on a busy machine.
      const link = await eventually(() => /Open the live map: (\S+)/.exec(output)?.[1] ?? '', 'the map link', 90_000, 100).catch((err: Error) => {
        throw new Error(`${err.message}; the demo said:\n${output}`);
      });
      const url = new URL(link);
      expect(url.origin).toBe(`http://127.0.0.1:${port}`);
      expect(url.pathname).toBe('/map');
      const token = new URLSearchParams(url.hash.slice(1)).get('token');
      expect(token).toBeTruthy();

      const page = await fetch(link);
      expect(page.status).toBe(200);
      expect(page.headers.get('content-type')).toContain('text/html');

      // The link's token is a dispatcher's: it reads what the map shows.
      const get = async (path: string) => {
        const res = await fetch(`${url.origin}${path}`, { headers: { authorization: `Bearer ${token}` } });
        expect(res.status).toBe(200);
        return res.json();
      };
      await eventually(
        async () => ((await get('/admin/drivers')) as { drivers: { status: string }[] }).drivers.filter((d) => d.status !== 'OFFLINE').length === 5,
        'five drivers on duty',
        30_000,
        250,
      );
      await eventually(
        async () => ((await get('/admin/deliveries')) as { deliveries: { driverId: string | null }[] }).deliveries.some((d) => d.driverId !== null),
        'a delivery assigned to a driver',
        30_000,
        250,
      );

      const started = Date.now();
      child.kill('SIGINT');
      const code = await Promise.race([exitOf(child), new Promise<'timeout'>((resolve) => setTimeout(() => resolve('timeout'), 20_000))]);
      expect(code, output).toBe(0);
      expect(Date.now() - started).toBeLessThan(20_000);
      expect(await portOpen(port)).toBe(false);
      expect(output).toContain('SIGINT, stopping');
    },
    180_000,
  );
});
