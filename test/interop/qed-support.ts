/**
 * Shared pieces of the QED interop matrix (test/interop/qed-*.test.ts): guest operations
 * spelled for qemu-io and for our API, a byte model of the guest disk, our `qemu-img map`
 * built from block status, and `qemu-img check --output=json` in a comparable shape.
 */
import { createHash } from 'node:crypto';
import { closeSync, ftruncateSync, openSync, readFileSync, readSync, statSync, writeSync } from 'node:fs';
import { expect } from 'vitest';
import { BlockDriverState, type CheckResult } from '../../src/index.js';
import { runQemuImg, runQemuIo } from './qemu.js';

/** One guest operation. Offsets and lengths are multiples of 512 (qemu-io's -P writes need not be, but ours are). */
export type Op =
  | { kind: 'write'; off: number; len: number; pat: number }
  | { kind: 'zero'; off: number; len: number };

export function qemuIoCmd(op: Op): string {
  return op.kind === 'write' ? `write -q -P ${op.pat} ${op.off} ${op.len}` : `write -q -z ${op.off} ${op.len}`;
}

export async function applyOurs(bs: BlockDriverState, op: Op): Promise<void> {
  if (op.kind === 'write') await bs.pwrite(op.off, new Uint8Array(op.len).fill(op.pat));
  else await bs.writeZeroes(op.off, op.len);
}

/**
 * Apply `op` to a byte model. `zeroMarks` follows qed-format.md §17.4 for us and QEMU alike only where they
 * agree: a zero write always reads back as zeros.
 */
export function applyModel(model: Uint8Array, op: Op): void {
  model.fill(op.kind === 'write' ? op.pat : 0, op.off, op.off + op.len);
}

/** Run commands through one qemu-io process per batch (a process costs ~10 ms). */
export function qemuIoBatch(file: string, cmds: string[], extra: string[] = [], cwd?: string): string {
  let out = '';
  for (let i = 0; i < cmds.length; i += 60) {
    const args = [...extra];
    for (const c of cmds.slice(i, i + 60)) args.push('-c', c);
    const r = runQemuIo([...args, file], { cwd });
    expect(r.stderr, `qemu-io ${cmds.slice(i, i + 3).join(' | ')}...`).toBe('');
    expect(r.status).toBe(0);
    out += r.stdout;
  }
  expect(out).not.toMatch(/failed|error/i);
  return out;
}

/** `read -P` commands for every maximal run of one byte value in `model` (few runs expected). */
export function patternReads(model: Uint8Array, maxRuns = 400): string[] {
  const cmds: string[] = [];
  let start = 0;
  for (let i = 1; i <= model.length; i++) {
    if (i === model.length || model[i] !== model[start]) {
      cmds.push(`read -q -P ${model[start]} ${start} ${i - start}`);
      start = i;
    }
  }
  if (cmds.length > maxRuns) throw new Error(`model has ${cmds.length} runs; keep test data coarser`);
  return cmds;
}

// ---------------------------------------------------------------------------------------------
// qemu-img map

export interface MapEntry {
  start: number;
  length: number;
  depth: number;
  present: boolean;
  zero: boolean;
  data: boolean;
  offset?: number;
}

export function qemuMap(file: string, cwd?: string): MapEntry[] {
  const r = runQemuImg(['map', '--output=json', file], { cwd });
  expect(r.stderr).toBe('');
  expect(r.status).toBe(0);
  return JSON.parse(r.stdout) as MapEntry[];
}

/** qemu-img's entry_mergeable: same status, same depth, contiguous (host offsets too). */
function mergeable(a: MapEntry, b: MapEntry): boolean {
  if (a.start + a.length !== b.start) return false;
  if (a.zero !== b.zero || a.data !== b.data || a.depth !== b.depth || a.present !== b.present) return false;
  if ((a.offset === undefined) !== (b.offset === undefined)) return false;
  return a.offset === undefined || a.offset + a.length === b.offset;
}

/**
 * Our map, built the way qemu-img map builds its own: per offset, ask each layer of the chain
 * for its block status (bs.blockStatus) and stop at the first that says data or zero; depth is
 * the number of layers passed, present is that layer's "allocated". Answers are merged as
 * qemu-img merges them. Every entry is cross-checked with bs.blockStatusAbove (data, zero,
 * offset; its depth counts differently past the end of a short backing file, as QEMU's
 * bdrv_block_status_above does).
 */
export async function ourMap(bs: BlockDriverState): Promise<MapEntry[]> {
  const len = await bs.getLength();
  const out: MapEntry[] = [];
  for (let pos = 0; pos < len; ) {
    let node = bs;
    let depth = 0;
    let n = len - pos;
    let st: { pnum: number; allocated: boolean; data: boolean; zero: boolean; offset?: number };
    for (;;) {
      st = await node.blockStatus(pos, Math.min(n, (await node.getLength()) - pos));
      expect(st.pnum).toBeGreaterThan(0);
      n = st.pnum;
      if (st.data || st.zero) break;
      if (!node.backing) {
        st = { pnum: n, allocated: false, data: false, zero: false };
        break;
      }
      node = node.backing;
      depth++;
    }
    const above = await bs.blockStatusAbove(pos, n);
    expect({ pos, data: above.data, zero: above.zero, offset: above.offset }).toEqual({
      pos,
      data: st.data,
      zero: st.zero,
      offset: st.offset,
    });
    const e: MapEntry = { start: pos, length: n, depth, present: st.allocated, zero: st.zero, data: st.data };
    if (st.offset !== undefined) e.offset = st.offset;
    const last = out[out.length - 1];
    if (last !== undefined && mergeable(last, e)) last.length += e.length;
    else out.push(e);
    pos += n;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// qemu-img check

/** The ImageCheck fields, zero when QEMU omits them (it prints only non-zero counters). */
export interface CheckFields {
  checkErrors: number;
  corruptions: number;
  leaks: number;
  corruptionsFixed: number;
  leaksFixed: number;
  totalClusters: number;
  allocatedClusters: number;
  fragmentedClusters: number;
  compressedClusters: number;
}

export function qemuCheck(file: string, extra: string[] = []): { status: number | null; fields: CheckFields } {
  const r = runQemuImg(['check', '-f', 'qed', '--output=json', ...extra, file]);
  const j = JSON.parse(r.stdout) as Record<string, number | string | undefined>;
  const n = (k: string): number => (typeof j[k] === 'number' ? j[k] : 0);
  expect(j['image-end-offset']).toBeUndefined();
  return {
    status: r.status,
    fields: {
      checkErrors: n('check-errors'),
      corruptions: n('corruptions'),
      leaks: n('leaks'),
      corruptionsFixed: n('corruptions-fixed'),
      leaksFixed: n('leaks-fixed'),
      totalClusters: n('total-clusters'),
      allocatedClusters: n('allocated-clusters'),
      fragmentedClusters: n('fragmented-clusters'),
      compressedClusters: n('compressed-clusters'),
    },
  };
}

export function checkFields(r: CheckResult): CheckFields {
  return {
    checkErrors: r.checkErrors,
    corruptions: r.corruptions,
    leaks: r.leaks,
    corruptionsFixed: r.corruptionsFixed,
    leaksFixed: r.leaksFixed,
    totalClusters: r.totalClusters,
    allocatedClusters: r.allocatedClusters,
    fragmentedClusters: r.fragmentedClusters,
    compressedClusters: r.compressedClusters,
  };
}

/** qemu-img check's exit status for a result (0 clean, 1 check errors, 2 corruptions, 3 leaks). */
export function checkStatus(f: CheckFields): number {
  if (f.checkErrors > 0) return 1;
  if (f.corruptions > 0) return 2;
  if (f.leaks > 0) return 3;
  return 0;
}

/** Our check of a file, opened the way qemu-img check opens it (no repair at open, no backing). */
export async function ourCheck(file: string, repair = false): Promise<CheckFields> {
  const bs = await BlockDriverState.open(file, { format: 'qed', readOnly: !repair, check: true, noBacking: true });
  try {
    return checkFields(await bs.check(repair ? { errors: true, leaks: true } : {}));
  } finally {
    await bs.close();
  }
}

// ---------------------------------------------------------------------------------------------
// Files

/**
 * Fingerprint of a file for "never written" checks: its bytes; for huge sparse files, the
 * first MiB, the length and the modification time (nanoseconds).
 */
export function sha(file: string): string {
  const st = statSync(file, { bigint: true });
  if (st.size <= 256n * 1024n * 1024n) return createHash('sha256').update(readFileSync(file)).digest('hex');
  const head = Buffer.alloc(1024 * 1024);
  const fd = openSync(file, 'r');
  try {
    readSync(fd, head, 0, head.length, 0);
  } finally {
    closeSync(fd);
  }
  return `${createHash('sha256').update(head).digest('hex')}/${st.size}/${st.mtimeNs}`;
}

/** Convert any image to raw with qemu-img and return its bytes (QEMU's view of the disk). */
export function qemuReadAll(file: string, rawOut: string, cwd?: string): Buffer {
  const r = runQemuImg(['convert', '-O', 'raw', file, rawOut], { cwd });
  expect(r.stderr).toBe('');
  expect(r.status).toBe(0);
  return readFileSync(rawOut);
}

/** The message of QEMU's failed open, without the tool prefix and the "Could not open" wrapper. */
export function qemuOpenError(stderr: string): string {
  const line = stderr.trim().split('\n')[0] ?? '';
  const m = /^qemu-(?:io|img): (?:can't open device [^:]*: )?(?:Could not open '[^']*': )?(.*)$/.exec(line);
  return m ? m[1] : line;
}

// ---------------------------------------------------------------------------------------------
// A sparse byte model: sorted, disjoint runs of one byte value over [0, size). Images here are
// sparse and may be gigabytes long; the model only stores run boundaries.

export interface Run {
  start: number;
  end: number;
  val: number;
}

export class RunModel {
  runs: Run[];
  constructor(readonly size: number) {
    this.runs = [{ start: 0, end: size, val: 0 }];
  }

  fill(start: number, end: number, val: number): void {
    end = Math.min(end, this.size);
    if (end <= start) return;
    const out: Run[] = [];
    for (const r of this.runs) {
      if (r.end <= start || r.start >= end) {
        out.push(r);
        continue;
      }
      if (r.start < start) out.push({ start: r.start, end: start, val: r.val });
      if (r.end > end) out.push({ start: end, end: r.end, val: r.val });
    }
    out.push({ start, end, val });
    out.sort((a, b) => a.start - b.start);
    // Merge neighbours with the same value.
    const merged: Run[] = [];
    for (const r of out) {
      const last = merged[merged.length - 1];
      if (last !== undefined && last.end === r.start && last.val === r.val) last.end = r.end;
      else merged.push({ ...r });
    }
    this.runs = merged;
  }

  apply(op: Op): void {
    this.fill(op.off, op.off + op.len, op.kind === 'write' ? op.pat : 0);
  }

  /**
   * `read -P` commands, one per run; a run longer than 2 MiB is read at its head and tail only
   * (qemu-io allocates the whole buffer; qemu-img compare covers the middle).
   */
  reads(): string[] {
    const cmds: string[] = [];
    for (const r of this.runs) {
      const len = r.end - r.start;
      if (len <= 2 * 1024 * 1024) {
        cmds.push(`read -q -P ${r.val} ${r.start} ${len}`);
      } else {
        cmds.push(`read -q -P ${r.val} ${r.start} ${1024 * 1024}`);
        cmds.push(`read -q -P ${r.val} ${r.end - 1024 * 1024} ${1024 * 1024}`);
      }
    }
    return cmds;
  }

  /** The bytes of [start, end). */
  bytes(start: number, end: number): Uint8Array {
    const out = new Uint8Array(end - start);
    for (const r of this.runs) {
      const a = Math.max(r.start, start);
      const b = Math.min(r.end, end);
      if (a < b) out.fill(r.val, a - start, b - start);
    }
    return out;
  }

  clone(size = this.size): RunModel {
    const m = new RunModel(size);
    m.runs = [];
    for (const r of this.runs) if (r.start < size) m.runs.push({ ...r, end: Math.min(r.end, size) });
    if (size > this.size) m.fill(this.size, size, 0);
    return m;
  }
}

/** Write a model into a sparse raw file (only non-zero runs are written). */
export function writeModelRaw(file: string, m: RunModel): void {
  const fd = openSync(file, 'w');
  try {
    for (const r of m.runs) {
      if (r.val === 0) continue;
      const chunk = Buffer.alloc(Math.min(r.end - r.start, 1 << 22), r.val);
      for (let p = r.start; p < r.end; p += chunk.length) writeSync(fd, chunk, 0, Math.min(chunk.length, r.end - p), p);
    }
    ftruncateSync(fd, m.size);
  } finally {
    closeSync(fd);
  }
}

/**
 * The guest operations every geometry gets, scaled to its cluster size and L2 span: a COW
 * head and tail, a write straddling two clusters, a multi-cluster allocation, an in-place
 * write, zero clusters and a write into one, unaligned zeroing, writes straddling L2 tables,
 * the last cluster of the disk, zeroing allocated clusters.
 */
export function matrixOps(cs: number, l2Span: number, size: number): Op[] {
  const ops: Op[] = [
    { kind: 'write', off: 1024, len: 512, pat: 0x11 },
    { kind: 'write', off: cs - 512, len: 1024, pat: 0x12 },
    { kind: 'write', off: 3 * cs, len: 3 * cs, pat: 0x22 },
    { kind: 'write', off: 4 * cs + 512, len: 512, pat: 0x33 },
    { kind: 'zero', off: 8 * cs, len: 4 * cs },
    { kind: 'write', off: 9 * cs + 512, len: 1024, pat: 0x44 },
    { kind: 'zero', off: 1536, len: 512 },
    { kind: 'zero', off: 20 * cs + 512, len: 512 },
    { kind: 'zero', off: 24 * cs + 512, len: 2 * cs },
    { kind: 'write', off: size - cs - 512, len: cs + 512, pat: 0x55 },
    { kind: 'zero', off: 3 * cs, len: 2 * cs },
  ];
  if (l2Span < size - 2 * cs) {
    ops.push({ kind: 'write', off: l2Span - cs - 512, len: 2 * cs + 1024, pat: 0x66 });
    ops.push({ kind: 'zero', off: l2Span - cs, len: 2 * cs });
    ops.push({ kind: 'write', off: l2Span + 512, len: 512, pat: 0x67 });
  }
  if (3 * l2Span < size) {
    // One request across two L2 boundaries (three tables, the middle one new), then aligned
    // zeroing across the second boundary.
    ops.push({ kind: 'write', off: l2Span - 3 * cs + 512, len: 2 * l2Span, pat: 0x68 });
    ops.push({ kind: 'zero', off: 2 * l2Span - 2 * cs, len: 4 * cs });
  }
  return ops;
}

// ---------------------------------------------------------------------------------------------
// The interop matrix both directions run (qed-ours, qed-theirs)

const K = 1024;
const M = 1024 * K;

export interface MatrixGeometry {
  name: string;
  cs: number;
  ts: number;
  size: number;
}

/**
 * Sizes chosen so that every geometry has a write across an L2-table boundary while files stay
 * small (allocation is sparse) and far below (cs-1)*cs (QEMU's phantom leaks, qed-format.md §12).
 * table_size=1 is left out: QEMU cannot open such images, so it cannot write them (qed-format.md §6).
 */
export const matrixGeometries: MatrixGeometry[] = [
  { name: '4K/ts=2', cs: 4 * K, ts: 2, size: 16 * M },
  { name: '4K/ts=16', cs: 4 * K, ts: 16, size: 40 * M },
  { name: '64K/ts=4 (default)', cs: 64 * K, ts: 4, size: 2 * 1024 * M + 4 * M },
  { name: '1M/ts=2', cs: M, ts: 2, size: 64 * M },
  { name: '4K/ts=2, size not cluster aligned', cs: 4 * K, ts: 2, size: 16 * M + 1536 },
];

export type MatrixBacking = 'none' | 'raw' | 'raw-short' | 'raw-long' | 'qed';
/** The backings every geometry runs with ('raw-long' runs with the first geometry only). */
export const matrixBackings: MatrixBacking[] = ['none', 'raw', 'raw-short', 'qed'];

/** The backing file's length under an image of `size`: 'raw-short' ends mid-image, 'raw-long' past its end. */
export function matrixBackingLength(kind: MatrixBacking, size: number): number {
  return kind === 'raw-short' ? Math.min(size, 3 * M + 512) : kind === 'raw-long' ? size + M : Math.min(size, 8 * M);
}

/** Guest bytes one L2 table maps. */
export function matrixL2Span(g: MatrixGeometry): number {
  return ((g.cs * g.ts) / 8) * g.cs;
}
