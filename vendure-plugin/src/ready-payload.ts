import { type SellerOrderReady, sellerOrderReady } from '../../shared/src/schemas.js';
import type { CandidatePlace } from './location-strategy.js';

export interface ReadyPayloadInput {
  sellerOrderId: string;
  orderCode: string;
  /** The seller's id in a multi-vendor shop (the hub routes to that seller's fleet first). */
  sellerId?: string;
  pickup: CandidatePlace | undefined;
  dropoff: CandidatePlace | undefined;
  customer?: { name?: string | null; phone?: string | null };
  notes?: string | null;
}

export type ReadyPayloadResult = { ok: true; payload: SellerOrderReady } | { ok: false; message: string };

/**
 * The `seller-order-ready` body, checked against the hub's own schema before it is queued: an order
 * the hub would refuse is refused here, at once and with the reason, and never sent half-filled.
 */
export function buildReadyPayload(input: ReadyPayloadInput): ReadyPayloadResult {
  const missing: string[] = [];
  if (!hasCoordinates(input.pickup)) {
    missing.push("pickup coordinates (the seller's channel or seller needs dispatchPickupLatitude and dispatchPickupLongitude)");
  }
  if (!hasCoordinates(input.dropoff)) {
    missing.push('dropoff coordinates (the shipping address needs dispatchLatitude and dispatchLongitude)');
  }
  if (missing.length) {
    return { ok: false, message: `Order ${input.orderCode} cannot be sent for delivery: missing ${missing.join(' and ')}.` };
  }
  const customer = compact({ name: clip(input.customer?.name, 200), phone: clip(input.customer?.phone, 50) });
  const candidate = {
    sellerOrderId: input.sellerOrderId,
    orderCode: input.orderCode,
    ...(input.sellerId ? { sellerId: input.sellerId } : {}),
    pickup: place(input.pickup!),
    dropoff: place(input.dropoff!),
    ...(Object.keys(customer).length ? { customer } : {}),
    ...(input.notes ? { notes: clip(input.notes, 2000) } : {}),
  };
  const parsed = sellerOrderReady.safeParse(candidate);
  if (!parsed.success) {
    const issues = parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ');
    return { ok: false, message: `Order ${input.orderCode} cannot be sent for delivery: ${issues}.` };
  }
  return { ok: true, payload: parsed.data };
}

function hasCoordinates(p: CandidatePlace | undefined): boolean {
  return p !== undefined && typeof p.lat === 'number' && typeof p.lng === 'number';
}

function place(p: CandidatePlace) {
  const address = clip(p.address, 500);
  return { lat: p.lat as number, lng: p.lng as number, ...(address ? { address } : {}) };
}

function clip(value: string | null | undefined, max: number): string | undefined {
  const text = value?.trim();
  return text ? text.slice(0, max) : undefined;
}

function compact<T extends Record<string, unknown>>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}
