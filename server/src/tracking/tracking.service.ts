import { ACTIVE_DELIVERY_STATUSES, TERMINAL_DELIVERY_STATUSES, type TrackingState } from '#shared/schemas.js';
import type { TrackedDeliveryRow, TrackingStore } from './tracking.store.js';

export interface TrackingDeps {
  store: Pick<TrackingStore, 'byToken'>;
  /** How long a link keeps working after its delivery ended (TRACKING_TTL_HOURS). */
  ttlHours: number;
  /**
   * How long one read of a token serves every viewer of it on this node. Positions reach
   * PostgreSQL once per POSITION_FLUSH_MS anyway, so a second costs a viewer nothing it could see.
   */
  cacheMs?: number;
  /** Tokens remembered at most; beyond it the oldest reads are forgotten first. */
  maxCached?: number;
  now?: () => number;
}

const MAX_FIRST_NAME = 50;

/** The first word of a driver's name: what a customer needs to recognise the person at the door. */
export function firstNameOf(name: string): string {
  const first = name.trim().split(/\s+/u)[0] ?? '';
  return Array.from(first).slice(0, MAX_FIRST_NAME).join('') || 'Your driver';
}

/**
 * The privacy rules, in one place: null once the link expired (TRACKING_TTL_HOURS after the
 * delivery ended; a terminal delivery never changes again, so its `updatedAt` is when it ended),
 * and the driver (first name and position) only while the delivery is ASSIGNED or PICKED_UP.
 */
export function toTrackingState(row: TrackedDeliveryRow, nowMs: number, ttlHours: number): TrackingState | null {
  if (TERMINAL_DELIVERY_STATUSES.includes(row.status) && nowMs - row.updatedAt.getTime() > ttlHours * 3_600_000) return null;
  const showDriver = ACTIVE_DELIVERY_STATUSES.includes(row.status) && row.driverName !== null;
  const hasPosition = row.driverLat !== null && row.driverLng !== null;
  return {
    status: row.status,
    orderCode: row.orderCode,
    driver: showDriver
      ? {
          firstName: firstNameOf(row.driverName as string),
          lat: hasPosition ? row.driverLat : null,
          lng: hasPosition ? row.driverLng : null,
          heading: hasPosition ? row.driverHeading : null,
          ts: hasPosition && row.driverPositionAt ? row.driverPositionAt.getTime() : null,
        }
      : null,
    pickup: { lat: row.pickupLat, lng: row.pickupLng, ...(row.pickupAddress ? { address: row.pickupAddress } : {}) },
    dropoff: { lat: row.dropoffLat, lng: row.dropoffLng, ...(row.dropoffAddress ? { address: row.dropoffAddress } : {}) },
    updatedAt: row.updatedAt.toISOString(),
  };
}

/**
 * A link's state for its page. Reads are shared per token for `cacheMs`: however many viewers
 * poll one link (a customer's phone and laptop, a link pasted in a group chat), a node reads the
 * database for it at most once per `cacheMs`.
 */
export function createTrackingService(deps: TrackingDeps) {
  const now = deps.now ?? Date.now;
  const cacheMs = deps.cacheMs ?? 1000;
  const maxCached = deps.maxCached ?? 10_000;
  const reads = new Map<string, { at: number; row: Promise<TrackedDeliveryRow | null> }>();

  function forgetOld(at: number): void {
    for (const [token, read] of reads) {
      if (at - read.at < cacheMs && reads.size < maxCached) break;
      reads.delete(token);
    }
  }

  function read(token: string): Promise<TrackedDeliveryRow | null> {
    const at = now();
    const cached = reads.get(token);
    if (cached && at - cached.at < cacheMs) return cached.row;
    if (cached) reads.delete(token);
    forgetOld(at);
    const row = deps.store.byToken(token);
    const entry = { at, row };
    reads.set(token, entry);
    // A failed read is not remembered: the next viewer tries again.
    row.catch(() => {
      if (reads.get(token) === entry) reads.delete(token);
    });
    return row;
  }

  return {
    /** The state a link shows, or null for a token that matches nothing or has expired (the same answer for both). */
    async state(token: string): Promise<TrackingState | null> {
      const row = await read(token);
      return row ? toTrackingState(row, now(), deps.ttlHours) : null;
    },
  };
}

export type TrackingService = ReturnType<typeof createTrackingService>;
