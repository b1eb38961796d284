import { execFile, spawnSync } from 'node:child_process';
import { promisify } from 'node:util';
import { Writable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { verifyWebhook } from '#shared/webhooks.js';
import { parseConfig } from '../src/platform/config.js';
import { createLogger, wantsPrettyLogs } from '../src/platform/logger.js';
import { logStartupNotes, webhookCurlExample } from '../src/platform/startup-notes.js';
import { connectDriver, connectError, connectSocket, createDriver, createTestDatabase, order, postWebhook, type TestDatabase, type TestHub, startTestHub, testConfig } from './support/hub.js';

const generate = () => 'generated-0123456789-generated-0123456789';

function capture(): { logger: ReturnType<typeof createLogger>; lines: () => any[] } {
  const chunks: string[] = [];
  const sink = new Writable({
    write(chunk, _enc, done) {
      chunks.push(chunk.toString());
      done();
    },
  });
  const logger = createLogger({ level: 'info', nodeId: 'test' }, sink);
  return { logger, lines: () => chunks.join('').split('\n').filter(Boolean).map((l) => JSON.parse(l)) };
}

describe('startup: secrets and logs for the first hour', () => {
  it('when WEBHOOK_SECRET is unset outside production, then one is generated in whsec_ form', () => {
    const config = parseConfig({}, generate);
    expect(config.webhookSecretGenerated).toBe(true);
    expect(config.WEBHOOK_SECRETS).toHaveLength(1);
    expect(config.WEBHOOK_SECRETS[0]).toMatch(/^whsec_[A-Za-z0-9+/]+=*$/);
    expect(parseConfig({ NODE_ENV: 'development' }, generate).webhookSecretGenerated).toBe(true);
  });

  it('when WEBHOOK_SECRET is unset in production, then none is generated and the start log says so at error level', () => {
    const config = parseConfig({ NODE_ENV: 'production' }, generate);
    expect(config.webhookSecretGenerated).toBe(false);
    expect(config.WEBHOOK_SECRETS).toEqual([]);
    const { logger, lines } = capture();
    logStartupNotes(config, logger, 'http://localhost:3000');
    const refusal = lines().find((l) => String(l.msg).includes('WEBHOOK_SECRET'));
    expect(refusal).toMatchObject({ level: 50 });
    expect(refusal.msg).toContain('refused');
  });

  it('when WEBHOOK_SECRET is set, then it is used as is and nothing about it is logged', () => {
    const secret = `whsec_${Buffer.from('configured-secret').toString('base64')}`;
    const config = parseConfig({ WEBHOOK_SECRET: secret }, generate);
    expect(config.WEBHOOK_SECRETS).toEqual([secret]);
    expect(config.webhookSecretGenerated).toBe(false);
    const { logger, lines } = capture();
    logStartupNotes(config, logger, 'http://localhost:3000');
    expect(lines().some((l) => String(l.msg).includes('WEBHOOK_SECRET'))).toBe(false);
  });

  it('when the secret was generated, then it is logged once with a signed curl example', () => {
    const config = parseConfig({}, generate);
    const { logger, lines } = capture();
    logStartupNotes(config, logger, 'http://localhost:3000');
    const notes = lines().filter((l) => String(l.msg).includes('WEBHOOK_SECRET'));
    expect(notes).toHaveLength(1);
    expect(notes[0].webhookSecret).toBe(config.WEBHOOK_SECRETS[0]);
    expect(notes[0].msg).toContain('curl -s -X POST http://localhost:3000/events/seller-order-ready');
  });

  it('when logs go to a terminal outside production, then they are pretty; in production or piped, JSON', () => {
    // pino-pretty is a development dependency, installed here.
    expect(wantsPrettyLogs({ production: false, isTTY: true })).toBe(true);
    expect(wantsPrettyLogs({ production: true, isTTY: true })).toBe(false);
    expect(wantsPrettyLogs({ production: false, isTTY: false })).toBe(false);
    expect(wantsPrettyLogs({ production: false, isTTY: undefined })).toBe(false);
  });

  describe('against a hub with a generated secret', () => {
    let db: TestDatabase;
    let hub: TestHub;
    beforeAll(async () => {
      db = await createTestDatabase();
      hub = await startTestHub(testConfig(db, { WEBHOOK_SECRET: '' }));
    });
    afterAll(async () => {
      await hub?.stop();
      await db?.drop();
    });

    it('when the printed curl example is pasted into bash, then the hub accepts the signed order', async () => {
      expect(hub.config.webhookSecretGenerated).toBe(true);
      // Asynchronously: the hub answering curl lives in this very process.
      const run = await promisify(execFile)('bash', ['-c', webhookCurlExample(hub.config.WEBHOOK_SECRETS[0], hub.url)], { encoding: 'utf8', timeout: 20_000 });
      const reply = JSON.parse(run.stdout);
      expect(reply).toMatchObject({ status: 'PENDING', idempotent: false });
      expect(reply.sellerOrderId).toMatch(/^demo-\d+$/);
    });

    it('when the example signs, then the signature is the Standard Webhooks one the shared verifier accepts', () => {
      // The same bytes the snippet signs, checked with the library Vendure's side uses.
      const secret = hub.config.WEBHOOK_SECRETS[0];
      const script = `${webhookCurlExample(secret, hub.url).split('\n').slice(0, 3).join('\n')}\nprintf '%s\\n%s\\n%s\\n%s' "$id" "$ts" "$sig" "$body"`;
      const run = spawnSync('bash', ['-c', script], { encoding: 'utf8' });
      const [id, timestamp, sig, body] = run.stdout.split('\n');
      expect(verifyWebhook([secret], { id, timestamp, signature: `v1,${sig}`, body })).toEqual({ ok: true });
    });
  });
});

describe('an API-only port (HTTP_PORT)', () => {
  let db: TestDatabase;
  let hub: TestHub;

  beforeAll(async () => {
    db = await createTestDatabase();
    hub = await startTestHub(testConfig(db, { HTTP_PORT: '0' }));
  });
  afterAll(async () => {
    await hub?.stop();
    await db?.drop();
  });

  it('when HTTP_PORT is set, then the API answers there as on PORT, signed webhooks included, and a websocket upgrade there is closed', async () => {
    const apiPort = hub.app.apiPort();
    expect(apiPort).toEqual(expect.any(Number));
    expect(apiPort).not.toBe(Number(new URL(hub.url).port));
    const api = { url: `http://127.0.0.1:${apiPort}` };
    const health = await fetch(`${api.url}/health`);
    expect(health.status).toBe(200);
    expect((await health.json()).status).toBe('ok');
    const placed = await postWebhook(api, '/events/seller-order-ready', order({ pickup: { lat: 1.3, lng: 103.8 } }));
    expect(placed.status).toBe(202);
    expect(placed.body).toMatchObject({ status: 'PENDING' });
    const unsigned = await fetch(`${api.url}/events/seller-order-ready`, { method: 'POST', body: '{}', headers: { 'content-type': 'application/json' } });
    expect(unsigned.status).toBe(401);
    // Driver sockets belong on PORT only.
    const { token } = await createDriver(hub, 'Sockets elsewhere');
    const refused = connectSocket(api, '/drivers', { token });
    await expect(connectError(refused)).resolves.toBeDefined();
    refused.close();
    const accepted = await connectDriver(hub, token);
    expect(accepted.socket.connected).toBe(true);
    accepted.close();
  });

  it('when HTTP_PORT is unset, then there is no second listener', () => {
    expect(parseConfig({}, generate).HTTP_PORT).toBeUndefined();
    expect(parseConfig({ HTTP_PORT: '' }, generate).HTTP_PORT).toBeUndefined();
    expect(() => parseConfig({ HTTP_PORT: 'eighty' }, generate)).toThrow(/HTTP_PORT/);
  });
});
