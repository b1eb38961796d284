import { EventEmitter } from 'node:events';
import { Redis, type RedisOptions } from 'ioredis';
import type { Logger } from './logger.js';

export class RedisUnavailableError extends Error {
  constructor(message = 'redis unavailable') {
    super(message);
    this.name = 'RedisUnavailableError';
  }
}

export interface RedisClients {
  /** Commands on request paths: short timeout, no offline queue, auto-pipelined. */
  command: Redis;
  /** Adapter publisher: never queues while Redis is away (a broadcast then is lost, not buffered without bound). */
  publisher: Redis;
  /** Adapter subscriber: reconnects and re-subscribes by itself. */
  subscriber: Redis;
  breaker: CircuitBreaker;
  close(): Promise<void>;
}

export interface RedisClientOptions {
  url: string;
  commandTimeoutMs: number;
  logger: Logger;
}

/**
 * Stops hammering a dead or black-holed Redis: after `threshold` consecutive failures the circuit
 * opens and calls fail at once; after `cooldownMs` one probe call is let through.
 */
export class CircuitBreaker extends EventEmitter {
  private failures = 0;
  private openedAt = 0;
  private probing = false;
  state: 'closed' | 'open' = 'closed';

  constructor(
    private readonly threshold = 3,
    private readonly cooldownMs = 1000,
  ) {
    super();
  }

  /** Closed, or open long enough that one probe may go through. */
  canTry(): boolean {
    return this.state === 'closed' || (!this.probing && Date.now() - this.openedAt >= this.cooldownMs);
  }

  async run<T>(call: () => Promise<T>): Promise<T> {
    if (this.state === 'open') {
      if (this.probing || Date.now() - this.openedAt < this.cooldownMs) throw new RedisUnavailableError('redis circuit open');
      this.probing = true;
    }
    try {
      const result = await call();
      this.onSuccess();
      return result;
    } catch (err) {
      this.onFailure();
      throw err;
    } finally {
      this.probing = false;
    }
  }

  onSuccess(): void {
    this.failures = 0;
    if (this.state === 'open') {
      this.state = 'closed';
      this.emit('closed');
    }
  }

  onFailure(): void {
    this.failures += 1;
    if (this.state === 'closed' && this.failures >= this.threshold) {
      this.state = 'open';
      this.emit('open');
    }
    if (this.state === 'open') this.openedAt = Date.now();
  }

  /** Connection loss is known at once: no need to wait for three timeouts. */
  trip(): void {
    this.failures = this.threshold;
    if (this.state === 'closed') {
      this.state = 'open';
      this.emit('open');
    }
    this.openedAt = Date.now();
  }
}

export function createRedisClients(opts: RedisClientOptions): RedisClients {
  const base: RedisOptions = {
    connectTimeout: Math.max(1000, opts.commandTimeoutMs * 2),
    retryStrategy: (times) => Math.min(100 * 2 ** Math.min(times, 5), 2000),
    lazyConnect: true,
  };
  const command = new Redis(opts.url, {
    ...base,
    connectionName: 'hub-command',
    commandTimeout: opts.commandTimeoutMs,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    enableAutoPipelining: true,
  });
  const publisher = new Redis(opts.url, {
    ...base,
    connectionName: 'hub-publisher',
    commandTimeout: opts.commandTimeoutMs,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
  });
  // The adapter publishes without awaiting; while Redis is away a broadcast is dropped, never left unhandled.
  const publish = publisher.publish.bind(publisher) as (channel: string, message: string | Buffer) => Promise<number>;
  (publisher as unknown as { publish: typeof publish }).publish = (channel, message) =>
    publish(channel, message).catch(() => 0);
  const subscriber = new Redis(opts.url, { ...base, connectionName: 'hub-subscriber', maxRetriesPerRequest: null });

  const breaker = new CircuitBreaker();
  const log = opts.logger.child({ component: 'redis' });
  for (const [name, client] of Object.entries({ command, publisher, subscriber })) {
    client.on('error', (err) => log.debug({ client: name, err: err.message }, 'redis client error'));
  }
  command.on('close', () => breaker.trip());
  command.on('ready', () => breaker.onSuccess());

  return {
    command,
    publisher,
    subscriber,
    breaker,
    async close() {
      await Promise.allSettled([command.quit(), publisher.quit(), subscriber.quit()]);
      command.disconnect();
      publisher.disconnect();
      subscriber.disconnect();
    },
  };
}

/** Connects all clients, failing after `timeoutMs` instead of waiting for Redis forever. */
export async function connectRedis(clients: RedisClients, timeoutMs: number): Promise<boolean> {
  const attempt = Promise.all([clients.command.connect(), clients.publisher.connect(), clients.subscriber.connect()]);
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), timeoutMs);
  });
  try {
    return await Promise.race([attempt.then(() => true), timeout]);
  } catch {
    return false;
  } finally {
    clearTimeout(timer);
  }
}
