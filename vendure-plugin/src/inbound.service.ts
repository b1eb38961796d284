import { Inject, Injectable } from '@nestjs/common';
import {
  EventBus,
  type Fulfillment,
  type FulfillmentState,
  HistoryService,
  isGraphQlErrorResult,
  Logger,
  Order,
  OrderService,
  RequestContext,
  RequestContextService,
  TransactionalConnection,
} from '@vendure/core';
import { HistoryEntryType } from '@vendure/common/lib/generated-types';
import type { DeliveryStatusEvent } from '../../shared/src/schemas.js';
import { FULFILLMENT_HANDLER_CODE, LOGGER_CTX, PLUGIN_OPTIONS } from './constants.js';
import type { DispatchOrderFields } from './custom-fields.js';
import { DispatchDeliveryStatusEvent } from './events.js';
import type { ResolvedOptions } from './options.js';
import { ProcessedStatusEvent } from './processed-status-event.entity.js';
import { readStatusEvent, type StatusRequest } from './status-event.js';

export type InboundOutcome = 'applied' | 'duplicate' | 'stale' | 'unknown-order';

export type InboundAnswer =
  | { status: 200; body: { ok: true; outcome: InboundOutcome } }
  | { status: 400 | 401; body: { error: { code: string; message: string } } };

/** Fulfillment states in the order a delivery moves through them. */
const FULFILLMENT_PROGRESS: Record<string, number> = { Created: 0, Pending: 1, Shipped: 2, Delivered: 3 };

class DuplicateEvent extends Error {}

/**
 * The inbound half: verifies a status event, applies it once (by `webhook-id`, kept in the
 * database), ignores one older than the last applied (by `sequence`), and moves the order's
 * fulfillment. Every answer to a verified event is 2xx unless the database fails: an event Vendure
 * cannot act on (a refused fulfillment transition, an unknown order) is recorded and logged, since
 * the hub would otherwise retry it for a day.
 */
@Injectable()
export class DispatchInboundService {
  constructor(
    @Inject(PLUGIN_OPTIONS) private readonly options: ResolvedOptions,
    @Inject(TransactionalConnection) private readonly connection: TransactionalConnection,
    @Inject(OrderService) private readonly orderService: OrderService,
    @Inject(HistoryService) private readonly historyService: HistoryService,
    @Inject(EventBus) private readonly eventBus: EventBus,
    @Inject(RequestContextService) private readonly requestContextService: RequestContextService,
  ) {}

  async receive(request: StatusRequest): Promise<InboundAnswer> {
    const verdict = readStatusEvent(this.options.statusSecrets, request);
    if (!verdict.ok) {
      Logger.warn(`status event refused (${verdict.status}): ${verdict.message}`, LOGGER_CTX);
      return { status: verdict.status, body: { error: { code: verdict.code, message: verdict.message } } };
    }
    const outcome = await this.apply(verdict.event);
    return { status: 200, body: { ok: true, outcome } };
  }

  async apply(event: DeliveryStatusEvent): Promise<InboundOutcome> {
    const outerCtx = await this.requestContextService.create({ apiType: 'admin' });
    try {
      return await this.connection.withTransaction(outerCtx, async (ctx) => {
        const processed = this.connection.getRepository(ctx, ProcessedStatusEvent);
        if (await processed.findOne({ where: { webhookId: event.id } })) throw new DuplicateEvent();
        const outcome = await this.applyToOrder(ctx, event);
        await processed.save(
          Object.assign(new ProcessedStatusEvent(), {
            webhookId: event.id,
            deliveryId: event.deliveryId,
            type: event.type,
            sequence: event.sequence,
            orderCode: event.data.orderCode,
            outcome,
          }),
        );
        return outcome;
      });
    } catch (err) {
      if (err instanceof DuplicateEvent) return 'duplicate';
      // The same event arriving twice at once: the other request's row won the unique key.
      const stored = await this.connection.getRepository(outerCtx, ProcessedStatusEvent).findOne({ where: { webhookId: event.id } });
      if (stored) return 'duplicate';
      throw err;
    }
  }

  private async applyToOrder(ctx: RequestContext, event: DeliveryStatusEvent): Promise<InboundOutcome> {
    const { data } = event;
    const order = await this.connection.getRepository(ctx, Order).findOne({ where: { code: data.orderCode } });
    if (!order || String(order.id) !== data.sellerOrderId) {
      Logger.warn(`status event ${event.id} names order ${data.orderCode} (id ${data.sellerOrderId}), which this shop does not have; ignored`, LOGGER_CTX);
      return 'unknown-order';
    }
    const fields = order.customFields as DispatchOrderFields;
    if (fields.dispatchSequence != null && event.sequence <= fields.dispatchSequence) {
      Logger.info(`order ${order.code}: status event ${event.id} (sequence ${event.sequence}) is older than the one applied (${fields.dispatchSequence}); ignored`, LOGGER_CTX);
      return 'stale';
    }

    const trackingUrl = data.trackingUrl ?? fields.dispatchTrackingUrl ?? null;
    await this.connection.getRepository(ctx, Order).update({ id: order.id } as any, {
      customFields: {
        dispatchStatus: data.status,
        dispatchDeliveryId: data.deliveryId,
        dispatchDriverId: data.driverId ?? fields.dispatchDriverId ?? null,
        dispatchDriverName: data.driverName ?? (data.driverId && data.driverId === fields.dispatchDriverId ? fields.dispatchDriverName : null) ?? null,
        dispatchTrackingUrl: trackingUrl,
        dispatchReason: data.reason ?? null,
        dispatchUpdatedAt: new Date(data.at),
        dispatchSequence: event.sequence,
      } satisfies DispatchOrderFields,
    } as any);

    const driver = data.driverName ?? data.driverId ?? 'unknown driver';
    switch (data.status) {
      case 'ASSIGNED':
        await this.note(ctx, order.id, `Courier assigned: ${driver}${trackingUrl ? ` (tracking: ${trackingUrl})` : ''}.`);
        break;
      case 'PICKED_UP':
        await this.note(ctx, order.id, `Picked up by ${driver}.`);
        await this.moveFulfillment(ctx, order, event, 'Shipped');
        break;
      case 'DELIVERED':
        await this.note(ctx, order.id, `Delivered by ${driver}.`);
        await this.moveFulfillment(ctx, order, event, 'Delivered');
        break;
      case 'FAILED':
        await this.note(ctx, order.id, `Delivery failed: ${data.reason ?? 'no reason given'}. The fulfillment is left as it is for the shop to decide (re-send, refund).`);
        break;
      case 'CANCELLED':
        await this.note(ctx, order.id, `Delivery cancelled: ${data.reason ?? 'no reason given'}.`);
        await this.cancelUnshippedFulfillment(ctx, order, event);
        break;
      default:
        await this.note(ctx, order.id, `Delivery is ${data.status}.`);
    }
    await this.eventBus.publish(new DispatchDeliveryStatusEvent(ctx, order, event));
    return 'applied';
  }

  /**
   * Brings the order's fulfillment to `target`, creating the plugin's own fulfillment when the
   * order has none yet. A transition Vendure refuses is logged with the order and noted in its
   * history; the event still counts as applied.
   */
  private async moveFulfillment(ctx: RequestContext, order: Order, event: DeliveryStatusEvent, target: 'Shipped' | 'Delivered'): Promise<void> {
    try {
      const fulfillment = await this.fulfillmentFor(ctx, order, event);
      if (!fulfillment) return;
      const path: FulfillmentState[] = target === 'Delivered' && fulfillment.state === 'Pending' ? ['Shipped', 'Delivered'] : [target];
      for (const state of path) {
        if ((FULFILLMENT_PROGRESS[fulfillment.state] ?? -1) >= FULFILLMENT_PROGRESS[state]) continue;
        const result = await this.orderService.transitionFulfillmentToState(ctx, fulfillment.id, state);
        if (isGraphQlErrorResult(result)) {
          await this.refused(ctx, order, `moving fulfillment ${fulfillment.id} from ${fulfillment.state} to ${state}: ${result.transitionError ?? result.message}`);
          return;
        }
        fulfillment.state = state;
      }
    } catch (err) {
      await this.refused(ctx, order, `moving its fulfillment to ${target}: ${(err as Error).message}`);
    }
  }

  private async cancelUnshippedFulfillment(ctx: RequestContext, order: Order, event: DeliveryStatusEvent): Promise<void> {
    try {
      const ours = (await this.fulfillments(ctx, order)).find((f) => f.handlerCode === FULFILLMENT_HANDLER_CODE && f.state === 'Pending');
      if (!ours) return;
      const result = await this.orderService.transitionFulfillmentToState(ctx, ours.id, 'Cancelled');
      if (isGraphQlErrorResult(result)) await this.refused(ctx, order, `cancelling fulfillment ${ours.id}: ${result.transitionError ?? result.message}`);
    } catch (err) {
      await this.refused(ctx, order, `cancelling its fulfillment after delivery ${event.deliveryId} was cancelled: ${(err as Error).message}`);
    }
  }

  /** The fulfillment this delivery moves: the plugin's own, else the shop's newest live one, else a new one for every line. */
  private async fulfillmentFor(ctx: RequestContext, order: Order, event: DeliveryStatusEvent): Promise<Fulfillment | undefined> {
    const live = (await this.fulfillments(ctx, order)).filter((f) => f.state !== 'Cancelled');
    const existing = live.find((f) => f.handlerCode === FULFILLMENT_HANDLER_CODE) ?? live.at(-1);
    if (existing) return existing;
    const full = await this.orderService.findOne(ctx, order.id, ['lines']);
    const lines = (full?.lines ?? []).filter((l) => l.quantity > 0).map((l) => ({ orderLineId: l.id, quantity: l.quantity }));
    const created = await this.orderService.createFulfillment(ctx, {
      lines,
      handler: {
        code: FULFILLMENT_HANDLER_CODE,
        arguments: [
          { name: 'deliveryId', value: event.deliveryId },
          { name: 'trackingUrl', value: event.data.trackingUrl ?? '' },
        ],
      },
    });
    if (isGraphQlErrorResult(created)) {
      await this.refused(ctx, order, `creating a fulfillment: ${created.message}`);
      return undefined;
    }
    return created;
  }

  private async fulfillments(ctx: RequestContext, order: Order): Promise<Fulfillment[]> {
    const all = await this.orderService.getOrderFulfillments(ctx, order);
    return [...all].sort((a, b) => +a.createdAt - +b.createdAt);
  }

  private async refused(ctx: RequestContext, order: Order, what: string): Promise<void> {
    const message = `Vendure refused ${what}`;
    Logger.error(`order ${order.code}: ${message}`, LOGGER_CTX);
    await this.note(ctx, order.id, `${message}. The delivery status is recorded; fix the fulfillment by hand.`);
  }

  private async note(ctx: RequestContext, orderId: Order['id'], note: string): Promise<void> {
    await this.historyService.createHistoryEntryForOrder({ ctx, orderId, type: HistoryEntryType.ORDER_NOTE, data: { note } }, false);
  }
}
