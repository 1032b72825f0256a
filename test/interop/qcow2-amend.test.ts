// blk-img amend against qemu-img 7.2 (img-parity-harness.ts): the same amend on copies of one
// image by both programs, then the results compared: stdout, stderr and status of every step,
// qemu-img check/info/map of the images, their content, and their bytes where QEMU's result
// is deterministic.
import { afterAll, describe, expect, it } from 'vitest';
import { makeTempDir, removeTempDir, requireQemu } from './qemu.js';
import { sessionDiffs, type Session } from './img-parity-harness.js';

const qemu = requireQemu();

const sessions: Session[] = [
  {
    name: 'amend compat, lazy refcounts and size',
    setup: [
      ['qemu-img', 'create', '-q', '-f', 'raw', 'base.raw', '4M'],
      ['qemu-io', '-f', 'raw', '-c', 'write -P 0x44 0 4M', 'base.raw'],
      ['qemu-img', 'create', '-q', '-f', 'qcow2', 'a.qcow2', '4M'],
      ['qemu-io', '-c', 'write -P 1 0 100k', '-c', 'write -z 1M 128k', '-c', 'write -P 2 2M 64k', '-c', 'write -z 2M 64k', 'a.qcow2'],
      ['qemu-img', 'create', '-q', '-f', 'qcow2', '-b', 'base.raw', '-F', 'raw', 'top.qcow2'],
      ['qemu-io', '-c', 'write -z 0 192k', '-c', 'write -P 3 1M 64k', '-c', 'write -z 1M 64k', '-c', 'write -P 5 3M 10k', 'top.qcow2'],
      ['qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'compat=0.10,cluster_size=4k', 'v2.qcow2', '1M'],
      ['qemu-io', '-c', 'write -P 6 4k 8k', 'v2.qcow2'],
      ['qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'lazy_refcounts=on', 'lazy.qcow2', '1M'],
      ['qemu-io', '-c', 'write -P 7 0 64k', 'lazy.qcow2'],
    ],
    steps: [
      ['amend', '-o', 'compat=0.10', 'a.qcow2'],
      ['info', 'a.qcow2'],
      ['amend', '-o', 'compat=1.1', 'a.qcow2'],
      ['amend', '-o', 'compat=0.10', 'top.qcow2'],
      ['amend', '-o', 'compat=v3', 'v2.qcow2'],
      ['amend', '-o', 'lazy_refcounts=on', 'v2.qcow2'],
      ['amend', '-o', 'lazy_refcounts=off', 'lazy.qcow2'],
      ['amend', '-o', 'lazy_refcounts=on,size=8M', 'lazy.qcow2'],
      ['amend', '-o', 'compat=0.10,lazy_refcounts=on', 'lazy.qcow2'],
      ['amend', '-o', 'backing_file=base.raw,backing_fmt=raw', 'top.qcow2'],
      ['amend', '-o', 'size=6M', 'a.qcow2'],
      { args: ['amend', '-p', '-o', 'compat=1.1', 'top.qcow2'] },
      { args: ['amend', '-p', '-o', 'compat=0.10', 'top.qcow2'] },
      ['amend', '-q', '-p', '-o', 'compat=1.1', 'top.qcow2'],
    ],
    images: ['a.qcow2', 'top.qcow2', 'v2.qcow2', 'lazy.qcow2'],
    identical: ['a.qcow2', 'top.qcow2', 'v2.qcow2', 'lazy.qcow2'],
  },
  {
    name: 'amend refcount_bits',
    setup: [
      ['qemu-img', 'create', '-q', '-f', 'qcow2', 'a.qcow2', '64M'],
      // One compressed cluster per write: QEMU compresses a longer request in threads, in no fixed order.
      ['qemu-io', '-c', 'write -P 1 0 3M', '-c', 'write -P 2 40M 1M', '-c', 'write -c -P 3 50M 64k', '-c', 'write -c -P 3 50176k 64k', 'a.qcow2'],
      // A snapshot shares clusters (refcount 2); its date differs between the two copies.
      ['qemu-img', 'create', '-q', '-f', 'qcow2', 'snap.qcow2', '4M'],
      ['qemu-io', '-c', 'write -P 4 0 1M', 'snap.qcow2'],
      ['qemu-img', 'snapshot', '-c', 's1', 'snap.qcow2'],
      ['qemu-io', '-c', 'write -P 8 0 64k', 'snap.qcow2'],
      ['qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'cluster_size=512', 'small.qcow2', '8M'],
      ['qemu-io', '-c', 'write -P 5 0 2M', '-c', 'write -P 6 7M 100k', 'small.qcow2'],
      ['qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4k,refcount_bits=1', 'one.qcow2', '4M'],
      ['qemu-io', '-c', 'write -P 7 0 1M', 'one.qcow2'],
    ],
    steps: [
      ['amend', '-o', 'refcount_bits=64', 'a.qcow2'],
      ['amend', '-o', 'refcount_bits=1', 'a.qcow2'],
      ['amend', '-o', 'refcount_bits=2', 'a.qcow2'],
      ['amend', '-o', 'refcount_bits=1', 'snap.qcow2'],
      ['amend', '-o', 'refcount_bits=2', 'snap.qcow2'],
      ['amend', '-o', 'refcount_bits=1', 'small.qcow2'],
      ['amend', '-o', 'refcount_bits=8', 'small.qcow2'],
      ['amend', '-p', '-o', 'refcount_bits=64', 'one.qcow2'],
      ['amend', '-o', 'refcount_bits=16,compat=0.10', 'one.qcow2'],
      ['info', 'one.qcow2'],
    ],
    images: ['a.qcow2', 'small.qcow2', 'one.qcow2'],
    contentOnly: ['snap.qcow2'],
    identical: ['a.qcow2', 'small.qcow2', 'one.qcow2'],
  },
  {
    name: 'amend refusals',
    setup: [
      ['qemu-img', 'create', '-q', '-f', 'raw', 'base.raw', '1M'],
      ['qemu-img', 'create', '-q', '-f', 'qcow2', 'a.qcow2', '1M'],
      ['qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'compat=0.10', 'v2.qcow2', '1M'],
      ['qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'extended_l2=on', 'x.qcow2', '1M'],
      ['qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'refcount_bits=8', 'r8.qcow2', '1M'],
      ['qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'compression_type=zstd', 'z.qcow2', '1M'],
      ['qemu-io', '-c', 'write -c -P 1 0 64k', 'z.qcow2'],
      ['qemu-img', 'create', '-q', '-f', 'qcow2', '-b', 'base.raw', '-F', 'raw', 'top.qcow2'],
      ['qemu-img', 'create', '-q', '-f', 'qed', 'q.qed', '1M'],
    ],
    steps: [
      ['amend', 'a.qcow2'],
      ['amend', '-o', 'compat=0.9', 'a.qcow2'],
      ['amend', '-o', 'cluster_size=4k', 'a.qcow2'],
      ['amend', '-o', 'foo=bar', 'a.qcow2'],
      ['amend', '-o', 'lazy_refcounts=maybe', 'a.qcow2'],
      ['amend', '-o', 'help', 'a.qcow2'],
      ['amend', '-f', 'qcow2', '-o', 'help'],
      ['amend', '-f', 'qed', '-o', 'help'],
      ['amend', '-f', 'nosuch', '-o', 'help'],
      ['amend', '-o', 'compat=1.1', 'q.qed'],
      ['amend', '-o', 'compat=1.1'],
      ['amend', '-o', 'compat=1.1', 'a.qcow2', 'b'],
      ['amend', '-t', 'foo', '-o', 'compat=1.1', 'a.qcow2'],
      ['amend', '-o', 'compat=1.1', 'missing.qcow2'],
      ['amend', '-o', 'refcount_bits=3', 'a.qcow2'],
      ['amend', '-o', 'refcount_bits=8', 'v2.qcow2'],
      ['amend', '-o', 'compat=0.10,refcount_bits=8', 'a.qcow2'],
      ['amend', '-o', 'lazy_refcounts=on', 'v2.qcow2'],
      ['amend', '-o', 'compat=0.10', 'x.qcow2'],
      ['amend', '-o', 'compat=0.10', 'r8.qcow2'],
      ['amend', '-o', 'compat=0.10', 'z.qcow2'],
      ['amend', '-o', 'backing_file=x', 'a.qcow2'],
      ['amend', '-o', 'backing_fmt=raw', 'top.qcow2'],
      ['amend', '-o', 'backing_file=base.raw,backing_fmt=qcow2', 'top.qcow2'],
      ['amend', '-o', 'data_file=x', 'a.qcow2'],
      ['amend', '-o', 'data_file_raw=on', 'a.qcow2'],
      ['amend', '-o', 'encrypt.new-secret=x', 'a.qcow2'],
      ['amend', '-o', 'extended_l2=on', 'a.qcow2'],
      ['amend', '-p', '-o', 'compat=0.10', 'x.qcow2'],
    ],
    images: ['a.qcow2', 'v2.qcow2', 'x.qcow2', 'r8.qcow2', 'z.qcow2', 'top.qcow2'],
    identical: ['a.qcow2', 'v2.qcow2', 'x.qcow2', 'r8.qcow2', 'z.qcow2', 'top.qcow2'],
  },
];

describe.skipIf(!qemu)('blk-img amend parity with qemu-img 7.2', () => {
  const root = makeTempDir('qcow2-amend');
  afterAll(() => removeTempDir(root));
  for (const s of sessions) {
    it(s.name, async () => {
      expect(await sessionDiffs(root, s)).toEqual([]);
    });
  }
});
