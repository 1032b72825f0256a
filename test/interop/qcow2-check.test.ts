// Parity with qemu-img 7.2 for qcow2 check and repair: images damaged by script (refcounts,
// L1/L2 entries, refcount table entries, compressed clusters, the dirty bit of a lazy image
// after a crash) give the same stdout, stderr and exit status for check, check --output=json,
// -r leaks and -r all, and the repaired files end in the same state (see img-parity-harness.ts).
// Where we decided to differ from QEMU (reserved bits, COPIED on overflowed clusters, zero
// entries in v2 images, data references into metadata) the results are in qcow2-check-ours.
import { afterAll, describe, expect, it } from 'vitest';
import { makeTempDir, removeTempDir, requireQemu } from './qemu.js';
import { sessionDiffs, type Session } from './img-parity-harness.js';
import { pokeBE } from './qcow2-damage.js';

const qemu = requireQemu();

// Default 64 KiB clusters, 1 MiB: header 0, reftable 0x10000, refblock 0x20000, L1 0x30000;
// after the writes below: L2 0x40000, data 0x50000 0x60000 (guest 0..100k), 0x70000 0x80000
// (guest 300k..364k). 16-bit refcounts: cluster n's count at 0x20000 + 2n.
const base: string[][] = [
  ['qemu-img', 'create', '-q', '-f', 'qcow2', 'a.qcow2', '1M'],
  ['qemu-io', '-c', 'write -P 1 0 100k', '-c', 'write -P 2 300k 64k', 'a.qcow2'],
];
const copies = (names: string[]): string[] => ['sh', names.map((n) => `cp a.qcow2 ${n}.qcow2`).join(' && ')];

const sessions: Session[] = [
  {
    name: 'clean images, text and JSON',
    setup: [...base, ['qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'cluster_size=512,refcount_bits=1', 'small.qcow2', '64k']],
    steps: [
      { args: ['check', 'a.qcow2'], merged: true },
      ['check', '--output=json', 'a.qcow2'],
      ['check', '-r', 'all', 'a.qcow2'],
      ['check', 'small.qcow2'],
      ['check', '--output=json', 'small.qcow2'],
    ],
  },
  {
    name: 'leaked clusters: found, then freed by -r leaks and -r all',
    setup: [...base, copies(['l1', 'l2', 'l3']), ...['l1', 'l2', 'l3'].map((n) => pokeBE(`${n}.qcow2`, 0x20000 + 2 * 8, 2, 2))],
    steps: [
      { args: ['check', 'l1.qcow2'], merged: true },
      ['check', '--output=json', 'l1.qcow2'],
      { args: ['check', '-r', 'leaks', 'l2.qcow2'], merged: false },
      ['check', '-r', 'all', '--output=json', 'l3.qcow2'],
    ],
    images: ['l2.qcow2', 'l3.qcow2'],
  },
  {
    name: 'double reference: refcount too low, COPIED wrong, a leak',
    // L2[1] (guest 64k) := L2[0]'s cluster 0x50000: cluster 5 has two references, 6 none.
    setup: [...base, copies(['d1', 'd2', 'd3']), ...['d1', 'd2', 'd3'].map((n) => pokeBE(`${n}.qcow2`, 0x40008, 8, 0x8000000000050000n))],
    steps: [
      { args: ['check', 'd1.qcow2'], merged: true },
      ['check', '--output=json', 'd1.qcow2'],
      ['check', '-r', 'leaks', 'd2.qcow2'],
      ['check', '-r', 'all', 'd3.qcow2'],
      ['check', 'd3.qcow2'],
    ],
    images: ['d2.qcow2', 'd3.qcow2'],
  },
  {
    name: 'refcount 0 with references: -r leaks fails, -r all rebuilds',
    setup: [...base, copies(['z1', 'z2', 'z3']), ...['z1', 'z2', 'z3'].map((n) => pokeBE(`${n}.qcow2`, 0x20000 + 2 * 7, 2, 0))],
    steps: [
      { args: ['check', 'z1.qcow2'], merged: true },
      ['check', '--output=json', 'z1.qcow2'],
      { args: ['check', '-r', 'leaks', 'z2.qcow2'], merged: true },
      ['check', '-r', 'all', 'z3.qcow2'],
      ['check', '--output=json', 'z3.qcow2'],
    ],
    images: ['z2.qcow2', 'z3.qcow2'],
  },
  {
    name: 'lazy refcounts after a crash: the dirty image and its rebuild',
    setup: [
      ['qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'lazy_refcounts=on', 'lazy.qcow2', '1M'],
      // abort: qemu-io dies without closing (SIGABRT), as in a crash.
      ['sh', "qemu-io -c 'write -P 3 0 64k' -c 'write -P 4 512k 64k' -c abort lazy.qcow2 2>/dev/null; true"],
      ['sh', 'cp lazy.qcow2 lazy2.qcow2'],
    ],
    steps: [
      { args: ['check', 'lazy.qcow2'], merged: true },
      ['check', '--output=json', 'lazy.qcow2'],
      ['check', '-r', 'all', 'lazy.qcow2'],
      ['check', 'lazy.qcow2'],
      ['check', '--output=json', 'lazy.qcow2'],
      ['check', '-r', 'leaks', 'lazy2.qcow2'],
    ],
    images: ['lazy.qcow2'],
  },
  {
    name: 'misaligned entries, reftable entries, references past the end',
    setup: [
      ...base,
      copies(['m1', 'm2', 'p1', 'p2', 'r1', 'r2', 'e1']),
      // A preallocated zero cluster at an unaligned offset: -r all makes it a plain zero.
      pokeBE('m1.qcow2', 0x40010, 8, 0x8000000000098001n),
      pokeBE('m2.qcow2', 0x40010, 8, 0x8000000000098001n),
      // A data cluster at an unaligned offset: reported, not repairable.
      pokeBE('p1.qcow2', 0x40018, 8, 0x8000000000098200n),
      pokeBE('p2.qcow2', 0x40018, 8, 0x8000000000098200n),
      // reftable[1] points past the end of the file: -r all grows the file.
      pokeBE('r1.qcow2', 0x10008, 8, 0xa0000n),
      pokeBE('r2.qcow2', 0x10008, 8, 0xa0000n),
      // An L2 entry far past the end of the file.
      pokeBE('e1.qcow2', 0x40020, 8, 0x8000000001000000n),
    ],
    steps: [
      { args: ['check', 'm1.qcow2'], merged: true },
      ['check', '-r', 'all', 'm2.qcow2'],
      ['check', 'p1.qcow2'],
      ['check', '--output=json', 'p1.qcow2'],
      ['check', '-r', 'all', 'p2.qcow2'],
      { args: ['check', 'r1.qcow2'], merged: true },
      ['check', '-r', 'all', 'r2.qcow2'],
      ['check', 'e1.qcow2'],
      ['check', '--output=json', 'e1.qcow2'],
    ],
    images: ['m2.qcow2', 'r2.qcow2'],
  },
  {
    name: 'compressed clusters and fragmentation',
    setup: [
      ['qemu-img', 'create', '-q', '-f', 'qcow2', 'c.qcow2', '1M'],
      ['qemu-io', '-c', 'write -c -P 17 0 64k', '-c', 'write -c -P 17 64k 64k', '-c', 'write -P 5 256k 64k', '-c', 'write -P 6 128k 64k', 'c.qcow2'],
      ['sh', 'cp c.qcow2 c2.qcow2 && cp c.qcow2 c3.qcow2'],
      // The second compressed cluster's host cluster refcount 2 -> 1: too low.
      pokeBE('c2.qcow2', 0x20000 + 2 * 5, 2, 1),
      // COPIED set on a compressed entry.
      pokeBE('c3.qcow2', 0x40000, 8, 0xc000000000050000n),
    ],
    steps: [
      { args: ['check', 'c.qcow2'], merged: true },
      ['check', '--output=json', 'c.qcow2'],
      ['check', 'c2.qcow2'],
      ['check', '-r', 'all', 'c2.qcow2'],
      ['check', 'c3.qcow2'],
    ],
    images: ['c2.qcow2'],
  },
];

describe.skipIf(!qemu)('blk-img parity with qemu-img 7.2: qcow2 check and repair', () => {
  const root = makeTempDir('qcow2-check');
  afterAll(() => removeTempDir(root));
  for (const s of sessions) {
    it(s.name, async () => {
      expect(await sessionDiffs(root, s)).toEqual([]);
    });
  }
});
