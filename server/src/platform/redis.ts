import { EventEmitter } from 'node:events';
import calculateSlot from 'cluster-key-slot';
import { Cluster, Redis, type RedisOptions } from 'ioredis';
import type { Logger } from './logger.js';

export class RedisUnavailableError extends Error {
  constructor(message = 'redis unavailable') {
    super(message);
    this.name = 'RedisUnavailableError';
  }
}

/** One Redis (`REDIS_URL`): the default layout. */
export interface SingleRedisClients {
  layout: 'single';
  /** Commands on request paths: short timeout, no offline queue, auto-pipelined. */
  command: Redis;
  /** Adapter publisher: never queues while Redis is away (a broadcast then is lost, not buffered without bound). */
  publisher: Redis;
  /** Adapter subscriber: reconnects and re-subscribes by itself. */
  subscriber: Redis;
  breaker: CircuitBreaker;
  /** The breaker of the Redis that holds `key`: the one breaker here. */
  breakerFor(key: string): CircuitBreaker;
  close(): Promise<void>;
}

/**
 * A Redis Cluster (`REDIS_CLUSTER_NODES`): one breaker per master, so a dead or slow shard is
 * skipped at once while the others serve; `breaker` is open only while the whole cluster is away.
 */
export interface ClusterRedisClients {
  layout: 'cluster';
  command: Cluster;
  /** SPUBLISH for the sharded adapter. */
  publisher: Cluster;
  /** SSUBSCRIBE, one connection per master (ioredis `shardedSubscribers`). */
  subscriber: Cluster;
  breaker: CircuitBreaker;
  shards: ShardBreakers;
  breakerFor(key: string): CircuitBreaker;
  close(): Promise<void>;
}

export type RedisClients = SingleRedisClients | ClusterRedisClients;

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

/**
 * ioredis gives every pipeline a `length` getter of its own (a closure defined on the instance in
 * Pipeline's constructor), and with auto-pipelining every tick that sends a command builds one.
 * V8 keeps an object that was given its own accessor alive through young-generation collections
 * until the next full one, and with it everything the pipeline holds: its commands, their
 * arguments, replies and callbacks. On the webhook path that was about 2.5 MB copied and promoted
 * at each scavenge, against 0.5 MB once pipelines share one getter (docs/performance.md, tenth
 * pass). So the getter goes on the prototype, and `pipeline()` builds pipelines without their own.
 * `multi()` builds its pipelines directly and keeps ioredis's behaviour; the hub rarely uses it.
 */
function sharePipelineLength(client: Redis | Cluster): void {
  const build = client.pipeline.bind(client) as (commands?: unknown[][]) => ReturnType<Redis['pipeline']>;
  const prototype = Object.getPrototypeOf(build()) as object;
  if (!Object.prototype.hasOwnProperty.call(prototype, 'length')) {
    Object.defineProperty(prototype, 'length', {
      get(this: { _queue: unknown[] }) {
        return this._queue.length;
      },
    });
  }
  const defineProperty = Object.defineProperty;
  const skipOwnLength = <T>(target: T, key: PropertyKey, descriptor: PropertyDescriptor): T =>
    key === 'length' && (target as { isPipeline?: unknown }).isPipeline === true ? target : defineProperty(target, key, descriptor);
  (client as unknown as { pipeline: typeof build }).pipeline = (commands) => {
    // The constructor runs synchronously: nothing else can call Object.defineProperty meanwhile.
    Object.defineProperty = skipOwnLength;
    try {
      return build(commands);
    } finally {
      Object.defineProperty = defineProperty;
    }
  };
}

export function createRedisClients(opts: RedisClientOptions): SingleRedisClients {
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
  sharePipelineLength(command);
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
    layout: 'single',
    command,
    publisher,
    subscriber,
    breaker,
    breakerFor: () => breaker,
    async close() {
      await Promise.allSettled([command.quit(), publisher.quit(), subscriber.quit()]);
      command.disconnect();
      publisher.disconnect();
      subscriber.disconnect();
    },
  };
}

/**
 * The circuit breakers of a cluster's masters, by `host:port`, and which master serves a key's slot
 * (from the slot table ioredis keeps and refreshes).
 */
export class ShardBreakers {
  private readonly breakers = new Map<string, CircuitBreaker>();
  /**
   * Masters known to hold the hub's picture since they last (re)connected: a master that went away
   * may be back empty, and is not read for answers until the presence store found its marker.
   */
  private readonly verified = new Set<string>();

  isVerified(node: string): boolean {
    return this.verified.has(node);
  }

  setVerified(node: string, verified: boolean): void {
    if (verified) this.verified.add(node);
    else this.verified.delete(node);
  }

  constructor(private readonly cluster: Cluster) {}

  /** The master that serves `key`, or null while the slot table does not know the slot. */
  masterOf(key: string): string | null {
    return this.masterOfSlot(calculateSlot(key));
  }

  masterOfSlot(slot: number): string | null {
    const nodes = (this.cluster as unknown as { slots: (string[] | undefined)[] }).slots[slot];
    return nodes?.[0] ?? null;
  }

  /** Every master the slot table names, sorted (a stable order for walks over shards). */
  masters(): string[] {
    const all = new Set<string>();
    for (const nodes of (this.cluster as unknown as { slots: (string[] | undefined)[] }).slots) if (nodes?.[0]) all.add(nodes[0]);
    return [...all].sort();
  }

  forNode(node: string): CircuitBreaker {
    let breaker = this.breakers.get(node);
    if (!breaker) {
      breaker = new CircuitBreaker();
      this.breakers.set(node, breaker);
    }
    return breaker;
  }

  /** The breaker of the shard that holds `key` (a fresh, closed one while the slot is unknown). */
  forKey(key: string): CircuitBreaker {
    return this.forNode(this.masterOf(key) ?? 'unknown');
  }

  /** A current master's circuit is open (breakers of nodes no longer in the slot table do not count). */
  anyOpen(): boolean {
    return this.masters().some((node) => this.breakers.get(node)?.state === 'open');
  }
}

export interface ClusterClientOptions {
  nodes: { host: string; port: number }[];
  commandTimeoutMs: number;
  logger: Logger;
}

/** Key of a node connection as the slot table names it. */
function nodeKeyOf(node: Redis): string {
  return `${node.options.host}:${node.options.port}`;
}

export function createRedisClusterClients(opts: ClusterClientOptions): ClusterRedisClients {
  const redisOptions = {
    connectTimeout: Math.max(1000, opts.commandTimeoutMs * 2),
    commandTimeout: opts.commandTimeoutMs,
    maxRetriesPerRequest: 0,
  };
  const base = {
    lazyConnect: true,
    // Redirections and a shard that went down are answered within the command timeout, not retried for seconds.
    maxRedirections: 4,
    retryDelayOnFailover: 50,
    retryDelayOnClusterDown: 50,
    retryDelayOnTryAgain: 50,
    slotsRefreshTimeout: Math.max(500, opts.commandTimeoutMs),
    slotsRefreshInterval: 2000,
    clusterRetryStrategy: (times: number) => Math.min(100 * 2 ** Math.min(times, 5), 2000),
    // A restarted shard is reconnected to, not only rediscovered through the next slot refresh.
    clusterNodeRetryStrategy: (times: number) => Math.min(100 * 2 ** Math.min(times, 4), 1000),
  };
  const command = new Cluster(opts.nodes, {
    ...base,
    enableOfflineQueue: false,
    enableAutoPipelining: true,
    redisOptions: { ...redisOptions, connectionName: 'hub-command' },
  });
  sharePipelineLength(command);
  const publisher = new Cluster(opts.nodes, { ...base, enableOfflineQueue: false, redisOptions: { ...redisOptions, connectionName: 'hub-publisher' } });
  // The adapter publishes without awaiting; while a shard is away a broadcast is dropped, never left unhandled.
  const spublish = publisher.spublish.bind(publisher) as (channel: string, message: string | Buffer) => Promise<number>;
  (publisher as unknown as { spublish: typeof spublish }).spublish = (channel, message) => spublish(channel, message).catch(() => 0);
  const subscriber = new Cluster(opts.nodes, {
    ...base,
    shardedSubscribers: true,
    redisOptions: { connectTimeout: redisOptions.connectTimeout, connectionName: 'hub-subscriber' },
  });

  const breaker = new CircuitBreaker();
  const shards = new ShardBreakers(command);
  const log = opts.logger.child({ component: 'redis' });
  for (const [name, client] of Object.entries({ command, publisher, subscriber })) {
    client.on('error', (err: Error) => log.debug({ client: name, err: err.message }, 'redis cluster error'));
    client.on('node error', (err: Error, node: string) => log.debug({ client: name, node, err: err.message }, 'redis cluster node error'));
  }
  command.on('node error', (_err: Error, node: string) => shards.forNode(node).trip());
  command.on('+node', (node: Redis) => {
    shards.setVerified(nodeKeyOf(node), false);
    node.on('close', () => {
      shards.setVerified(nodeKeyOf(node), false);
      shards.forNode(nodeKeyOf(node)).trip();
    });
    node.on('ready', () => shards.forNode(nodeKeyOf(node)).onSuccess());
  });
  command.on('-node', (node: Redis) => shards.setVerified(nodeKeyOf(node), false));
  command.on('close', () => breaker.trip());
  command.on('end', () => breaker.trip());
  command.on('ready', () => breaker.onSuccess());

  return {
    layout: 'cluster',
    command,
    publisher,
    subscriber,
    breaker,
    shards,
    breakerFor: (key) => shards.forKey(key),
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
