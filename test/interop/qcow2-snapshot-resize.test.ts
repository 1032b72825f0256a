// Resize, snapshot apply across sizes, and amend of images with internal snapshots, against
// qemu-img 7.2: each step run by both tools on copies of one image (stdout, stderr and exit
// status compared, printed dates masked), the files compared byte for byte after every step
// with the snapshot dates masked, then checked and read back by qemu-img / qemu-io.
import { copyFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { runOurs } from './img-parity-harness.js';
import { makeTempDir, removeTempDir, requireQemu, runQemuImg, runQemuIo } from './qemu.js';
import { firstDiff, ok, pairDirs, runSnapshotSteps, type SnapshotStep } from './qcow2-snapshot-steps.js';

const qemu = requireQemu();

interface Case {
  name: string;
  /** Set-up run with the real tools in one directory, then copied to the other. */
  setup: string[][];
  steps: SnapshotStep[];
  /** qemu-io reads that must succeed on both results (guest data intact). */
  reads: string[];
}

const CASES: Case[] = [
  {
    name: 'v3: grow and shrink with snapshots, apply across sizes',
    setup: [['create', '-q', '-f', 'qcow2', 'img.qcow2', '1M']],
    steps: [
      ['io', 'write -P 1 0 64k'],
      ['io', 'write -P 2 960k 64k'],
      ['snapshot', '-c', 's1'],
      ['resize', '@', '3M'],
      ['io', 'write -P 3 2M 64k'],
      ['io', 'write -P 4 0 4k'],
      ['snapshot', '-c', 's2'],
      ['resize', '--shrink', '@', '512k'],
      ['info', '@'],
      ['snapshot', '-a', 's1'],
      ['info', '--output=json', '@'],
      ['snapshot', '-a', 's2'],
      ['info', '@'],
      ['resize', '--shrink', '@', '1536k'],
      ['snapshot', '-a', '1'],
      ['snapshot', '-d', 's2'],
      ['resize', '@', '+1M'],
      ['snapshot', '-a', 's1'],
      ['snapshot', '-l'],
    ],
    reads: ['read -P 1 0 64k', 'read -P 2 960k 64k', 'read -P 0 64k 896k'],
  },
  {
    name: '512-byte clusters: the L1 grows and shrinks under snapshots; an odd size',
    setup: [['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=512', 'img.qcow2', '100k']],
    steps: [
      ['io', 'write -P 5 0 100k'],
      ['snapshot', '-c', 'small'],
      ['resize', '@', '40M'],
      ['io', 'write -P 6 39M 1M'],
      ['snapshot', '-c', 'big'],
      ['snapshot', '-a', 'small'],
      ['info', '@'],
      ['resize', '@', '100000512'],
      ['snapshot', '-a', 'big'],
      ['snapshot', '-a', 'small'],
      ['snapshot', '-d', 'big'],
    ],
    reads: ['read -P 5 0 100k'],
  },
  {
    name: 'v2: resize refused while snapshots exist',
    setup: [['create', '-q', '-f', 'qcow2', '-o', 'compat=0.10', 'img.qcow2', '1M']],
    steps: [
      ['io', 'write -P 7 0 64k'],
      ['snapshot', '-c', 's1'],
      ['resize', '@', '2M'],
      ['resize', '--shrink', '@', '512k'],
      ['amend', '-o', 'size=4M', '@'],
      ['snapshot', '-d', 's1'],
      ['resize', '@', '2M'],
    ],
    reads: ['read -P 7 0 64k'],
  },
  {
    name: 'upgrade of a v2 image whose snapshot entries lack extra data',
    setup: [
      ['create', '-q', '-f', 'qcow2', '-o', 'compat=0.10', 'img.qcow2', '1M'],
      ['io', 'write -P 8 0 64k'],
      ['snapshot', '-c', 's1', 'img.qcow2'],
      ['io', 'write -P 9 64k 64k'],
      ['snapshot', '-c', 's2', 'img.qcow2'],
    ],
    steps: [
      ['strip', '0'],
      ['snapshot', '-l'],
      ['amend', '-p', '-o', 'compat=1.1', '@'],
      ['info', '@'],
      ['resize', '@', '2M'],
      ['snapshot', '-a', 's1'],
    ],
    reads: ['read -P 8 0 64k', 'read -P 0 64k 64k'],
  },
  {
    name: 'upgrade keeps a table whose entries have 16 bytes of extra data',
    setup: [
      ['create', '-q', '-f', 'qcow2', '-o', 'compat=0.10', 'img.qcow2', '1M'],
      ['snapshot', '-c', 's1', 'img.qcow2'],
    ],
    steps: [['strip', '16'], ['amend', '-o', 'compat=1.1', '@'], ['snapshot', '-l']],
    reads: [],
  },
  {
    name: 'downgrade with snapshots: their zero clusters expanded too',
    setup: [['create', '-q', '-f', 'qcow2', 'img.qcow2', '1M']],
    steps: [
      ['io', 'write -P 1 0 128k'],
      ['io', 'write -z 256k 64k'],
      ['io', 'write -z -u 64k 64k'],
      ['snapshot', '-c', 's1'],
      ['io', 'write -P 5 512k 64k'],
      ['io', 'write -z 640k 64k'],
      ['snapshot', '-c', 's2'],
      ['io', 'write -z -u 512k 64k'],
      ['amend', '-p', '-o', 'compat=0.10', '@'],
      ['info', '@'],
      ['snapshot', '-a', 's1'],
      ['snapshot', '-a', 's2'],
    ],
    reads: ['read -P 5 512k 64k', 'read -P 1 0 64k', 'read -P 0 64k 64k', 'read -P 0 640k 64k'],
  },
  {
    name: 'downgrade with snapshots over a backing file: shared tables, clusters counted per table',
    setup: [
      ['create', '-q', '-f', 'raw', 'base.raw', '1M'],
      ['io-raw', 'write -P 0x44 0 1M'],
      ['create', '-q', '-f', 'qcow2', '-b', 'base.raw', '-F', 'raw', 'img.qcow2'],
    ],
    steps: [
      ['io', 'write -z 0 64k'],
      ['io', 'write -P 1 128k 64k'],
      ['snapshot', '-c', 's1'],
      ['snapshot', '-c', 's2'],
      ['io', 'write -z 256k 128k'],
      ['amend', '-o', 'compat=0.10', '@'],
      ['snapshot', '-a', 's1'],
      ['snapshot', '-d', 's2'],
    ],
    reads: ['read -P 0 0 64k', 'read -P 0x44 64k 64k', 'read -P 1 128k 64k', 'read -P 0x44 256k 768k'],
  },
  {
    name: 'downgrade refused: a snapshot of another size',
    setup: [['create', '-q', '-f', 'qcow2', 'img.qcow2', '1M']],
    steps: [['snapshot', '-c', 's1'], ['resize', '@', '2M'], ['amend', '-o', 'compat=0.10', '@'], ['amend', '-o', 'size=3M', '@'], ['info', '@']],
    reads: [],
  },
];

/** Set-up commands in one directory: qemu-img by default, 'io'/'io-raw' for qemu-io. */
function setUp(cmds: string[][], cwd: string): void {
  for (const [tool, ...rest] of cmds) {
    if (tool === 'io') ok(runQemuIo(['-c', rest[0], 'img.qcow2'], { cwd }));
    else if (tool === 'io-raw') ok(runQemuIo(['-f', 'raw', '-c', rest[0], 'base.raw'], { cwd }));
    else ok(runQemuImg([tool, ...rest], { cwd }));
  }
}

describe.skipIf(!qemu)('qcow2 resize, apply across sizes and amend with internal snapshots against qemu-img 7.2', () => {
  const root = makeTempDir('qcow2-snapshot-resize');
  afterAll(() => removeTempDir(root));
  let n = 0;

  for (const c of CASES) {
    it(c.name, async () => {
      const [dq, db] = pairDirs(root, String(n++));
      setUp(c.setup, dq);
      for (const f of ['img.qcow2', 'base.raw']) if (c.setup.some((s) => s.includes(f))) copyFileSync(join(dq, f), join(db, f));
      await runSnapshotSteps(dq, db, c.steps, { identical: true });
      const check = runQemuImg(['check', 'img.qcow2'], { cwd: db });
      expect(check.stdout).toContain('No errors were found on the image.');
      for (const d of [dq, db]) for (const r of c.reads) ok(runQemuIo(['-c', r, 'img.qcow2'], { cwd: d }));
    });
  }

  it('a zero cluster sharing its cluster with a snapshot: our downgrade keeps the snapshot, QEMU 7.2 zeroes it', async () => {
    const d = join(root, 'shared-zero');
    mkdirSync(d);
    ok(runQemuImg(['create', '-q', '-f', 'qcow2', 'q.qcow2', '1M'], { cwd: d }));
    ok(runQemuIo(['-c', 'write -P 1 0 128k', 'q.qcow2'], { cwd: d }));
    ok(runQemuImg(['snapshot', '-c', 's1', 'q.qcow2'], { cwd: d }));
    // The zero write keeps the cluster (no -u): the entry is zero, the cluster still the snapshot's data.
    ok(runQemuIo(['-c', 'write -z 0 64k', 'q.qcow2'], { cwd: d }));
    copyFileSync(join(d, 'q.qcow2'), join(d, 'b.qcow2'));
    ok(runQemuImg(['amend', '-o', 'compat=0.10', 'q.qcow2'], { cwd: d }));
    expect((await runOurs(['amend', '-o', 'compat=0.10', 'b.qcow2'], d, false)).status).toBe(0);
    // QEMU: an OFLAG_COPIED error, and the snapshot's first cluster reads zeros.
    expect(runQemuImg(['check', 'q.qcow2'], { cwd: d }).status).toBe(2);
    // Ours: clean, the active cluster zero, the snapshot's data intact.
    expect(runQemuImg(['check', 'b.qcow2'], { cwd: d }).stdout).toContain('No errors were found on the image.');
    ok(runQemuIo(['-c', 'read -P 0 0 64k', '-c', 'read -P 1 64k 64k', 'b.qcow2'], { cwd: d }));
    expect((await runOurs(['snapshot', '-a', 's1', 'b.qcow2'], d, false)).status).toBe(0);
    ok(runQemuIo(['-c', 'read -P 1 0 128k', 'b.qcow2'], { cwd: d }));
    expect(runQemuImg(['check', 'b.qcow2'], { cwd: d }).stdout).toContain('No errors were found on the image.');
  });

  it('images resized and applied here are read the same by qemu-img, and the reverse', async () => {
    const d = join(root, 'across');
    mkdirSync(d);
    ok(runQemuImg(['create', '-q', '-f', 'qcow2', 'a.qcow2', '1M'], { cwd: d }));
    ok(runQemuIo(['-c', 'write -P 0x11 0 1M', 'a.qcow2'], { cwd: d }));
    copyFileSync(join(d, 'a.qcow2'), join(d, 'b.qcow2'));
    // a: snapshot and grow by blk-img, applied by qemu-img. b: the reverse.
    expect((await runOurs(['snapshot', '-c', 'one', 'a.qcow2'], d, false)).status).toBe(0);
    expect((await runOurs(['resize', 'a.qcow2', '4M'], d, false)).status).toBe(0);
    ok(runQemuImg(['snapshot', '-c', 'one', 'b.qcow2'], { cwd: d }));
    ok(runQemuImg(['resize', 'b.qcow2', '4M'], { cwd: d }));
    for (const img of ['a.qcow2', 'b.qcow2']) ok(runQemuIo(['-c', 'write -P 0x22 3M 1M', img], { cwd: d }));
    ok(runQemuImg(['snapshot', '-a', 'one', 'a.qcow2'], { cwd: d }));
    expect((await runOurs(['snapshot', '-a', 'one', 'b.qcow2'], d, false)).status).toBe(0);
    for (const img of ['a.qcow2', 'b.qcow2']) {
      expect(runQemuImg(['info', '--output=json', img], { cwd: d }).stdout).toContain('"virtual-size": 1048576');
      ok(runQemuIo(['-c', 'read -P 0x11 0 1M', img], { cwd: d }));
      expect(runQemuImg(['check', img], { cwd: d }).stdout).toContain('No errors were found on the image.');
    }
    expect(firstDiff(join(d, 'a.qcow2'), join(d, 'b.qcow2'))).toBeNull();
  });
});
