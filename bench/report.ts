// The text of bench/RESULTS.md: the method, the latest run's tables, and the hand-written
// analysis carried over from the previous file. Pure functions over the measured rows: no I/O,
// so the shape of the report is tested without running a benchmark.
import { fmtMiB, fmtSeconds, median, type Machine, type Measured } from './lib.js';
import { MEMORY_CHECK, type Workload } from './workloads.js';

export interface Row {
  w: Workload;
  qemu: Measured[];
  ours: Measured[];
  skipped?: string;
  failed?: boolean;
}

export interface MemoryResult {
  /** The image format checked; absent in reports that predate the qcow2 check (QED). */
  format?: 'qed' | 'qcow2';
  write: Measured;
  read: Measured;
  qemuWrite: Measured;
  pass: boolean | null;
}

/** How the latest run was made: what a reader needs to reproduce or discount it. */
export interface RunInfo {
  machine: Machine;
  /** The command line as the user would type it. */
  command: string;
  runs: number;
  seconds: number;
  /** `git describe`-style name of the code measured ("abc1234", "abc1234 + local changes"). */
  code: string;
  tmpdir: string;
  notes: string[];
}

/** The heading of the hand-written part that a rewrite keeps, and everything after it. */
export const ANALYSIS_HEADING = '## Analysis';

/** Time of one run: the tool's own figure for bench, the process wall time for convert. */
export function timeOf(m: Measured): number {
  return m.reported ?? m.wall;
}

export function ratioOf(row: Row): number {
  return median(row.ours.map(timeOf)) / median(row.qemu.map(timeOf));
}

function peak(ms: Measured[]): number | null {
  const xs = ms.map((m) => m.maxRssKiB).filter((x): x is number => x !== null);
  return xs.length === 0 ? null : Math.max(...xs);
}

function mibps(bytes: number, seconds: number): string {
  if (bytes === 0) return '–';
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

/** Median CPU seconds of the runs, or null when any run lacks the figure. */
export function cpuOf(ms: Measured[]): number | null {
  const xs = ms.map((m) => m.cpu ?? null);
  return xs.length === 0 || xs.some((x) => x === null) ? null : median(xs as number[]);
}

/**
 * The rows timed as whole processes (convert, check, map, NBD clients), by CPU time: their
 * start-up is part of the figure, and on a loaded machine CPU time is the steadier one.
 */
function cpuTable(rows: Row[]): string {
  const out: string[] = [];
  for (const r of rows) {
    if (r.w.kind === 'bench' || r.skipped !== undefined) continue;
    const q = cpuOf(r.qemu);
    const o = cpuOf(r.ours);
    if (q === null || o === null) continue;
    if (out.length === 0) {
      out.push('| # | workload | QEMU CPU s | ours CPU s | ours/QEMU (CPU) |');
      out.push('|---|---|---:|---:|---:|');
    }
    out.push(`| ${r.w.id} | ${r.w.title} | ${fmtSeconds(q)} | ${fmtSeconds(o)} | ${q > 0 ? (o / q).toFixed(2) : 'n/a'} |`);
  }
  return out.join('\n');
}

/**
 * A format's overhead over raw, each tool against itself: the format's row over its raw twin
 * (8.x). QED rows are the plain ids; qcow2 rows (9.x) name their QED twin, whose raw twin is
 * 8.<that id>. Rows without a raw twin (6, 7) have no line.
 */
function overheadTable(rows: Row[], format: 'qed' | 'qcow2'): string {
  const byId = new Map(rows.map((r) => [r.w.id, r]));
  const name = format === 'qed' ? 'QED' : 'qcow2';
  const out: string[] = [];
  for (const r of rows) {
    if (r.w.format !== format || r.w.kind !== 'bench' || r.skipped !== undefined) continue;
    const raw = byId.get(`8.${r.w.twinOf ?? r.w.id}`);
    if (!raw || raw.skipped !== undefined) continue;
    if (out.length === 0) {
      out.push(`| # | workload | QEMU: ${name} s / raw s | ours: ${name} s / raw s |`);
      out.push('|---|---|---:|---:|');
    }
    const qq = median(r.qemu.map(timeOf)) / median(raw.qemu.map(timeOf));
    const oo = median(r.ours.map(timeOf)) / median(raw.ours.map(timeOf));
    out.push(`| ${r.w.id} | ${r.w.title} | ${qq.toFixed(2)} | ${oo.toFixed(2)} |`);
  }
  return out.join('\n');
}

function memoryText(m: MemoryResult): string {
  const verdict = m.pass === null ? 'not measured (no /usr/bin/time)' : m.pass ? 'PASS' : 'FAIL';
  return [
    `- ${m.format ?? 'qed'}, ours: write peak RSS ${fmtMiB(m.write.maxRssKiB)} (process ${fmtSeconds(m.write.wall)} s), ` +
      `read peak RSS ${fmtMiB(m.read.maxRssKiB)} (process ${fmtSeconds(m.read.wall)} s): ` +
      `**${verdict}** (limit ${MEMORY_CHECK.limitMiB} MiB)`,
    `- ${m.format ?? 'qed'}, QEMU write for reference: peak RSS ${fmtMiB(m.qemuWrite.maxRssKiB)}`,
  ].join('\n');
}

function runText(r: RunInfo): string {
  const mc = r.machine;
  return [
    `- code: ${r.code}`,
    `- command: \`${r.command}\` (${r.runs} runs per tool and workload; took ${r.seconds.toFixed(0)} s)`,
    `- machine: ${mc.nproc} CPUs, ${mc.model}, ${mc.memGiB} GiB RAM, load average at start ${mc.loadavg}`,
    `- node ${mc.node}, UV_THREADPOOL_SIZE of blk-img: ${mc.uvThreadpool}; ${mc.qemuImg}`,
    `- images in a temporary directory under ${r.tmpdir}`,
    ...r.notes.map((n) => `- note: ${n}`),
  ].join('\n');
}

const METHOD = [
  '`npm run bench` (bench/compare.ts) runs each workload with `qemu-img bench` and with',
  '`blk-img bench`, both as child processes, on identical fresh images made by qemu-img,',
  'alternating which tool goes first so that neither always meets a warmer cache. Rows 7, 9.7 and',
  '11.x run `convert` of both tools with the same options, 12.x `check` and `map`, and 13.x copy',
  'an image out of `blk-nbd` and `qemu-nbd` (13.3: `blk-img convert` and `qemu-img convert` as',
  'NBD clients of qemu-nbd), each server on a unix socket, fresh for every run. These rows check',
  "once that our output is QEMU's: the converted image or copy byte for byte, the printed",
  'report of check and map. After that first pair, every convert run starts with neither',
  "tool's output on disk: the other tool's output, half a GiB of dirty pages still being",
  'written back, made the next convert cost up to twice the system time. The images are in a',
  'temporary directory and the page cache is warm: this measures the block layer, not the disk.',
  'A full run rewrites this file up to the',
  `"${ANALYSIS_HEADING.slice(3)}" section, which is written by hand and kept.`,
  '',
  '- "QEMU s" / "ours s": median of the time each tool reports itself ("Run completed in X',
  '  seconds", from the first request to the last completion; for convert, check, map and the',
  "  NBD clients, the wall time of the process: for 13.1 and 13.2 the client's, the server being",
  '  what differs).',
  '- "ours/QEMU": below 1 means we are faster.',
  '- "process wall": the same ratio over the whole child process, start, image open and close',
  '  included (Node starts in about 40 ms; children run without NODE_EXTRA_CA_CERTS, which',
  '  makes every Node process read a CA bundle at start-up and concerns only TLS).',
  "- Peak RSS: GNU time's maximum resident set size of the child.",
  '- QED and qcow2 overhead over raw: each tool against itself, the QED workload (qcow2: 9.x)',
  '  over its raw twin (8.x).',
  `- Memory check: the last ${MEMORY_CHECK.clusterSize / 1024} KiB cluster of a ${MEMORY_CHECK.size / 2 ** 40} TiB QED and a qcow2 image is written and read back`,
  `  (\`bench -w -o ${MEMORY_CHECK.size - MEMORY_CHECK.clusterSize} -s 64k -c 1\`); our peak RSS must stay under ${MEMORY_CHECK.limitMiB} MiB.`,
].join('\n');

/** The generated part of RESULTS.md: title, method and the latest run's tables. */
export function renderResults(run: RunInfo, rows: Row[], mem: MemoryResult | readonly MemoryResult[] | null): string {
  const mems = mem === null ? [] : Array.isArray(mem) ? (mem as readonly MemoryResult[]) : [mem as MemoryResult];
  const overhead = overheadTable(rows, 'qed');
  const overheadQcow2 = overheadTable(rows, 'qcow2');
  const cpu = cpuTable(rows);
  return [
    '# Benchmark results: blk-img vs qemu-img',
    '',
    '## Method',
    '',
    METHOD,
    '',
    '## Latest run',
    '',
    runText(run),
    '',
    table(rows),
    '',
    ...(cpu === '' ? [] : ["CPU time of the rows timed as whole processes: median user + system seconds of each tool's process (GNU time).", '', cpu, '']),
    ...(overhead === '' ? [] : ['### QED overhead over raw', '', overhead, '']),
    ...(overheadQcow2 === '' ? [] : ['### qcow2 overhead over raw', '', overheadQcow2, '']),
    ...(mems.length === 0 ? [] : ['### Memory check', '', ...mems.map(memoryText), '']),
  ].join('\n');
}

/** The new file: the generated text, then the previous file's analysis section, if any. */
export function mergeResults(generated: string, previous: string | null): string {
  const i = previous === null ? -1 : previous.indexOf(`\n${ANALYSIS_HEADING}\n`);
  const kept = previous === null || i < 0 ? '' : previous.slice(i + 1);
  return `${generated.trimEnd()}\n${kept === '' ? '' : `\n${kept}`}`;
}
