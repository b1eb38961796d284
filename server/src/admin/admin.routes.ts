import { Hono } from 'hono';
import { createDriverBody, dispatcherActionBody, listDeliveriesQuery, mintTokenBody, updateDriverBody } from '#shared/schemas.js';
import type { DeliveriesService } from '../deliveries/deliveries.service.js';
import { HubError, validationError } from '../platform/errors.js';
import { jsonBody, optionalJsonBody } from '../platform/http-input.js';
import { type RoleGateDeps, requireRole } from '../platform/require-role.js';
import { parsePayload } from '../platform/payload.js';
import type { HubEvents } from '../platform/hub-events.js';
import type { DriversStore } from '../drivers/drivers.store.js';
import type { TokenVersionsStore } from './token-versions.store.js';
import { z } from 'zod';

export interface AdminDeps extends RoleGateDeps {
  /** Seller fleets: a driver may be created in one or moved to one (it must exist). */
  fleets?: { exists(fleet: string): Promise<boolean>; changed(): Promise<void> };
  events: HubEvents;
  tokenVersions: TokenVersionsStore;
  drivers: DriversStore;
  deliveries: DeliveriesService;
}

/** Path ids (`:id`); also the source of their OpenAPI description. */
export const uuidParam = z.string().uuid();

/** The admin API, mounted at /admin; each route says which roles may call it. */
export function createAdminRoutes(deps: AdminDeps) {
  const app = new Hono();
  const adminOnly = requireRole(deps, ['admin']);
  const readers = requireRole(deps, ['admin', 'dispatcher']);

  async function knownFleet(fleet: string | null | undefined): Promise<void> {
    if (fleet === null || fleet === undefined) return;
    if (!deps.fleets || !(await deps.fleets.exists(fleet))) throw new HubError('NOT_FOUND', `no fleet ${fleet}: create it with PUT /admin/fleets/${fleet}`);
  }

  app.post('/drivers', adminOnly, async (c) => {
    const body = parsePayload(createDriverBody, await jsonBody(c.req), 'driver');
    await knownFleet(body.fleet);
    const { tokenVersion, ...driver } = await deps.drivers.create(body);
    if (driver.fleet) await deps.fleets?.changed();
    const token = await deps.tokens.issue('driver', driver.id, { version: tokenVersion });
    return c.json({ ...driver, token }, 201);
  });

  app.patch('/drivers/:id', adminOnly, async (c) => {
    const id = c.req.param('id');
    const { fleet } = parsePayload(updateDriverBody, await jsonBody(c.req), 'driver update');
    if (!uuidParam.safeParse(id).success) throw new HubError('NOT_FOUND', 'no driver with this id');
    await knownFleet(fleet);
    const driver = await deps.drivers.setFleet(id, fleet);
    if (!driver) throw new HubError('NOT_FOUND', 'no driver with this id');
    await deps.fleets?.changed();
    return c.json(driver);
  });

  app.post('/tokens', adminOnly, async (c) => {
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
  app.post('/dispatchers/:subject/revoke-tokens', adminOnly, async (c) => {
    const subject = c.req.param('subject');
    if (!mintTokenBody.shape.subject.safeParse(subject).success) throw new HubError('VALIDATION_FAILED', 'subject must be 1 to 200 characters');
    const version = await deps.tokenVersions.revoke('dispatcher', subject);
    deps.events.emit('subject:revoked', { role: 'dispatcher', subject });
    return c.json({ revoked: true, token: await deps.tokens.issue('dispatcher', subject, { version }) });
  });

  // A lost or stolen phone: every token the driver holds stops working, and its sockets close.
  app.post('/drivers/:id/revoke-tokens', adminOnly, async (c) => {
    const id = c.req.param('id');
    const version = uuidParam.safeParse(id).success ? await deps.drivers.revokeTokens(id) : null;
    if (version === null) throw new HubError('NOT_FOUND', 'no driver with this id');
    deps.events.emit('driver:revoked', { driverId: id });
    return c.json({ revoked: true, token: await deps.tokens.issue('driver', id, { version }) });
  });

  app.get('/drivers', readers, async (c) => c.json({ drivers: await deps.drivers.list() }));

  app.get('/deliveries', readers, async (c) => {
    const parsed = listDeliveriesQuery.safeParse(c.req.query());
    if (!parsed.success) throw validationError(parsed.error.issues, 'query');
    return c.json({ deliveries: await deps.deliveries.list(parsed.data) });
  });

  app.get('/deliveries/:id', readers, async (c) => {
    const id = c.req.param('id');
    if (!uuidParam.safeParse(id).success) throw new HubError('NOT_FOUND', 'delivery not found');
    return c.json(await deps.deliveries.get(id));
  });

  // A dispatcher acts on a stuck delivery; the audit row names who (`dispatcher:<subject>`, `admin`).
  app.post('/deliveries/:id/cancel', readers, async (c) => {
    const id = c.req.param('id');
    const { reason } = parsePayload(dispatcherActionBody, await optionalJsonBody(c.req), 'cancellation');
    if (!uuidParam.safeParse(id).success) throw new HubError('NOT_FOUND', 'delivery not found');
    return c.json(await deps.deliveries.cancelById(id, c.get('actor'), reason));
  });

  app.post('/deliveries/:id/redispatch', readers, async (c) => {
    const id = c.req.param('id');
    const { reason } = parsePayload(dispatcherActionBody, await optionalJsonBody(c.req), 'redispatch');
    if (!uuidParam.safeParse(id).success) throw new HubError('NOT_FOUND', 'delivery not found');
    return c.json(await deps.deliveries.redispatch(id, c.get('actor'), reason));
  });

  return app;
}
