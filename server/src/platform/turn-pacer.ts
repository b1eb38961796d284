/**
 * Lets at most `perTurn` pieces of work start in one turn of the event loop; the rest wait, in
 * arrival order, for the turns after. A reconnect storm hands a node thousands of websocket
 * upgrades at once: started all in one turn they stall everything else on the node for seconds
 * (webhooks, pings, the bookkeeping of handshakes already in), paced they interleave with it.
 */
export interface TurnPacer {
  /** Runs `start` now if this turn has room, else in a later turn. */
  admit(start: () => void): void;
  /** Work waiting for a turn. */
  readonly waiting: number;
}

export function createTurnPacer(perTurn: number): TurnPacer {
  const limit = Math.max(1, perTurn);
  let startedThisTurn = 0;
  let queue: (() => void)[] = [];
  let armed = false;

  /** At the end of this turn (the check phase, after I/O): a new turn's room, and the next of those waiting. */
  function arm(): void {
    if (armed) return;
    armed = true;
    setImmediate(nextTurn);
  }

  function nextTurn(): void {
    armed = false;
    const batch = queue.length <= limit ? queue : queue.slice(0, limit);
    queue = queue.length <= limit ? [] : queue.slice(limit);
    startedThisTurn = batch.length;
    if (batch.length > 0 || queue.length > 0) arm();
    for (const start of batch) {
      try {
        start();
      } catch {
        // One piece of work failing must not keep the others from their turn.
      }
    }
  }

  return {
    admit(start) {
      if (startedThisTurn < limit && queue.length === 0) {
        startedThisTurn += 1;
        arm();
        start();
        return;
      }
      queue.push(start);
      arm();
    },
    get waiting() {
      return queue.length;
    },
  };
}
