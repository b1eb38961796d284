import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

/** One registry per hub instance (tests run several hubs in one process). */
export function createMetrics(nodeId: string, thread?: 'main' | 'api') {
  const registry = new Registry();
  registry.setDefaultLabels(thread ? { node: nodeId, thread } : { node: nodeId });
  collectDefaultMetrics({ register: registry, eventLoopMonitoringPrecision: 10 });
  // The process's CPU, memory and file descriptors are the main thread's to report: from the API
  // thread too they would be counted twice by any sum over a node's series.
  if (thread === 'api') {
    for (const metric of registry.getMetricsAsArray()) if (metric.name.startsWith('process_')) registry.removeSingleMetric(metric.name);
  }
  // Read at each scrape once a source is known (composition root), not only when /health is asked.
  let redisHealthy: (() => boolean) | null = null;
  const m = {
    registry,
    /** Where hub_redis_up reads its value when Prometheus scrapes. */
    watchRedis(source: () => boolean): void {
      redisHealthy = source;
    },
    socketsConnected: new Gauge({ name: 'hub_sockets_connected', help: 'Open sockets by namespace', labelNames: ['namespace'], registers: [registry] }),
    pingsReceived: new Counter({ name: 'hub_location_fixes_total', help: 'Location fixes accepted', registers: [registry] }),
    inputRejected: new Counter({ name: 'hub_input_rejected_total', help: 'Client input refused', labelNames: ['event', 'code'], registers: [registry] }),
    geoWrites: new Counter({ name: 'hub_geo_batch_writes_total', help: 'Batched presence script calls', registers: [registry] }),
    positionFlushes: new Counter({ name: 'hub_position_flushes_total', help: 'Batched position writes to PostgreSQL', registers: [registry] }),
    assignments: new Counter({ name: 'hub_assignments_total', help: 'Deliveries assigned', labelNames: ['source'], registers: [registry] }),
    handshakeSeconds: new Histogram({
      name: 'hub_handshake_seconds',
      help: 'Driver handshakes by stage: auth (address budget, token), door (connect budget, token version), session (connect bookkeeping)',
      labelNames: ['stage'],
      buckets: [0.005, 0.025, 0.1, 0.25, 1, 2.5, 5, 10],
      registers: [registry],
    }),
    offers: new Counter({ name: 'hub_offers_total', help: 'Offers (DISPATCH_MODE=offer) by outcome: made, accepted, declined, expired', labelNames: ['outcome'], registers: [registry] }),
    assignmentSeconds: new Histogram({ name: 'hub_assignment_seconds', help: 'Webhook assignment latency', buckets: [0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1], registers: [registry] }),
    httpRequestSeconds: new Histogram({
      name: 'hub_http_request_seconds',
      help: 'HTTP requests from the moment the hub reads them to their answer, by route pattern, method and status',
      labelNames: ['route', 'method', 'status'],
      buckets: [0.005, 0.025, 0.1, 0.25, 1, 2.5, 5],
      registers: [registry],
    }),
    webhookRequests: new Counter({ name: 'hub_webhook_requests_total', help: 'Inbound webhooks by outcome', labelNames: ['event', 'outcome'], registers: [registry] }),
    driversSwept: new Counter({ name: 'hub_drivers_swept_total', help: 'Drivers taken offline by heartbeat expiry', registers: [registry] }),
    redisUp: new Gauge({
      name: 'hub_redis_up',
      help: '1 when Redis is reachable',
      registers: [registry],
      collect() {
        if (redisHealthy) this.set(redisHealthy() ? 1 : 0);
      },
    }),
    redisRebuilds: new Counter({ name: 'hub_redis_rebuilds_total', help: 'Redis presence rebuilds from PostgreSQL', registers: [registry] }),
    presenceReconciles: new Counter({ name: 'hub_presence_reconciles_total', help: 'Reconcile passes of Redis presence against PostgreSQL run by this node', registers: [registry] }),
    outboxSent: new Counter({ name: 'hub_outbox_sent_total', help: 'Status events delivered to Vendure', registers: [registry] }),
    outboxFailures: new Counter({ name: 'hub_outbox_failures_total', help: 'Failed status event attempts', registers: [registry] }),
    outboxDead: new Counter({ name: 'hub_outbox_dead_total', help: 'Status events given up on', registers: [registry] }),
    pushesSent: new Counter({ name: 'hub_pushes_sent_total', help: 'Pushes sent to driver apps (first: through the adapter; again: re-sent by the node holding the socket)', labelNames: ['kind', 'how'], registers: [registry] }),
    pushesAcknowledged: new Counter({ name: 'hub_pushes_acknowledged_total', help: 'Pushes the driver app acknowledged', labelNames: ['kind'], registers: [registry] }),
    pushesUnacknowledged: new Counter({ name: 'hub_pushes_unacknowledged_total', help: 'Pushes flagged unacknowledged after every re-send went unanswered', labelNames: ['kind'], registers: [registry] }),
    locationsShed: new Counter({ name: 'hub_location_fixes_shed_total', help: 'Location fixes refused because the hub was past its capacity (event loop late or position writes behind)', registers: [registry] }),
    rateLimited: new Counter({ name: 'hub_rate_limited_total', help: 'Events refused by rate limits', labelNames: ['event'], registers: [registry] }),
    apiThreadRestarts: new Counter({ name: 'hub_api_thread_restarts_total', help: 'Times the API thread (API_THREAD=true) died and was started again', registers: [registry] }),
    authFailures: new Counter({ name: 'hub_auth_failures_total', help: 'Failed authentications by kind (admin, webhook, handshake, tracking)', labelNames: ['kind'], registers: [registry] }),
  };
  return m;
}

export type Metrics = ReturnType<typeof createMetrics>;
