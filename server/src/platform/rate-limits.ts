import type { Cluster, Redis } from 'ioredis';
import { RateLimiterMemory, RateLimiterRedis, RateLimiterRes } from 'rate-limiter-flexible';
import type { CircuitBreaker } from './redis.js';

export interface RateRule {
  points: number;
  /** Window length in whole seconds (the Redis limiter works in seconds). */
  seconds: number;
  /**
   * `node`: counted in this process only, where every event of the key arrives at one node anyway;
   * `cluster`: counted in Redis so the budget holds across nodes.
   */
  scope: 'node' | 'cluster';
}

/**
 * Constants rather than environment knobs: nobody has needed to turn them yet, and every new
 * variable is part of the public configuration contract. createApp takes overrides (tests do).
 */
export const DEFAULT_RATE_LIMITS = {
  /** Per driver. Apps ping every 1 to 5 s; 40 per 2 s leaves room for a reconnect flush, not for a loop. */
  // A driver has one live socket in the whole cluster (the newest connection wins), so all its pings
  // reach one node: counting them there is exact, and spares the hot path a Redis call per ping.
  location: { points: 40, seconds: 2, scope: 'node' },
  /** Per driver, `status` and `delivery:update` together: a person taps these; 10/s is generous. */
  driverAction: { points: 20, seconds: 2, scope: 'cluster' },
  /** Per dispatcher socket: a map pans a few times a second at most. */
  viewport: { points: 20, seconds: 2, scope: 'node' },
  /** Per driver handshakes: a reconnect storm (a buggy app in a loop, a stolen token) is refused at the door. */
  driverConnect: { points: 10, seconds: 10, scope: 'cluster' },
  /** Per dispatcher (token subject) handshakes: each one loads and sends a snapshot. */
  dispatcherConnect: { points: 10, seconds: 10, scope: 'cluster' },
  /**
   * Per tracking token, its page and state together: the page polls every 3 s (20 a minute), so
   * three viewers of one link fit; a script hammering a link does not, on any node.
   */
  trackingRead: { points: 60, seconds: 60, scope: 'cluster' },
} as const satisfies Record<string, RateRule>;

export type RateLimitName = keyof typeof DEFAULT_RATE_LIMITS;
export type RateLimitRules = Partial<Record<RateLimitName, Omit<RateRule, 'scope'> & { scope?: RateRule['scope'] }>>;

export interface RateLimits {
  /**
   * Takes one point from `key`'s budget: null when allowed, else the milliseconds until it may
   * retry. A node-scoped rule answers synchronously (no promise on the per-ping path).
   */
  consume(name: RateLimitName, key: string): number | null | Promise<number | null>;
  /**
   * One point from each key's budget, answered in order like `consume`; a cluster-scoped rule on
   * a single Redis counts them all in one script call (a reconnect storm's batch of handshakes
   * costs one command, not one per driver). A key may appear more than once.
   */
  consumeMany(name: RateLimitName, keys: readonly string[]): Promise<(number | null)[]>;
}

/**
 * rate-limiter-flexible's own counting step (a window that starts with its first point and
 * expires with the key) for every key of KEYS, so a budget counted here and one counted by its
 * `consume` are the same budget. ARGV: points per key, window seconds. Returns consumed, ms left
 * for each key in turn.
 */
const CONSUME_MANY = `
local points = tonumber(ARGV[1])
local seconds = tonumber(ARGV[2])
local out = {}
for i = 1, #KEYS do
  redis.call('set', KEYS[i], 0, 'EX', seconds, 'NX')
  local consumed = redis.call('incrby', KEYS[i], points)
  local ttl = redis.call('pttl', KEYS[i])
  if ttl == -1 then
    redis.call('expire', KEYS[i], seconds)
    ttl = 1000 * seconds
  end
  out[#out + 1] = consumed
  out[#out + 1] = ttl
end
return out`;

const MAX_BLOCKED_KEYS = 10_000;

interface Pair {
  keyPrefix: string;
  points: number;
  seconds: number;
  memory: RateLimiterMemory;
  shared: RateLimiterRedis | null;
  local: WindowCounters | null;
  /** Keys over their budget, until when: refused without asking Redis (as `inMemoryBlockOnConsumed` does for `shared`). */
  blockedUntil: Map<string, number>;
}

/**
 * Fixed-window counters in this process, checked synchronously. rate-limiter-flexible's memory
 * limiter answers with a promise and keeps a timer per key; at thousands of pings a second that
 * was a measurable share of the hub's CPU and garbage, for a rule that needs neither.
 */
export class WindowCounters {
  private windows = new Map<string, { endsAt: number; used: number }>();
  private nextSweepAt = 0;

  constructor(
    private readonly points: number,
    private readonly windowMs: number,
    private readonly now: () => number = Date.now,
  ) {}

  consume(key: string): number | null {
    const now = this.now();
    if (now >= this.nextSweepAt) this.sweep(now);
    let window = this.windows.get(key);
    if (!window || now >= window.endsAt) {
      window = { endsAt: now + this.windowMs, used: 0 };
      this.windows.set(key, window);
    }
    window.used += 1;
    return window.used <= this.points ? null : Math.max(1, window.endsAt - now);
  }

  /** Ended windows go, once per window length, so keys of departed drivers do not pile up. */
  private sweep(now: number): void {
    for (const [key, window] of this.windows) if (now >= window.endsAt) this.windows.delete(key);
    this.nextSweepAt = now + this.windowMs;
  }
}

/**
 * Limits that hold across nodes (counted in Redis under the hub's prefix) and fall back to this
 * process's memory while Redis is away: a flood is then limited per node instead of per cluster,
 * which is weaker but never lets an outage open the gates or refuse honest drivers.
 */
export function createRateLimits(opts: {
  redis: Redis | Cluster | null;
  breaker?: CircuitBreaker;
  /** The breaker of the shard that holds a Redis key (a cluster has one per master); default `breaker`. */
  breakerFor?: (redisKey: string) => CircuitBreaker;
  prefix: string;
  rules?: RateLimitRules;
}): RateLimits {
  const pairs = {} as Record<RateLimitName, Pair>;
  for (const name of Object.keys(DEFAULT_RATE_LIMITS) as RateLimitName[]) {
    const { points, seconds } = opts.rules?.[name] ?? DEFAULT_RATE_LIMITS[name];
    const scope = opts.rules?.[name]?.scope ?? DEFAULT_RATE_LIMITS[name].scope;
    const keyPrefix = `${opts.prefix}rl:${name}`;
    const memory = new RateLimiterMemory({ keyPrefix, points, duration: seconds });
    const shared =
      opts.redis && scope === 'cluster'
      ? new RateLimiterRedis({
          storeClient: opts.redis,
          keyPrefix,
          points,
          duration: seconds,
          // A key over its budget is refused from memory until its window ends: a flood costs no Redis calls.
          inMemoryBlockOnConsumed: points,
          rejectIfRedisNotReady: true,
          insuranceLimiter: memory,
        })
      : null;
    pairs[name] = { keyPrefix, points, seconds, memory, shared, local: scope === 'node' ? new WindowCounters(points, seconds * 1000) : null, blockedUntil: new Map() };
  }
  // Several keys in one script call need them on one server: a cluster counts key by key.
  const single = opts.redis && !opts.redis.isCluster ? (opts.redis as Redis & { hubConsumeMany(...args: (string | number)[]): Promise<number[]> }) : null;
  single?.defineCommand('hubConsumeMany', { lua: CONSUME_MANY });

  return {
    consume(name, key) {
      const { local } = pairs[name];
      return local ? local.consume(key) : consumeShared(name, key);
    },
    consumeMany,
  };

  async function consumeMany(name: RateLimitName, keys: readonly string[]): Promise<(number | null)[]> {
    const pair = pairs[name];
    const { local, shared } = pair;
    if (local) return keys.map((key) => local.consume(key));
    if (!shared || !single || opts.breaker?.state === 'open' || single.status !== 'ready') return Promise.all(keys.map((key) => consumeShared(name, key)));
    const now = Date.now();
    const answers: (number | null)[] = keys.map((key) => {
      const until = pair.blockedUntil.get(key);
      if (until === undefined) return null;
      if (until > now) return until - now;
      pair.blockedUntil.delete(key);
      return null;
    });
    const asked = keys.flatMap((key, i) => (answers[i] === null ? [i] : []));
    if (asked.length === 0) return answers;
    let reply: number[];
    try {
      reply = await single.hubConsumeMany(asked.length, ...asked.map((i) => `${pair.keyPrefix}:${keys[i]}`), 1, pair.seconds);
    } catch {
      // Redis failed the call: this process's memory counts instead, as the insurance limiter does for one key.
      return Promise.all(keys.map((key, i) => (answers[i] !== null ? answers[i] : consumeWith(pair.memory, key))));
    }
    const answeredAt = Date.now();
    asked.forEach((i, n) => {
      const consumed = Number(reply[2 * n]);
      const msLeft = Math.max(1, Number(reply[2 * n + 1]));
      if (consumed >= pair.points) pair.blockedUntil.set(keys[i], answeredAt + msLeft);
      answers[i] = consumed > pair.points ? msLeft : null;
    });
    if (pair.blockedUntil.size > MAX_BLOCKED_KEYS) {
      for (const [key, until] of pair.blockedUntil) if (until <= answeredAt) pair.blockedUntil.delete(key);
      // A cache only: Redis still counts every key.
      if (pair.blockedUntil.size > MAX_BLOCKED_KEYS) pair.blockedUntil.clear();
    }
    return answers;
  }

  async function consumeShared(name: RateLimitName, key: string): Promise<number | null> {
    const { memory, shared } = pairs[name];
    // With the circuit open Redis (on a cluster: the shard of this key) is known to be away: do not
    // wait for a command timeout per event.
    const breaker = opts.breakerFor?.(`${opts.prefix}rl:${name}:${key}`) ?? opts.breaker;
    return consumeWith(shared && breaker?.state !== 'open' ? shared : memory, key);
  }
}

async function consumeWith(limiter: RateLimiterRedis | RateLimiterMemory, key: string): Promise<number | null> {
  try {
    await limiter.consume(key);
    return null;
  } catch (err) {
    if (err instanceof RateLimiterRes) return Math.max(1, Math.ceil(err.msBeforeNext));
    // Only reachable if the memory limiter itself broke: a broken limiter must not lock drivers out.
    return null;
  }
}
