import { type ChildProcess, spawn } from 'node:child_process';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { inject } from 'vitest';
import { freePort, waitForPort } from './net.js';
import { reachesSharedRedis } from './test-prefixes.js';

/**
 * A TCP proxy the test controls: `pass` forwards, `blackhole` keeps connections open but drops
 * every byte (a hung server), `refuse` cuts every connection and refuses new ones.
 */
export class TcpProxy {
  mode: 'pass' | 'blackhole' | 'refuse' = 'pass';
  /**
   * In front of Redis: what reaches a subscribing client (one that sent a SUBSCRIBE of any kind)
   * arrives this much later, so its node hears other nodes' messages late while its commands are answered at once.
   */
  subscriberDelayMs = 0;
  private readonly pairs = new Set<[Socket, Socket]>();
  private server!: Server;
  port = 0;

  constructor(private readonly targetPort: number) {}

  async start(port = 0): Promise<number> {
    this.server = createServer((client) => {
      if (this.mode === 'refuse') return client.destroy();
      const upstream = createConnection({ host: '127.0.0.1', port: this.targetPort });
      const pair: [Socket, Socket] = [client, upstream];
      this.pairs.add(pair);
      let subscriber = false;
      client.on('data', (chunk: Buffer) => {
        if (this.mode !== 'pass') return;
        subscriber ||= /subscribe/i.test(chunk.toString('latin1'));
        upstream.write(chunk);
      });
      upstream.on('data', (chunk: Buffer) => {
        if (this.mode !== 'pass') return;
        // One delay for every chunk: timers of one duration fire in the order they were set.
        if (subscriber && this.subscriberDelayMs > 0) setTimeout(() => client.writable && client.write(chunk), this.subscriberDelayMs);
        else client.write(chunk);
      });
      const end = () => {
        client.destroy();
        upstream.destroy();
        this.pairs.delete(pair);
      };
      client.on('error', end).on('close', end);
      upstream.on('error', end).on('close', end);
    });
    await new Promise<void>((resolve) => this.server.listen(port, '127.0.0.1', resolve));
    this.port = (this.server.address() as { port: number }).port;
    return this.port;
  }

  set(mode: 'pass' | 'blackhole' | 'refuse'): void {
    this.mode = mode;
    if (mode === 'refuse') this.cutAll();
  }

  private cutAll(): void {
    for (const [a, b] of this.pairs) {
      a.destroy();
      b.destroy();
    }
  }

  async stop(): Promise<void> {
    this.cutAll();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

/** A started proxy in front of the shared Redis, and the URL through it (hubs given it are tidied after the file). */
export async function proxyToSharedRedis(): Promise<{ proxy: TcpProxy; url: string }> {
  const proxy = new TcpProxy(Number(new URL(inject('redisUrl')).port || 6379));
  await proxy.start();
  const url = `redis://127.0.0.1:${proxy.port}`;
  reachesSharedRedis(url);
  return { proxy, url };
}

/** A redis-server of the test's own on a free port; never the machine's shared one. */
export class PrivateRedis {
  private child: ChildProcess | undefined;
  port = 0;

  async start(port?: number): Promise<number> {
    this.port = port ?? this.port ?? (await freePort());
    if (!this.port) this.port = await freePort();
    this.child = spawn('redis-server', ['--port', String(this.port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
    await waitForPort(this.port);
    return this.port;
  }

  async kill(): Promise<void> {
    const child = this.child;
    if (!child || child.exitCode !== null) return;
    await new Promise<void>((resolve) => {
      child.once('exit', () => resolve());
      child.kill('SIGKILL');
    });
  }

  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }
}
