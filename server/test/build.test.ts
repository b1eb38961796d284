import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from './support/hub.js';

/** `npm run build`, then the compiled hub started as the image starts it: `node dist/server/src/main.js`. */
describe('production build', () => {
  let db: TestDatabase | undefined;
  let child: ChildProcess | undefined;
  afterAll(async () => {
    if (child && child.exitCode === null) {
      const exited = new Promise((resolve) => child!.once('exit', resolve));
      child.kill('SIGTERM');
      await exited;
    }
    await db?.drop();
  });

  it('when npm run build runs, then the compiled hub starts in production mode and serves its API, pages and files', async () => {
    await promisify(execFile)('npm', ['run', 'build'], { timeout: 240_000 });
    for (const file of ['dist/server/src/main.js', 'dist/server/src/cluster.js', 'dist/server/src/platform/migrate-cli.js', 'dist/shared/src/index.js', 'dist/server/public/map/index.html', 'dist/migrations/meta/_journal.json']) {
      expect(existsSync(file), file).toBe(true);
    }

    db = await createTestDatabase();
    const logs: string[] = [];
    child = spawn(process.execPath, ['dist/server/src/main.js'], {
      env: {
        PATH: process.env.PATH,
        NODE_ENV: 'production',
        PORT: '0',
        HOST: '127.0.0.1',
        DATABASE_URL: db.url,
        DATA_DIR: db.dataDir,
        LOG_LEVEL: 'info',
        // The API thread's entry is a file of its own in dist: it must be there and start.
        ...(db.url ? { HTTP_PORT: '0', API_THREAD: 'true' } : {}),
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const port = await new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`compiled hub did not start:\n${logs.join('')}`)), 60_000);
      child!.stdout!.on('data', (chunk: Buffer) => {
        logs.push(chunk.toString());
        const match = /"port":(\d+).*listening/.exec(logs.join(''));
        if (match) {
          clearTimeout(timer);
          resolve(Number(match[1]));
        }
      });
      child!.stderr!.on('data', (chunk: Buffer) => logs.push(chunk.toString()));
      child!.once('exit', (code) => reject(new Error(`compiled hub exited with ${code}:\n${logs.join('')}`)));
    });
    const url = `http://127.0.0.1:${port}`;
    if (db.url) {
      const apiPort = Number(/"apiPort":(\d+)/.exec(logs.join(''))?.[1]);
      expect(await (await fetch(`http://127.0.0.1:${apiPort}/health`)).json()).toMatchObject({ status: 'ok', postgres: 'up' });
    }

    expect(await (await fetch(`${url}/health`)).json()).toMatchObject({ status: 'ok', postgres: 'up' });
    expect((await (await fetch(`${url}/openapi.json`)).json()).openapi).toBe('3.1.0');
    for (const path of ['/', '/map', '/map/vendor/leaflet.js', '/track/assets/app.js', '/track/assets/leaflet.js', '/docs', '/docs/vendor/swagger-ui-bundle.js', '/docs/guides/deployment.md']) {
      const res = await fetch(`${url}${path}`, { headers: { accept: 'text/html' } });
      expect(res.status, path).toBe(200);
      await res.arrayBuffer();
    }
    // Production: JSON log lines, no generated webhook secret, and the refusal said at start.
    const lines = logs.join('').split('\n').filter(Boolean).map((line) => JSON.parse(line));
    expect(lines.some((l) => l.level === 50 && String(l.msg).includes('WEBHOOK_SECRET not set in production'))).toBe(true);
    expect(lines.some((l) => 'webhookSecret' in l)).toBe(false);
  }, 300_000);
});
