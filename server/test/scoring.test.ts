import { describe, expect, it } from 'vitest';
import { type CandidateInput, inFairnessBand, rankCandidates, type ScoreFacts } from '../src/dispatch/scoring.js';

const shared = (driverId: string, distanceMeters: number): CandidateInput => ({ driverId, distanceMeters, pool: 'shared', fleet: null });
const own = (driverId: string, distanceMeters: number): CandidateInput => ({ driverId, distanceMeters, pool: 'fleet', fleet: 'seller-1' });
const facts = (entries: Record<string, [idleSeconds: number, deliveriesToday: number]>) =>
  new Map<string, ScoreFacts>(Object.entries(entries).map(([id, [idleSeconds, deliveriesToday]]) => [id, { idleSeconds, deliveriesToday }]));
const order = (ranked: { driverId: string }[]) => ranked.map((c) => c.driverId);

describe('dispatch scoring', () => {
  it('when distances are equal, then the driver idle longest wins', () => {
    const ranked = rankCandidates([shared('a', 300), shared('b', 300), shared('c', 300)], facts({ a: [60, 0], b: [600, 0], c: [120, 0] }), 500);
    expect(order(ranked)).toEqual(['b', 'c', 'a']);
    expect(ranked.map((c) => c.rank)).toEqual([1, 2, 3]);
  });

  it('when a nearer driver is outside the band of a farther one, then distance wins over idle time', () => {
    // c is 600 m farther than a: outside a 500 m band, however long it has been idle.
    const ranked = rankCandidates([shared('a', 100), shared('c', 700)], facts({ a: [10, 5], c: [10_000, 0] }), 500);
    expect(order(ranked)).toEqual(['a', 'c']);
    expect(ranked[1]).toMatchObject({ withinBand: false, beyondNearestMeters: 600 });
  });

  it('when idle times are equal, then fewer deliveries today wins, then the nearer one', () => {
    const ranked = rankCandidates([shared('a', 100), shared('b', 200), shared('c', 300)], facts({ a: [60, 3], b: [60, 1], c: [60, 1] }), 500);
    expect(order(ranked)).toEqual(['b', 'c', 'a']);
  });

  it('when drivers inside the band and beyond it mix, then the band comes first and the rest follow by distance', () => {
    const ranked = rankCandidates([shared('far', 2000), shared('near', 100), shared('band', 550), shared('mid', 900)], facts({ near: [5, 0], band: [500, 0] }), 500);
    expect(order(ranked)).toEqual(['band', 'near', 'mid', 'far']);
  });

  it('when a fleet and the shared pool both have candidates, then the fleet comes first and each pool has its own band', () => {
    const ranked = rankCandidates([shared('s1', 50), own('f1', 3000), own('f2', 3200), shared('s2', 60)], facts({ f1: [10, 0], f2: [100, 0], s1: [1, 0], s2: [2, 0] }), 500);
    expect(order(ranked)).toEqual(['f2', 'f1', 's2', 's1']);
    expect(ranked[0]).toMatchObject({ pool: 'fleet', fleet: 'seller-1', withinBand: true, beyondNearestMeters: 200 });
  });

  it('when facts are unknown, then every term is stored as null and the order is by distance', () => {
    const ranked = rankCandidates([shared('b', 200), shared('a', 100)], new Map(), 500);
    expect(order(ranked)).toEqual(['a', 'b']);
    expect(ranked[0]).toEqual({ driverId: 'a', distanceMeters: 100, pool: 'shared', fleet: null, idleSeconds: null, deliveriesToday: null, rank: 1, beyondNearestMeters: 0, withinBand: true, fairnessBandMeters: 500 });
  });

  it('when the band is 0, then only the nearest distance competes on idle time', () => {
    const ranked = rankCandidates([shared('a', 100), shared('b', 100), shared('c', 101)], facts({ a: [1, 0], b: [2, 0], c: [99, 0] }), 0);
    expect(order(ranked)).toEqual(['b', 'a', 'c']);
  });

  it('when asked who shares a band, then only candidates within the band of their pool’s nearest are named', () => {
    expect(order(inFairnessBand([shared('a', 100), shared('b', 600), shared('c', 601), own('f', 5000)], 500))).toEqual(['a', 'b', 'f']);
  });
});
