/**
 * shards: the ingest (hub only) and assignment scenarios once per Redis layout, in one run, their
 * figures side by side: `--layouts 0,3` (0: the shared single Redis; N: a private N-master Redis
 * Cluster with region cells and the sharded adapter). Every other option goes to both scenarios
 * as given (`--sockets`, `--drivers`, `--rate`, ...). See docs/scaling.md.
 */
import type { RunContext, ScenarioOutput, TargetCheck } from '../context.js';
import { table } from '../lib.js';
import { assignment } from './assignment.js';
import { ingest } from './ingest.js';

/** The scenario's context with `--shards` fixed, the rest as given. */
function withShards(ctx: RunContext, shards: number): RunContext {
  return { ...ctx, num: (name, full, quick) => (name === 'shards' ? shards : ctx.num(name, full, quick)), str: (name, fallback) => (name === 'targets' ? 'hub' : ctx.str(name, fallback)) };
}

const layoutName = (shards: number) => (shards === 0 ? 'single redis' : `cluster, ${shards} masters`);

export async function shards(ctx: RunContext): Promise<ScenarioOutput> {
  const layouts = ctx
    .str('layouts', '0,3')
    .split(',')
    .map((n) => Number(n.trim()));
  if (layouts.some((n) => !Number.isInteger(n) || n < 0 || n === 2 || n > 16)) throw new Error('--layouts: 0 (single Redis) or 1, 3..16 masters, comma-separated');
  const results: Record<string, { ingest: Record<string, unknown>; assignment: Record<string, unknown> }> = {};
  const rows: (string | number | null | undefined)[][] = [
    ['layout', 'ingest sustained pings/s', 'stop reason', 'assignment fixed p50 ms', 'p99 ms', 'assigned / orders', 'max assigned/s', 'hub CPU ms per assignment'],
  ];
  const checks: TargetCheck[] = [];
  for (const n of layouts) {
    ctx.log(`== shards: ${layoutName(n)}: ingest`);
    const ing = await ingest(withShards(ctx, n));
    ctx.log(`== shards: ${layoutName(n)}: assignment`);
    const asg = await assignment(withShards(ctx, n));
    results[layoutName(n)] = { ingest: ing.results, assignment: asg.results };
    checks.push(...[...ing.checks, ...asg.checks].map((c) => ({ ...c, name: `[${layoutName(n)}] ${c.name}` })));
    const hub = (ing.results.targets as Record<string, { sustainedPerSec: number | null; stopReason: string }>).hub;
    const a = asg.results as { fixedRate: { requestToDriverMs: { p50: number | null; p99: number | null }; assigned: number; orders: number }; maxThroughput: { assignedPerSec: number | null }; hubCpuMsPerAssignment: number | null };
    rows.push([
      layoutName(n),
      hub?.sustainedPerSec,
      hub?.stopReason,
      a.fixedRate.requestToDriverMs.p50,
      a.fixedRate.requestToDriverMs.p99,
      `${a.fixedRate.assigned} / ${a.fixedRate.orders}`,
      a.maxThroughput.assignedPerSec,
      a.hubCpuMsPerAssignment,
    ]);
  }
  return { results: { layouts: results }, checks, table: table(rows) };
}
