import { timingSafeEqual } from 'node:crypto';
import { Hono, type MiddlewareHandler } from 'hono';
import { createDriverBody, listDeliveriesQuery, mintTokenBody } from '#shared/schemas.js';
import type { Role } from '#shared/schemas.js';
import type { DeliveriesService } from '../deliveries/deliveries.service.js';
import type { AuthGate } from '../platform/auth-throttle.js';
import { HubError, validationError } from '../platform/errors.js';
import { bearerToken, jsonBody } from '../platform/http-input.js';
import { parsePayload } from '../platform/socket-edge.js';
import type { HubEvents } from '../platform/hub-events.js';
import type { TokenService } from '../platform/tokens.js';
import type { DriversStore } from '../presence/drivers.store.js';
import type { TokenVersionsStore } from './token-versions.store.js';
import { z } from 'zod';

export interface AdminDeps {
  events: HubEvents;
  adminToken: string;
  auth: AuthGate;
  tokens: TokenService;
  tokenVersions: TokenVersionsStore;
  drivers: DriversStore;
  deliveries: DeliveriesService;
}

function sameSecret(a: string, b: string): boolean {
  const left = Buffer.from(a);
  const right = Buffer.from(b);
  return left.length === right.length && timingSafeEqual(left, right);
}

/**
 * Bearer auth: the admin token, or a JWT whose role is in `roles`. An address that failed too
 * often is refused (429) before its credential is looked at; every failure here counts.
 */
export function requireRole(deps: Pick<AdminDeps, 'adminToken' | 'tokens' | 'tokenVersions' | 'auth'>, roles: readonly Role[]): MiddlewareHandler {
  return async (c, next) => {
    const address = deps.auth.httpAddress(c);
    await deps.auth.check(address);
    const token = bearerToken(c);
    const refuse = async (message: string) => {
      await deps.auth.failed('admin', address);
      return new HubError('UNAUTHORIZED', message);
    };
    if (!token) throw await refuse('bearer token required');
    if (sameSecret(token, deps.adminToken)) return next();
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
    await next();
  };
}

/** Path ids (`:id`); also the source of their OpenAPI description. */
export const uuidParam = z.string().uuid();

export function createAdminRoutes(deps: AdminDeps) {
  const app = new Hono();
  const adminOnly = requireRole(deps, ['admin']);
  const readers = requireRole(deps, ['admin', 'dispatcher']);

  app.post('/admin/drivers', adminOnly, async (c) => {
    const { tokenVersion, ...driver } = await deps.drivers.create(parsePayload(createDriverBody, await jsonBody(c.req), 'driver'));
    const token = await deps.tokens.issue('driver', driver.id, { version: tokenVersion });
    return c.json({ ...driver, token }, 201);
  });

  app.post('/admin/tokens', adminOnly, async (c) => {
    const request = parsePayload(mintTokenBody, await jsonBody(c.req), 'token request');
    if (request.role === 'driver') {
      const version = (await deps.drivers.tokenVersions([request.subject])).get(request.subject);
      if (version === undefined) throw new HubError('NOT_FOUND', 'no driver with this id');
      return c.json({ token: await deps.tokens.issue('driver', request.subject, { version }) });
    }
    const version = await deps.tokenVersions.version(request.role, request.subject);
    return c.json({ token: await deps.tokens.issue(request.role, request.subject, { version }) });
  });

  // A dispatcher's token leaked or its holder left: every token of that subject stops working,
  // over HTTP and on sockets, and its open maps close on every node.
  app.post('/admin/dispatchers/:subject/revoke-tokens', adminOnly, async (c) => {
    const subject = c.req.param('subject');
    if (!mintTokenBody.shape.subject.safeParse(subject).success) throw new HubError('VALIDATION_FAILED', 'subject must be 1 to 200 characters');
    const version = await deps.tokenVersions.revoke('dispatcher', subject);
    deps.events.emit('subject:revoked', { role: 'dispatcher', subject });
    return c.json({ revoked: true, token: await deps.tokens.issue('dispatcher', subject, { version }) });
  });

  // A lost or stolen phone: every token the driver holds stops working, and its sockets close.
  app.post('/admin/drivers/:id/revoke-tokens', adminOnly, async (c) => {
    const id = c.req.param('id');
    const version = uuidParam.safeParse(id).success ? await deps.drivers.revokeTokens(id) : null;
    if (version === null) throw new HubError('NOT_FOUND', 'no driver with this id');
    deps.events.emit('driver:revoked', { driverId: id });
    return c.json({ revoked: true, token: await deps.tokens.issue('driver', id, { version }) });
  });

  app.get('/admin/drivers', readers, async (c) => c.json({ drivers: await deps.drivers.list() }));

  app.get('/admin/deliveries', readers, async (c) => {
    const parsed = listDeliveriesQuery.safeParse(c.req.query());
    if (!parsed.success) throw validationError(parsed.error.issues, 'query');
    return c.json({ deliveries: await deps.deliveries.list(parsed.data) });
  });

  app.get('/admin/deliveries/:id', readers, async (c) => {
    const id = c.req.param('id');
    if (!uuidParam.safeParse(id).success) throw new HubError('NOT_FOUND', 'delivery not found');
    return c.json(await deps.deliveries.get(id));
  });

  return app;
}
