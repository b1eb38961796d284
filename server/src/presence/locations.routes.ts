import { Hono } from 'hono';
import { locationPayload } from '#shared/schemas.js';
import { HubError, overloadedError, rateLimitedError } from '../platform/errors.js';
import { bearerToken, jsonBody } from '../platform/http-input.js';
import type { Metrics } from '../platform/metrics.js';
import type { RateLimits } from '../platform/rate-limits.js';
import { parsePayload } from '../platform/payload.js';
import type { TokenService } from '../platform/tokens.js';
import type { DriversStore } from '../drivers/drivers.store.js';
import { type PresenceService, SHED_RETRY_MS } from './presence.service.js';

export interface LocationRoutesDeps {
  tokens: TokenService;
  drivers: Pick<DriversStore, 'tokenVersions'>;
  presence: Pick<PresenceService, 'acceptFixes' | 'shedding'>;
  limits: RateLimits;
  metrics: Metrics;
}

/**
 * Background location for apps whose phone OS will not keep a socket open: the same payload,
 * validation, per-driver budget and atomic GEO step as the socket's `location` event. Mounted at /drivers.
 */
export function createLocationRoutes(deps: LocationRoutesDeps) {
  const app = new Hono();

  app.post('/me/locations', async (c) => {
    const claims = await deps.tokens.verify(bearerToken(c) || undefined);
    if (claims.role !== 'driver') throw new HubError('FORBIDDEN', 'driver token required');
    const driverId = claims.subject;
    // Past capacity, refused as the socket path refuses it (and before any work).
    if (deps.presence.shedding()) {
      deps.metrics.locationsShed.inc();
      throw overloadedError('position', SHED_RETRY_MS);
    }
    // The budget comes before any database work, and is the socket path's own.
    const retryAfterMs = await deps.limits.consume('location', driverId);
    if (retryAfterMs !== null) {
      deps.metrics.rateLimited.inc({ event: 'location-http' });
      throw rateLimitedError('locations', retryAfterMs);
    }
    const current = (await deps.drivers.tokenVersions([driverId])).get(driverId);
    if (current === undefined || (claims.version ?? 0) !== current) throw new HubError('TOKEN_INVALID', current === undefined ? 'no such driver' : 'token revoked');
    const parsed = parsePayload(locationPayload, await jsonBody(c.req), 'location');
    const fixes = Array.isArray(parsed) ? parsed : [parsed];
    deps.presence.acceptFixes(driverId, fixes);
    return c.json({ accepted: fixes.length });
  });

  return app;
}
