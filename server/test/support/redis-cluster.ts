import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Cluster } from 'ioredis';
import { eventually, waitForPort } from './net.js';

const run = promisify(execFile);

function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
  });
}

/** A port whose cluster bus port (+10000) is free too. */
async function clusterPort(taken: Set<number>): Promise<number> {
  for (let tries = 0; tries < 200; tries++) {
    const port = 20_000 + Math.floor(Math.random() * 25_000);
    if (taken.has(port) || taken.has(port + 10_000)) continue;
    if ((await portFree(port)) && (await portFree(port + 10_000))) {
      taken.add(port);
      taken.add(port + 10_000);
      return port;
    }
  }
  throw new Error('no free port pair for a cluster node');
}

async function clusterInfo(port: number): Promise<string> {
  const { stdout } = await run('redis-cli', ['-p', String(port), 'cluster', 'info']);
  return stdout;
}

/**
 * A three-master Redis Cluster of the test's own on free ports (never the shared Redis), without
 * persistence: a master killed and started again keeps its slots (nodes.conf) and comes back empty.
 * `cluster-require-full-coverage no` lets the other masters serve while one is down, as the hub
 * expects of a production cluster.
 */
export class PrivateRedisCluster {
  readonly ports: number[] = [];
  private readonly children: (ChildProcess | null)[] = [];
  private dir = '';

  async start(masters = 3): Promise<this> {
    this.dir = mkdtempSync(join(tmpdir(), 'hub-redis-cluster-'));
    const taken = new Set<number>();
    for (let i = 0; i < masters; i++) this.ports.push(await clusterPort(taken));
    for (let i = 0; i < masters; i++) await this.startNode(i);
    if (masters >= 3) {
      await run('redis-cli', ['--cluster', 'create', ...this.ports.map((p) => `127.0.0.1:${p}`), '--cluster-replicas', '0', '--cluster-yes']);
    } else {
      // `--cluster create` wants three masters at least: fewer get their slots and each other by hand.
      for (const [i, port] of this.ports.entries()) {
        const first = Math.floor((16384 * i) / masters);
        const last = Math.floor((16384 * (i + 1)) / masters) - 1;
        await run('redis-cli', ['-p', String(port), 'cluster', 'addslotsrange', String(first), String(last)]);
        if (i > 0) await run('redis-cli', ['-p', String(this.ports[0]), 'cluster', 'meet', '127.0.0.1', String(port)]);
      }
    }
    await this.waitOk();
    return this;
  }

  private async startNode(i: number): Promise<void> {
    const port = this.ports[i];
    this.children[i] = spawn(
      'redis-server',
      [
        '--port', String(port),
        '--bind', '127.0.0.1',
        '--cluster-enabled', 'yes',
        '--cluster-config-file', join(this.dir, `nodes-${port}.conf`),
        '--cluster-node-timeout', '1500',
        '--cluster-require-full-coverage', 'no',
        '--dir', this.dir,
        '--save', '',
        '--appendonly', 'no',
      ],
      { stdio: 'ignore' },
    );
    await waitForPort(port);
  }

  /** Every master says cluster_state:ok. */
  async waitOk(timeoutMs = 20_000): Promise<void> {
    await eventually(async () => (await Promise.all(this.ports.map(clusterInfo))).every((info) => info.includes('cluster_state:ok')), 'cluster_state:ok', timeoutMs, 100);
  }

  /** REDIS_CLUSTER_NODES for a hub. */
  get seeds(): string {
    return this.ports.map((p) => `127.0.0.1:${p}`).join(',');
  }

  client(): Cluster {
    return new Cluster(
      this.ports.map((port) => ({ host: '127.0.0.1', port })),
      { redisOptions: { maxRetriesPerRequest: 1 }, clusterNodeRetryStrategy: (times: number) => Math.min(times * 100, 1000) },
    );
  }

  /** The master (index) that serves a key, asked of the cluster itself. */
  async nodeOf(key: string): Promise<number> {
    const { stdout: slot } = await run('redis-cli', ['-p', String(this.ports[0]), 'cluster', 'keyslot', key]);
    const { stdout } = await run('redis-cli', ['-p', String(this.ports[0]), 'cluster', 'slots']);
    const lines = stdout.trim().split('\n');
    // Each range prints start, end, then host and port (and id) of its master.
    const n = Number(slot.trim());
    for (let i = 0; i + 3 < lines.length; i++) {
      const start = Number(lines[i]);
      const end = Number(lines[i + 1]);
      if (/^\d+$/.test(lines[i]) && /^\d+$/.test(lines[i + 1]) && lines[i + 2] === '127.0.0.1' && n >= start && n <= end) {
        return this.ports.indexOf(Number(lines[i + 3]));
      }
    }
    throw new Error(`no master serves ${key}`);
  }

  async kill(i: number): Promise<void> {
    const child = this.children[i];
    this.children[i] = null;
    if (!child || child.exitCode !== null) return;
    await new Promise<void>((resolve) => {
      child.once('exit', () => resolve());
      child.kill('SIGKILL');
    });
  }

  /** Starts a killed master again: same slots, no data. */
  async restart(i: number): Promise<void> {
    await this.startNode(i);
    await this.waitOk();
  }

  async stop(): Promise<void> {
    for (let i = 0; i < this.children.length; i++) await this.kill(i);
    if (this.dir) rmSync(this.dir, { recursive: true, force: true });
  }
}
