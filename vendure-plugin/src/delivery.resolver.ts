import { Inject } from '@nestjs/common';
import { Args, Mutation, Parent, ResolveField, Resolver } from '@nestjs/graphql';
import { Allow, Ctx, type ID, type Order, OrderService, Permission, RequestContext, UserInputError } from '@vendure/core';
import type { DispatchOrderFields } from './custom-fields.js';
import { DispatchOutboundService } from './outbound.service.js';

export interface OrderDelivery {
  status: string;
  deliveryId: string | null;
  driverId: string | null;
  driverName: string | null;
  trackingUrl: string | null;
  reason: string | null;
  updatedAt: Date | null;
}

export function orderDelivery(order: Pick<Order, 'customFields'>): OrderDelivery | null {
  const f = (order.customFields ?? {}) as DispatchOrderFields;
  if (!f.dispatchStatus) return null;
  return {
    status: f.dispatchStatus,
    deliveryId: f.dispatchDeliveryId ?? null,
    driverId: f.dispatchDriverId ?? null,
    driverName: f.dispatchDriverName ?? null,
    trackingUrl: f.dispatchTrackingUrl ?? null,
    reason: f.dispatchReason ?? null,
    updatedAt: f.dispatchUpdatedAt ?? null,
  };
}

@Resolver('Order')
export class OrderDeliveryResolver {
  @ResolveField()
  delivery(@Parent() order: Order): OrderDelivery | null {
    return orderDelivery(order);
  }
}

@Resolver()
export class MarkReadyForDeliveryResolver {
  constructor(
    @Inject(DispatchOutboundService) private readonly outbound: DispatchOutboundService,
    @Inject(OrderService) private readonly orderService: OrderService,
  ) {}

  // No @Transaction: a refusal must keep its history entry while the caller gets the error.
  @Mutation()
  @Allow(Permission.UpdateOrder)
  async markReadyForDelivery(@Ctx() ctx: RequestContext, @Args() args: { orderId: ID }): Promise<Order> {
    const outcome = await this.outbound.requestDelivery(ctx, args.orderId);
    if (!outcome.sent && outcome.reason !== 'already-requested') throw new UserInputError(outcome.message);
    const order = await this.orderService.findOne(ctx, args.orderId);
    if (!order) throw new UserInputError(`No order with id ${args.orderId}`);
    return order;
  }
}
