import { createHmac, timingSafeEqual } from 'node:crypto';
import { SignJWT } from 'jose';
import type { Role } from '#shared/schemas.js';
import { HubError } from './errors.js';

export interface TokenClaims {
  subject: string;
  role: Role;
  expiresAt: number;
  /** Driver tokens carry the driver's token version; bumping it revokes every older token. */
  version: number | null;
}

/** Every token names the hub as its issuer and its audience; a token made for anything else is refused. */
export const TOKEN_ISSUER = 'dispatch-hub';
export const TOKEN_AUDIENCE = 'dispatch-hub';

const TTL_SECONDS: Record<Role, number> = {
  driver: 30 * 24 * 3600,
  dispatcher: 12 * 3600,
  admin: 12 * 3600,
};

/** HS256 tokens for drivers, dispatchers and admins; identity comes only from here. */
export function createTokenService(secret: string) {
  // Signing key imported once: given raw bytes, jose imports the key again for every token.
  const key = crypto.subtle.importKey('raw', new TextEncoder().encode(secret), { name: 'HMAC', hash: 'SHA-256' }, false, ['sign', 'verify']);
  key.catch(() => {});
  const secretBytes = Buffer.from(secret, 'utf8');
  return {
    async issue(role: Role, subject: string, opts: { ttlSeconds?: number; version?: number } = {}): Promise<string> {
      const ttlSeconds = opts.ttlSeconds ?? TTL_SECONDS[role];
      return new SignJWT(opts.version === undefined ? { role } : { role, ver: opts.version })
        .setProtectedHeader({ alg: 'HS256' })
        .setIssuer(TOKEN_ISSUER)
        .setAudience(TOKEN_AUDIENCE)
        .setSubject(subject)
        .setIssuedAt()
        .setExpirationTime(Math.floor(Date.now() / 1000) + ttlSeconds)
        .sign(await key);
    },
    async verify(token: unknown): Promise<TokenClaims> {
      return verifyHs256(secretBytes, token, Date.now());
    },
  };
}

export type TokenService = ReturnType<typeof createTokenService>;

const BASE64URL = /^[A-Za-z0-9_-]*$/;
const invalid = () => new HubError('TOKEN_INVALID', 'token invalid');

function jsonPart(part: string): Record<string, unknown> {
  try {
    const value: unknown = JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));
    if (value !== null && typeof value === 'object' && !Array.isArray(value)) return value as Record<string, unknown>;
  } catch {
    // not JSON: refused below
  }
  throw invalid();
}

/**
 * Verifies one compact HS256 token synchronously with Node's own HMAC. The hub only ever issues
 * HS256 tokens with this key, so this accepts nothing else: any other `alg`, a `crit` header, or a
 * missing or foreign `iss`, `aud`, `sub`, `exp` is refused. (jose's verification goes through
 * WebCrypto's asynchronous HMAC, which cost ~8 % of a hub's CPU during a reconnect storm.)
 */
export function verifyHs256(secret: Buffer, token: unknown, nowMs: number): TokenClaims {
  if (typeof token !== 'string' || token.length === 0) throw new HubError('TOKEN_MISSING', 'token required');
  if (token.length > 4096) throw invalid();
  const parts = token.split('.');
  if (parts.length !== 3 || !parts.every((part) => part.length > 0 && BASE64URL.test(part))) throw invalid();
  const [headerPart, payloadPart, signaturePart] = parts;
  const header = jsonPart(headerPart);
  if (header.alg !== 'HS256' || header.crit !== undefined || header.b64 !== undefined) throw invalid();
  const expected = createHmac('sha256', secret).update(`${headerPart}.${payloadPart}`).digest();
  const given = Buffer.from(signaturePart, 'base64url');
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) throw invalid();

  const payload = jsonPart(payloadPart);
  const { iss, aud, sub, exp, nbf, role, ver } = payload;
  if (iss !== TOKEN_ISSUER) throw invalid();
  if (!(aud === TOKEN_AUDIENCE || (Array.isArray(aud) && aud.includes(TOKEN_AUDIENCE)))) throw invalid();
  if (typeof sub !== 'string' || sub.length === 0) throw invalid();
  if (role !== 'driver' && role !== 'dispatcher' && role !== 'admin') throw invalid();
  if (ver !== undefined && !Number.isSafeInteger(ver)) throw invalid();
  if (typeof exp !== 'number' || !Number.isFinite(exp)) throw invalid();
  if (nbf !== undefined && (typeof nbf !== 'number' || nbf * 1000 > nowMs)) throw invalid();
  if (exp * 1000 <= nowMs) throw new HubError('TOKEN_EXPIRED', 'token expired');
  return { subject: sub, role, expiresAt: exp * 1000, version: typeof ver === 'number' ? ver : null };
}
