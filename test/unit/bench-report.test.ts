// The text `npm run bench` writes to bench/RESULTS.md: its sections, its tables, the analysis it
// keeps, and the committed file having the same shape. No benchmark runs here.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { REPO, type Measured } from '../../bench/lib.js';
import { ANALYSIS_HEADING, mergeResults, renderResults, type Row, type RunInfo } from '../../bench/report.js';
import { allWorkloads } from '../../bench/workloads.js';

function m(reported: number, wall = reported + 0.1, maxRssKiB: number | null = 10240): Measured {
  return { reported, wall, maxRssKiB, stdout: '', stderr: '' };
}

const info: RunInfo = {
  machine: {
    nproc: 2,
    model: 'Test CPU',
    memGiB: 8,
    node: 'v20.0.0',
    qemuImg: 'qemu-img version 7.2.0',
    loadavg: '0.10 0.20 0.30',
    uvThreadpool: '2',
  },
  command: 'npm run bench -- --runs 3',
  runs: 3,
  seconds: 42.4,
  code: 'abc1234',
  tmpdir: '/tmp',
  notes: ['a note'],
};

const w = (id: string) => allWorkloads().find((x) => x.id === id)!;
const rows: Row[] = [
  { w: w('1'), qemu: [m(0.4), m(0.5), m(0.6)], ours: [m(0.2), m(0.25), m(0.3)] },
  { w: w('8.1'), qemu: [m(0.1), m(0.1), m(0.1)], ours: [m(0.2), m(0.2), m(0.2)] },
  { w: w('9.1'), qemu: [m(0.3), m(0.3), m(0.3)], ours: [m(0.22), m(0.23), m(0.24)] },
  // No raw twin: no line in the qcow2 overhead table.
  { w: w('9.6'), qemu: [m(0.3), m(0.3), m(0.3)], ours: [m(0.3), m(0.3), m(0.3)] },
  { w: w('7'), qemu: [], ours: [], skipped: 'blk-img convert not available' },
];
const mem = { write: m(0.1, 0.1, 40960), read: m(0.1, 0.1, 30720), qemuWrite: m(0.1, 0.1, 8192), pass: true };

function headings(text: string): string[] {
  return text.split('\n').filter((l) => /^#{1,3} /.test(l));
}

describe('bench report', () => {
  const text = renderResults(info, rows, mem);

  it('has the method, the run and its tables, in that order', () => {
    expect(headings(text)).toEqual([
      '# Benchmark results: blk-img vs qemu-img',
      '## Method',
      '## Latest run',
      '### QED overhead over raw',
      '### qcow2 overhead over raw',
      '### Memory check',
    ]);
    expect(text).toContain('- code: abc1234');
    expect(text).toContain('- command: `npm run bench -- --runs 3` (3 runs per tool and workload; took 42 s)');
    expect(text).toContain('- note: a note');
    // Workload 1 moves 4096 x 64 KiB = 256 MiB; medians: QEMU 0.5 s (wall 0.6), ours 0.25 s (wall 0.35).
    expect(text).toContain(`| 1 | ${w('1').title} | 0.500 | 0.250 | **0.50** | 512 | 1024 | 0.58 | 10.0 MiB | 10.0 MiB |`);
    expect(text).toContain(`| 7 | ${w('7').title} | – | – | skipped: blk-img convert not available | | | | | |`);
    expect(text).toContain(`| 1 | ${w('1').title} | 5.00 | 1.25 |`);
    // qcow2 over raw, each tool against itself: QEMU 0.3 / 0.1, ours 0.23 / 0.2.
    expect(text).toContain(`| 9.1 | ${w('9.1').title} | 3.00 | 1.15 |`);
    expect(text).toContain('| # | workload | QEMU: qcow2 s / raw s | ours: qcow2 s / raw s |');
    expect(text.match(/^\| 9\.6 \|/gm)).toHaveLength(1);
    expect(text).toContain('read peak RSS 30.0 MiB (process 0.100 s): **PASS** (limit 100 MiB)');
  });

  it('gives the CPU time of the rows timed as whole processes, after the main table', () => {
    const cpu = (c: number): Measured => ({ ...m(0.5), reported: null, cpu: c });
    const withCpu = renderResults(info, [...rows, { w: w('12.1'), qemu: [cpu(0.02), cpu(0.03), cpu(0.04)], ours: [cpu(0.2), cpu(0.3), cpu(0.4)] }], mem);
    expect(withCpu).toContain(`| 12.1 | ${w('12.1').title} | 0.030 | 0.300 | 10.00 |`);
    // Bench rows report their own time: no CPU line for them, and no heading of its own.
    expect(withCpu).not.toMatch(/^\| 1 \| .*\| 10\.00 \|$/m);
    expect(headings(withCpu)).toEqual(headings(text));
    expect(text).not.toContain('QEMU CPU s');
  });

  it('carries no date or time of day', () => {
    expect(text).not.toMatch(/\d{4}-\d{2}-\d{2}|\d{1,2}:\d{2}|UTC/);
  });

  it('leaves out the overhead and memory sections when there is nothing to show', () => {
    expect(headings(renderResults(info, rows.slice(0, 1), null))).toEqual([
      '# Benchmark results: blk-img vs qemu-img',
      '## Method',
      '## Latest run',
    ]);
  });

  it('keeps the previous analysis and replaces everything above it', () => {
    const analysis = `${ANALYSIS_HEADING}\n\nWhat bounds workload 2.\n\n### Tools\n\n- profile.ts\n`;
    const previous = `# Benchmark results: blk-img vs qemu-img\n\nold table | 9.99 |\n\n${analysis}`;
    const merged = mergeResults(text, previous);
    expect(merged.startsWith(text.trimEnd())).toBe(true);
    expect(merged.endsWith(`\n\n${analysis}`)).toBe(true);
    expect(merged).not.toContain('9.99');
    expect(mergeResults(text, null)).toBe(`${text.trimEnd()}\n`);
    expect(mergeResults(text, 'no analysis here\n')).toBe(`${text.trimEnd()}\n`);
  });

  it('bench/RESULTS.md has the generated shape, the same method text, and no diary', () => {
    const committed = readFileSync(join(REPO, 'bench/RESULTS.md'), 'utf8');
    const i = committed.indexOf(`\n${ANALYSIS_HEADING}\n`);
    expect(i).toBeGreaterThan(0);
    const generatedPart = committed.slice(0, i);
    expect(headings(generatedPart)).toEqual(headings(text));
    const method = (s: string): string => s.slice(s.indexOf('## Method'), s.indexOf('## Latest run'));
    expect(method(generatedPart)).toBe(method(text));
    expect(committed).not.toMatch(/\bsession\b|\bUTC\b|\b\d{1,2}:\d{2}\b|\d{4}-\d{2}-\d{2}|tried and dropped|third pass/i);
  });
});
