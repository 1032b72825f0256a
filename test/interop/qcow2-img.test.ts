// blk-img on qcow2 images against qemu-img 7.2 (see img-parity-harness.ts): create's
// Formatting line and errors, info with its "Format specific information" (human and JSON),
// map, resize; the images compared at the end.
import { afterAll, describe, expect, it } from 'vitest';
import { makeTempDir, removeTempDir, requireQemu } from './qemu.js';
import { sessionDiffs, type Session } from './img-parity-harness.js';

const qemu = requireQemu();

const sessions: Session[] = [
  {
    name: 'qcow2 create, info and map',
    setup: [['qemu-img', 'create', '-q', '-f', 'raw', 'base.raw', '1M']],
    steps: [
      ['create', '-f', 'qcow2', 'a.qcow2', '1G'],
      ['create', '-f', 'qcow2', '-o', 'compat=0.10,cluster_size=4k', 'v2.qcow2', '64M'],
      ['create', '-f', 'qcow2', '-o', 'lazy_refcounts=on,refcount_bits=1,extended_l2=on', 'l.qcow2', '1000'],
      ['create', '-f', 'qcow2', '-o', 'compression_type=zstd,preallocation=metadata', 'z.qcow2', '3M'],
      ['create', '-f', 'qcow2', '-b', 'base.raw', '-F', 'raw', 'top.qcow2'],
      ['create', '-f', 'qcow2', '-o', 'cluster_size=1000', 'bad.qcow2', '1M'],
      ['create', '-f', 'qcow2', '-o', 'compat=0.10,lazy_refcounts=on', 'bad.qcow2', '1M'],
      ['create', '-f', 'qcow2', '-o', 'refcount_bits=3', 'bad.qcow2', '1M'],
      ['create', '-f', 'qcow2', '-o', 'compat=0.9', 'bad.qcow2', '1M'],
      ['info', 'a.qcow2'],
      ['info', '--output=json', 'a.qcow2'],
      ['info', 'v2.qcow2'],
      ['info', '--output=json', 'v2.qcow2'],
      ['info', 'l.qcow2'],
      ['info', '--output=json', 'z.qcow2'],
      ['info', '--backing-chain', 'top.qcow2'],
      ['map', '--output=json', 'z.qcow2'],
      ['map', 'top.qcow2'],
      ['resize', 'v2.qcow2', '+1M'],
      ['resize', '--shrink', 'a.qcow2', '100M'],
      ['info', 'a.qcow2'],
    ],
    images: ['a.qcow2', 'v2.qcow2', 'l.qcow2', 'z.qcow2', 'top.qcow2'],
  },
  {
    // bench's COW writes over a raw backing file at depth 16 (row 9.6 in small): in the page
    // cache, they start with a callback (alloc-submit.ts); the image must be QEMU's, byte for byte.
    name: 'qcow2 COW writes over a raw backing file, depth 16',
    setup: [
      ['qemu-img', 'create', '-q', '-f', 'raw', 'back.raw', '8M'],
      ['qemu-img', 'bench', '-q', '-f', 'raw', '-w', '-s', '1M', '-c', '6', '--pattern=0x3c', 'back.raw'],
      ['qemu-img', 'create', '-q', '-f', 'qcow2', '-b', 'back.raw', '-F', 'raw', 'cow.qcow2'],
    ],
    steps: [
      ['bench', '-w', '-s', '4k', '-S', '64k', '-d', '16', '-c', '128', '--pattern=0x5a', 'cow.qcow2'],
      ['bench', '-w', '-s', '4k', '-S', '64k', '-o', '10k', '-d', '16', '-c', '64', 'cow.qcow2'],
      ['check', 'cow.qcow2'],
    ],
    images: ['cow.qcow2'],
  },
];

describe.skipIf(!qemu)('blk-img parity with qemu-img 7.2 on qcow2', () => {
  const root = makeTempDir('qcow2-img');
  afterAll(() => removeTempDir(root));
  for (const s of sessions) {
    it(s.name, async () => {
      expect(await sessionDiffs(root, s)).toEqual([]);
    });
  }
});
