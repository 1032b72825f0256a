import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlockDriverState, IOVector, type CheckResult } from '../../src/index.js';
import { makeTempDir, removeTempDir, requireQemu, runQemuImg, runQemuIo } from './qemu.js';
import { firstDiff, pattern, rng, setU64, u64 } from '../unit/qed-helpers.js';

const qemu = requireQemu();
const CS = 4096;

/** One guest operation, spelled for qemu-io and applied to our node. */
type Op = { kind: 'write'; off: number; len: number; pat: number } | { kind: 'zero'; off: number; len: number };

function qemuIoCmd(op: Op): string {
  return op.kind === 'write' ? `write -q -P ${op.pat} ${op.off} ${op.len}` : `write -q -z ${op.off} ${op.len}`;
}

async function applyOurs(bs: BlockDriverState, op: Op): Promise<void> {
  if (op.kind === 'write') await bs.pwrite(op.off, new Uint8Array(op.len).fill(op.pat));
  else await bs.writeZeroes(op.off, op.len);
}

function qemuIoAll(file: string, ops: Op[], fmt = 'qed'): void {
  // qemu-io takes many -c; keep the command lines short.
  for (let i = 0; i < ops.length; i += 40) {
    const args = ['-f', fmt];
    for (const op of ops.slice(i, i + 40)) args.push('-c', qemuIoCmd(op));
    const r = runQemuIo([...args, file]);
    expect(r.stderr).toBe('');
    expect(r.stdout).not.toMatch(/failed/);
  }
}

function checkJson(file: string, extra: string[] = []): { status: number | null; json: Record<string, number | string> } {
  const r = runQemuImg(['check', '-f', 'qed', '--output=json', ...extra, file]);
  return { status: r.status, json: JSON.parse(r.stdout) as Record<string, number | string> };
}

describe.skipIf(!qemu)('qed interop with QEMU 7.2', () => {
  let dir = '';
  beforeAll(() => {
    dir = makeTempDir('qed-interop');
  });
  afterAll(() => removeTempDir(dir));

  function create(file: string, opts: string, size: string, backing?: string): void {
    const r = runQemuImg([
      'create',
      '-q',
      '-f',
      'qed',
      '-o',
      opts,
      ...(backing ? ['-b', backing, '-F', 'raw'] : []),
      file,
      size,
    ], { cwd: dir });
    expect(r.status).toBe(0);
  }

  async function sameOpsSameBytes(ops: Op[], backing?: string, trailing = 0, geometry = 'cluster_size=4096,table_size=2'): Promise<void> {
    const theirs = join(dir, `t-${Math.random()}.qed`);
    const ours = join(dir, `o-${Math.random()}.qed`);
    create(theirs, geometry, '16M', backing);
    // A trailing partial cluster is ignored at open and overwritten by the next allocation.
    if (trailing > 0) writeFileSync(theirs, Buffer.alloc(trailing, 0xee), { flag: 'a' });
    copyFileSync(theirs, ours);
    qemuIoAll(theirs, ops);
    const bs = await BlockDriverState.open(ours);
    for (const op of ops) await applyOurs(bs, op);
    await bs.close();
    const a = readFileSync(theirs);
    const b = readFileSync(ours);
    expect(b.length).toBe(a.length);
    expect(firstDiff(b, a)).toBe(-1);
    // And the disk reads the same here as through QEMU (backing file included).
    const raw = `${theirs}.raw`;
    expect(runQemuImg(['convert', '-O', 'raw', theirs, raw], { cwd: dir }).status).toBe(0);
    const rd = await BlockDriverState.open(theirs, { readOnly: true });
    const got = new Uint8Array(16 << 20);
    await rd.pread(0, got);
    await rd.close();
    expect(firstDiff(got, readFileSync(raw))).toBe(-1);
  }

  const handOps: Op[] = [
    { kind: 'write', off: 1000, len: 100, pat: 0x11 }, // COW head and tail
    { kind: 'write', off: 3 * CS, len: 3 * CS, pat: 0x22 }, // multi-cluster allocation
    { kind: 'write', off: 4 * CS + 512, len: 512, pat: 0x33 }, // in place
    { kind: 'zero', off: 16 * CS, len: 8 * CS }, // zero markers
    { kind: 'write', off: 18 * CS + 512, len: 1024, pat: 0x44 }, // into a zero cluster
    { kind: 'zero', off: 512, len: 512 }, // unaligned zeroing of an allocated cluster
    { kind: 'zero', off: 40 * CS + 512, len: 512 }, // unaligned zeroing, unallocated: fallback write
    { kind: 'zero', off: 50 * CS + 512, len: 3 * CS }, // head, aligned middle, tail
    { kind: 'write', off: (4 << 20) - 2 * CS, len: 4 * CS, pat: 0x55 }, // across an L2 boundary
    { kind: 'zero', off: 3 * CS, len: 2 * CS }, // zeroing allocated clusters in place
  ];

  it('the same operations give byte-identical files (no backing)', async () => {
    await sameOpsSameBytes(handOps);
  });

  it('the same operations give byte-identical files (raw backing shorter than the image)', async () => {
    writeFileSync(join(dir, 'base.raw'), Buffer.from(pattern((3 << 20) + 512, 5)));
    await sameOpsSameBytes(
      handOps.filter((op) => !(op.kind === 'write' && op.off === 18 * CS + 512)), // qed-format.md §17.4 differs on purpose
      'base.raw',
    );
  });

  it('a trailing partial cluster is overwritten the same way', async () => {
    await sameOpsSameBytes(handOps.slice(0, 3), undefined, 1000);
  });

  it('random operations give byte-identical files', async () => {
    const r = rng(11);
    const ops: Op[] = [];
    for (let i = 0; i < 80; i++) {
      const off = Math.floor(r() * ((16 << 20) / 512 - 64)) * 512;
      const len = (1 + Math.floor(r() * 40)) * 512;
      ops.push(r() < 0.8 ? { kind: 'write', off, len, pat: 1 + (i % 250) } : { kind: 'zero', off, len });
    }
    await sameOpsSameBytes(ops);
  });

  function randomOps(seed: number, count: number, maxSectors: number): Op[] {
    const r = rng(seed);
    const ops: Op[] = [];
    for (let i = 0; i < count; i++) {
      const off = Math.floor(r() * ((16 << 20) / 512 - maxSectors)) * 512;
      const len = (1 + Math.floor(r() * maxSectors)) * 512;
      ops.push(r() < 0.7 ? { kind: 'write', off, len, pat: 1 + (i % 250) } : { kind: 'zero', off, len });
    }
    return ops;
  }

  it('random operations over a backing file give byte-identical files (flush ordering, no dirty bit)', async () => {
    // An all-zero backing file: a partial write into a zero cluster reads the same under
    // qed-format.md §17.4 and QEMU's rule, so the files must match byte for byte; shorter than the image.
    writeFileSync(join(dir, 'zero.raw'), Buffer.alloc((5 << 20) + 512));
    await sameOpsSameBytes(randomOps(12, 80, 40), 'zero.raw');
  });

  it('a raw backing file of odd length (not a sector multiple): COW across its end gives byte-identical files', async () => {
    writeFileSync(join(dir, 'odd.raw'), Buffer.from(pattern((3 << 20) + 100, 9)));
    await sameOpsSameBytes(
      [
        { kind: 'write', off: (3 << 20) - 512, len: 512, pat: 0x21 }, // cluster holds the backing EOF
        { kind: 'write', off: (3 << 20) + 4096, len: 512, pat: 0x22 }, // past the backing EOF
        { kind: 'write', off: (3 << 20) - 8192 + 1024, len: 512, pat: 0x23 },
        { kind: 'zero', off: (3 << 20) + 8192 + 512, len: 512 },
      ],
      'odd.raw',
    );
  });

  it('copy-on-read (qemu-io -C) gives byte-identical files, zero backing data as zero clusters', async () => {
    const base = Buffer.alloc(4 << 20, 0x55);
    base.fill(0, 1 << 20, (1 << 20) + 65536);
    writeFileSync(join(dir, 'cor.raw'), base);
    const theirs = join(dir, 'cor-q.qed');
    const ours = join(dir, 'cor-o.qed');
    create(theirs, 'cluster_size=4096,table_size=2', '8M', 'cor.raw');
    copyFileSync(theirs, ours);
    const reads: [number, number][] = [[1000, 100], [1 << 20, 65536], [2 << 20, 10000], [(4 << 20) - 4096, 8192], [6 << 20, 4096]];
    const r = runQemuIo(['-C', '-f', 'qed', ...reads.flatMap(([o, l]) => ['-c', `read -q ${o} ${l}`]), theirs]);
    expect(r.stderr + r.stdout).toBe('');
    const bs = await BlockDriverState.open(ours, { copyOnRead: true });
    for (const [o, l] of reads) await bs.pread(o, new Uint8Array(l));
    await bs.close();
    expect(readFileSync(ours).length).toBeGreaterThan(3 * CS); // something was copied up
    expect(firstDiff(readFileSync(ours), readFileSync(theirs))).toBe(-1);
  });

  /**
   * Batches of writes submitted together: qemu-io `aio_write` x N + `aio_flush` against the
   * same writes started together here. Allocations are serialised in arrival order on both
   * sides, so the files come out identical. Only while every table is cached: when requests
   * must first read L2 tables, QEMU resumes them in the order its thread pool reports the
   * reads done (newest first when several finish together), which is host timing, not format.
   */
  async function sameBatchesSameBytes(batches: Op[][], backing?: string, viaAio = false): Promise<void> {
    const theirs = join(dir, `bt-${Math.random()}.qed`);
    const ours = join(dir, `bo-${Math.random()}.qed`);
    create(theirs, 'cluster_size=4096,table_size=2', '16M', backing);
    copyFileSync(theirs, ours);
    const args = ['-f', 'qed'];
    for (const batch of batches) {
      for (const op of batch) args.push('-c', `aio_write -q -P ${(op as { pat: number }).pat} ${op.off} ${op.len}`);
      args.push('-c', 'aio_flush');
    }
    const r = runQemuIo([...args, theirs]);
    expect(r.stderr + r.stdout).toBe('');
    const bs = await BlockDriverState.open(ours);
    for (const batch of batches) {
      await Promise.all(
        batch.map((op) =>
          viaAio && op.kind === 'write'
            ? new Promise<void>((resolve, reject) => {
                const buf = new Uint8Array(op.len).fill(op.pat);
                bs.aioWritev(op.off / 512, IOVector.from(buf), op.len / 512, (err) => (err ? reject(err) : resolve()));
              })
            : applyOurs(bs, op),
        ),
      );
    }
    await bs.close();
    expect(firstDiff(readFileSync(ours), readFileSync(theirs))).toBe(-1);
  }

  it('concurrent writes (in place and allocating, one table shared) give byte-identical files', async () => {
    await sameBatchesSameBytes([
      [
        { kind: 'write', off: 0, len: 4096, pat: 1 },
        { kind: 'write', off: 8192, len: 4096, pat: 2 },
        { kind: 'write', off: 4 << 20, len: 4096, pat: 3 },
        { kind: 'write', off: 12288, len: 12288, pat: 4 },
        { kind: 'write', off: 9 << 20, len: 512, pat: 5 },
        { kind: 'write', off: 2048, len: 4096, pat: 6 }, // in place, then allocating
        { kind: 'write', off: 8 << 20, len: 8192, pat: 7 },
      ],
    ]);
  });

  /** Batches of writes that never overlap inside a batch (QEMU's thread pool may finish them in any order). */
  function randomBatches(seed: number): Op[][] {
    const r = rng(seed);
    const batches: Op[][] = [];
    for (let b = 0; b < 12; b++) {
      const batch: Op[] = [];
      while (batch.length < 6) {
        const off = Math.floor(r() * ((16 << 20) / 512 - 64)) * 512;
        const len = (1 + Math.floor(r() * 40)) * 512;
        if (batch.some((o) => o.off < off + len && off < o.off + o.len)) continue;
        batch.push({ kind: 'write', off, len, pat: 1 + ((b * 6 + batch.length) % 250) });
      }
      batches.push(batch);
    }
    return batches;
  }

  it('random concurrent batches give byte-identical files', async () => {
    await sameBatchesSameBytes(randomBatches(31));
  });

  it('random concurrent batches through the AIO interface (aioWritev) give byte-identical files', async () => {
    await sameBatchesSameBytes(randomBatches(33), undefined, true);
  });

  it('random concurrent batches over a backing file give byte-identical files', async () => {
    writeFileSync(join(dir, 'zero2.raw'), Buffer.alloc((5 << 20) + 512));
    await sameBatchesSameBytes(randomBatches(32), 'zero2.raw');
  });

  it('random operations with 64K clusters and 16-cluster tables give byte-identical files', async () => {
    await sameOpsSameBytes(randomOps(13, 60, 300), undefined, 0, 'cluster_size=65536,table_size=16');
  });

  it('random large operations across several L2 tables give byte-identical files', async () => {
    await sameOpsSameBytes(randomOps(14, 30, 12000), undefined, 0, 'cluster_size=4096,table_size=2');
  });

  it('an image we write passes qemu-img check and compares equal to a raw file', async () => {
    const img = join(dir, 'ours.qed');
    const raw = join(dir, 'ours.raw');
    create(img, 'cluster_size=4096,table_size=4', '32M');
    const model = new Uint8Array(32 << 20);
    const bs = await BlockDriverState.open(img);
    const r = rng(21);
    const jobs: Promise<void>[] = [];
    for (let i = 0; i < 200; i++) {
      const off = Math.floor(r() * ((32 << 20) - 70000));
      const len = 1 + Math.floor(r() * 65536);
      const data = pattern(len, i);
      model.set(data, off);
      // Batches of concurrent writes; the batches are disjoint, so the model is exact.
      jobs.push(bs.pwrite(off, data));
      if (jobs.length === 1 || i % 7 === 0) await Promise.all(jobs.splice(0));
    }
    await Promise.all(jobs);
    await bs.close();
    writeFileSync(raw, model);
    const chk = checkJson(img);
    expect(chk.status).toBe(0);
    expect(chk.json['check-errors']).toBe(0);
    expect(chk.json.corruptions).toBeUndefined();
    expect(chk.json.leaks).toBeUndefined();
    const cmp = runQemuImg(['compare', '-f', 'qed', '-F', 'raw', img, raw]);
    expect(cmp.stdout).toContain('Images are identical.');
    expect(cmp.status).toBe(0);
  });

  it('an image qemu-io writes reads the same here, with the same map', async () => {
    const img = join(dir, 'theirs.qed');
    create(img, 'cluster_size=4096,table_size=2', '8M');
    qemuIoAll(img, [
      { kind: 'write', off: 0, len: 5000 + 120, pat: 0xab },
      { kind: 'zero', off: 8 * CS, len: 4 * CS },
      { kind: 'write', off: (4 << 20) - 512, len: 1024, pat: 0xcd },
    ].map((op) => ({ ...op, len: Math.ceil(op.len / 512) * 512 })) as Op[]);
    const bs = await BlockDriverState.open(img, { readOnly: true });
    const got = new Uint8Array(8 << 20);
    await bs.pread(0, got);
    const want = new Uint8Array(8 << 20);
    want.fill(0xab, 0, 5120 + 512 * 0);
    want.fill(0xcd, (4 << 20) - 512, (4 << 20) + 512);
    expect(firstDiff(got, want)).toBe(-1);
    const map = JSON.parse(runQemuImg(['map', '--output=json', img]).stdout) as {
      start: number;
      length: number;
      zero: boolean;
      data: boolean;
      offset?: number;
    }[];
    // QEMU merges neighbouring extents with the same status; walk each with our answers.
    for (const m of map) {
      for (let pos = m.start; pos < m.start + m.length; ) {
        const st = await bs.blockStatusAbove(pos, m.start + m.length - pos);
        expect(st.data).toBe(m.data);
        expect(st.zero).toBe(m.zero);
        if (m.data) expect(st.offset).toBe(m.offset! + (pos - m.start));
        pos += st.pnum;
      }
    }
    await bs.close();
  });

  it('check agrees with qemu-img check on corrupted images, and repairs what QEMU repairs', async () => {
    const base = join(dir, 'c-base.qed');
    create(base, 'cluster_size=4096,table_size=2', '16M');
    qemuIoAll(base, [
      { kind: 'write', off: 0, len: 3 * CS, pat: 1 },
      { kind: 'write', off: 5 << 20, len: CS, pat: 2 },
      { kind: 'write', off: 9 << 20, len: CS, pat: 3 },
    ]);
    const pristine = readFileSync(base);
    const l1 = CS;
    const l2a = u64(pristine, l1);
    const l2b = u64(pristine, l1 + 8);
    const corruptions: [string, (b: Buffer) => void][] = [
      ['L2 entry unaligned (inside the header)', (b) => setU64(b, l2a + 8, 512)],
      ['L2 entry past EOF', (b) => setU64(b, l2a, 1 << 30)],
      ['L1 entry past EOF', (b) => setU64(b, l1 + 8, 1 << 30)],
      ['L1 entry unaligned', (b) => setU64(b, l1 + 16, l2b + 512)],
      ['double reference to a data cluster', (b) => setU64(b, l2a + 8, u64(b, l2a))],
      ['L2 entry pointing into the L1 table', (b) => setU64(b, l2a + 16, l1)],
      ['a leaked cluster', (b) => setU64(b, l2a + 16, 0)],
    ];
    for (const [what, corrupt] of corruptions) {
      const theirs = join(dir, `c-${what.replace(/\W/g, '_')}-q.qed`);
      const ours = join(dir, `c-${what.replace(/\W/g, '_')}-o.qed`);
      const bytes = Buffer.from(pristine);
      corrupt(bytes);
      writeFileSync(theirs, bytes);
      writeFileSync(ours, bytes);

      const q = checkJson(theirs);
      const bs = await BlockDriverState.open(ours, { readOnly: true, check: true, noBacking: true });
      const res: CheckResult = await bs.check();
      await bs.close();
      expect({ what, corruptions: res.corruptions, leaks: res.leaks, allocated: res.allocatedClusters, fragmented: res.fragmentedClusters, total: res.totalClusters }).toEqual({
        what,
        corruptions: q.json.corruptions ?? 0,
        leaks: q.json.leaks ?? 0,
        allocated: q.json['allocated-clusters'] ?? 0,
        fragmented: q.json['fragmented-clusters'] ?? 0,
        total: q.json['total-clusters'],
      });

      const qr = checkJson(theirs, ['-r', 'all']);
      const rw = await BlockDriverState.open(ours, { check: true, noBacking: true });
      const fixed = await rw.check({ errors: true, leaks: true });
      await rw.close();
      expect({ what, corruptions: fixed.corruptions, leaks: fixed.leaks, fixedCount: fixed.corruptionsFixed }).toEqual({
        what,
        corruptions: qr.json.corruptions ?? 0,
        leaks: qr.json.leaks ?? 0,
        fixedCount: qr.json['corruptions-fixed'] ?? 0,
      });
      // Both repaired files are the same bytes.
      expect(firstDiff(readFileSync(ours), readFileSync(theirs))).toBe(-1);
    }
  });

  it('resize and rebase -u write the same header bytes as qemu-img', async () => {
    const a = join(dir, 'h-q.qed');
    const b = join(dir, 'h-o.qed');
    create(a, 'cluster_size=4096,table_size=2', '1M');
    copyFileSync(a, b);
    expect(runQemuImg(['resize', '-f', 'qed', a, '3M']).status).toBe(0);
    expect(runQemuImg(['rebase', '-u', '-f', 'qed', '-b', 'some/base.raw', '-F', 'raw', a]).status).toBe(0);
    expect(runQemuImg(['rebase', '-u', '-f', 'qed', '-b', 'other.img', '-F', 'qcow2', a]).status).toBe(0);
    expect(runQemuImg(['rebase', '-u', '-f', 'qed', '-b', '', a]).status).toBe(0);
    const bs = await BlockDriverState.open(b, { noBacking: true });
    await bs.truncate(3 << 20);
    await bs.changeBackingFile('some/base.raw', 'raw');
    await bs.changeBackingFile('other.img', 'qcow2');
    await bs.changeBackingFile(null, null);
    await bs.close();
    expect(firstDiff(readFileSync(b), readFileSync(a))).toBe(-1);
  });

  it('a table_size=1 image we write is valid per the spec (QEMU itself cannot open it)', async () => {
    const img = join(dir, 'ts1.qed');
    create(img, 'cluster_size=4096,table_size=1', '4M');
    const bs = await BlockDriverState.open(img);
    await bs.pwrite(CS, new Uint8Array(CS).fill(9));
    const got = new Uint8Array(CS);
    await bs.pread(CS, got);
    expect(got.every((x) => x === 9)).toBe(true);
    expect(await bs.check()).toMatchObject({ corruptions: 0, leaks: 0 });
    await bs.close();
    const r = runQemuImg(['info', img]);
    expect(r.stderr).toContain('QED table offset is invalid');
  });
});
