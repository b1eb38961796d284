type Listener = (...args: any[]) => unknown;

/**
 * A small typed event emitter (no node:events, so it runs in React Native). A listener that
 * throws does not stop the others; the failure goes to `onListenerError`.
 */
export class TypedEmitter<Events extends { [E in keyof Events]: Listener }> {
  private readonly listeners = new Map<keyof Events, Set<Listener>>();

  constructor(private readonly onListenerError: (event: keyof Events, err: unknown) => void) {}

  on<E extends keyof Events>(event: E, listener: Events[E]): () => void {
    let set = this.listeners.get(event);
    if (!set) this.listeners.set(event, (set = new Set()));
    set.add(listener);
    return () => this.off(event, listener);
  }

  off<E extends keyof Events>(event: E, listener: Events[E]): void {
    this.listeners.get(event)?.delete(listener);
  }

  count(event: keyof Events): number {
    return this.listeners.get(event)?.size ?? 0;
  }

  emit<E extends keyof Events>(event: E, ...args: Parameters<Events[E]>): void {
    for (const listener of this.snapshot(event)) {
      try {
        const result = listener(...args);
        if (result instanceof Promise) result.catch((err) => this.onListenerError(event, err));
      } catch (err) {
        this.onListenerError(event, err);
      }
    }
  }

  /** Calls every listener and waits for all of them; rejects with the first failure. */
  async emitAndWait<E extends keyof Events>(event: E, ...args: Parameters<Events[E]>): Promise<void> {
    const results = this.snapshot(event).map((listener) => {
      try {
        return Promise.resolve(listener(...args));
      } catch (err) {
        return Promise.reject(err);
      }
    });
    await Promise.all(results);
  }

  clear(): void {
    this.listeners.clear();
  }

  private snapshot(event: keyof Events): Listener[] {
    const set = this.listeners.get(event);
    return set ? [...set] : [];
  }
}
