// `npm run bench [-- --runs N --only 1,2,mem --no-build --write --keep]`
//
// Runs every workload with `qemu-img bench` and `blk-img bench` (both as child processes, on
// identical fresh images, alternating which goes first), 5 runs each by default, and prints the
// median time ratio ours / QEMU per workload (below 1 = we are faster), throughput, and peak
// RSS. Then the memory check: 16 TiB QED and qcow2 images, each last cluster written and read back,
// with our peak RSS under 100 MiB. A full run rewrites bench/RESULTS.md (keeping its
// "Profile notes" section); a partial run (--only) prints only, unless --write.
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import {
  CommandFailed,
  REPO,
  findOurs,
  TIME_BIN,
  describeMachine,
  fmtMiB,
  fmtSeconds,
  measure,
  median,
  run,
  type Machine,
  type Measured,
  type Ours,
} from './lib.js';
import { MEMORY_CHECK, allWorkloads, type Ctx, type Tool, type Workload } from './workloads.js';

interface Args {
  runs: number;
  only: Set<string> | null;
  build: boolean;
  write: boolean;
  keep: boolean;
  /** UV_THREADPOOL_SIZE for our child processes (libuv's file I/O threads), or inherited. */
  uvThreads: string | null;
}

function usage(): never {
  process.stderr.write('usage: npm run bench -- [--runs N] [--only 1,2,...,10,mem] [--uv-threads N] [--no-build] [--write] [--keep]\n');
  process.exit(2);
}

function parseArgs(argv: string[]): Args {
  const a: Args = { runs: 5, only: null, build: true, write: false, keep: false, uvThreads: null };
  for (let i = 0; i < argv.length; i++) {
    const [name, inline] = argv[i].split('=', 2);
    const value = (): string => {
      const v = inline ?? argv[++i];
      if (v === undefined) usage();
      return v;
    };
    switch (name) {
      case '--runs': {
        const n = Number.parseInt(value(), 10);
        if (!Number.isInteger(n) || n < 1) usage();
        a.runs = n;
        break;
      }
      case '--only':
        a.only = new Set(
          value()
            .split(',')
            .map((s) => s.trim())
            .filter((s) => s !== ''),
        );
        break;
      case '--no-build':
        a.build = false;
        break;
      case '--write':
        a.write = true;
        break;
      case '--keep':
        a.keep = true;
        break;
      case '--uv-threads': {
        const n = Number.parseInt(value(), 10);
        if (!Number.isInteger(n) || n < 1 || n > 1024) usage();
        a.uvThreads = String(n);
        break;
      }
      default:
        usage();
    }
  }
  return a;
}

// ---------------------------------------------------------------------------------------------
// Running

interface Row {
  w: Workload;
  qemu: Measured[];
  ours: Measured[];
  skipped?: string;
  failed?: boolean;
}

/** Environment of our child processes. */
let oursEnv: NodeJS.ProcessEnv = process.env;

function runOnce(w: Workload, tool: Tool, ctx: Ctx, ours: Ours): Measured {
  const args = w.prepare(ctx, tool);
  try {
    if (w.kind === 'convert') {
      if (tool === 'qemu') return measure([ctx.qemuImg, 'convert', ...args], ctx.dir);
      return measure([...(ours.convert?.() ?? []), ...args], ctx.dir, oursEnv);
    }
    const m =
      tool === 'qemu' ? measure([ctx.qemuImg, 'bench', ...args], ctx.dir) : measure([...ours.bench(), ...args], ctx.dir, oursEnv);
    if (m.reported === null) throw new Error(`no "Run completed" line from ${tool}: ${m.stdout}${m.stderr}`);
    return m;
  } finally {
    w.cleanup?.(ctx);
  }
}

/** Time of one run: the tool's own figure for bench, the process wall time for convert. */
function timeOf(m: Measured): number {
  return m.reported ?? m.wall;
}

function log(s: string): void {
  process.stdout.write(s);
}

function runWorkload(w: Workload, runs: number, ctx: Ctx, ours: Ours): Row {
  const row: Row = { w, qemu: [], ours: [] };
  if (w.kind === 'convert' && ours.convert === null) {
    row.skipped = 'blk-img convert not available';
    log(`  ${w.id.padEnd(5)} skipped: ${row.skipped}\n`);
    return row;
  }
  log(`  ${w.id.padEnd(5)} ${w.title}\n        `);
  try {
    for (let i = 0; i < runs; i++) {
      // Alternate who goes first, so that neither always runs on a warmer cache.
      const order: Tool[] = i % 2 === 0 ? ['qemu', 'ours'] : ['ours', 'qemu'];
      for (const tool of order) {
        const m = runOnce(w, tool, ctx, ours);
        (tool === 'qemu' ? row.qemu : row.ours).push(m);
        log(`${tool === 'qemu' ? 'Q' : 'B'} ${fmtSeconds(timeOf(m))}  `);
      }
    }
  } catch (e) {
    // One broken workload (a tool failing mid-session) must not lose the others' results.
    const msg = (e instanceof Error ? e.message : String(e)).split('\n')[0];
    row.skipped = `FAILED: ${msg}`;
    row.failed = true;
    log(`\n        ${row.skipped}\n`);
    return row;
  }
  log(`\n        ratio ${ratioOf(row).toFixed(2)}\n`);
  return row;
}

function ratioOf(row: Row): number {
  return median(row.ours.map(timeOf)) / median(row.qemu.map(timeOf));
}

function peak(ms: Measured[]): number | null {
  const xs = ms.map((m) => m.maxRssKiB).filter((x): x is number => x !== null);
  return xs.length === 0 ? null : Math.max(...xs);
}

interface MemoryResult {
  format: 'qed' | 'qcow2';
  write: Measured;
  read: Measured;
  qemuWrite: Measured;
  pass: boolean | null;
}

function memoryCheck(ctx: Ctx, ours: Ours, format: 'qed' | 'qcow2'): MemoryResult {
  const f = MEMORY_CHECK.image(ctx, format);
  const qemuWrite = measure([ctx.qemuImg, 'bench', ...MEMORY_CHECK.writeArgs(format, f)], ctx.dir);
  const q = MEMORY_CHECK.image(ctx, format);
  const write = measure([...ours.bench(), ...MEMORY_CHECK.writeArgs(format, q)], ctx.dir, oursEnv);
  const read = measure([...ours.bench(), ...MEMORY_CHECK.readArgs(format, q)], ctx.dir, oursEnv);
  // The cluster must really be there: QEMU checks our image and reads back the same bytes as
  // from its own (compare exits non-zero on any difference).
  run([ctx.qemuImg, 'check', '-q', '-f', format, q]);
  run([ctx.qemuImg, 'compare', '-q', '-f', format, '-F', format, q, f]);
  rmSync(f, { force: true });
  const peakKiB = Math.max(write.maxRssKiB ?? -1, read.maxRssKiB ?? -1);
  const pass = peakKiB < 0 ? null : peakKiB < MEMORY_CHECK.limitMiB * 1024;
  rmSync(q, { force: true });
  return { format, write, read, qemuWrite, pass };
}

// ---------------------------------------------------------------------------------------------
// Reporting

function mibps(bytes: number, seconds: number): string {
  return Number.isFinite(seconds) && seconds > 0 ? (bytes / 2 ** 20 / seconds).toFixed(0) : 'n/a';
}

function table(rows: Row[]): string {
  const out: string[] = [];
  out.push('| # | workload | QEMU s | ours s | ours/QEMU | QEMU MiB/s | ours MiB/s | ours/QEMU (process wall) | ours peak RSS | QEMU peak RSS |');
  out.push('|---|---|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const r of rows) {
    if (r.skipped !== undefined) {
      out.push(`| ${r.w.id} | ${r.w.title} | – | – | ${r.failed === true ? '' : 'skipped: '}${r.skipped} | | | | | |`);
      continue;
    }
    const q = median(r.qemu.map(timeOf));
    const o = median(r.ours.map(timeOf));
    const wall = median(r.ours.map((m) => m.wall)) / median(r.qemu.map((m) => m.wall));
    out.push(
      `| ${r.w.id} | ${r.w.title} | ${fmtSeconds(q)} | ${fmtSeconds(o)} | **${(o / q).toFixed(2)}** | ` +
        `${mibps(r.w.bytes, q)} | ${mibps(r.w.bytes, o)} | ${wall.toFixed(2)} | ${fmtMiB(peak(r.ours))} | ${fmtMiB(peak(r.qemu))} |`,
    );
  }
  return out.join('\n');
}

/** QED against its raw (8.x) and qcow2 (9.x) mirrors, same tool, same workload. */
function overheadTable(rows: Row[]): string {
  const byId = new Map(rows.map((r) => [r.w.id, r]));
  const out: string[] = [];
  for (const twin of rows) {
    if (twin.w.twinOf === undefined || twin.skipped !== undefined) continue;
    const qed = byId.get(twin.w.twinOf);
    if (!qed || qed.skipped !== undefined) continue;
    if (out.length === 0) {
      out.push('| # | workload | QEMU: QED s / other s | ours: QED s / other s |');
      out.push('|---|---|---:|---:|');
    }
    const qq = median(qed.qemu.map(timeOf)) / median(twin.qemu.map(timeOf));
    const oo = median(qed.ours.map(timeOf)) / median(twin.ours.map(timeOf));
    out.push(`| ${twin.w.id} | QED vs ${twin.w.title} | ${qq.toFixed(2)} | ${oo.toFixed(2)} |`);
  }
  return out.join('\n');
}

function memoryText(ms: MemoryResult[]): string {
  if (ms.length === 0) return '';
  const lines = [
    `16 TiB images, last 64 KiB cluster written then read back (\`bench -w -o ${MEMORY_CHECK.size - MEMORY_CHECK.clusterSize} -s 64k -c 1\`):`,
    '',
  ];
  for (const m of ms) {
    const verdict = m.pass === null ? 'not measured (no /usr/bin/time)' : m.pass ? 'PASS' : 'FAIL';
    lines.push(
      `- ${m.format}, ours: write peak RSS ${fmtMiB(m.write.maxRssKiB)} (process ${fmtSeconds(m.write.wall)} s), ` +
        `read peak RSS ${fmtMiB(m.read.maxRssKiB)} (process ${fmtSeconds(m.read.wall)} s): ` +
        `**${verdict}** (limit ${MEMORY_CHECK.limitMiB} MiB); QEMU write for reference: peak RSS ${fmtMiB(m.qemuWrite.maxRssKiB)}`,
    );
  }
  return lines.join('\n');
}

function machineText(mc: Machine, args: Args, started: Date, seconds: number, notes: string[]): string {
  const extra = [
    args.runs !== 5 ? `--runs ${args.runs}` : '',
    args.only ? `--only ${[...args.only].join(',')}` : '',
    args.uvThreads !== null ? `--uv-threads ${args.uvThreads}` : '',
  ].filter((x) => x !== '');
  const cmd = `npm run bench${extra.length > 0 ? ` -- ${extra.join(' ')}` : ''}`;
  return [
    `- date: ${started.toISOString()} (took ${seconds.toFixed(0)} s)`,
    `- command: \`${cmd}\` (${args.runs} runs per tool and workload, alternating order; medians)`,
    `- machine: ${mc.nproc} CPUs, ${mc.model}, ${mc.memGiB} GiB RAM, load average at start ${mc.loadavg}`,
    `- node ${mc.node}, UV_THREADPOOL_SIZE of blk-img: ${mc.uvThreadpool}; ${mc.qemuImg}`,
    `- images in a temporary directory under ${os.tmpdir()} (page cache warm: this measures the block layer, not the disk)`,
    ...notes.map((n) => `- note: ${n}`),
  ].join('\n');
}

const EXPLAIN = [
  '"QEMU s" / "ours s": median of the time each tool reports itself ("Run completed in X seconds",',
  'from the first request to the last completion; for convert, the wall time of the process).',
  '"ours/QEMU" below 1 means we are faster. "process wall" includes process start, image open and',
  'close (Node start-up is ~50 ms). Peak RSS is GNU time\'s maximum resident set size of the child.',
].join('\n');

function writeResults(text: string): void {
  const path = join(REPO, 'bench/RESULTS.md');
  let profile = '';
  if (existsSync(path)) {
    const old = readFileSync(path, 'utf8');
    const i = old.indexOf('## Profile notes');
    if (i >= 0) profile = old.slice(i);
  }
  writeFileSync(path, `${text}\n${profile === '' ? '' : `\n${profile}`}`);
  log(`\nwrote ${path}\n`);
}

// ---------------------------------------------------------------------------------------------

function main(): number {
  const args = parseArgs(process.argv.slice(2));
  const started = new Date();
  const t0 = process.hrtime.bigint();
  const qemuImg = 'qemu-img';
  if (args.uvThreads !== null) oursEnv = { ...process.env, UV_THREADPOOL_SIZE: args.uvThreads };
  const mc = describeMachine(qemuImg, oursEnv.UV_THREADPOOL_SIZE);
  if (mc.qemuImg === 'not installed') {
    process.stderr.write('qemu-img is not installed (Debian: apt-get install qemu-utils)\n');
    return 1;
  }
  const notes: string[] = [];
  if (!existsSync(TIME_BIN)) notes.push(`${TIME_BIN} missing: peak RSS not measured (Debian package "time")`);

  if (args.build) {
    log('building (tsc -p tsconfig.build.json)...\n');
    try {
      run(['npx', 'tsc', '-p', 'tsconfig.build.json'], { cwd: REPO });
    } catch (e) {
      // tsc still emits when other files have type errors; go on if our entry points exist.
      const msg = e instanceof CommandFailed ? e.stdout.split('\n').slice(0, 5).join('\n') : String(e);
      process.stderr.write(`warning: the build reported errors:\n${msg}\n`);
      notes.push('the build reported type errors elsewhere; the emitted JavaScript was used');
    }
  }

  const dir = mkdtempSync(join(os.tmpdir(), 'blk-bench-'));
  const cleanup = (): void => {
    if (!args.keep) rmSync(dir, { recursive: true, force: true });
  };
  process.on('SIGINT', () => {
    cleanup();
    process.exit(130);
  });
  try {
    const ours = findOurs(dir, qemuImg);
    if (ours.note !== '') notes.push(ours.note);
    const ctx: Ctx = { dir, qemuImg, made: new Set() };
    const selected = allWorkloads().filter((w) => args.only === null || args.only.has(w.group) || args.only.has(w.id));
    log(`${selected.length} workloads, ${args.runs} runs each per tool (Q = qemu-img, B = blk-img; seconds)\n`);
    const rows: Row[] = [];
    for (const w of selected) rows.push(runWorkload(w, args.runs, ctx, ours));
    const mem: MemoryResult[] = [];
    if (args.only === null || args.only.has('mem')) {
      for (const format of MEMORY_CHECK.formats) {
        log(`  mem   16 TiB ${format} image, last cluster written and read back\n`);
        mem.push(memoryCheck(ctx, ours, format));
      }
    }
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
    const text = [
      '# Benchmark results: blk-img vs qemu-img',
      '',
      'Written by `npm run bench` (bench/compare.ts); rerun on an idle machine for the real table.',
      '',
      machineText(mc, args, started, seconds, notes),
      '',
      EXPLAIN,
      '',
      table(rows),
      '',
      overheadTable(rows) === '' ? '' : `QED against raw and qcow2 (same tool, same workload):\n\n${overheadTable(rows)}\n`,
      mem.length === 0 ? '' : `## Memory check\n\n${memoryText(mem)}\n`,
    ]
      .filter((s, i, all) => !(s === '' && all[i - 1] === ''))
      .join('\n');
    log(`\n${text}\n`);
    if (args.only === null || args.write) writeResults(text);
    const memFailed = mem.some((m) => m.pass === false);
    if (memFailed) process.stderr.write('memory check FAILED\n');
    const failed = rows.filter((r) => r.failed === true).map((r) => r.w.id);
    if (failed.length > 0) process.stderr.write(`workloads that failed: ${failed.join(' ')}\n`);
    return memFailed || failed.length > 0 ? 1 : 0;
  } finally {
    cleanup();
  }
}

process.exitCode = main();
