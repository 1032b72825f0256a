// Parity with qemu-img 7.2: qcow2's preallocation=falloc and full, on create and on resize.
// The data clusters are allocated in one run after a new refcount table, the file grown over
// them with the protocol's preallocation: the same bytes, the same info, map and check as
// qemu-img's, for several cluster sizes, odd sizes, v2 and v3; QEMU's errors where it refuses.
import { afterAll, describe, expect, it } from 'vitest';
import { makeTempDir, removeTempDir, requireQemu } from './qemu.js';
import { sessionDiffs, type Session } from './img-parity-harness.js';

const qemu = requireQemu();

const createCases: [name: string, opts: string, size: string][] = [
  ['falloc-4k', 'cluster_size=4096,preallocation=falloc', '1M'],
  ['full-4k', 'cluster_size=4096,preallocation=full', '1M'],
  ['falloc-512', 'cluster_size=512,preallocation=falloc', '300k'],
  ['full-512-odd', 'cluster_size=512,preallocation=full', '1000'],
  ['falloc-64k-odd', 'preallocation=falloc', '1000k'],
  ['full-64k', 'preallocation=full', '3M'],
  ['falloc-2m', 'cluster_size=2M,preallocation=falloc', '5M'],
  ['falloc-v2', 'compat=0.10,cluster_size=4096,preallocation=falloc', '777k'],
  ['full-v2', 'compat=0.10,preallocation=full', '200k'],
  ['falloc-rc1', 'refcount_bits=1,cluster_size=512,preallocation=falloc', '2M'],
  ['full-rc64', 'refcount_bits=64,cluster_size=1024,preallocation=full', '1M'],
  ['falloc-lazy', 'lazy_refcounts=on,cluster_size=4096,preallocation=falloc', '64k'],
  ['falloc-zero', 'preallocation=falloc', '0'],
];

const sessions: Session[] = [
  {
    name: 'create -o preallocation=falloc|full over cluster sizes, odd sizes, v2 and v3',
    steps: createCases.map(([n, o, size]) => ['create', '-f', 'qcow2', '-o', o, `${n}.qcow2`, size]),
    images: createCases.map(([n]) => `${n}.qcow2`),
    identical: createCases.map(([n]) => `${n}.qcow2`),
  },
  {
    name: 'create: preallocation with a backing file is refused without extended_l2',
    setup: [['qemu-img', 'create', '-q', '-f', 'raw', 'base.raw', '1M']],
    steps: [
      { args: ['create', '-f', 'qcow2', '-o', 'preallocation=falloc', '-b', 'base.raw', '-F', 'raw', 'b1.qcow2'], merged: true },
      { args: ['create', '-f', 'qcow2', '-o', 'preallocation=full', '-b', 'base.raw', '-F', 'raw', 'b2.qcow2', '1M'], merged: true },
      { args: ['create', '-f', 'qcow2', '-o', 'preallocation=bogus', 'b3.qcow2', '1M'], merged: true },
      ['info', 'b1.qcow2'],
    ],
  },
  {
    name: 'resize --preallocation=falloc|full: aligned and odd old ends, data kept',
    setup: [
      ['qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096', 'a.qcow2', '1M'],
      ['qemu-io', '-f', 'qcow2', '-c', 'write -P 0x11 0 8k', '-c', 'write -P 0x22 1020k 4k', 'a.qcow2'],
      ['qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096', 'odd.qcow2', '1001k'],
      ['qemu-io', '-f', 'qcow2', '-c', 'write -P 0x33 996k 5k', 'odd.qcow2'],
      ['qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'compat=0.10', 'v2.qcow2', '100k'],
      ['qemu-io', '-f', 'qcow2', '-c', 'write -P 0x44 64k 36k', 'v2.qcow2'],
      ['qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'cluster_size=512', 'small.qcow2', '3k'],
      ['qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096', 'shrink.qcow2', '1M'],
      ['qemu-img', 'create', '-q', '-f', 'raw', 'base.raw', '64k'],
      ['qemu-io', '-f', 'raw', '-c', 'write -P 0x55 0 64k', 'base.raw'],
      ['qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096', '-b', 'base.raw', '-F', 'raw', 'top.qcow2', '61k'],
    ],
    steps: [
      ['resize', '-f', 'qcow2', '--preallocation=falloc', 'a.qcow2', '3M'],
      ['resize', '-f', 'qcow2', '--preallocation=full', 'odd.qcow2', '+1003k'],
      ['resize', '-f', 'qcow2', '--preallocation=falloc', 'v2.qcow2', '1M'],
      ['resize', '-f', 'qcow2', '--preallocation=full', 'small.qcow2', '5M'],
      ['resize', '-f', 'qcow2', '--preallocation=falloc', 'top.qcow2', '200k'],
      { args: ['resize', '-f', 'qcow2', '--shrink', '--preallocation=full', 'shrink.qcow2', '512k'], merged: true },
    ],
    images: ['a.qcow2', 'odd.qcow2', 'v2.qcow2', 'small.qcow2', 'top.qcow2', 'shrink.qcow2'],
    identical: ['a.qcow2', 'odd.qcow2', 'v2.qcow2', 'small.qcow2', 'top.qcow2', 'shrink.qcow2'],
  },
];

describe.skipIf(!qemu)('qcow2 preallocation=falloc|full: parity with qemu-img 7.2', () => {
  const root = makeTempDir('qcow2-prealloc');
  afterAll(() => removeTempDir(root));
  for (const s of sessions) {
    it(s.name, async () => {
      expect(await sessionDiffs(root, s)).toEqual([]);
    });
  }
});
