import { Inject, Injectable, type OnApplicationBootstrap, type OnModuleDestroy, type OnModuleInit } from '@nestjs/common';
import { ModuleRef } from '@nestjs/core';
import {
  ConfigService,
  EventBus,
  HistoryService,
  type ID,
  Injector,
  type Job,
  type JobQueue,
  JobQueueService,
  Logger,
  Order,
  OrderService,
  OrderStateTransitionEvent,
  PollingJobQueueStrategy,
  RequestContext,
  RequestContextService,
  TransactionalConnection,
  UserInputError,
} from '@vendure/core';
import { OrderType, HistoryEntryType } from '@vendure/common/lib/generated-types';
import { IsNull } from 'typeorm';
import type { Subscription } from 'rxjs';
import type { SellerOrderCancelled, SellerOrderReady } from '../../shared/src/schemas.js';
import { backoffDelayMs } from './backoff.js';
import { LOGGER_CTX, PLUGIN_OPTIONS, QUEUE_NAME } from './constants.js';
import type { DispatchOrderFields } from './custom-fields.js';
import { DispatchRequestRefusedEvent } from './events.js';
import { createHubClient, type HubClient, type HubReply, newWebhookId } from './hub-client.js';
import { CustomFieldLocationStrategy, type DispatchLocationStrategy } from './location-strategy.js';
import type { ResolvedOptions } from './options.js';
import { buildReadyPayload } from './ready-payload.js';

type WebhookJob =
  | { kind: 'ready'; orderId: ID; orderCode: string; webhookId: string; payload: SellerOrderReady }
  | { kind: 'cancelled'; orderId: ID; orderCode: string; webhookId: string; payload: SellerOrderCancelled };

/** Statuses after which the hub has the order: another request would only repeat it. */
const REQUESTED_OR_LATER = new Set(['REQUESTED', 'PENDING', 'OFFERED', 'ASSIGNED', 'PICKED_UP', 'DELIVERED', 'FAILED', 'CANCELLED']);
const TERMINAL = new Set(['DELIVERED', 'FAILED', 'CANCELLED']);
/** Order states in which there is nothing to deliver yet, or no more. */
const NOT_PLACED = new Set(['Created', 'Draft', 'AddingItems', 'ArrangingPayment', 'Cancelled']);

export type ReadyRequestOutcome =
  | { sent: true }
  | { sent: false; reason: 'already-requested' | 'aggregate-order' | 'not-placed' | 'refused'; message: string };

/**
 * The outbound half: decides when an order is ready, checks it can be delivered (coordinates),
 * and hands the signed webhook to Vendure's job queue, which retries it while the hub is away.
 */
@Injectable()
export class DispatchOutboundService implements OnModuleInit, OnApplicationBootstrap, OnModuleDestroy {
  private queue!: JobQueue<WebhookJob>;
  private readonly hub: HubClient;
  private locationStrategy: DispatchLocationStrategy;
  private subscription: Subscription | undefined;

  // Explicit tokens: the plugin must not depend on decorator metadata (esbuild, oxc and swc builds lack it).
  constructor(
    @Inject(PLUGIN_OPTIONS) private readonly options: ResolvedOptions,
    @Inject(JobQueueService) private readonly jobQueueService: JobQueueService,
    @Inject(EventBus) private readonly eventBus: EventBus,
    @Inject(OrderService) private readonly orderService: OrderService,
    @Inject(HistoryService) private readonly historyService: HistoryService,
    @Inject(TransactionalConnection) private readonly connection: TransactionalConnection,
    @Inject(RequestContextService) private readonly requestContextService: RequestContextService,
    @Inject(ConfigService) private readonly configService: ConfigService,
    @Inject(ModuleRef) private readonly moduleRef: ModuleRef,
  ) {
    this.hub = createHubClient({ hubUrl: options.hubUrl, webhookSecret: options.webhookSecret, requestTimeoutMs: options.requestTimeoutMs });
    this.locationStrategy = options.locationStrategy ?? new CustomFieldLocationStrategy();
  }

  async onModuleInit(): Promise<void> {
    this.queue = await this.jobQueueService.createQueue<WebhookJob>({ name: QUEUE_NAME, process: (job) => this.process(job) });
  }

  async onApplicationBootstrap(): Promise<void> {
    await this.locationStrategy.init?.(new Injector(this.moduleRef));
    this.useOwnBackoff();
    const { trigger } = this.options;
    this.subscription = this.eventBus.ofType(OrderStateTransitionEvent).subscribe((event) => {
      const work =
        event.toState === 'Cancelled'
          ? this.requestCancellation(event.ctx, event.order)
          : trigger !== 'manual' && event.toState === trigger.orderState
            ? this.requestDelivery(event.ctx, event.order.id)
            : null;
      work?.catch((err) => Logger.error(`order ${event.order.code}: ${(err as Error).message}`, LOGGER_CTX, (err as Error).stack));
    });
  }

  async onModuleDestroy(): Promise<void> {
    this.subscription?.unsubscribe();
    await this.locationStrategy.destroy?.();
  }

  /**
   * Checks the order and queues `seller-order-ready`. Refusals (no coordinates) are recorded on the
   * order, logged and published, and nothing is sent.
   */
  async requestDelivery(ctx: RequestContext, orderId: ID): Promise<ReadyRequestOutcome> {
    const order = await this.loadOrder(ctx, orderId);
    if (!order) throw new UserInputError(`No order with id ${orderId}`);
    if (order.type === OrderType.Aggregate) {
      return { sent: false, reason: 'aggregate-order', message: `Order ${order.code} is an aggregate order; its seller orders are delivered, each on its own.` };
    }
    if (order.active || NOT_PLACED.has(order.state)) {
      return { sent: false, reason: 'not-placed', message: `Order ${order.code} is ${order.state}: only a placed order can be sent for delivery.` };
    }
    const fields = order.customFields as DispatchOrderFields;
    if (fields.dispatchStatus && REQUESTED_OR_LATER.has(fields.dispatchStatus)) {
      return { sent: false, reason: 'already-requested', message: `Order ${order.code} was already sent to the dispatch hub (${fields.dispatchStatus}).` };
    }
    const [pickup, dropoff] = await Promise.all([this.locationStrategy.pickup(ctx, order), this.locationStrategy.dropoff(ctx, order)]);
    const sellerChannel = order.channels?.find((c) => c.code !== '__default_channel__');
    const address = order.shippingAddress ?? {};
    const built = buildReadyPayload({
      sellerOrderId: String(order.id),
      orderCode: order.code,
      sellerId: order.type === OrderType.Seller && sellerChannel?.sellerId != null ? String(sellerChannel.sellerId) : undefined,
      pickup,
      dropoff,
      customer: {
        name: address.fullName || [order.customer?.firstName, order.customer?.lastName].filter(Boolean).join(' ') || undefined,
        phone: address.phoneNumber || order.customer?.phoneNumber || undefined,
      },
    });
    if (!built.ok) {
      Logger.warn(built.message, LOGGER_CTX);
      await this.setFields(ctx, order.id, { dispatchStatus: 'REFUSED', dispatchReason: built.message, dispatchUpdatedAt: new Date() });
      await this.note(ctx, order.id, built.message);
      await this.eventBus.publish(new DispatchRequestRefusedEvent(ctx, order, 'INCOMPLETE_ORDER', built.message));
      return { sent: false, reason: 'refused', message: built.message };
    }
    await this.setFields(ctx, order.id, { dispatchStatus: 'REQUESTED', dispatchReason: null, dispatchUpdatedAt: new Date() });
    await this.queue.add(
      { kind: 'ready', orderId: order.id, orderCode: order.code, webhookId: newWebhookId(), payload: built.payload },
      { retries: this.options.retries },
    );
    await this.note(ctx, order.id, 'Ready for delivery: queued for the dispatch hub.');
    return { sent: true };
  }

  /** Queues `seller-order-cancelled` for an order the hub has (or is about to have). */
  async requestCancellation(ctx: RequestContext, order: Order): Promise<void> {
    if (order.type === OrderType.Aggregate) return;
    const fields = order.customFields as DispatchOrderFields;
    if (!fields.dispatchStatus || !REQUESTED_OR_LATER.has(fields.dispatchStatus) || TERMINAL.has(fields.dispatchStatus)) return;
    await this.queue.add(
      { kind: 'cancelled', orderId: order.id, orderCode: order.code, webhookId: newWebhookId(), payload: { sellerOrderId: String(order.id), reason: 'Order cancelled in Vendure' } },
      { retries: this.options.retries },
    );
  }

  private async process(job: Job<WebhookJob>): Promise<unknown> {
    const data = job.data;
    const ctx = await this.requestContextService.create({ apiType: 'admin' });
    const order = await this.connection.getRepository(ctx, Order).findOne({ where: { id: data.orderId } });
    if (!order) return { skipped: 'order no longer exists' };
    if (data.kind === 'ready' && order.state === 'Cancelled') {
      await this.note(ctx, order.id, 'Not sent to the dispatch hub: the order was cancelled first.');
      return { skipped: 'order cancelled' };
    }
    const path = data.kind === 'ready' ? '/events/seller-order-ready' : '/events/seller-order-cancelled';
    const outcome = await this.hub.post(path, data.webhookId, data.payload);
    const what = data.kind === 'ready' ? 'Delivery request' : 'Cancellation';

    if (outcome.kind === 'accepted') {
      if (data.kind === 'ready') await this.recordReply(ctx, order, outcome.body);
      else await this.note(ctx, order.id, `Cancellation accepted by the dispatch hub (delivery ${outcome.body.deliveryId ?? '?'} is ${outcome.body.status ?? '?'}).`);
      return { status: outcome.status, reply: outcome.body };
    }

    if (outcome.kind === 'refused') {
      if (data.kind === 'cancelled' && outcome.status === 404) {
        await this.note(ctx, order.id, 'Cancellation: the dispatch hub has no delivery for this order; nothing to cancel.');
        return { status: 404 };
      }
      const message = `${what} refused by the dispatch hub (HTTP ${outcome.status}${outcome.code ? ` ${outcome.code}` : ''}): ${outcome.message}`;
      Logger.error(`order ${order.code}: ${message}`, LOGGER_CTX);
      if (data.kind === 'ready') await this.setFields(ctx, order.id, { dispatchStatus: 'REFUSED', dispatchReason: message, dispatchUpdatedAt: new Date() });
      await this.note(ctx, order.id, message);
      await this.eventBus.publish(new DispatchRequestRefusedEvent(ctx, order, 'HUB_REFUSED', message, outcome.status));
      return { refused: outcome.status };
    }

    // Retryable: throwing hands the job back to the queue, which tries again after the backoff.
    const finalAttempt = job.attempts > job.retries;
    if (finalAttempt) {
      const message = `${what} not delivered to the dispatch hub after ${job.attempts} attempts: ${outcome.message}`;
      Logger.error(`order ${order.code}: ${message}`, LOGGER_CTX);
      if (data.kind === 'ready') await this.setFields(ctx, order.id, { dispatchStatus: 'REFUSED', dispatchReason: message, dispatchUpdatedAt: new Date() });
      await this.note(ctx, order.id, `${message}. Call markReadyForDelivery to try again.`);
      await this.eventBus.publish(new DispatchRequestRefusedEvent(ctx, order, 'GAVE_UP', message, outcome.status));
    } else {
      Logger.warn(`order ${order.code}: ${what.toLowerCase()} attempt ${job.attempts} failed (${outcome.message}); will retry`, LOGGER_CTX);
    }
    throw new Error(outcome.message);
  }

  /** The hub's answer, unless a status event got there first (it carries newer news). */
  private async recordReply(ctx: RequestContext, order: Order, reply: HubReply): Promise<void> {
    const status = typeof reply.status === 'string' ? reply.status : 'PENDING';
    await this.connection.getRepository(ctx, Order).update(
      { id: order.id, customFields: { dispatchSequence: IsNull() } } as any,
      {
        customFields: {
          dispatchStatus: status,
          dispatchDeliveryId: reply.deliveryId ?? null,
          dispatchDriverId: reply.driverId ?? null,
          ...(typeof reply.trackingUrl === 'string' ? { dispatchTrackingUrl: reply.trackingUrl } : {}),
          dispatchReason: null,
          dispatchUpdatedAt: new Date(),
        },
      } as any,
    );
    const again = reply.idempotent === true ? ' (it already had it)' : '';
    await this.note(ctx, order.id, `Accepted by the dispatch hub${again}: delivery ${reply.deliveryId ?? '?'} is ${status}.`);
  }

  private async loadOrder(ctx: RequestContext, orderId: ID): Promise<Order | undefined> {
    // Through OrderService first, so a seller's mutation only reaches orders of its own channel.
    const visible = await this.orderService.findOne(ctx, orderId, []);
    if (!visible) return undefined;
    const order = await this.connection.getRepository(ctx, Order).findOne({
      where: { id: orderId },
      relations: { channels: { seller: true }, customer: true },
    });
    return order ?? undefined;
  }

  private async setFields(ctx: RequestContext, orderId: ID, fields: DispatchOrderFields): Promise<void> {
    await this.connection.getRepository(ctx, Order).update({ id: orderId } as any, { customFields: fields } as any);
  }

  private async note(ctx: RequestContext, orderId: ID, note: string): Promise<void> {
    await this.historyService.createHistoryEntryForOrder({ ctx, orderId, type: HistoryEntryType.ORDER_NOTE, data: { note } }, false);
  }

  /**
   * Vendure's polling job queues retry after a fixed second by default; the hub may be away for
   * longer. For this queue only, retries back off exponentially with jitter. Other strategies
   * (BullMQ) bring their own backoff: see docs/vendure.md.
   */
  private useOwnBackoff(): void {
    const strategy = this.configService.jobQueueOptions.jobQueueStrategy;
    if (!(strategy instanceof PollingJobQueueStrategy)) return;
    const inner = strategy.backOffStrategy;
    const { backoff } = this.options;
    strategy.backOffStrategy = (queueName, attemptsMade, job) =>
      queueName === QUEUE_NAME ? backoffDelayMs(String(job.id ?? ''), attemptsMade, backoff) : (inner?.(queueName, attemptsMade, job) ?? 0);
  }
}
