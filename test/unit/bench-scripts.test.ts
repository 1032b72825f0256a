// The benchmark scripts' pure parts: statistics, the workload table, the profile summary.
// Nothing here runs a benchmark or looks at a time.
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { fmtMiB, fmtSeconds, median } from '../../bench/lib.js';
import { summarise } from '../../bench/profile.js';
import { MEMORY_CHECK, allWorkloads } from '../../bench/workloads.js';

describe('bench statistics', () => {
  it('median of odd and even samples, order-independent', () => {
    expect(median([3, 1, 2])).toBe(2);
    expect(median([4, 1, 3, 2])).toBe(2.5);
    expect(median([5])).toBe(5);
    expect(median([])).toBeNaN();
    const xs = [0.9, 0.1, 0.5];
    median(xs);
    expect(xs).toEqual([0.9, 0.1, 0.5]); // the caller's array is not sorted in place
  });

  it('formats seconds and sizes', () => {
    expect(fmtSeconds(0.1234)).toBe('0.123');
    expect(fmtSeconds(12.345)).toBe('12.35');
    expect(fmtSeconds(Number.NaN)).toBe('n/a');
    expect(fmtMiB(1536)).toBe('1.5 MiB');
    expect(fmtMiB(null)).toBe('n/a');
  });
});

describe('bench workloads', () => {
  const all = allWorkloads();

  it('covers the issue list: 1-7 and depth 1 as 10, raw mirrors as 8, qcow2 as 9, ids unique', () => {
    expect(new Set(all.map((w) => w.id)).size).toBe(all.length);
    expect([...new Set(all.map((w) => w.group))]).toEqual(['1', '2', '3', '4', '5', '6', '7', '10', '8', '9', '11', '12', '13']);
    const raw = all.filter((w) => w.group === '8');
    expect(raw.map((w) => w.twinOf)).toEqual(['1', '2', '3', '4r', '4w', '5', '10a', '10b', '10c', '10d']);
    for (const r of raw) {
      expect(r.format).toBe('raw');
      expect(all.find((w) => w.id === r.twinOf)?.format).toBe('qed');
    }
    const qcow2 = all.filter((w) => w.group === '9');
    expect(qcow2.map((w) => w.twinOf)).toEqual(['1', '2', '3', '4r', '4w', '5', '6', '7', '10a', '10b', '10c', '10d']);
    for (const q of qcow2) {
      expect(q.format).toBe('qcow2');
      const twin = all.find((w) => w.id === q.twinOf);
      expect(twin?.format).toBe('qed');
      expect(q.kind).toBe(twin?.kind);
    }
    expect(all.find((w) => w.id === '7')?.kind).toBe('convert');
    expect(all.find((w) => w.id === '9.7')?.kind).toBe('convert');
  });

  it('has convert to and from each format (11), check and map (12), NBD copies (13), all verified', () => {
    const ids = (group: string) => all.filter((w) => w.group === group).map((w) => w.id);
    expect(ids('11')).toEqual(['11.1', '11.2', '11.3', '11.4', '11.5', '11.6', '11.7']);
    expect(ids('12')).toEqual(['12.1', '12.2', '12.3', '12.4']);
    expect(ids('13')).toEqual(['13.1', '13.2', '13.3']);
    for (const w of all.filter((x) => ['11', '12', '13'].includes(x.group))) {
      expect(w.kind).toBe(w.group === '11' ? 'convert' : w.group === '12' ? 'img' : 'nbd');
      if (w.id !== '13.1') expect(typeof w.verify, w.id).toBe('function');
      if (w.kind === 'nbd') expect(typeof w.server, w.id).toBe('function');
    }
    const ctx = { dir: '/nonexistent', qemuImg: 'qemu-img', made: new Set<string>() };
    // The convert rows' options as the issue lists them (sources come from ctx.made: no I/O).
    const pairs = all
      .filter((w) => w.group === '11')
      .map((w) => {
        for (const name of ['convert-src.raw', 'convert-src.qed', 'convert-src.qcow2', 'convert-src-128m.raw', 'convert-src-128m-c.qcow2']) {
          ctx.made.add(`/nonexistent/${name}`);
        }
        const a = w.prepare(ctx, 'ours');
        return `${a[a.indexOf('-f') + 1]}->${a[a.indexOf('-O') + 1]}${a.includes('-c') ? ' -c' : ''}`;
      });
    expect(pairs).toEqual(['qed->raw', 'qcow2->raw', 'qcow2->qcow2', 'raw->qcow2 -c', 'qcow2->raw', 'qed->qcow2', 'raw->raw']);
    expect(all.find((w) => w.id === '11.5')?.prepare(ctx, 'qemu')).toContain('/nonexistent/convert-src-128m-c.qcow2');
  });

  it('a convert row keeps both outputs for the first pair only, then each run starts without either', () => {
    const dir = mkdtempSync(join(tmpdir(), 'bench-convert-'));
    try {
      const ctx = { dir, qemuImg: 'qemu-img', made: new Set([join(dir, 'convert-src.raw')]) };
      const w = allWorkloads().find((x) => x.id === '11.7')!;
      const run = (tool: 'qemu' | 'ours'): string => {
        const out = w.prepare(ctx, tool).at(-1)!;
        writeFileSync(out, 'converted');
        return out;
      };
      const q = run('qemu');
      const o = run('ours');
      expect(existsSync(q)).toBe(true);
      const m = { reported: null, wall: 0, maxRssKiB: null, stdout: '', stderr: '' };
      expect(w.verify?.(ctx, m, m)).toBeNull();
      run('ours');
      expect(existsSync(q)).toBe(false);
      run('qemu');
      expect(existsSync(o)).toBe(false);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('the memory check writes and reads exactly the last cluster of a 16 TiB image', () => {
    expect(MEMORY_CHECK.formats).toEqual(['qed', 'qcow2']);
    for (const format of MEMORY_CHECK.formats) {
      const w = MEMORY_CHECK.writeArgs(format, `x.${format}`);
      const offset = Number(w[w.indexOf('-o') + 1]);
      expect(offset + MEMORY_CHECK.clusterSize).toBe(16 * 1024 ** 4);
      expect(w).toContain('-w');
      expect(w[w.indexOf('-f') + 1]).toBe(format);
      const r = MEMORY_CHECK.readArgs(format, `x.${format}`);
      expect(r).not.toContain('-w');
      expect(r[r.indexOf('-f') + 1]).toBe(format);
      expect(w[w.indexOf('-c') + 1]).toBe('1');
    }
  });
});

describe('profile summary', () => {
  it('adds sample time deltas to the sampled node, by function and by file', () => {
    const frame = (functionName: string, url: string, lineNumber = 0) => ({ functionName, url, lineNumber });
    const s = summarise({
      nodes: [
        { id: 1, callFrame: frame('(root)', '') },
        { id: 2, callFrame: frame('hot', 'node:fs', 9) },
        { id: 3, callFrame: frame('cold', 'node:fs', 19) },
        { id: 4, callFrame: frame('(garbage collector)', '') },
      ],
      samples: [2, 2, 3, 4, 2],
      timeDeltas: [1000, 2000, 500, 1500, 1000],
    });
    expect(s.totalMs).toBe(6);
    expect(s.byFunction[0]).toEqual({ name: 'hot node:fs:10', ms: 4 });
    expect(s.byFunction.map((e) => e.name)).toEqual(['hot node:fs:10', '(garbage collector)', 'cold node:fs:20']);
    expect(s.byFile).toEqual([
      { name: 'node: internals', ms: 4.5 },
      { name: '(garbage collector)', ms: 1.5 },
    ]);
  });
});
