import { SignJWT, errors as joseErrors, jwtVerify } from 'jose';
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
  // Imported once: given raw bytes, jose imports the key again for every token, which more than
  // doubled the CPU of a verification (a reconnect storm verifies thousands a second).
  const key = crypto.subtle.importKey('raw', new TextEncoder().encode(secret), { name: 'HMAC', hash: 'SHA-256' }, false, ['sign', 'verify']);
  key.catch(() => {});
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
      if (typeof token !== 'string' || token.length === 0) throw new HubError('TOKEN_MISSING', 'token required');
      if (token.length > 4096) throw new HubError('TOKEN_INVALID', 'token invalid');
      try {
        // A token without `exp` would never expire; without `sub` it names nobody.
        const { payload } = await jwtVerify(token, await key, {
          algorithms: ['HS256'],
          issuer: TOKEN_ISSUER,
          audience: TOKEN_AUDIENCE,
          requiredClaims: ['exp', 'sub'],
        });
        const role = payload.role;
        if (typeof payload.sub !== 'string' || payload.sub.length === 0 || (role !== 'driver' && role !== 'dispatcher' && role !== 'admin')) {
          throw new HubError('TOKEN_INVALID', 'token invalid');
        }
        if (payload.ver !== undefined && !Number.isSafeInteger(payload.ver)) throw new HubError('TOKEN_INVALID', 'token invalid');
        return {
          subject: payload.sub,
          role,
          expiresAt: (payload.exp as number) * 1000,
          version: typeof payload.ver === 'number' ? payload.ver : null,
        };
      } catch (err) {
        if (err instanceof HubError) throw err;
        if (err instanceof joseErrors.JWTExpired) throw new HubError('TOKEN_EXPIRED', 'token expired');
        throw new HubError('TOKEN_INVALID', 'token invalid');
      }
    },
  };
}

export type TokenService = ReturnType<typeof createTokenService>;
