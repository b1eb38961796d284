import gql from 'graphql-tag';

export const adminApiExtensions = gql`
  enum OrderDeliveryStatus {
    "Checked and queued; the hub has not answered yet"
    REQUESTED
    "The hub has it and waits for a free driver"
    PENDING
    OFFERED
    ASSIGNED
    PICKED_UP
    DELIVERED
    FAILED
    CANCELLED
    "Not sent (missing coordinates), refused by the hub, or given up after every retry: see reason"
    REFUSED
  }

  type OrderDelivery {
    status: OrderDeliveryStatus!
    deliveryId: String
    driverId: String
    driverName: String
    trackingUrl: String
    reason: String
    updatedAt: DateTime
  }

  extend type Order {
    "The hub's delivery of this order; null until it is sent"
    delivery: OrderDelivery
  }

  extend type Mutation {
    "Sends the order to the dispatch hub now (checked first: an order without coordinates is refused with the reason)"
    markReadyForDelivery(orderId: ID!): Order!
  }
`;
