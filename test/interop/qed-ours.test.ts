/**
 * Interop matrix, direction "ours -> QEMU": images we create and write must look right to
 * qemu-img/qemu-io 7.2: `check` finds nothing, `qemu-io read -P` sees our data, `compare`
 * against a raw file given the same writes says identical, and `qemu-img map` equals our map.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlockDriverState, bdrvCreate } from '../../src/index.js';
import { firstDiff } from '../unit/qed-helpers.js';
import { makeTempDir, removeTempDir, requireQemu, runQemuImg } from './qemu.js';
import {
  applyOurs,
  matrixBackingLength,
  matrixBackings,
  matrixGeometries,
  matrixL2Span,
  matrixOps,
  ourCheck,
  ourMap,
  qemuCheck,
  qemuIoBatch,
  qemuIoCmd,
  qemuMap,
  RunModel,
  writeModelRaw,
  type MatrixBacking,
  type MatrixGeometry,
  type Op,
} from './qed-support.js';

const qemu = requireQemu();
const K = 1024;
const M = 1024 * K;

/** Backing contents: one byte value per 64 KiB block, so a few hundred runs at most. */
function backingModel(size: number): RunModel {
  const m = new RunModel(size);
  for (let k = 0; k * 64 * K < size; k++) m.fill(k * 64 * K, (k + 1) * 64 * K, ((k * 37 + 5) & 0xff) | 1);
  return m;
}

describe.skipIf(!qemu)('QED interop: images we create and write, read by QEMU 7.2', () => {
  let dir = '';
  let n = 0;
  beforeAll(() => {
    dir = makeTempDir('qed-ours');
  });
  afterAll(() => removeTempDir(dir));

  /** Make the backing file (ours too, when QED) and return its name and guest model. */
  async function makeBacking(kind: MatrixBacking, size: number): Promise<{ name?: string; fmt?: string; model: RunModel }> {
    if (kind === 'none') return { model: new RunModel(size) };
    const name = `base-${++n}.${kind === 'qed' ? 'qed' : 'raw'}`;
    const path = join(dir, name);
    const len = matrixBackingLength(kind, size);
    if (kind === 'qed') {
      // A QED backing file we wrote ourselves, with its own zero clusters and unallocated space.
      await bdrvCreate(path, { format: 'qed', options: { size: len, clusterSize: 4096, tableSize: 2 } });
      const b = await BlockDriverState.open(path);
      const m = new RunModel(len);
      const ops: Op[] = [
        { kind: 'write', off: 0, len: 256 * K, pat: 0x71 },
        { kind: 'write', off: 4 * M - 4 * K, len: 12 * K, pat: 0x72 },
        { kind: 'zero', off: 64 * K, len: 64 * K },
      ];
      for (const op of ops) {
        await applyOurs(b, op);
        m.apply(op);
      }
      await b.close();
      return { name, fmt: 'qed', model: m };
    }
    const m = backingModel(len);
    writeModelRaw(path, m);
    return { name, fmt: 'raw', model: m };
  }

  async function scenario(g: MatrixGeometry, backingKind: MatrixBacking): Promise<void> {
    const backing = await makeBacking(backingKind, g.size);
    const model = backing.model.clone(g.size);
    const img = join(dir, `ours-${++n}.qed`);
    await bdrvCreate(img, {
      format: 'qed',
      options: {
        size: g.size,
        clusterSize: g.cs,
        tableSize: g.ts,
        ...(backing.name !== undefined ? { backingFile: backing.name, backingFmt: backing.fmt } : {}),
      },
    });
    const ops = matrixOps(g.cs, matrixL2Span(g), g.size);
    const bs = await BlockDriverState.open(img);
    for (const op of ops) {
      await applyOurs(bs, op);
      model.apply(op);
    }
    const mine = await ourMap(bs);
    await bs.close();

    // 1. qemu-img check finds nothing.
    const chk = qemuCheck(img);
    expect(chk.fields).toMatchObject({ checkErrors: 0, corruptions: 0, leaks: 0 });
    expect(chk.status).toBe(0);
    // 2. qemu-io sees our data: one pattern read per run of the model.
    qemuIoBatch(img, model.reads(), [], dir);
    // 3. qemu-img compare against a raw image given the same writes.
    const raw = join(dir, `model-${n}.raw`);
    writeModelRaw(raw, model);
    const cmp = runQemuImg(['compare', '-f', 'qed', '-F', 'raw', img, raw], { cwd: dir });
    expect(cmp.stdout + cmp.stderr).toContain('Images are identical.');
    expect(cmp.status).toBe(0);
    // 4. qemu-img map equals our map.
    expect(mine).toEqual(qemuMap(img, dir));
  }

  for (const g of matrixGeometries) {
    for (const b of matrixBackings) {
      it(`${g.name}, backing: ${b}`, async () => {
        await scenario(g, b);
      });
    }
  }
  it('4K/ts=2, backing: raw-long (longer than the image)', async () => {
    await scenario(matrixGeometries[0], 'raw-long');
  });

  it('guest offsets past 4 GiB (4K/ts=16, 256 GiB disk), both ways: bytes, check and map agree', async () => {
    const G = 1024 * M;
    const size = 256 * G;
    const ops: Op[] = [
      { kind: 'write', off: 4 * G - 512, len: 1024, pat: 0x41 }, // across 2^32
      { kind: 'write', off: 200 * G + 1024, len: 5120, pat: 0x42 },
      { kind: 'zero', off: 128 * G, len: 64 * K },
      { kind: 'write', off: 128 * G + 4 * K + 512, len: 512, pat: 0x43 }, // into a zero cluster
      { kind: 'write', off: size - 4 * K, len: 4 * K, pat: 0x44 }, // last cluster of the disk
    ];
    const model = new RunModel(size);
    for (const op of ops) model.apply(op);
    const ours = join(dir, 'big-o.qed');
    const theirs = join(dir, 'big-q.qed');
    await bdrvCreate(ours, { format: 'qed', options: { size, clusterSize: 4096, tableSize: 16 } });
    expect(runQemuImg(['create', '-q', '-f', 'qed', '-o', 'cluster_size=4096,table_size=16', theirs, String(size)]).status).toBe(0);
    const bs = await BlockDriverState.open(ours);
    for (const op of ops) await applyOurs(bs, op);
    await bs.close();
    qemuIoBatch(theirs, ops.map(qemuIoCmd), ['-f', 'qed']);
    // Same operations, same file.
    expect(firstDiff(readFileSync(ours), readFileSync(theirs))).toBe(-1);
    // QEMU reads ours; we read theirs.
    qemuIoBatch(ours, model.reads(), ['-f', 'qed']);
    const rd = await BlockDriverState.open(theirs, { readOnly: true });
    for (const op of ops) {
      const a = op.off - 4 * K;
      const got = new Uint8Array(op.len + 8 * K);
      await rd.pread(a, got.subarray(0, Math.min(got.length, size - a)));
      expect(firstDiff(got.subarray(0, Math.min(got.length, size - a)), model.bytes(a, Math.min(a + got.length, size)))).toBe(-1);
    }
    expect(await ourMap(rd)).toEqual(qemuMap(theirs));
    await rd.close();
    expect(qemuCheck(ours).fields).toEqual(await ourCheck(theirs));
  });
});
