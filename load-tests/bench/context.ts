import { fork } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { type Cleanup, ROOT, type ServerProc } from './infra.js';
import { RpcChild } from './lib.js';
import { formatProfile, type ProfileSummary, readProfile, summarizeProfile } from './profile-top.js';

export interface RunContext {
  scenario: string;
  quick: boolean;
  runId: string;
  /** Where server logs go (one file per process). */
  logDir: string;
  /** Set with --profile: CPU profiles of the hub's measured window are written here. */
  profileDir: string | null;
  /** Set with --allocations: beside each CPU profile, a sampled allocation profile of the same window. */
  allocations?: boolean;
  /** Extra hub environment from --env KEY=VALUE. */
  hubEnv: Record<string, string>;
  /** A numeric option: --name value, else the quick or full default. */
  num(name: string, full: number, quick?: number): number;
  flag(name: string): boolean;
  str(name: string, fallback: string): string;
  log(message: string): void;
}

export interface TargetCheck {
  name: string;
  target: string;
  measured: string;
  met: boolean | null;
  note?: string;
}

export interface ScenarioOutput {
  results: Record<string, unknown>;
  checks: TargetCheck[];
  table: string;
  profiles?: Record<string, ProfileSummary>;
}

export type Scenario = (ctx: RunContext) => Promise<ScenarioOutput>;

export function spawnProber(cleanup: Cleanup, name: string): RpcChild {
  const proc = fork(fileURLToPath(new URL('./prober.ts', import.meta.url)), [], {
    cwd: ROOT,
    execArgv: ['--import', 'tsx'],
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const rpc = new RpcChild(name, proc);
  cleanup.add(`stop ${name}`, async () => {
    await rpc.call('close', undefined, 5000).catch(() => {});
    await rpc.stop('SIGTERM', 5000);
  });
  return rpc;
}

/** Profiles `server` while `during` runs (when --profile was given); returns the summary. */
export async function profiled<T>(
  ctx: RunContext,
  server: ServerProc,
  label: string,
  during: () => Promise<T>,
  profiles: Record<string, ProfileSummary>,
): Promise<T> {
  if (!ctx.profileDir) return during();
  const path = join(ctx.profileDir, `${ctx.runId}-${label}.cpuprofile`);
  await server.rpc.call('profileStart', { intervalUs: 1000, allocations: ctx.allocations === true });
  try {
    return await during();
  } finally {
    await server.rpc.call('profileStop', { path, allocationsPath: ctx.allocations ? path.replace(/\.cpuprofile$/, '.heapprofile') : undefined });
    const summary = summarizeProfile(readProfile(path), 30);
    profiles[label] = summary;
    ctx.log(`CPU profile of ${server.name} (${label}) written to ${path}\n${formatProfile(summary, 15)}`);
  }
}
