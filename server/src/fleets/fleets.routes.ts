import { Hono } from 'hono';
import { fleetBody, fleetId } from '#shared/schemas.js';
import { HubError } from '../platform/errors.js';
import { jsonBody } from '../platform/http-input.js';
import { parsePayload } from '../platform/payload.js';
import { type RoleGateDeps, requireRole } from '../platform/require-role.js';
import type { FleetsStore } from './fleets.store.js';

/** `PUT/GET /admin/fleets/:fleet`: a seller's fleet (`:fleet` = the Vendure seller id). */
export function createFleetRoutes(deps: RoleGateDeps & { store: FleetsStore; changed: () => Promise<void> }) {
  const app = new Hono();
  const adminOnly = requireRole(deps, ['admin']);
  const readers = requireRole(deps, ['admin', 'dispatcher']);

  const fleetParam = (raw: string) => {
    const parsed = fleetId.safeParse(raw);
    if (!parsed.success) throw new HubError('VALIDATION_FAILED', 'invalid fleet id', [{ path: 'fleet', message: parsed.error.issues[0]?.message ?? 'invalid' }]);
    return parsed.data;
  };

  app.put('/:fleet', adminOnly, async (c) => {
    const fleet = fleetParam(c.req.param('fleet'));
    const { exclusive } = parsePayload(fleetBody, await jsonBody(c.req), 'fleet');
    const { created } = await deps.store.put(fleet, exclusive);
    await deps.changed();
    const view = await deps.store.get(fleet);
    return c.json(view, created ? 201 : 200);
  });

  app.get('/:fleet', readers, async (c) => {
    const view = await deps.store.get(fleetParam(c.req.param('fleet')));
    if (!view) throw new HubError('NOT_FOUND', 'no such fleet');
    return c.json(view);
  });

  return app;
}
