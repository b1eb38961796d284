import { Hono } from 'hono';
import { z } from 'zod';
import { HubError, validationError } from '../platform/errors.js';
import type { OutboxStore } from './outbox.store.js';

/** `GET /admin/outbox/dead` query; also the source of its OpenAPI description. */
export const deadEventsQuery = z.object({
  limit: z.coerce.number().int().min(1).max(1000).default(100),
});

/** Admin view of given-up status events, mounted at /admin/outbox (admin-only like the rest of /admin). */
export function createOutboxRoutes(deps: { store: Pick<OutboxStore, 'listDead' | 'replay'> }): Hono {
  const { store } = deps;
  const routes = new Hono();

  routes.get('/dead', async (c) => {
    const query = deadEventsQuery.safeParse(c.req.query());
    if (!query.success) throw validationError(query.error.issues, 'query');
    const events = await store.listDead(query.data.limit);
    return c.json({
      events: events.map((e) => ({
        id: e.id,
        deliveryId: e.deliveryId,
        type: e.type,
        sequence: e.seq,
        attempts: e.attempts,
        lastError: e.lastError,
        createdAt: e.createdAt.toISOString(),
        deadAt: e.nextAttemptAt.toISOString(),
        payload: e.payload,
      })),
    });
  });

  routes.post('/:id/replay', async (c) => {
    const id = c.req.param('id');
    if (!(await store.replay(id))) throw new HubError('NOT_FOUND', `no dead outbox event ${id}`);
    return c.json({ replayed: true });
  });

  return routes;
}
