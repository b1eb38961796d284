import { Gauge } from 'prom-client';
import type { Metrics } from './metrics.js';
import type { CircuitBreaker } from './redis.js';

export interface StateGaugeSources {
  /** Deliveries waiting for a driver. */
  pendingDeliveries(): Promise<number>;
  /** Status events not yet delivered to Vendure, and the age of the oldest. */
  outboxLag(): Promise<{ pending: number; oldestSeconds: number }>;
  /** The Redis circuit breaker (on a cluster: open while any master's is); absent when Redis is disabled. */
  breaker?: Pick<CircuitBreaker, 'state'>;
}

/**
 * Gauges of shared state, read when Prometheus scrapes (not kept up to date on every change): what
 * the dashboard and the alert rules in deploy/ need beside the counters. PostgreSQL being away
 * leaves the last values (and /health says why); a scrape never fails because of it.
 */
export function registerStateGauges(metrics: Metrics, sources: StateGaugeSources): void {
  const registers = [metrics.registry];
  new Gauge({
    name: 'hub_redis_breaker_open',
    help: '1 while the Redis circuit breaker is open (commands refused at once; running degraded), 0 closed or Redis disabled',
    registers,
    collect() {
      this.set(sources.breaker?.state === 'open' ? 1 : 0);
    },
  });
  const lastLag = { pending: 0, oldestSeconds: 0 };
  // One query serves both gauges; the first registered collects it (prom-client collects in order).
  const oldestPending = new Gauge({ name: 'hub_outbox_oldest_pending_seconds', help: 'Age of the oldest undelivered status event (shared: the same on every node)', registers: [] });
  new Gauge({
    name: 'hub_outbox_pending',
    help: 'Status events not yet delivered to Vendure (shared: the same on every node)',
    registers,
    async collect() {
      Object.assign(lastLag, await sources.outboxLag().catch(() => lastLag));
      this.set(lastLag.pending);
      oldestPending.set(lastLag.oldestSeconds);
    },
  });
  metrics.registry.registerMetric(oldestPending);
  let lastPending = 0;
  new Gauge({
    name: 'hub_deliveries_pending',
    help: 'Deliveries waiting for a free driver (shared: the same on every node)',
    registers,
    async collect() {
      lastPending = await sources.pendingDeliveries().catch(() => lastPending);
      this.set(lastPending);
    },
  });
}
