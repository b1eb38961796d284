import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DefaultJobQueuePlugin, defaultFulfillmentProcess, type FulfillmentProcess, type InitialData, LanguageCode, mergeConfig, PaymentMethodHandler, type VendurePlugin } from '@vendure/core';
import { createTestEnvironment, registerInitializer, SqljsInitializer, type TestEnvironment, testConfig } from '@vendure/testing';
import gql from 'graphql-tag';

// Vendure reports usage to its makers from a server that is not in CI; tests stay on 127.0.0.1.
process.env.VENDURE_DISABLE_TELEMETRY = 'true';

/** Settles at once, as a card payment that needs no capture would. */
export const testPaymentHandler = new PaymentMethodHandler({
  code: 'test-payment',
  description: [{ languageCode: LanguageCode.en, value: 'Test payment (settles at once)' }],
  args: {},
  createPayment: (_ctx, _order, amount) => ({ amount, state: 'Settled' as const, transactionId: `test-${Date.now()}` }),
  settlePayment: () => ({ success: true }),
});

/** Orders whose shipping a shop's own fulfillment process holds back (a rule Vendure enforces, as multi-vendor setups do). */
export const shippingOnHold = new Set<string>();

const holdShipping: FulfillmentProcess<any> = {
  onTransitionStart: (_from, to, data) =>
    to === 'Shipped' && data.orders.some((o) => shippingOnHold.has(o.code)) ? 'shipping is on hold for this order' : undefined,
};

const initialData: InitialData = {
  defaultLanguage: LanguageCode.en,
  defaultZone: 'Europe',
  countries: [{ name: 'Germany', code: 'DE', zone: 'Europe' }],
  taxRates: [{ name: 'Standard Tax', percentage: 0 }],
  shippingMethods: [{ name: 'Courier', price: 0 }],
  paymentMethods: [{ name: 'Test payment', handler: { code: testPaymentHandler.code, arguments: [] } }],
  collections: [],
};

/**
 * A real Vendure server (NestJS, GraphQL, TypeORM on sql.js) on `port`, populated with one product,
 * one shipping method and the test payment method, with the durable SQL job queue.
 */
export async function startVendure(port: number, plugins: Array<ReturnType<typeof VendurePlugin> | any>): Promise<TestEnvironment> {
  registerInitializer('sqljs', new SqljsInitializer(mkdtempSync(join(tmpdir(), 'vendure-test-'))));
  const config = mergeConfig(testConfig, {
    apiOptions: { port },
    paymentOptions: { paymentMethodHandlers: [testPaymentHandler] },
    shippingOptions: { process: [defaultFulfillmentProcess, holdShipping] },
    plugins: [DefaultJobQueuePlugin.init({ pollInterval: 50 }), ...plugins],
  });
  const env = createTestEnvironment(config);
  await env.server.init({ initialData, productsCsvPath: join(__dirname, '../fixtures/products.csv'), customerCount: 1 });
  await env.adminClient.asSuperAdmin();
  return env;
}

export interface PlacedOrder {
  id: string;
  code: string;
  state: string;
}

/** A guest checks out through the Shop API and pays; `dropoff` becomes the shipping address's custom fields. */
export async function placePaidOrder(env: TestEnvironment, dropoff: { lat: number; lng: number } | null): Promise<PlacedOrder> {
  const shop = env.shopClient;
  await shop.asAnonymousUser();
  const { products } = await shop.query(gql`
    query {
      products(options: { take: 1 }) {
        items {
          variants {
            id
          }
        }
      }
    }
  `);
  await expectOrder(shop.query(gql`mutation ($id: ID!) { addItemToOrder(productVariantId: $id, quantity: 2) { ...on Order { id } ...on ErrorResult { errorCode message } } }`, { id: products.items[0].variants[0].id }), 'addItemToOrder');
  await expectOrder(
    shop.query(gql`mutation ($input: CreateCustomerInput!) { setCustomerForOrder(input: $input) { ...on Order { id } ...on ErrorResult { errorCode message } } }`, {
      input: { emailAddress: `guest-${Date.now()}-${Math.random().toString(36).slice(2, 8)}@example.com`, firstName: 'Grace', lastName: 'Guest' },
    }),
    'setCustomerForOrder',
  );
  await expectOrder(
    shop.query(gql`mutation ($input: CreateAddressInput!) { setOrderShippingAddress(input: $input) { ...on Order { id } ...on ErrorResult { errorCode message } } }`, {
      input: {
        fullName: 'Grace Guest',
        streetLine1: 'Torstrasse 1',
        city: 'Berlin',
        postalCode: '10119',
        countryCode: 'DE',
        phoneNumber: '+49 30 1234567',
        ...(dropoff ? { customFields: { dispatchLatitude: dropoff.lat, dispatchLongitude: dropoff.lng } } : {}),
      },
    }),
    'setOrderShippingAddress',
  );
  const { eligibleShippingMethods } = await shop.query(gql`query { eligibleShippingMethods { id } }`);
  await expectOrder(shop.query(gql`mutation ($id: [ID!]!) { setOrderShippingMethod(shippingMethodId: $id) { ...on Order { id } ...on ErrorResult { errorCode message } } }`, { id: [eligibleShippingMethods[0].id] }), 'setOrderShippingMethod');
  await expectOrder(shop.query(gql`mutation { transitionOrderToState(state: "ArrangingPayment") { ...on Order { id } ...on OrderStateTransitionError { errorCode message transitionError } } }`), 'transitionOrderToState');
  const paid = await expectOrder(
    shop.query(gql`mutation { addPaymentToOrder(input: { method: "test-payment", metadata: {} }) { ...on Order { id code state } ...on ErrorResult { errorCode message } } }`),
    'addPaymentToOrder',
  );
  return paid as PlacedOrder;
}

async function expectOrder(request: Promise<Record<string, any>>, field: string): Promise<Record<string, any>> {
  const result = (await request)[field];
  if (!result || result.errorCode) throw new Error(`${field} failed: ${JSON.stringify(result)}`);
  return result;
}

export const ORDER_DELIVERY = gql`
  query ($id: ID!) {
    order(id: $id) {
      id
      code
      state
      fulfillments {
        id
        state
        method
        trackingCode
      }
      delivery {
        status
        deliveryId
        driverId
        driverName
        trackingUrl
        reason
        updatedAt
      }
      history(options: { take: 100 }) {
        items {
          type
          data
        }
      }
    }
  }
`;

export const DISPATCH_JOBS = gql`
  query {
    jobs(options: { filter: { queueName: { eq: "dispatch-hub-webhooks" } }, take: 100 }) {
      items {
        id
        state
        attempts
        retries
        error
        data
      }
    }
  }
`;

export const MARK_READY = gql`
  mutation ($id: ID!) {
    markReadyForDelivery(orderId: $id) {
      id
      delivery {
        status
        reason
      }
    }
  }
`;

export const UPDATE_CHANNEL = gql`
  mutation ($input: UpdateChannelInput!) {
    updateChannel(input: $input) {
      ... on Channel {
        id
      }
      ... on ErrorResult {
        errorCode
        message
      }
    }
  }
`;

export const CANCEL_ORDER = gql`
  mutation ($input: CancelOrderInput!) {
    cancelOrder(input: $input) {
      ... on Order {
        id
        state
      }
      ... on ErrorResult {
        errorCode
        message
      }
    }
  }
`;
