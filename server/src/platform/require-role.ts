import { timingSafeEqual } from 'node:crypto';
import type { MiddlewareHandler } from 'hono';
import type { Role } from '#shared/schemas.js';
import type { AuthGate } from './auth-throttle.js';
import { HubError } from './errors.js';
import { bearerToken } from './http-input.js';
import type { TokenService } from './tokens.js';

export interface RoleGateDeps {
  adminToken: string;
  auth: AuthGate;
  tokens: TokenService;
  /** The current token version of a dispatcher or admin subject (admin/token-versions.store.ts). */
  tokenVersions: { version(role: 'dispatcher' | 'admin', subject: string): Promise<number> };
}

function sameSecret(a: string, b: string): boolean {
  const left = Buffer.from(a);
  const right = Buffer.from(b);
  return left.length === right.length && timingSafeEqual(left, right);
}

/** What routes behind requireRole may read: who is calling, as the audit trail names it. */
export type ActorEnv = { Variables: { actor: string } };

/**
 * Bearer auth: the admin token, or a JWT whose role is in `roles`. An address that failed too
 * often is refused (429) before its credential is looked at; every failure here counts. Sets
 * `actor`: `admin` for the admin token, `<role>:<subject>` for a JWT.
 */
export function requireRole(deps: RoleGateDeps, roles: readonly Role[]): MiddlewareHandler<ActorEnv> {
  return async (c, next) => {
    const address = deps.auth.httpAddress(c);
    await deps.auth.check(address);
    const token = bearerToken(c);
    const refuse = async (message: string) => {
      await deps.auth.failed('admin', address);
      return new HubError('UNAUTHORIZED', message);
    };
    if (!token) throw await refuse('bearer token required');
    if (sameSecret(token, deps.adminToken)) {
      c.set('actor', 'admin');
      return next();
    }
    let claims;
    try {
      claims = await deps.tokens.verify(token);
    } catch {
      throw await refuse('invalid token');
    }
    if (!roles.includes(claims.role)) throw new HubError('FORBIDDEN', 'role not allowed here');
    // Driver tokens never pass `roles` here; the others carry a version an admin can move on.
    if (claims.role !== 'driver' && (claims.version ?? 0) !== (await deps.tokenVersions.version(claims.role, claims.subject))) {
      throw await refuse('token revoked');
    }
    c.set('actor', `${claims.role}:${claims.subject}`);
    await next();
  };
}
