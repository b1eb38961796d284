import type { CandidatePool, FleetMembership } from '../presence/nearest-candidates.js';
import type { Logger } from '../platform/logger.js';
import type { FleetsStore } from './fleets.store.js';

/**
 * Each node's copy of who belongs to which seller's fleet and which fleets are exclusive, read
 * from PostgreSQL every `refreshMs` and at once after this node changes one. It only proposes:
 * the claim in PostgreSQL checks the pool again, so a copy a moment old never assigns a driver
 * outside its pool.
 */
export function createFleetDirectory(deps: { store: Pick<FleetsStore, 'snapshot'>; logger: Logger; refreshMs?: number }) {
  let members = new Map<string, string>();
  let exclusive = new Map<string, boolean>();
  let timer: NodeJS.Timeout | undefined;
  let loading: Promise<void> | null = null;

  function refresh(): Promise<void> {
    loading ??= deps.store
      .snapshot()
      .then((snap) => {
        members = new Map(snap.members.map((m) => [m.id, m.fleet]));
        exclusive = new Map(snap.fleets.map((f) => [f.id, f.exclusive]));
      })
      .catch((err) => deps.logger.warn({ err: (err as Error).message }, 'fleet directory not refreshed'))
      .finally(() => {
        loading = null;
      });
    return loading;
  }

  const membership: FleetMembership = {
    fleetOf: (driverId) => members.get(driverId) ?? null,
    get fleetDrivers() {
      return members.size;
    },
  };

  return {
    membership,
    refresh,

    /** The pools an order is offered to, in order: the seller's fleet, then (unless exclusive) the shared pool. */
    poolsFor(sellerId: string | null | undefined): CandidatePool[] {
      if (!sellerId || !exclusive.has(sellerId)) return [{ fleet: null }];
      return exclusive.get(sellerId) ? [{ fleet: sellerId }] : [{ fleet: sellerId }, { fleet: null }];
    },

    async start(): Promise<void> {
      await refresh();
      timer = setInterval(() => void refresh(), deps.refreshMs ?? 2000);
      timer.unref();
    },

    stop(): void {
      clearInterval(timer);
    },
  };
}

export type FleetDirectory = ReturnType<typeof createFleetDirectory>;
