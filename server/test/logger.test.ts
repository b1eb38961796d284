import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { createLogger, redactSecrets } from '../src/platform/logger.js';

function capture() {
  const lines: Record<string, unknown>[] = [];
  const stream = new Writable({
    write(chunk, _encoding, done) {
      lines.push(JSON.parse(String(chunk)) as Record<string, unknown>);
      done();
    },
  });
  return { stream, lines };
}

describe('log redaction', () => {
  it('when a secret key sits at the top or nested up to four levels, then its value is censored and the rest kept', () => {
    const logged = {
      token: 'jwt-top',
      driver: 'd-1',
      handshake: { auth: { token: 'jwt-auth' }, query: { token: 'jwt-query' } },
      req: { headers: { authorization: 'Bearer admin', 'webhook-signature': 'v1,sig', accept: 'application/json' } },
      config: { JWT_SECRET: 'j', ADMIN_TOKEN: 'a', WEBHOOK_SECRETS: ['w'], VENDURE_WEBHOOK_SECRET: 'v', PORT: 3000 },
      batch: [{ secret: 's' }, { id: 'kept' }],
      deep: { a: { b: { token: 'level-four' } } },
    };
    expect(redactSecrets(logged)).toEqual({
      token: '[redacted]',
      driver: 'd-1',
      handshake: { auth: { token: '[redacted]' }, query: { token: '[redacted]' } },
      req: { headers: { authorization: '[redacted]', 'webhook-signature': '[redacted]', accept: 'application/json' } },
      config: { JWT_SECRET: '[redacted]', ADMIN_TOKEN: '[redacted]', WEBHOOK_SECRETS: '[redacted]', VENDURE_WEBHOOK_SECRET: '[redacted]', PORT: 3000 },
      batch: [{ secret: '[redacted]' }, { id: 'kept' }],
      deep: { a: { b: { token: '[redacted]' } } },
    });
  });

  it('when an object is censored, then the caller’s own object is unchanged; when it holds no secret, then it is passed on as it is', () => {
    const logged = { handshake: { auth: { token: 'jwt' } }, ids: ['a', 'b'] };
    const censored = redactSecrets(logged);
    expect(logged.handshake.auth.token).toBe('jwt');
    expect(censored.ids).toBe(logged.ids);
    const clean = { delivery: 'x', driver: 'y', nested: { source: 'redis' } };
    expect(redactSecrets(clean)).toBe(clean);
  });

  it('when an error carries a secret, then the line shows the error of its class with the secret censored and the error itself is unchanged', () => {
    class UpstreamFailure extends Error {
      request = { headers: { authorization: 'Bearer upstream' } };
    }
    const err = new UpstreamFailure('upstream refused');
    const { stream, lines } = capture();
    createLogger({ level: 'info', nodeId: 'n1' }, stream).warn({ err }, 'call failed');
    expect(lines[0].err).toMatchObject({ type: 'UpstreamFailure', message: 'upstream refused', request: { headers: { authorization: '[redacted]' } } });
    expect(err.request.headers.authorization).toBe('Bearer upstream');
    expect(JSON.stringify(lines)).not.toContain('Bearer upstream');
  });

  it('when a child logger is bound to a secret, then its lines carry the censored value', () => {
    const { stream, lines } = capture();
    createLogger({ level: 'info', nodeId: 'n1' }, stream).child({ token: 'bound-jwt', component: 'x' }).info('hello');
    expect(lines[0]).toMatchObject({ token: '[redacted]', component: 'x', node: 'n1', msg: 'hello' });
  });
});
