import { type ChildProcess, spawn } from 'node:child_process';
import type { Config } from '../../src/platform/config.js';

export interface ChildHub {
  url: string;
  port: number;
  /** HTTP_PORT's port when the hub opened one (`"apiPort"` in its listening line). */
  apiPort: number | null;
  process: ChildProcess;
  logs: string[];
  kill(signal?: NodeJS.Signals): Promise<number | null>;
}

/** A hub in its own process (for SIGKILL and SIGTERM tests), configured through the environment like production. */
export async function spawnHub(env: Record<string, string | undefined>): Promise<ChildHub> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'server/src/main.ts'], {
    env: { ...process.env, PORT: '0', HOST: '127.0.0.1', LOG_LEVEL: 'info', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const logs: string[] = [];
  let apiPort: number | null = null;
  const port = await new Promise<number>((resolve, reject) => {
    // A child that never says it listens is killed, not left running after the test.
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`child hub did not start:\n${logs.join('\n')}`));
    }, 30_000);
    let buffer = '';
    child.stdout!.on('data', (chunk: Buffer) => {
      buffer += chunk.toString();
      let newline = buffer.indexOf('\n');
      while (newline >= 0) {
        const line = buffer.slice(0, newline);
        buffer = buffer.slice(newline + 1);
        logs.push(line);
        const match = /"port":(\d+)/.exec(line);
        if (match && line.includes('listening')) {
          clearTimeout(timer);
          const api = /"apiPort":(\d+)/.exec(line);
          if (api) apiPort = Number(api[1]);
          resolve(Number(match[1]));
        }
        newline = buffer.indexOf('\n');
      }
    });
    child.stderr!.on('data', (chunk: Buffer) => logs.push(chunk.toString()));
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`child hub exited with ${code}:\n${logs.join('\n')}`));
    });
  });
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    apiPort,
    process: child,
    logs,
    kill(signal = 'SIGKILL') {
      return new Promise((resolve) => {
        if (child.exitCode !== null || child.signalCode !== null) return resolve(child.exitCode);
        child.once('exit', (code) => resolve(code));
        child.kill(signal);
      });
    },
  };
}

/** The environment a child hub needs to join the same cluster as an in-process test hub. */
export function envFrom(config: Config, extra: Record<string, string> = {}): Record<string, string | undefined> {
  return {
    DATABASE_URL: config.DATABASE_URL,
    DATA_DIR: config.DATA_DIR,
    REDIS_URL: config.REDIS_URL,
    REDIS_CLUSTER_NODES: config.REDIS_CLUSTER_NODES?.map((n) => `${n.host}:${n.port}`).join(','),
    REDIS_CELL_DEGREES: String(config.REDIS_CELL_DEGREES),
    REDIS_PREFIX: config.REDIS_PREFIX,
    ADMIN_TOKEN: config.ADMIN_TOKEN,
    JWT_SECRET: config.JWT_SECRET,
    WEBHOOK_SECRET: config.WEBHOOK_SECRETS.join(' '),
    HEARTBEAT_TTL_SECONDS: String(config.HEARTBEAT_TTL_SECONDS),
    LOCATION_TICK_MS: String(config.LOCATION_TICK_MS),
    POSITION_FLUSH_MS: String(config.POSITION_FLUSH_MS),
    RECONCILE_MS: String(config.RECONCILE_MS),
    SHED_LAG_MS: String(config.SHED_LAG_MS),
    ...extra,
  };
}
