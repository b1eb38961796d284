/**
 * Many callers' small requests answered by one round trip: items gather for a short window (or
 * until a batch is full) and one `run` handles them all. While `concurrency` batches are in flight
 * new items wait for the next, so under load batches grow instead of round trips multiplying, and
 * under light load an item waits at most `windowMs` plus one round trip.
 */
export interface BatchWindowOptions<I, R> {
  /** How long the first item of a batch waits for company. */
  windowMs: number;
  /**
   * The window under load: after a batch of more than one item the next one waits this long, so
   * a steady stream (a reconnect storm) shares each round trip among many, while a lone item
   * still waits `windowMs` only. Default `windowMs` (a fixed window).
   */
  maxWindowMs?: number;
  /** A batch goes at once when it holds this many items. */
  maxBatch: number;
  /** Batches in flight at once (default 1). */
  concurrency?: number;
  /** One result per item, in order. A throw fails every item of the batch with that error. */
  run(items: I[]): Promise<R[]>;
}

export interface BatchWindow<I, R> {
  add(item: I): Promise<R>;
  /** Items waiting for a batch or in one. */
  readonly pending: number;
  /** Resolves once every item added so far has its answer. */
  settle(): Promise<void>;
}

interface Waiting<I, R> {
  item: I;
  resolve(result: R): void;
  reject(err: unknown): void;
}

export function createBatchWindow<I, R>(opts: BatchWindowOptions<I, R>): BatchWindow<I, R> {
  const concurrency = Math.max(1, opts.concurrency ?? 1);
  const maxBatch = Math.max(1, opts.maxBatch);
  let queue: Waiting<I, R>[] = [];
  let inFlight = 0;
  let running = 0;
  let timer: NodeJS.Timeout | null = null;
  const idle: (() => void)[] = [];
  const maxWindowMs = Math.max(opts.windowMs, opts.maxWindowMs ?? opts.windowMs);
  /** Items in the batch launched last: how busy the stream is. */
  let lastBatchSize = 1;

  function launch(): void {
    if (timer) {
      clearTimeout(timer);
      timer = null;
    }
    while (queue.length > 0 && inFlight < concurrency) {
      const batch = queue.length <= maxBatch ? queue : queue.slice(0, maxBatch);
      queue = queue.length <= maxBatch ? [] : queue.slice(maxBatch);
      inFlight += 1;
      lastBatchSize = batch.length;
      void runBatch(batch);
    }
  }

  async function runBatch(batch: Waiting<I, R>[]): Promise<void> {
    try {
      const results = await opts.run(batch.map((w) => w.item));
      if (results.length !== batch.length) throw new Error(`a batch of ${batch.length} answered ${results.length} results`);
      batch.forEach((w, i) => w.resolve(results[i]));
    } catch (err) {
      for (const w of batch) w.reject(err);
    } finally {
      inFlight -= 1;
      running -= batch.length;
      // What gathered while this batch was out has waited long enough: it goes now.
      if (queue.length > 0) launch();
      if (running === 0) for (const done of idle.splice(0)) done();
    }
  }

  return {
    add(item) {
      return new Promise<R>((resolve, reject) => {
        queue.push({ item, resolve, reject });
        running += 1;
        if (inFlight >= concurrency) return;
        if (queue.length >= maxBatch) launch();
        else timer ??= setTimeout(launch, lastBatchSize > 1 ? maxWindowMs : opts.windowMs);
      });
    },
    get pending() {
      return running;
    },
    settle() {
      return running === 0 ? Promise.resolve() : new Promise<void>((resolve) => idle.push(resolve));
    },
  };
}

/**
 * The longest a handshake's bookkeeping (door, connect write, open pushes) waits for company when
 * handshakes stream in: measured on a 6,000-driver reconnect, windows growing to 8 ms cut
 * PostgreSQL statements per handshake from 0.8 to 0.4 and PostgreSQL's CPU per handshake by half.
 * A storm spread by the apps' jitter still made batches of a few at 10 ms (0.42-0.49 statements
 * per handshake); at 25 ms it made 0.17-0.20. A lone handshake waits `windowMs` only.
 */
export const BUSY_WINDOW_MS = 25;

/**
 * The most handshakes one batch of their bookkeeping carries: all of a batch's sockets go on in
 * one turn of the event loop when its round trip answers, so this bounds that turn (about 20 ms
 * at 64) while a storm still shares each round trip among dozens.
 */
export const HANDSHAKES_PER_BATCH = 64;
