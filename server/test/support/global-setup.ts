import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { createConnection } from 'node:net';
import postgres from 'postgres';
import type { TestProject } from 'vitest/node';
import { freePort, waitForPort } from './net.js';

/**
 * Finds the real services the tests talk to. PostgreSQL: DATABASE_URL or 127.0.0.1:5432, else
 * PGlite. Redis: REDIS_URL or 127.0.0.1:6379, else a private redis-server on a free port.
 */
let privateRedis: ChildProcess | undefined;

async function postgresReachable(url: string): Promise<boolean> {
  const sql = postgres(url, { max: 1, connect_timeout: 3, onnotice: () => {} });
  try {
    await sql`select 1`;
    return true;
  } catch {
    return false;
  } finally {
    await sql.end({ timeout: 1 }).catch(() => {});
  }
}

function redisReachable(url: string): Promise<boolean> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve) => {
    const socket = createConnection({ host: hostname, port: Number(port || 6379) });
    socket.setTimeout(2000);
    socket.once('connect', () => socket.write('PING\r\n'));
    socket.once('data', (data) => {
      resolve(data.toString().startsWith('+PONG'));
      socket.destroy();
    });
    socket.once('error', () => resolve(false));
    socket.once('timeout', () => {
      resolve(false);
      socket.destroy();
    });
  });
}

export default async function setup(project: TestProject) {
  const pgUrl = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
  const pgOk = await postgresReachable(pgUrl);
  const redisUrl = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
  let redisOk = await redisReachable(redisUrl);
  let effectiveRedis = redisUrl;
  const redisBinary = spawnSync('redis-server', ['--version']).status === 0;
  if (!redisOk && redisBinary) {
    const port = await freePort();
    privateRedis = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
    await waitForPort(port);
    effectiveRedis = `redis://127.0.0.1:${port}`;
    redisOk = true;
  }
  if (!redisOk) {
    throw new Error('Tests need Redis: set REDIS_URL, run one on 127.0.0.1:6379, or install redis-server (apt-get install redis-server).');
  }
  project.provide('pgAdminUrl', pgOk ? pgUrl : '');
  project.provide('redisUrl', effectiveRedis);
  project.provide('redisBinary', redisBinary);
  if (!pgOk) console.warn('PostgreSQL not reachable: PostgreSQL-backed tests run on embedded PGlite');
  return () => {
    privateRedis?.kill('SIGKILL');
  };
}

declare module 'vitest' {
  export interface ProvidedContext {
    pgAdminUrl: string;
    redisUrl: string;
    redisBinary: boolean;
  }
}
