import type { LocationFix } from '../schemas.js';

/** A fix as kept by the client: numbered, and stamped with a time if the app gave none. */
export type NumberedFix = LocationFix & { seq: number; ts: number };

interface Entry {
  fix: NumberedFix;
  /** The connection it was last sent on, or null while it waits to be sent. */
  sentOn: number | null;
}

/**
 * The fixes the hub has not confirmed yet, oldest first, at most `capacity` of them: when full,
 * the oldest goes (a driver's newest position is what the hub needs). A fix leaves only when the
 * hub confirmed it or it was pushed out, so nothing confirmed is ever sent again and nothing
 * unconfirmed is forgotten while there is room.
 */
export class FixBuffer {
  private entries: Entry[] = [];
  private nextSeq: number;
  /** Fixes pushed out by newer ones since the buffer was made. */
  dropped = 0;

  constructor(
    readonly capacity: number,
    firstSeq = 0,
  ) {
    if (!Number.isInteger(capacity) || capacity < 1) throw new RangeError(`buffer capacity must be a whole number above 0, got ${capacity}`);
    this.nextSeq = firstSeq;
  }

  get size(): number {
    return this.entries.length;
  }

  /** Numbers and keeps a fix; returns how many old fixes it pushed out (0 or 1). */
  add(fix: LocationFix & { ts: number }): number {
    this.entries.push({ fix: { ...fix, seq: this.nextSeq++ }, sentOn: null });
    if (this.entries.length <= this.capacity) return 0;
    const excess = this.entries.length - this.capacity;
    this.entries.splice(0, excess);
    this.dropped += excess;
    return excess;
  }

  /** The oldest fixes not yet sent on `connection`, at most `max`. */
  unsent(connection: number, max: number): NumberedFix[] {
    const out: NumberedFix[] = [];
    for (const entry of this.entries) {
      if (entry.sentOn === connection) continue;
      out.push(entry.fix);
      if (out.length === max) break;
    }
    return out;
  }

  /** The oldest fixes, sent or not, at most `max`. */
  oldest(max: number): NumberedFix[] {
    return this.entries.slice(0, max).map((e) => e.fix);
  }

  markSent(fixes: readonly NumberedFix[], connection: number): void {
    if (fixes.length === 0) return;
    const lo = fixes[0].seq;
    const hi = fixes[fixes.length - 1].seq;
    for (const entry of this.entries) if (entry.fix.seq >= lo && entry.fix.seq <= hi) entry.sentOn = connection;
  }

  /** Whether some fix went out on `connection` and is still unconfirmed. */
  awaitingConfirmation(connection: number): boolean {
    return this.entries.some((e) => e.sentOn === connection);
  }

  /** Everything is to be sent again (a new connection, or confirmations that never came). */
  markAllUnsent(): void {
    for (const entry of this.entries) entry.sentOn = null;
  }

  /** A batch `lo..hi` was acknowledged: its fixes leave. Returns how many did. */
  confirmRange(lo: number, hi: number): number {
    const before = this.entries.length;
    this.entries = this.entries.filter((e) => e.fix.seq < lo || e.fix.seq > hi);
    return before - this.entries.length;
  }

  /** Everything numbered up to `upTo` is stored: those fixes leave. Returns how many did. */
  confirmUpTo(upTo: number): number {
    let n = 0;
    while (n < this.entries.length && this.entries[n].fix.seq <= upTo) n += 1;
    this.entries.splice(0, n);
    return n;
  }

  clear(): void {
    this.entries = [];
  }
}
