import { base64url, SignJWT } from 'jose';
import { describe, expect, it } from 'vitest';
import { ConfigError, parseConfig } from '../src/platform/config.js';
import { HubError } from '../src/platform/errors.js';
import { createTokenService, TOKEN_AUDIENCE, TOKEN_ISSUER } from '../src/platform/tokens.js';

const SECRET = 'unit-test-jwt-secret-0123456789-abcdefghij';
const key = new TextEncoder().encode(SECRET);
const tokens = createTokenService(SECRET);
const inAnHour = () => Math.floor(Date.now() / 1000) + 3600;

/** A token signed with the hub's own key, with exactly the claims given. */
async function signed(claims: Record<string, unknown>, edit: (jwt: SignJWT) => SignJWT = (j) => j): Promise<string> {
  return edit(new SignJWT(claims).setProtectedHeader({ alg: 'HS256' })).sign(key);
}

const full = (j: SignJWT) => j.setIssuer(TOKEN_ISSUER).setAudience(TOKEN_AUDIENCE).setSubject('someone').setIssuedAt().setExpirationTime(inAnHour());

async function refusal(token: string): Promise<string> {
  try {
    await tokens.verify(token);
  } catch (err) {
    return (err as HubError).code;
  }
  return 'accepted';
}

describe('tokens', () => {
  it('when the hub issues a token, then it carries iss, aud, sub, role, iat and exp and verifies', async () => {
    const token = await tokens.issue('dispatcher', 'desk-1', { version: 3 });
    const payload = JSON.parse(new TextDecoder().decode(base64url.decode(token.split('.')[1])));
    expect(payload).toMatchObject({ iss: TOKEN_ISSUER, aud: TOKEN_AUDIENCE, sub: 'desk-1', role: 'dispatcher', ver: 3 });
    expect(payload.exp).toBeGreaterThan(payload.iat);
    expect(await tokens.verify(token)).toMatchObject({ subject: 'desk-1', role: 'dispatcher', version: 3, expiresAt: payload.exp * 1000 });
  });

  it('when a correctly signed token lacks exp, sub, role, iss or aud, or names another issuer or audience, then it is refused as TOKEN_INVALID', async () => {
    const cases: Record<string, string> = {
      'no exp': await signed({ role: 'driver' }, (j) => j.setIssuer(TOKEN_ISSUER).setAudience(TOKEN_AUDIENCE).setSubject('x')),
      'no sub': await signed({ role: 'driver' }, (j) => j.setIssuer(TOKEN_ISSUER).setAudience(TOKEN_AUDIENCE).setExpirationTime(inAnHour())),
      'empty sub': await signed({ role: 'driver' }, (j) => full(j).setSubject('')),
      'no role': await signed({}, full),
      'unknown role': await signed({ role: 'root' }, full),
      'no iss': await signed({ role: 'admin' }, (j) => j.setAudience(TOKEN_AUDIENCE).setSubject('x').setExpirationTime(inAnHour())),
      'no aud': await signed({ role: 'admin' }, (j) => j.setIssuer(TOKEN_ISSUER).setSubject('x').setExpirationTime(inAnHour())),
      'other issuer': await signed({ role: 'admin' }, (j) => full(j).setIssuer('someone-else')),
      'other audience': await signed({ role: 'admin' }, (j) => full(j).setAudience('another-service')),
      'version not an integer': await signed({ role: 'driver', ver: '1' }, full),
    };
    for (const [what, token] of Object.entries(cases)) expect(await refusal(token), what).toBe('TOKEN_INVALID');
    expect(await refusal(await signed({ role: 'driver' }, full))).toBe('accepted');
  });

  it('when a token is unsigned, signed with another key or algorithm, or expired, then it is refused with its code', async () => {
    const header = base64url.encode(JSON.stringify({ alg: 'none', typ: 'JWT' }));
    const body = base64url.encode(JSON.stringify({ role: 'admin', sub: 'x', iss: TOKEN_ISSUER, aud: TOKEN_AUDIENCE, exp: inAnHour() }));
    expect(await refusal(`${header}.${body}.`)).toBe('TOKEN_INVALID');
    const otherKey = await full(new SignJWT({ role: 'admin' }).setProtectedHeader({ alg: 'HS256' })).sign(new TextEncoder().encode('x'.repeat(40)));
    expect(await refusal(otherKey)).toBe('TOKEN_INVALID');
    const hs512 = await full(new SignJWT({ role: 'admin' }).setProtectedHeader({ alg: 'HS512' })).sign(key);
    expect(await refusal(hs512)).toBe('TOKEN_INVALID');
    expect(await refusal(await tokens.issue('driver', 'late', { ttlSeconds: -10 }))).toBe('TOKEN_EXPIRED');
    expect(await refusal('')).toBe('TOKEN_MISSING');
  });
});

describe('token verification, piece by piece', () => {
  it('when a token is tampered with, malformed, not yet valid or carries a critical header, then it is refused; an audience list naming the hub is accepted', async () => {
    const good = await signed({ role: 'driver', ver: 2 }, full);
    const [h, p, sig] = good.split('.');
    const otherPayload = base64url.encode(JSON.stringify({ role: 'admin', sub: 'someone', iss: TOKEN_ISSUER, aud: TOKEN_AUDIENCE, exp: inAnHour() }));
    const cases: Record<string, string> = {
      'payload swapped under the signature': `${h}.${otherPayload}.${sig}`,
      'signature cut short': `${h}.${p}.${sig.slice(0, -2)}`,
      'two parts': `${h}.${p}`,
      'four parts': `${good}.x`,
      'not base64url': `${h}.${p}.${sig}=`,
      'header not JSON': `${base64url.encode('alg')}.${p}.${sig}`,
      'payload an array': await signedRaw(JSON.stringify([1])),
      'not before an hour from now': await signed({ role: 'driver', nbf: inAnHour() }, full),
      'critical header': await signedRawHeader({ alg: 'HS256', crit: ['x'] }),
      'alg in another case': await signedRawHeader({ alg: 'hs256' }),
    };
    for (const [what, token] of Object.entries(cases)) expect(await refusal(token), what).toBe('TOKEN_INVALID');
    expect(await tokens.verify(good)).toMatchObject({ subject: 'someone', role: 'driver', version: 2 });
    expect(await refusal(await signedRawHeader({ alg: 'HS256', typ: 'JWT' }))).toBe('accepted');
    const listed = await signed({ role: 'dispatcher' }, (j) => full(j).setAudience(['another-service', TOKEN_AUDIENCE]));
    expect(await refusal(listed)).toBe('accepted');
  });
});

/** A token with the given payload text, signed with the hub's key outside any library. */
async function signedRaw(payload: string, header: Record<string, unknown> = { alg: 'HS256' }): Promise<string> {
  const { createHmac } = await import('node:crypto');
  const head = `${base64url.encode(JSON.stringify(header))}.${base64url.encode(payload)}`;
  return `${head}.${createHmac('sha256', SECRET).update(head).digest('base64url')}`;
}

function signedRawHeader(header: Record<string, unknown>): Promise<string> {
  return signedRaw(JSON.stringify({ role: 'driver', sub: 'someone', iss: TOKEN_ISSUER, aud: TOKEN_AUDIENCE, exp: inAnHour() }), header);
}

describe('secrets in the configuration', () => {
  const parse = (env: Record<string, string>) => parseConfig(env, () => 'generated-generated-generated-generated');
  const problems = (env: Record<string, string>): string => {
    try {
      parse(env);
      return '';
    } catch (err) {
      return (err as ConfigError).problems.join('\n');
    }
  };

  it('when ADMIN_TOKEN or JWT_SECRET is shorter than 32 characters or a repeated pattern, then the configuration is refused naming it', () => {
    expect(problems({ ADMIN_TOKEN: 'sixteen-chars-ok' })).toContain('ADMIN_TOKEN');
    expect(problems({ ADMIN_TOKEN: 'a'.repeat(64) })).toContain('ADMIN_TOKEN');
    expect(problems({ JWT_SECRET: '0123'.repeat(16) })).toContain('JWT_SECRET');
    expect(problems({ JWT_SECRET: 'short-secret' })).toContain('JWT_SECRET');
    expect(() => parse({ ADMIN_TOKEN: 'x'.repeat(10) })).toThrow(ConfigError);
  });

  it('when both are 32 or more random characters, then they are taken as given', () => {
    const config = parse({ ADMIN_TOKEN: '3f9c2a7be14d08c6a95e2f71b3d4c8e0', JWT_SECRET: 'kq8ZP1m_vX3rT9wYb2LcN5dH7fJ0sAeG' });
    expect(config.ADMIN_TOKEN).toBe('3f9c2a7be14d08c6a95e2f71b3d4c8e0');
    expect(config.adminTokenGenerated).toBe(false);
    expect(config.jwtSecretGenerated).toBe(false);
  });
});
