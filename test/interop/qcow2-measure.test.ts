// blk-img measure against qemu-img 7.2 (img-parity-harness.ts): the numbers for qcow2 and raw
// targets from a size and from images (sparse, full, compressed, zero clusters, chains, with
// bitmaps), every cluster size, refcount width, extended L2 and preallocation; text and
// JSON; an internal snapshot as the source (-l); and qemu-img's errors, word for word.
import { afterAll, describe, expect, it } from 'vitest';
import { makeTempDir, removeTempDir, requireQemu } from './qemu.js';
import { sessionDiffs, type Session } from './img-parity-harness.js';

const qemu = requireQemu();

const fromSize: string[][] = [];
for (const cs of ['512', '4k', '64k', '2M']) {
  for (const extra of ['', ',refcount_bits=1', ',refcount_bits=64', ',preallocation=full', ',compat=0.10']) {
    fromSize.push(['measure', '--size', '1000M', '-O', 'qcow2', '-o', `cluster_size=${cs}${extra}`]);
  }
}

const sessions: Session[] = [
  {
    name: 'measure from a size',
    steps: [
      ...fromSize,
      ['measure', '--size', '1G', '-O', 'qcow2'],
      ['measure', '--output=json', '--size', '1G', '-O', 'qcow2'],
      ['measure', '--size', '0', '-O', 'qcow2'],
      ['measure', '--size', '1', '-O', 'qcow2', '-o', 'extended_l2=on'],
      ['measure', '--size', '3T', '-O', 'qcow2', '-o', 'extended_l2=on,cluster_size=32k,preallocation=metadata'],
      ['measure', '--size', '1G', '-O', 'qcow2', '-o', 'preallocation=falloc,refcount_bits=8'],
      ['measure', '--size', '1G', '-O', 'qcow2', '-o', 'backing_file=b.qcow2,backing_fmt=qcow2'],
      ['measure', '--size', '1000', '-O', 'raw'],
      ['measure', '--size', '1000', '--output=json', '-O', 'raw'],
      ['measure', '--size', '1M'],
      // Errors, in qemu-img's order and words.
      ['measure', '--size', '1G', '-O', 'qed'],
      ['measure', '--size', '1G', '-O', 'file'],
      ['measure', '--size', '1G', '-O', 'nosuch'],
      ['measure', '--size', '1G', '-O', 'blkdebug'],
      ['measure', '--size', '1G', '-O', 'qcow2', '-o', 'compat=v2'],
      ['measure', '--size', '1G', '-O', 'qcow2', '-o', 'preallocation=foo'],
      ['measure', '--size', '1G', '-O', 'qcow2', '-o', 'foo=1'],
      ['measure', '--size', '1G', '-O', 'qcow2', '-o', 'cluster_size=1000'],
      ['measure', '--size', '1G', '-O', 'qcow2', '-o', 'cluster_size=8k,extended_l2=on'],
      ['measure', '--size', '1G', '-O', 'qcow2', '-o', 'refcount_bits=3'],
      ['measure', '--size', '1G', '-O', 'qcow2', '-o', 'compat=0.10,refcount_bits=8'],
      ['measure', '--size', '1P', '-O', 'qcow2', '-o', 'cluster_size=512'],
      ['measure', '--size', 'abc', '-O', 'qcow2'],
      ['measure', '--output=xml', '--size', '1G'],
      ['measure', '-O', 'qcow2'],
      ['measure', '-f', 'qcow2', '--size', '1G'],
      ['measure', '--size', '1G', 'x.qcow2'],
      ['measure', 'a', 'b'],
      ['measure', 'missing.qcow2'],
    ],
  },
  {
    name: 'measure from images',
    setup: [
      ['qemu-img', 'create', '-q', '-f', 'qcow2', 'sparse.qcow2', '100M'],
      ['qemu-io', '-c', 'write -P 1 0 100k', '-c', 'write -P 2 10M 1k', '-c', 'write -z 20M 1M', '-c', 'write -c -P 3 30M 64k', 'sparse.qcow2'],
      ['qemu-img', 'create', '-q', '-f', 'raw', 'full.raw', '3M'],
      ['qemu-io', '-f', 'raw', '-c', 'write -P 5 0 3M', 'full.raw'],
      ['qemu-img', 'create', '-q', '-f', 'qcow2', '-b', 'sparse.qcow2', '-F', 'qcow2', 'top.qcow2', '120M'],
      ['qemu-io', '-c', 'write -P 7 50M 200k', '-c', 'write -z 0 64k', 'top.qcow2'],
      ['qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'compat=0.10', 'v2.qcow2', '5M'],
      ['qemu-io', '-c', 'write -P 9 1M 1M', 'v2.qcow2'],
      ['qemu-img', 'create', '-q', '-f', 'qcow2', 'bm.qcow2', '10M'],
      ['qemu-img', 'bitmap', '--add', '-g', '64k', 'bm.qcow2', 'b0'],
      ['qemu-img', 'bitmap', '--add', '-g', '512', 'bm.qcow2', 'a-longer-bitmap-name'],
    ],
    steps: [
      ['measure', '-O', 'qcow2', 'sparse.qcow2'],
      ['measure', '--output=json', '-O', 'qcow2', 'sparse.qcow2'],
      ['measure', '-O', 'qcow2', '-o', 'cluster_size=4k', 'sparse.qcow2'],
      ['measure', '-O', 'qcow2', '-o', 'cluster_size=2M,refcount_bits=1', 'sparse.qcow2'],
      ['measure', '-O', 'qcow2', '-o', 'backing_file=x,backing_fmt=raw', 'sparse.qcow2'],
      ['measure', '-O', 'qcow2', '-o', 'preallocation=metadata', 'sparse.qcow2'],
      ['measure', '-O', 'raw', 'sparse.qcow2'],
      ['measure', '-O', 'qcow2', 'full.raw'],
      ['measure', '-f', 'raw', '-O', 'qcow2', 'full.raw'],
      ['measure', '-O', 'qcow2', 'top.qcow2'],
      ['measure', '-O', 'qcow2', '-o', 'cluster_size=512', 'top.qcow2'],
      ['measure', '-O', 'qcow2', 'v2.qcow2'],
      ['measure', '-O', 'qcow2', '-o', 'compat=0.10', 'v2.qcow2'],
      ['measure', '-O', 'qcow2', 'bm.qcow2'],
      ['measure', '--output=json', '-O', 'qcow2', '-o', 'cluster_size=512', 'bm.qcow2'],
      ['measure', '-O', 'qcow2', '-o', 'compat=0.10', 'bm.qcow2'],
      ['measure', '--image-opts', '-O', 'qcow2', 'driver=qcow2,file.filename=sparse.qcow2'],
      ['measure', '-O', 'qcow2', '-o', 'size=1G', 'sparse.qcow2'],
      ['measure', '-O', 'qed', 'sparse.qcow2'],
    ],
  },
  {
    name: 'measure an internal snapshot (-l)',
    setup: [
      // Three states of one image: each snapshot holds other data; the active state discarded
      // part of it and grew (the snapshots keep the smaller L1 of 512-byte clusters).
      ['qemu-img', 'create', '-q', '-f', 'qcow2', 'snap.qcow2', '4M'],
      ['qemu-io', '-c', 'write -P 1 0 1M', '-c', 'write -c -P 4 3M 64k', 'snap.qcow2'],
      ['qemu-img', 'snapshot', '-c', 's1', 'snap.qcow2'],
      ['qemu-io', '-c', 'write -P 2 1M 2M', '-c', 'write -z 3M 64k', 'snap.qcow2'],
      ['qemu-img', 'snapshot', '-c', 's2', 'snap.qcow2'],
      ['qemu-img', 'snapshot', '-c', 's2', 'snap.qcow2'],
      ['qemu-io', '-c', 'discard 0 1M', 'snap.qcow2'],
      ['qemu-img', 'resize', '-q', 'snap.qcow2', '8M'],
      ['qemu-img', 'bitmap', '--add', 'snap.qcow2', 'b0'],
      ['qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'cluster_size=512', 'small.qcow2', '1M'],
      ['qemu-io', '-c', 'write -P 1 100k 300k', 'small.qcow2'],
      ['qemu-img', 'snapshot', '-c', 'a', 'small.qcow2'],
      ['qemu-img', 'resize', '-q', 'small.qcow2', '3M'],
      ['qemu-io', '-c', 'write -P 2 2M 512k', 'small.qcow2'],
      ['qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'compat=0.10', 'v2.qcow2', '2M'],
      ['qemu-io', '-c', 'write -P 1 0 1M', 'v2.qcow2'],
      ['qemu-img', 'snapshot', '-c', 'old', 'v2.qcow2'],
      ['qemu-io', '-c', 'write -P 2 1M 1M', '-c', 'discard 0 512k', 'v2.qcow2'],
      ['qemu-img', 'create', '-q', '-f', 'raw', 'r.raw', '1M'],
      ['qemu-img', 'create', '-q', '-f', 'qed', 'e.qed', '1M'],
    ],
    steps: [
      ['measure', '-O', 'qcow2', 'snap.qcow2'],
      ['measure', '-O', 'qcow2', '-l', 's1', 'snap.qcow2'],
      ['measure', '-O', 'qcow2', '-l', '1', 'snap.qcow2'],
      ['measure', '--output=json', '-O', 'qcow2', '-l', 's2', 'snap.qcow2'],
      ['measure', '-O', 'qcow2', '-l', '3', 'snap.qcow2'],
      ['measure', '-O', 'qcow2', '-o', 'cluster_size=4k', '-l', 'snapshot.id=1', 'snap.qcow2'],
      ['measure', '-O', 'qcow2', '-o', 'compat=0.10', '-l', 'snapshot.name=s2', 'snap.qcow2'],
      ['measure', '-O', 'qcow2', '-l', 'snapshot.id=2,snapshot.name=s2', 'snap.qcow2'],
      ['measure', '-O', 'raw', '-l', 's1', 'snap.qcow2'],
      ['measure', '--image-opts', '-O', 'qcow2', '-l', 's1', 'driver=qcow2,file.filename=snap.qcow2'],
      ['measure', '-O', 'qcow2', 'small.qcow2'],
      ['measure', '-O', 'qcow2', '-l', 'a', 'small.qcow2'],
      ['measure', '--output=json', '-O', 'qcow2', '-o', 'cluster_size=512', '-l', 'a', 'small.qcow2'],
      ['measure', '-O', 'qcow2', 'v2.qcow2'],
      ['measure', '-O', 'qcow2', '-l', 'old', 'v2.qcow2'],
      // Errors, in qemu-img's order and words.
      ['measure', '-O', 'qcow2', '-l', 'nope', 'snap.qcow2'],
      ['measure', '-O', 'qcow2', '-l', 'snapshot.id=1,snapshot.name=s2', 'snap.qcow2'],
      ['measure', '-O', 'qcow2', '-l', 'snapshot.id=', 'snap.qcow2'],
      ['measure', '-O', 'qcow2', '-l', 'snapshot.foo=1', 'snap.qcow2'],
      ['measure', '-O', 'qcow2', '-l', 'snapshot.', 'snap.qcow2'],
      ['measure', '-O', 'qcow2', '-l', 's1', '--size', '1M'],
      ['measure', '-O', 'qcow2', '-l', 's1', 'r.raw'],
      ['measure', '-O', 'qcow2', '-l', 'snapshot.name=s1', 'e.qed'],
      ['measure', '-O', 'qcow2', '-f', 'raw', '-l', 's1', 'snap.qcow2'],
      ['measure', '-O', 'qed', '-l', 's1', 'snap.qcow2'],
      ['measure', '-O', 'nosuch', '-l', 'nope', 'snap.qcow2'],
      ['measure', '-O', 'qcow2', '-l', 's1', 'missing.qcow2'],
    ],
  },
];

describe.skipIf(!qemu)('blk-img measure parity with qemu-img 7.2', () => {
  const root = makeTempDir('qcow2-measure');
  afterAll(() => removeTempDir(root));
  for (const s of sessions) {
    it(s.name, async () => {
      expect(await sessionDiffs(root, s)).toEqual([]);
    });
  }
});
