/**
 * Reads a V8 .cpuprofile (from --cpu-prof or the bench's --profile) and lists the functions with
 * the most self time, and self time per package or source file. A .heapprofile (the bench's
 * --allocations) is listed the same way in bytes allocated, per order when --per is given.
 *
 *   npx tsx load-tests/bench/profile-top.ts <file.cpuprofile|file.heapprofile> [--top 25] [--per 3000]
 */
import { readFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}

interface CpuProfile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
  startTime: number;
  endTime: number;
}

export interface ProfileEntry {
  name: string;
  where: string;
  selfMs: number;
  percentOfBusy: number;
}

export interface ProfileSummary {
  totalMs: number;
  idleMs: number;
  busyMs: number;
  gcMs: number;
  topFunctions: ProfileEntry[];
  byModule: { module: string; selfMs: number; percentOfBusy: number }[];
  /**
   * Time charged to the nearest library or hub file on the stack: a socket write made by postgres.js
   * counts for postgres.js, not for `(native)`. Shows which layer a cost belongs to.
   */
  byOwner: { owner: string; ms: number; percentOfBusy: number }[];
}

/** A module that owns work (a package or a file of ours), as opposed to Node's internals and natives. */
function isOwner(module: string): boolean {
  // The bench's wire counter wraps every socket write: the write belongs to whoever called it.
  if (module === 'load-tests/bench/instrument.ts') return false;
  return module.startsWith('node_modules/') || /^(server|shared|load-tests)\//.test(module);
}

/** server/src/x.ts, shared/src/x.ts, node_modules/<pkg>, node:<internal>, or the V8 pseudo-frames. */
export function moduleOf(url: string, functionName: string): string {
  if (!url) return functionName.startsWith('(') ? functionName : '(native)';
  const path = url.replace(/^file:\/\//, '');
  const nm = path.lastIndexOf('node_modules/');
  if (nm >= 0) {
    const rest = path.slice(nm + 'node_modules/'.length).split('/');
    return `node_modules/${rest[0].startsWith('@') ? `${rest[0]}/${rest[1]}` : rest[0]}`;
  }
  const src = path.search(/(server|shared|load-tests)\//);
  if (src >= 0) return path.slice(src);
  if (path.startsWith('node:')) return path.split('/')[0];
  return path;
}

export function summarizeProfile(profile: CpuProfile, top = 25): ProfileSummary {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const selfUs = new Map<number, number>();
  for (let i = 0; i < profile.samples.length; i++) {
    const delta = profile.timeDeltas[i + 1] ?? 0;
    selfUs.set(profile.samples[i], (selfUs.get(profile.samples[i]) ?? 0) + delta);
  }
  const fn = new Map<string, { name: string; where: string; us: number }>();
  const mod = new Map<string, number>();
  const parent = new Map<number, number>();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const ownerOf = new Map<number, string>();
  const owner = (id: number): string => {
    const known = ownerOf.get(id);
    if (known) return known;
    const node = byId.get(id)!;
    const module = moduleOf(node.callFrame.url, node.callFrame.functionName);
    const up = parent.get(id);
    const pseudo = node.callFrame.functionName.startsWith('(');
    const found = isOwner(module) || pseudo || up === undefined ? module : owner(up);
    ownerOf.set(id, found === '(root)' ? module : found);
    return ownerOf.get(id)!;
  };
  const owners = new Map<string, number>();
  let totalUs = 0;
  let idleUs = 0;
  let gcUs = 0;
  for (const [id, us] of selfUs) {
    const node = byId.get(id)!;
    const { functionName, url, lineNumber } = node.callFrame;
    totalUs += us;
    if (functionName === '(idle)') {
      idleUs += us;
      continue;
    }
    if (functionName === '(garbage collector)') gcUs += us;
    const module = moduleOf(url, functionName);
    const where = url ? `${module}:${lineNumber + 1}` : module;
    const key = `${functionName}|${where}`;
    const entry = fn.get(key) ?? { name: functionName || '(anonymous)', where, us: 0 };
    entry.us += us;
    fn.set(key, entry);
    mod.set(module, (mod.get(module) ?? 0) + us);
    const who = owner(id);
    owners.set(who, (owners.get(who) ?? 0) + us);
  }
  const busyUs = totalUs - idleUs;
  const pct = (us: number) => Number(((us / Math.max(1, busyUs)) * 100).toFixed(1));
  return {
    totalMs: Math.round(totalUs / 1000),
    idleMs: Math.round(idleUs / 1000),
    busyMs: Math.round(busyUs / 1000),
    gcMs: Math.round(gcUs / 1000),
    topFunctions: [...fn.values()]
      .sort((a, b) => b.us - a.us)
      .slice(0, top)
      .map((e) => ({ name: e.name, where: e.where, selfMs: Math.round(e.us / 1000), percentOfBusy: pct(e.us) })),
    byModule: [...mod.entries()]
      .sort((a, b) => b[1] - a[1])
      .slice(0, top)
      .map(([module, us]) => ({ module, selfMs: Math.round(us / 1000), percentOfBusy: pct(us) })),
    byOwner: [...owners.entries()]
      .sort((a, b) => b[1] - a[1])
      .slice(0, top)
      .map(([who, us]) => ({ owner: who, ms: Math.round(us / 1000), percentOfBusy: pct(us) })),
  };
}

interface HeapNode {
  callFrame: ProfileNode['callFrame'];
  selfSize: number;
  children: HeapNode[];
}

/** Bytes allocated per function, per module, and per owner (as for CPU time), biggest first. */
export function summarizeAllocations(profile: { head: HeapNode }): { totalBytes: number; top: [string, number][]; byModule: [string, number][]; byOwner: [string, number][] } {
  const byFunction = new Map<string, number>();
  const byModule = new Map<string, number>();
  const byOwner = new Map<string, number>();
  const add = (map: Map<string, number>, key: string, bytes: number) => map.set(key, (map.get(key) ?? 0) + bytes);
  let totalBytes = 0;
  const stack: { node: HeapNode; owner: string }[] = [{ node: profile.head, owner: '(native)' }];
  while (stack.length > 0) {
    const { node, owner: above } = stack.pop()!;
    const { functionName, url, lineNumber } = node.callFrame;
    const module = moduleOf(url, functionName);
    const owner = isOwner(module) ? module : above;
    if (node.selfSize > 0) {
      totalBytes += node.selfSize;
      add(byFunction, `${functionName || '(anonymous)'}  (${module}:${lineNumber + 1})`, node.selfSize);
      add(byModule, module, node.selfSize);
      add(byOwner, owner, node.selfSize);
    }
    for (const child of node.children) stack.push({ node: child, owner });
  }
  const sorted = (map: Map<string, number>) => [...map].sort((a, b) => b[1] - a[1]);
  return { totalBytes, top: sorted(byFunction), byModule: sorted(byModule), byOwner: sorted(byOwner) };
}

function formatAllocations(summary: ReturnType<typeof summarizeAllocations>, top: number, per: number): string {
  const unit = per > 1 ? 'KB each' : 'KB';
  const kb = (bytes: number) => (bytes / 1024 / per).toFixed(2).padStart(10);
  return [
    `allocated ${(summary.totalBytes / 2 ** 20).toFixed(1)} MB (sampled)${per > 1 ? `, ${(summary.totalBytes / 1024 / per).toFixed(1)} KB for each of ${per}` : ''}`,
    '',
    `${unit.padStart(10)}  function  (where)`,
    ...summary.top.slice(0, top).map(([name, bytes]) => `${kb(bytes)}  ${name}`),
    '',
    `${unit.padStart(10)}  module`,
    ...summary.byModule.slice(0, 15).map(([name, bytes]) => `${kb(bytes)}  ${name}`),
    '',
    `${unit.padStart(10)}  owner`,
    ...summary.byOwner.slice(0, 20).map(([name, bytes]) => `${kb(bytes)}  ${name}`),
  ].join('\n');
}

export function readProfile(path: string): CpuProfile {
  return JSON.parse(readFileSync(path, 'utf8')) as CpuProfile;
}

export function formatProfile(summary: ProfileSummary, top = 25): string {
  const lines = [
    `total ${summary.totalMs} ms, busy ${summary.busyMs} ms (${((summary.busyMs / Math.max(1, summary.totalMs)) * 100).toFixed(0)}%), GC ${summary.gcMs} ms`,
    '',
    'self%  self ms  function  (where)',
    ...summary.topFunctions.slice(0, top).map((e) => `${String(e.percentOfBusy).padStart(5)}  ${String(e.selfMs).padStart(7)}  ${e.name}  (${e.where})`),
    '',
    'self%  self ms  module',
    ...summary.byModule.slice(0, 15).map((m) => `${String(m.percentOfBusy).padStart(5)}  ${String(m.selfMs).padStart(7)}  ${m.module}`),
    '',
    '    %       ms  owner (natives and Node internals charged to the library or hub file that called them)',
    ...(summary.byOwner ?? []).slice(0, 20).map((m) => `${String(m.percentOfBusy).padStart(5)}  ${String(m.ms).padStart(7)}  ${m.owner}`),
  ];
  return lines.join('\n');
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const { values, positionals } = parseArgs({ allowPositionals: true, options: { top: { type: 'string' }, per: { type: 'string' } } });
  if (positionals.length === 0) {
    console.error('usage: tsx load-tests/bench/profile-top.ts <file.cpuprofile|file.heapprofile> [--top 25] [--per N]');
    process.exit(2);
  }
  const top = Number(values.top ?? 25);
  for (const path of positionals) {
    console.log(`== ${path}`);
    if (path.endsWith('.heapprofile')) {
      const profile = JSON.parse(readFileSync(path, 'utf8')) as { head: HeapNode };
      console.log(formatAllocations(summarizeAllocations(profile), top, Math.max(1, Number(values.per ?? 1))));
    } else console.log(formatProfile(summarizeProfile(readProfile(path), top), top));
  }
}
