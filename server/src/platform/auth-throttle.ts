import type { Cluster, Redis } from 'ioredis';
import { RateLimiterMemory, RateLimiterRedis, type RateLimiterRes } from 'rate-limiter-flexible';
import { HubError } from './errors.js';
import type { CircuitBreaker } from './redis.js';

/** How long a read that found an address's budget untouched answers for it (see `cleanUntil`). */
const CLEAN_READ_MS = 100;

export interface AuthThrottleOptions {
  redis: Redis | Cluster | null;
  breaker?: CircuitBreaker;
  /** The breaker of the shard that holds a Redis key (a cluster has one per master); default `breaker`. */
  breakerFor?: (redisKey: string) => CircuitBreaker;
  prefix: string;
  /** Failed authentications one address may have per window before it is refused outright. */
  failures: number;
  windowSeconds: number;
  /** Addresses remembered as blocked on this node; beyond it the oldest is forgotten (Redis still knows). */
  maxBlockedKeys?: number;
}

export interface AuthThrottle {
  /**
   * Throws RATE_LIMITED (details.retryAfterMs) while `address` has used up its failures. Called
   * before a credential is looked at, so a blocked address learns nothing about its guesses.
   */
  check(address: string): Promise<void>;
  /** One failed authentication from `address`: a bad bearer, signature or token. */
  failed(address: string): Promise<void>;
}

/**
 * Failed authentication, counted per client address (admin bearer, webhook signature, socket
 * handshake alike). Counted in Redis so the budget holds across nodes, in this process's memory
 * while Redis is away (per node then: weaker, never open). An address over its budget is refused
 * until its window ends, whatever it sends: a correct guess must look exactly like a wrong one.
 */
export function createAuthThrottle(opts: AuthThrottleOptions): AuthThrottle {
  const keyPrefix = `${opts.prefix}rl:authFailures`;
  const memory = new RateLimiterMemory({ keyPrefix, points: opts.failures, duration: opts.windowSeconds });
  const shared = opts.redis
    ? new RateLimiterRedis({ storeClient: opts.redis, keyPrefix, points: opts.failures, duration: opts.windowSeconds, rejectIfRedisNotReady: true, insuranceLimiter: memory })
    : null;
  /** Addresses this node knows are blocked, until when: a flood from one costs no Redis round trips. */
  const blockedUntil = new Map<string, number>();
  const maxBlocked = opts.maxBlockedKeys ?? 10_000;

  const breakerOf = (address: string) => opts.breakerFor?.(`${keyPrefix}:${address}`) ?? opts.breaker;
  const limiter = (address: string) => (shared && breakerOf(address)?.state !== 'open' ? shared : memory);
  /**
   * Reads of an address's budget in flight: checks of the same address meanwhile share the read.
   * A webhook sender or a fleet behind one NAT sends many requests at once; each costed a Redis
   * transaction (and a reconnect storm from one address, thousands).
   */
  const reading = new Map<string, Promise<RateLimiterRes | null>>();
  /**
   * Addresses whose budget was untouched when last read, until when that read still answers: a
   * webhook sender's steady stream costs one Redis read per CLEAN_READ_MS, not one per request.
   * An address with any failure on record is read every time, so a block made on another node
   * holds here at once; a first failure elsewhere is seen here within CLEAN_READ_MS.
   */
  const cleanUntil = new Map<string, number>();
  function readBudget(address: string): Promise<RateLimiterRes | null> {
    const clean = cleanUntil.get(address);
    if (clean !== undefined) {
      if (clean > performance.now()) return Promise.resolve(null);
      cleanUntil.delete(address);
    }
    let read = reading.get(address);
    if (!read) {
      read = limiter(address).get(address);
      reading.set(address, read);
      const done = () => reading.delete(address);
      read.then((res) => {
        done();
        if (res !== null && res.consumedPoints > 0) return;
        // A cache only: full (a storm of handshakes from as many addresses), it starts over.
        if (cleanUntil.size >= maxBlocked) cleanUntil.clear();
        cleanUntil.set(address, performance.now() + CLEAN_READ_MS);
      }, done);
    }
    return read;
  }

  function remember(address: string, res: RateLimiterRes | null): number | null {
    if (!res || res.consumedPoints < opts.failures) return null;
    const waitMs = Math.max(1, Math.ceil(res.msBeforeNext));
    if (!blockedUntil.has(address) && blockedUntil.size >= maxBlocked) {
      const now = Date.now();
      for (const [key, until] of blockedUntil) if (until <= now) blockedUntil.delete(key);
      if (blockedUntil.size >= maxBlocked) blockedUntil.delete(blockedUntil.keys().next().value as string);
    }
    blockedUntil.set(address, Date.now() + waitMs);
    return waitMs;
  }

  const refuse = (waitMs: number) =>
    new HubError('RATE_LIMITED', `too many failed authentications from this address; retry in ${Math.ceil(waitMs / 1000)} s`, { retryAfterMs: waitMs });

  return {
    async check(address) {
      const until = blockedUntil.get(address);
      if (until !== undefined) {
        if (until > Date.now()) throw refuse(until - Date.now());
        blockedUntil.delete(address);
      }
      let res: RateLimiterRes | null;
      try {
        res = await readBudget(address);
      } catch {
        // A broken limiter must not lock everyone out; the credential check still runs.
        return;
      }
      const waitMs = remember(address, res);
      if (waitMs !== null) throw refuse(waitMs);
    },
    async failed(address) {
      cleanUntil.delete(address);
      try {
        remember(address, await limiter(address).penalty(address, 1));
      } catch {}
    },
  };
}

/** `tracking`: a tracking link that matches no live delivery (a guess, or an expired link). */
export type AuthKind = 'admin' | 'webhook' | 'handshake' | 'tracking';

/** What the edges (HTTP routes, socket handshakes) need to throttle failed authentication. */
export interface AuthGate {
  /** The client address of an HTTP request, as the throttle counts it. */
  httpAddress(c: { env: unknown; req: { header(name: string): string | undefined } }): string;
  /** The client address of a socket handshake. */
  handshakeAddress(handshake: { address: string; headers: Record<string, string | string[] | undefined> }): string;
  check(address: string): Promise<void>;
  failed(kind: AuthKind, address: string): Promise<void>;
}

export function createAuthGate(deps: {
  throttle: AuthThrottle;
  addressOf: (peer: string | undefined, forwardedFor: string | string[] | undefined) => string;
  metrics: { authFailures: { inc(labels: { kind: AuthKind }): void }; rateLimited: { inc(labels: { event: string }): void } };
}): AuthGate {
  return {
    httpAddress(c) {
      // @hono/node-server puts the Node request in the bindings; a request made in-process has none.
      const peer = (c.env as { incoming?: { socket?: { remoteAddress?: string } } } | undefined)?.incoming?.socket?.remoteAddress;
      return deps.addressOf(peer, c.req.header('x-forwarded-for'));
    },
    handshakeAddress(handshake) {
      return deps.addressOf(handshake.address, handshake.headers['x-forwarded-for']);
    },
    async check(address) {
      try {
        await deps.throttle.check(address);
      } catch (err) {
        deps.metrics.rateLimited.inc({ event: 'auth' });
        throw err;
      }
    },
    async failed(kind, address) {
      deps.metrics.authFailures.inc({ kind });
      await deps.throttle.failed(address);
    },
  };
}

