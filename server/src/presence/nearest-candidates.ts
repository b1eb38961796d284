import type { DriversStore } from '../drivers/drivers.store.js';
import type { Logger } from '../platform/logger.js';
import type { NearbyDriver, PresenceStore } from './presence.store.js';

/** Search radii in metres, small first: GEOSEARCH cost grows with the drivers inside the circle. */
export function searchRadii(maxRadiusKm: number): number[] {
  const max = maxRadiusKm * 1000;
  const steps = [1000, 3000, 8000, 20_000, 50_000, 150_000].filter((r) => r < max);
  return [...steps, max];
}

/** Free drivers near a point, nearest first, and which store proposed them. */
export interface NearestCandidates {
  source: 'redis' | 'postgres';
  candidates: NearbyDriver[];
}

/** Which pool a search is for: a seller's fleet, or (null) the shared pool. Absent: any driver. */
export interface CandidatePool {
  fleet: string | null;
}

/** Who belongs to which fleet, as this node last read it (PostgreSQL's claim judges it again). */
export interface FleetMembership {
  fleetOf(driverId: string): string | null;
  /** Drivers that belong to a fleet: a shared-pool search in Redis looks past this many more. */
  readonly fleetDrivers: number;
}

/** A fleet search in Redis reads this many of the nearest per radius and keeps the fleet's own. */
const FLEET_SEARCH_WIDTH = 200;

export interface CandidateSearchDeps {
  store: Pick<PresenceStore, 'available' | 'nearest'>;
  drivers: Pick<DriversStore, 'nearestAvailable'>;
  /** Absent: nobody belongs to a fleet. */
  fleets?: FleetMembership;
  logger: Logger;
  /**
   * fairnessBandMeters: a radius that found someone is widened, once, to cover the nearest plus
   * the band, so everyone who competes on idle time is a candidate.
   */
  config: { maxRadiusKm: number; heartbeatTtlSeconds: number; fairnessBandMeters?: number };
}

/**
 * The one owner of "who is free near here": Redis GEO when it answers, searched small radius
 * first; PostgreSQL's last known positions (alive within the heartbeat TTL) when Redis is away,
 * disabled or fails. Only proposals: the claim in PostgreSQL decides.
 */
export type CandidateSearch = (point: { lat: number; lng: number }, count: number, passOver?: ReadonlySet<string>, pool?: CandidatePool) => Promise<NearestCandidates>;

/**
 * `passOver` (the drivers a delivery was taken from) are left out before a radius counts as
 * having found someone, so the search goes on outwards past them.
 */
export function createCandidateSearch(deps: CandidateSearchDeps): CandidateSearch {
  const { store, drivers, config } = deps;
  const radii = searchRadii(config.maxRadiusKm);
  return async function nearestCandidates(point, count, passOver = new Set(), pool) {
    const fleets = deps.fleets;
    // Drivers of the pool only; the shared pool's search looks past every fleet driver, a fleet's
    // past the nearest FLEET_SEARCH_WIDTH (drivers:geo holds every free driver, of any pool).
    const inPool = pool === undefined || !fleets ? null : (c: NearbyDriver) => fleets.fleetOf(c.driverId) === pool.fleet;
    const padding = !inPool ? 0 : pool!.fleet === null ? fleets!.fleetDrivers : FLEET_SEARCH_WIDTH;
    const wanted = count + passOver.size;
    const keep = (found: NearbyDriver[]) => {
      if (passOver.size === 0 && !inPool) return found;
      return found.filter((c) => !passOver.has(c.driverId) && (!inPool || inPool(c))).slice(0, count);
    };
    if (store.available) {
      try {
        for (const radius of radii) {
          const found = keep(await store.nearest(point, radius, wanted + padding));
          if (found.length === 0) continue;
          const reach = Math.min(found[0].distanceMeters + (config.fairnessBandMeters ?? 0), config.maxRadiusKm * 1000);
          if (reach <= radius || found.length >= count) return { source: 'redis', candidates: found };
          return { source: 'redis', candidates: keep(await store.nearest(point, reach, wanted + padding)) };
        }
        return { source: 'redis', candidates: [] };
      } catch (err) {
        deps.logger.warn({ err: (err as Error).message }, 'redis search failed; using postgres');
      }
    }
    const candidates = keep(
      pool === undefined
        ? await drivers.nearestAvailable(point, config.maxRadiusKm * 1000, wanted, config.heartbeatTtlSeconds)
        : await drivers.nearestAvailable(point, config.maxRadiusKm * 1000, wanted, config.heartbeatTtlSeconds, pool),
    );
    return { source: 'postgres', candidates };
  };
}
