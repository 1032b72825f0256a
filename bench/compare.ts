// `npm run bench [-- --runs N --only 1,2,mem --no-build --write --keep]`
//
// Runs every workload with `qemu-img bench` and `blk-img bench` (both as child processes, on
// identical fresh images, alternating which goes first), 5 runs each by default, and prints the
// median time ratio ours / QEMU per workload (below 1 = we are faster), throughput, and peak
// RSS. Rows 7, 9.7 and 11-13 time whole processes instead: convert, check and map against
// qemu-img's, and NBD copies with blk-nbd against qemu-nbd (servers on unix sockets in the
// session's temporary directory, one per run, stopped by pid); each checks once that our
// output is QEMU's. Then the memory check: 16 TiB QED and qcow2 images, each last cluster written and read
// back, with our peak RSS under 100 MiB. A full run rewrites bench/RESULTS.md (bench/report.ts: the
// method and the tables; its hand-written "Analysis" section is kept); a partial run (--only)
// prints only, unless --write.
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { CommandFailed, REPO, findOurs, TIME_BIN, describeMachine, fmtSeconds, measure, run, type Measured, type Ours } from './lib.js';
import { cpuOf, mergeResults, ratioOf, renderResults, timeOf, type MemoryResult, type Row, type RunInfo } from './report.js';
import { withNbdServer } from './nbd-server.js';
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
  process.stderr.write('usage: npm run bench -- [--runs N] [--only 1,2,...,13,mem] [--uv-threads N] [--no-build] [--write] [--keep]\n');
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

/** Environment of our child processes. */
let oursEnv: NodeJS.ProcessEnv = process.env;

/** Our side's command line for a row, or null when this build cannot run it. */
function oursCommand(w: Workload, ours: Ours): string[] | null {
  switch (w.kind) {
    case 'bench':
      return ours.bench();
    case 'convert':
      return ours.convert?.() ?? null;
    case 'img':
      return ours.img?.() ?? null;
    case 'nbd':
      // The client command comes whole from the workload; the bundle must be there.
      return ours.img?.() ?? null;
  }
}

async function runOnce(w: Workload, tool: Tool, ctx: Ctx, ours: Ours): Promise<Measured> {
  const args = w.prepare(ctx, tool);
  try {
    if (w.kind === 'nbd') {
      const server = w.server?.(ctx, tool);
      if (server === undefined) throw new Error(`workload ${w.id} has no server`);
      return await withNbdServer(server.cmd, server.sock, () => measure(args, ctx.dir, tool === 'ours' ? oursEnv : process.env));
    }
    if (w.kind !== 'bench') {
      const sub = w.kind === 'convert' ? ['convert'] : [];
      if (tool === 'qemu') return measure([ctx.qemuImg, ...sub, ...args], ctx.dir);
      return measure([...(oursCommand(w, ours) ?? []), ...args], ctx.dir, oursEnv);
    }
    const m =
      tool === 'qemu' ? measure([ctx.qemuImg, 'bench', ...args], ctx.dir) : measure([...ours.bench(), ...args], ctx.dir, oursEnv);
    if (m.reported === null) throw new Error(`no "Run completed" line from ${tool}: ${m.stdout}${m.stderr}`);
    return m;
  } finally {
    w.cleanup?.(ctx);
  }
}

function log(s: string): void {
  process.stdout.write(s);
}

async function runWorkload(w: Workload, runs: number, ctx: Ctx, ours: Ours): Promise<Row> {
  const row: Row = { w, qemu: [], ours: [] };
  if (oursCommand(w, ours) === null) {
    row.skipped = `blk-img ${w.kind} not available`;
    log(`  ${w.id.padEnd(5)} skipped: ${row.skipped}\n`);
    return row;
  }
  log(`  ${w.id.padEnd(5)} ${w.title}\n        `);
  try {
    for (let i = 0; i < runs; i++) {
      // Alternate who goes first, so that neither always runs on a warmer cache.
      const order: Tool[] = i % 2 === 0 ? ['qemu', 'ours'] : ['ours', 'qemu'];
      for (const tool of order) {
        const m = await runOnce(w, tool, ctx, ours);
        (tool === 'qemu' ? row.qemu : row.ours).push(m);
        const cpu = w.kind !== 'bench' && m.cpu != null ? ` (cpu ${fmtSeconds(m.cpu)})` : '';
        log(`${tool === 'qemu' ? 'Q' : 'B'} ${fmtSeconds(timeOf(m))}${cpu}  `);
      }
      // Fast is worth nothing if the result differs: compare once, with both outputs there.
      const differs = i === 0 ? (w.verify?.(ctx, row.qemu[0], row.ours[0]) ?? null) : null;
      if (differs !== null) throw new Error(differs);
    }
  } catch (e) {
    // One broken workload (a tool failing mid-session) must not lose the others' results.
    const msg = (e instanceof Error ? e.message : String(e)).split('\n')[0];
    row.skipped = `FAILED: ${msg}`;
    row.failed = true;
    log(`\n        ${row.skipped}\n`);
    return row;
  } finally {
    w.finish?.(ctx);
  }
  log(`\n        ratio ${ratioOf(row).toFixed(2)}${cpuText(row)}\n`);
  return row;
}

/** Median CPU seconds (user + system) of each tool's runs, when GNU time measured them. */
function cpuText(row: Row): string {
  const q = cpuOf(row.qemu);
  const o = cpuOf(row.ours);
  return q === null || o === null ? '' : `, CPU s (user + system) QEMU ${fmtSeconds(q)} ours ${fmtSeconds(o)}`;
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

/**
 * The code measured: the commit, and whether the worktree had changes on top of it. This file's
 * own output does not count: a second run after a first one wrote it measures the same code.
 */
function codeVersion(): string {
  try {
    const commit = run(['git', 'rev-parse', '--short', 'HEAD'], { cwd: REPO }).stdout.trim();
    const status = ['git', 'status', '--porcelain', '--untracked-files=no', '--', '.', ':!bench/RESULTS.md'];
    const dirty = run(status, { cwd: REPO }).stdout.trim() !== '';
    return dirty ? `${commit} + local changes` : commit;
  } catch {
    return 'unknown (not a git checkout)';
  }
}

function commandLine(args: Args): string {
  const extra = [
    args.runs !== 5 ? `--runs ${args.runs}` : '',
    args.only ? `--only ${[...args.only].join(',')}` : '',
    args.uvThreads !== null ? `--uv-threads ${args.uvThreads}` : '',
  ].filter((x) => x !== '');
  return `npm run bench${extra.length > 0 ? ` -- ${extra.join(' ')}` : ''}`;
}

function writeResults(text: string): void {
  const path = join(REPO, 'bench/RESULTS.md');
  writeFileSync(path, mergeResults(text, existsSync(path) ? readFileSync(path, 'utf8') : null));
  log(`\nwrote ${path}\n`);
}

// ---------------------------------------------------------------------------------------------

async function main(): Promise<number> {
  const args = parseArgs(process.argv.slice(2));
  const code = codeVersion();
  const t0 = process.hrtime.bigint();
  const qemuImg = 'qemu-img';
  // Node reads the file NODE_EXTRA_CA_CERTS names at start-up, before any of our code runs
  // (about 0.1 s of CPU for a system CA bundle, in every process). Some environments set it
  // for all programs; it only concerns TLS, which no row uses, so no child inherits it.
  const caCerts = process.env.NODE_EXTRA_CA_CERTS !== undefined;
  delete process.env.NODE_EXTRA_CA_CERTS;
  if (args.uvThreads !== null) oursEnv = { ...process.env, UV_THREADPOOL_SIZE: args.uvThreads };
  const mc = describeMachine(qemuImg, oursEnv.UV_THREADPOOL_SIZE);
  if (mc.qemuImg === 'not installed') {
    process.stderr.write('qemu-img is not installed (Debian: apt-get install qemu-utils)\n');
    return 1;
  }
  const notes: string[] = [];
  if (caCerts) notes.push('NODE_EXTRA_CA_CERTS was set here and removed from the environment of every child');
  if (!existsSync(TIME_BIN)) notes.push(`${TIME_BIN} missing: peak RSS not measured (Debian package "time")`);

  if (args.build) {
    // The tools run from the bundle (dist/bin), so the build must include it, not only tsc.
    log('building (npm run build)...\n');
    try {
      run(['npm', 'run', 'build', '--silent'], { cwd: REPO });
    } catch (e) {
      // tsc still emits when other files have type errors; go on if our entry points exist.
      const msg = e instanceof CommandFailed ? e.stdout.split('\n').slice(0, 5).join('\n') : String(e);
      process.stderr.write(`warning: the build reported errors:\n${msg}\n`);
      notes.push('the build reported type errors elsewhere; the emitted JavaScript was used');
      // `npm run build` stops before bundling when tsc fails: bundle what tsc emitted.
      run(['npm', 'run', 'bundle', '--silent'], { cwd: REPO });
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
    for (const w of selected) rows.push(await runWorkload(w, args.runs, ctx, ours));
    const mem: MemoryResult[] = [];
    if (args.only === null || args.only.has('mem')) {
      for (const format of MEMORY_CHECK.formats) {
        log(`  mem   16 TiB ${format} image, last cluster written and read back\n`);
        mem.push(memoryCheck(ctx, ours, format));
      }
    }
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
    const info: RunInfo = { machine: mc, command: commandLine(args), runs: args.runs, seconds, code, tmpdir: os.tmpdir(), notes };
    const text = renderResults(info, rows, mem);
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

process.exitCode = await main();
