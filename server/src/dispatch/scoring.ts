/**
 * The dispatch score: which free driver gets a delivery, and why. Pure: the facts come in, the
 * ranking and every term of it go out, so the stored candidates explain each decision.
 *
 * 1. Pool: the seller's own fleet before the shared pool (an exclusive fleet has no shared pool).
 * 2. Distance first: within a pool, a driver more than `fairnessBandMeters` farther than the
 *    pool's nearest candidate ranks by distance alone, after everyone inside the band.
 * 3. Inside the band (the nearest plus everyone within `fairnessBandMeters` of it) the driver
 *    idle longest wins; equal idle time: fewer deliveries today (UTC day); then the nearer one.
 */

export type Pool = 'fleet' | 'shared';

export interface ScoreFacts {
  /** Seconds since the driver last came free (null: unknown, ranks as idle the shortest). */
  idleSeconds: number | null;
  /** Deliveries assigned to the driver since midnight UTC (null: unknown, ranks as many). */
  deliveriesToday: number | null;
}

export interface CandidateInput {
  driverId: string;
  distanceMeters: number;
  pool: Pool;
  /** The fleet the candidate was found in (null: the shared pool). */
  fleet: string | null;
}

/** One ranked candidate with every term of its score, as the delivery stores it. */
export interface ScoredCandidate extends CandidateInput, ScoreFacts {
  /** 1 for the first choice. */
  rank: number;
  /** Metres farther than the nearest candidate of its pool. */
  beyondNearestMeters: number;
  /** Inside the fairness band of its pool: idle time and deliveries today decided among these. */
  withinBand: boolean;
  /** The band width the ranking used (FAIRNESS_BAND_METERS). */
  fairnessBandMeters: number;
}

const POOL_ORDER: Record<Pool, number> = { fleet: 0, shared: 1 };

/** Candidates within the band of the nearest of their pool: only for these are the fairness facts worth reading. */
export function inFairnessBand(candidates: readonly CandidateInput[], fairnessBandMeters: number): CandidateInput[] {
  const nearest = nearestByPool(candidates);
  return candidates.filter((c) => c.distanceMeters - nearest.get(c.pool)! <= fairnessBandMeters);
}

function nearestByPool(candidates: readonly CandidateInput[]): Map<Pool, number> {
  const nearest = new Map<Pool, number>();
  for (const c of candidates) nearest.set(c.pool, Math.min(nearest.get(c.pool) ?? Infinity, c.distanceMeters));
  return nearest;
}

/**
 * Ranks candidates (any order in) best first. `facts` holds what is known of the drivers inside
 * the band; a driver the band did not need to compare carries null terms.
 */
export function rankCandidates(
  candidates: readonly CandidateInput[],
  facts: ReadonlyMap<string, ScoreFacts>,
  fairnessBandMeters: number,
): ScoredCandidate[] {
  const nearest = nearestByPool(candidates);
  // Built field by field: a spread of the input here cost more than the rest of the ranking together.
  const scored = candidates.map((c): ScoredCandidate => {
    const beyond = c.distanceMeters - nearest.get(c.pool)!;
    const known = facts.get(c.driverId);
    return {
      driverId: c.driverId,
      distanceMeters: c.distanceMeters,
      pool: c.pool,
      fleet: c.fleet,
      idleSeconds: known?.idleSeconds ?? null,
      deliveriesToday: known?.deliveriesToday ?? null,
      rank: 0,
      beyondNearestMeters: beyond,
      withinBand: beyond <= fairnessBandMeters,
      fairnessBandMeters,
    };
  });
  scored.sort((a, b) => {
    if (a.pool !== b.pool) return POOL_ORDER[a.pool] - POOL_ORDER[b.pool];
    if (a.withinBand !== b.withinBand) return a.withinBand ? -1 : 1;
    if (a.withinBand) {
      const idle = (b.idleSeconds ?? -1) - (a.idleSeconds ?? -1);
      if (idle !== 0) return idle;
      const today = (a.deliveriesToday ?? Infinity) - (b.deliveriesToday ?? Infinity);
      if (today !== 0 && !Number.isNaN(today)) return today;
    }
    return a.distanceMeters - b.distanceMeters;
  });
  scored.forEach((c, i) => {
    c.rank = i + 1;
  });
  return scored;
}
