import fc from 'fast-check';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { backoffWindow, DEFAULT_BACKOFF, fullJitterDelay } from './backoff.js';
import { createDriverClient, type DriverClient } from './driver-client.js';
import { fakeConnector, seededRandom } from './fake-socket.js';

const SESSION = { driverId: 'd', status: 'AVAILABLE' as const, activeDelivery: null, offer: null };

describe('backoff', () => {
  it('when retries follow each other, then the window doubles from base up to the cap and stays there', () => {
    const options = { baseMs: 1000, capMs: 30_000 };
    expect([0, 1, 2, 3, 4, 5, 6, 40, 5000].map((r) => backoffWindow(r, options))).toEqual([1000, 2000, 4000, 8000, 16_000, 30_000, 30_000, 30_000, 30_000]);
  });

  it('when any random value in [0, 1) is drawn, then the delay is a whole number in [0, window)', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 100_000 }),
        fc.integer({ min: 0, max: 1_000_000 }),
        fc.integer({ min: 0, max: 10_000 }),
        fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }),
        (baseMs, extra, retry, r) => {
          const options = { baseMs, capMs: baseMs + extra };
          const delay = fullJitterDelay(retry, options, () => r);
          expect(Number.isInteger(delay)).toBe(true);
          expect(delay).toBeGreaterThanOrEqual(0);
          expect(delay).toBeLessThan(backoffWindow(retry, options));
          expect(backoffWindow(retry, options)).toBeLessThanOrEqual(options.capMs);
        },
      ),
    );
  });

  describe('a fleet whose node died', () => {
    const CLIENTS = 1000;
    let clients: DriverClient[] = [];

    beforeEach(() => {
      vi.useFakeTimers();
    });
    afterEach(() => {
      for (const client of clients) client.close();
      clients = [];
      vi.useRealTimers();
    });

    /** Starts `CLIENTS` connected clients, drops them all at once, and returns when each tried again (ms after the drop). */
    async function reconnectTimes(failFirstRetry: boolean): Promise<number[]> {
      const times: number[] = new Array(CLIENTS);
      let droppedAt = Infinity;
      const connected: ReturnType<typeof fakeConnector>[] = [];
      clients = Array.from({ length: CLIENTS }, (_, i) => {
        // Attempt 1 is the start, 2 the first retry after the drop.
        const connector = fakeConnector((socket, attempt) => {
          if (attempt === 1) socket.open(SESSION);
          else if (attempt === 2 && failFirstRetry) socket.fire('connect_error', new Error('websocket error'));
          else times[i] ??= Date.now() - droppedAt;
        });
        const client = createDriverClient({ url: 'http://hub.test', token: 't', connect: connector.connect, runtime: { random: seededRandom(1000 + i) } });
        client.on('connection', (change) => {
          if (change.state === 'connected') connected.push(connector);
        });
        return client;
      });
      await vi.advanceTimersByTimeAsync(0);
      expect(connected).toHaveLength(CLIENTS);
      // Connected for a while: the node dies after the clients settled in.
      await vi.advanceTimersByTimeAsync(60_000);
      droppedAt = Date.now();
      for (const connector of connected) connector.last.drop('transport close');
      await vi.advanceTimersByTimeAsync(DEFAULT_BACKOFF.baseMs * 3 + 1);
      return times;
    }

    function spread(times: number[], windowMs: number, buckets: number) {
      const sorted = [...times].sort((a, b) => a - b);
      const counts = new Array(buckets).fill(0);
      for (const t of times) counts[Math.min(buckets - 1, Math.floor((t / windowMs) * buckets))] += 1;
      const quantile = (q: number) => sorted[Math.floor(q * (sorted.length - 1))];
      return { min: sorted[0], max: sorted[sorted.length - 1], p10: quantile(0.1), p50: quantile(0.5), p90: quantile(0.9), counts };
    }

    it('when 1,000 connected clients lose their node at once, then their first reconnects spread evenly over the first window', async () => {
      const times = await reconnectTimes(false);
      expect(times.filter((t) => t === undefined)).toHaveLength(0);
      const { baseMs } = DEFAULT_BACKOFF;
      const s = spread(times, baseMs, 5);
      if (process.env.SHOW_SPREAD) console.log('first retry', s);
      // Full jitter: uniform over [0, base). 200 per second expected; a fixed delay would put all 1,000 in one.
      expect(s.max).toBeLessThanOrEqual(baseMs + 10);
      for (const count of s.counts) {
        expect(count).toBeGreaterThan(150);
        expect(count).toBeLessThan(250);
      }
      expect(s.p10).toBeGreaterThan(0.05 * baseMs);
      expect(s.p10).toBeLessThan(0.15 * baseMs);
      expect(s.p50).toBeGreaterThan(0.4 * baseMs);
      expect(s.p50).toBeLessThan(0.6 * baseMs);
      expect(s.p90).toBeGreaterThan(0.85 * baseMs);
      expect(s.p90).toBeLessThan(0.95 * baseMs);
    });

    it('when their first retry fails too, then the second spreads over a window twice as long', async () => {
      const times = await reconnectTimes(true);
      expect(times.filter((t) => t === undefined)).toHaveLength(0);
      const { baseMs } = DEFAULT_BACKOFF;
      // The second retry starts up to one base window after the drop and waits up to two more.
      const s = spread(times, 3 * baseMs, 6);
      if (process.env.SHOW_SPREAD) console.log('second retry', s);
      expect(s.max).toBeLessThanOrEqual(3 * baseMs + 20);
      // Each 2.5 s slice of the 15 s span gets some, none gets a third of the fleet.
      for (const count of s.counts) {
        expect(count).toBeGreaterThan(30);
        expect(count).toBeLessThan(333);
      }
      expect(s.p50).toBeGreaterThan(0.3 * 3 * baseMs);
    });
  });
});
