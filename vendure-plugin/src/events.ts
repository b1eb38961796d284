import { type Order, type RequestContext, VendureEvent } from '@vendure/core';
import type { DeliveryStatus, DeliveryStatusEvent } from '../../shared/src/schemas.js';

/**
 * Published once for each status event the plugin applies to an order (never for a repeat or a
 * stale one). Hang emails on it, e.g. with the EmailPlugin:
 * `new EmailEventListener('delivery-failed').on(DispatchDeliveryStatusEvent).filter((e) => e.status === 'FAILED')`.
 */
export class DispatchDeliveryStatusEvent extends VendureEvent {
  readonly status: DeliveryStatus;
  readonly reason: string | null;

  constructor(
    readonly ctx: RequestContext,
    readonly order: Order,
    readonly statusEvent: DeliveryStatusEvent,
  ) {
    super();
    this.status = statusEvent.data.status;
    this.reason = statusEvent.data.reason;
  }
}

export type DispatchRefusal =
  /** The order lacks coordinates (or has unusable ones): nothing was sent. */
  | 'INCOMPLETE_ORDER'
  /** The hub answered 4xx (400, 401, 409, ...): not retried. */
  | 'HUB_REFUSED'
  /** Every retry failed (the hub stayed down or kept answering 5xx). */
  | 'GAVE_UP';

/** An order could not be handed to the hub; `message` says why, for a person. */
export class DispatchRequestRefusedEvent extends VendureEvent {
  constructor(
    readonly ctx: RequestContext,
    readonly order: Order,
    readonly refusal: DispatchRefusal,
    readonly message: string,
    readonly httpStatus: number | null = null,
  ) {
    super();
  }
}
