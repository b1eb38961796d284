import type { DriverSession } from '../events.js';
import type { DriverSocket, DriverSocketConnector, DriverSocketTarget } from './driver-socket.js';

type Listener = (...args: any[]) => void;

/** A socket whose far end the test plays: it records what the client sends and fires what the hub would. */
export class FakeSocket implements DriverSocket {
  connected = false;
  connectCalls = 0;
  disconnectCalls = 0;
  readonly sent: { event: string; args: unknown[] }[] = [];
  private listeners = new Map<string, Set<Listener>>();

  constructor(
    readonly target: DriverSocketTarget,
    private readonly onConnect?: (socket: FakeSocket) => void,
  ) {}

  connect(): void {
    this.connectCalls += 1;
    // As a real socket: the far end answers later, never inside connect().
    if (this.onConnect) queueMicrotask(() => this.onConnect!(this));
  }

  disconnect(): void {
    this.disconnectCalls += 1;
    this.connected = false;
  }

  on(event: string, listener: Listener): void {
    let set = this.listeners.get(event);
    if (!set) this.listeners.set(event, (set = new Set()));
    set.add(listener);
  }

  off(): void {
    this.listeners.clear();
  }

  emit(event: string, ...args: unknown[]): void {
    this.sent.push({ event, args });
  }

  // ---- the hub's side ----

  fire(event: string, ...args: unknown[]): void {
    for (const listener of [...(this.listeners.get(event) ?? [])]) listener(...args);
  }

  /** Handshake accepted and `session` sent, as the hub does on connect. */
  open(session: DriverSession): void {
    this.connected = true;
    this.fire('connect');
    this.fire('session', session);
  }

  refuse(code: string, details?: unknown): void {
    this.fire('connect_error', Object.assign(new Error(code), { data: { code, message: `refused: ${code}`, details } }));
  }

  drop(reason = 'transport close'): void {
    this.connected = false;
    this.fire('disconnect', reason);
  }

  /** Sends a push with an acknowledgement and collects the app's answers. */
  push(event: 'assignment' | 'offer' | 'delivery:cancelled', payload: unknown): unknown[] {
    const answers: unknown[] = [];
    this.fire(event, payload, (reply: unknown) => answers.push(reply));
    return answers;
  }

  emitted(event: string): { args: unknown[]; ack: ((reply: unknown) => void) | undefined }[] {
    return this.sent
      .filter((s) => s.event === event)
      .map((s) => {
        const last = s.args[s.args.length - 1];
        return { args: s.args, ack: typeof last === 'function' ? (last as (reply: unknown) => void) : undefined };
      });
  }
}

/** Hands out one FakeSocket per connection attempt; `onConnect` plays the hub's answer to each. */
export function fakeConnector(onConnect?: (socket: FakeSocket, attempt: number) => void): {
  connect: DriverSocketConnector;
  sockets: FakeSocket[];
  readonly last: FakeSocket;
} {
  const sockets: FakeSocket[] = [];
  return {
    sockets,
    connect: (target) => {
      const attempt = sockets.length + 1;
      const socket = new FakeSocket(target, onConnect && ((s) => onConnect(s, attempt)));
      sockets.push(socket);
      return socket;
    },
    get last() {
      const socket = sockets[sockets.length - 1];
      if (!socket) throw new Error('no connection attempt yet');
      return socket;
    },
  };
}

/** A small seeded PRNG (mulberry32), so spreads measured in tests are the same on every run. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
