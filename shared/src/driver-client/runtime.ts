/**
 * What the client takes from its surroundings, so tests (and apps with their own schedulers)
 * can hand in fakes. The defaults read the globals at call time, so fake timers installed after
 * the client was made still apply.
 */
export interface DriverClientRuntime {
  now(): number;
  /** Uniform in [0, 1), like Math.random. */
  random(): number;
  setTimeout(callback: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export const defaultRuntime: DriverClientRuntime = {
  now: () => Date.now(),
  random: () => Math.random(),
  setTimeout: (callback, ms) => globalThis.setTimeout(callback, ms),
  clearTimeout: (handle) => globalThis.clearTimeout(handle as Parameters<typeof globalThis.clearTimeout>[0]),
};
