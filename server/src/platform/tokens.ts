import { SignJWT, errors as joseErrors, jwtVerify } from 'jose';
import type { Role } from '../../../shared/src/schemas.js';
import { HubError } from './errors.js';

export interface TokenClaims {
  subject: string;
  role: Role;
  expiresAt: number | null;
  /** Driver tokens carry the driver's token version; bumping it revokes every older token. */
  version: number | null;
}

const TTL_SECONDS: Record<Role, number> = {
  driver: 30 * 24 * 3600,
  dispatcher: 12 * 3600,
  admin: 12 * 3600,
};

/** HS256 tokens for drivers, dispatchers and admins; identity comes only from here. */
export function createTokenService(secret: string) {
  const key = new TextEncoder().encode(secret);
  return {
    async issue(role: Role, subject: string, opts: { ttlSeconds?: number; version?: number } = {}): Promise<string> {
      const ttlSeconds = opts.ttlSeconds ?? TTL_SECONDS[role];
      return new SignJWT(opts.version === undefined ? { role } : { role, ver: opts.version })
        .setProtectedHeader({ alg: 'HS256' })
        .setSubject(subject)
        .setIssuedAt()
        .setExpirationTime(Math.floor(Date.now() / 1000) + ttlSeconds)
        .sign(key);
    },
    async verify(token: unknown): Promise<TokenClaims> {
      if (typeof token !== 'string' || token.length === 0) throw new HubError('TOKEN_MISSING', 'token required');
      if (token.length > 4096) throw new HubError('TOKEN_INVALID', 'token invalid');
      try {
        const { payload } = await jwtVerify(token, key, { algorithms: ['HS256'] });
        const role = payload.role;
        if (typeof payload.sub !== 'string' || (role !== 'driver' && role !== 'dispatcher' && role !== 'admin')) {
          throw new HubError('TOKEN_INVALID', 'token invalid');
        }
        return {
          subject: payload.sub,
          role,
          expiresAt: typeof payload.exp === 'number' ? payload.exp * 1000 : null,
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
