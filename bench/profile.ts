// `npx tsx bench/profile.ts [--workload 4w] [--top 30] [--no-build] [--keep]`
//
// Runs one benchmark workload on our side under `node --cpu-prof` and summarises the profile:
// self time per function and per source file, garbage collection and idle shares. Used to
// write the "Analysis" of bench/RESULTS.md.
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import { join, relative } from 'node:path';
import { pathToFileURL } from 'node:url';
import { REPO, findOurs, measure, run } from './lib.js';
import { allWorkloads, type Ctx } from './workloads.js';

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}
interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
}
interface CpuProfile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

export interface ProfileSummary {
  totalMs: number;
  byFunction: Array<{ name: string; ms: number }>;
  byFile: Array<{ name: string; ms: number }>;
}

function where(cf: CallFrame): string {
  if (cf.url === '') return '';
  const path = cf.url.startsWith('file://') ? relative(REPO, new URL(cf.url).pathname) : cf.url;
  return path;
}

/** Self time per function and per file from a .cpuprofile (sample time deltas). */
export function summarise(p: CpuProfile): ProfileSummary {
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const fn = new Map<string, number>();
  const file = new Map<string, number>();
  let total = 0;
  for (let i = 0; i < p.samples.length; i++) {
    const node = byId.get(p.samples[i]);
    const dt = (p.timeDeltas[i] ?? 0) / 1000;
    if (!node || dt <= 0) continue;
    total += dt;
    const w = where(node.callFrame);
    const name = `${node.callFrame.functionName || '(anonymous)'}${w ? ` ${w}:${node.callFrame.lineNumber + 1}` : ''}`;
    fn.set(name, (fn.get(name) ?? 0) + dt);
    const f = w === '' ? node.callFrame.functionName : w.startsWith('node:') ? 'node: internals' : w;
    file.set(f, (file.get(f) ?? 0) + dt);
  }
  const sorted = (m: Map<string, number>): Array<{ name: string; ms: number }> =>
    [...m.entries()].map(([name, ms]) => ({ name, ms })).sort((a, b) => b.ms - a.ms);
  return { totalMs: total, byFunction: sorted(fn), byFile: sorted(file) };
}

function main(): void {
  const argv = process.argv.slice(2);
  let id = '4w';
  let top = 30;
  let build = true;
  let keep = false;
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--workload') id = argv[++i] ?? id;
    else if (argv[i] === '--top') top = Number.parseInt(argv[++i] ?? '30', 10);
    else if (argv[i] === '--no-build') build = false;
    else if (argv[i] === '--keep') keep = true;
    else {
      process.stderr.write('usage: npx tsx bench/profile.ts [--workload ID] [--top N] [--no-build] [--keep]\n');
      process.exit(2);
    }
  }
  const w = allWorkloads().find((x) => x.id === id);
  if (!w) {
    process.stderr.write(`no workload '${id}' (ids: ${allWorkloads().map((x) => x.id).join(' ')})\n`);
    process.exit(2);
  }
  if (build) {
    try {
      run(['npx', 'tsc', '-p', 'tsconfig.build.json'], { cwd: REPO });
    } catch {
      process.stderr.write('warning: the build reported errors; using the emitted JavaScript\n');
    }
  }
  const dir = mkdtempSync(join(os.tmpdir(), 'blk-prof-'));
  try {
    const ctx: Ctx = { dir, qemuImg: 'qemu-img', made: new Set() };
    const ours = findOurs(dir, 'qemu-img');
    const profDir = join(dir, 'prof');
    const args = w.prepare(ctx, 'ours');
    const flags = ['--cpu-prof', '--cpu-prof-dir', profDir, '--cpu-prof-interval', '200'];
    if (w.kind === 'nbd') throw new Error(`workload ${w.id} times an NBD client: profile blk-nbd itself (node --cpu-prof bin/blk-nbd.js)`);
    const cmd = w.kind === 'bench' ? ours.bench(flags) : w.kind === 'convert' ? ours.convert?.(flags) : ours.img?.(flags);
    if (cmd === undefined) throw new Error(`blk-img ${w.kind} is not available`);
    const m = measure([...cmd, ...args], dir, process.env);
    process.stdout.write(`workload ${w.id}: ${w.title}\n${m.stdout}(process ${m.wall.toFixed(3)} s)\n`);
    const file = readdirSync(profDir).find((f) => f.endsWith('.cpuprofile'));
    if (file === undefined) throw new Error('no .cpuprofile written');
    const s = summarise(JSON.parse(readFileSync(join(profDir, file), 'utf8')) as CpuProfile);
    const pct = (ms: number): string => `${((100 * ms) / s.totalMs).toFixed(1).padStart(5)}%`;
    process.stdout.write(`\nsampled ${s.totalMs.toFixed(0)} ms (whole process)\n\nself time by function:\n`);
    for (const e of s.byFunction.slice(0, top)) process.stdout.write(`  ${pct(e.ms)} ${e.ms.toFixed(0).padStart(6)} ms  ${e.name}\n`);
    process.stdout.write('\nself time by file:\n');
    for (const e of s.byFile.slice(0, top)) process.stdout.write(`  ${pct(e.ms)} ${e.ms.toFixed(0).padStart(6)} ms  ${e.name}\n`);
    if (keep) process.stdout.write(`\nprofile kept: ${join(profDir, file)}\n`);
  } finally {
    if (!keep) rmSync(dir, { recursive: true, force: true });
  }
}

// Run only as a script: summarise() is also imported by other bench helpers.
if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) main();
