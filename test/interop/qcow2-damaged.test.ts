// Parity with qemu-img 7.2 on qcow2 images whose header or tables were damaged by script: the
// open-time validation messages (in QEMU's order), damaged tables found by check, and the
// corrupt bit. A read-only or failed open never writes: each damaged file is compared byte
// for byte (compare -s of the raw bytes) with a pristine copy after the commands that must not
// change it (see img-parity-harness.ts).
import { afterAll, describe, expect, it } from 'vitest';
import { makeTempDir, removeTempDir, requireQemu } from './qemu.js';
import { sessionDiffs, type Session, type Step } from './img-parity-harness.js';
import { pokeBE } from './qcow2-damage.js';

const qemu = requireQemu();

/** Header damage: [name, offset, size, value]. Default image: 64 KiB clusters, 1 MiB. */
const HEADER_DAMAGE: [string, number, number, number | bigint][] = [
  ['magic', 0, 4, 0x514649fa],
  ['version', 4, 4, 4],
  ['cbits', 20, 4, 8],
  ['cbits22', 20, 4, 22],
  ['hdrlen', 100, 4, 100],
  ['hdrbig', 100, 4, 0x20000],
  ['bfoff', 8, 8, 0x20000],
  ['incompat', 72, 8, 0x40],
  ['comptype', 104, 1, 2],
  ['rorder', 96, 4, 7],
  ['rtclusters0', 56, 4, 0],
  ['rtbig', 56, 4, 0x100000],
  ['rtoff', 48, 8, 0x10200],
  ['l1big', 36, 4, 0x1000000],
  ['l1off', 40, 8, 0x30200],
  ['l1small', 36, 4, 0],
  ['extl2', 72, 8, 0x10],
];

const unchanged = (f: string): Step => ({ args: ['compare', '-s', '-f', 'raw', '-F', 'raw', f, `${f}.orig`] });

const sessions: Session[] = [
  {
    name: 'damaged headers: check, map and a write attempt fail as QEMU does, writing nothing',
    setup: [
      ['qemu-img', 'create', '-q', '-f', 'qcow2', 'ok.qcow2', '1M'],
      ['qemu-io', '-c', 'write -P 7 0 64k', 'ok.qcow2'],
      ['sh', HEADER_DAMAGE.map(([n]) => `cp ok.qcow2 ${n}.qcow2`).join(' && ')],
      ...HEADER_DAMAGE.map(([n, off, size, v]) => pokeBE(`${n}.qcow2`, off, size, v)),
      ['sh', HEADER_DAMAGE.map(([n]) => `cp ${n}.qcow2 ${n}.qcow2.orig`).join(' && ')],
    ],
    steps: HEADER_DAMAGE.flatMap(([n]): Step[] => [
      { args: ['check', '-f', 'qcow2', `${n}.qcow2`], merged: true },
      { args: ['map', '-f', 'qcow2', `${n}.qcow2`] },
      { args: ['resize', '-f', 'qcow2', `${n}.qcow2`, '2M'] },
      unchanged(`${n}.qcow2`),
    ]),
  },
  {
    name: 'damaged tables met while reading; the corrupt bit',
    setup: [
      ['qemu-img', 'create', '-q', '-f', 'qcow2', 'ok.qcow2', '1M'],
      ['qemu-io', '-c', 'write -P 7 0 64k', '-c', 'write -P 8 512k 64k', 'ok.qcow2'],
      ['sh', 'for n in l1u l2u corrupt; do cp ok.qcow2 $n.qcow2; done'],
      // L1[0] -> an unaligned L2 table; L2[0] -> an unaligned data cluster.
      pokeBE('l1u.qcow2', 0x30000, 8, 0x8000000000040200n),
      pokeBE('l2u.qcow2', 0x40000, 8, 0x8000000000050200n),
      // The corrupt bit.
      pokeBE('corrupt.qcow2', 72, 8, 2),
      ['sh', 'for n in l1u l2u corrupt; do cp $n.qcow2 $n.qcow2.orig; done'],
    ],
    steps: [
      { args: ['check', 'l1u.qcow2'], merged: true },
      ['check', '--output=json', 'l1u.qcow2'],
      unchanged('l1u.qcow2'),
      { args: ['check', 'l2u.qcow2'], merged: true },
      unchanged('l2u.qcow2'),
      ['check', 'corrupt.qcow2'],
      ['resize', 'corrupt.qcow2', '2M'],
      unchanged('corrupt.qcow2'),
      ['convert', '-O', 'raw', 'corrupt.qcow2', 'corrupt.raw'],
      ['check', '-r', 'all', 'corrupt.qcow2'],
      ['check', 'corrupt.qcow2'],
      ['resize', 'corrupt.qcow2', '2M'],
    ],
    images: ['corrupt.qcow2'],
  },
];

describe.skipIf(!qemu)('blk-img parity with qemu-img 7.2: damaged qcow2 images', () => {
  const root = makeTempDir('qcow2-damaged');
  afterAll(() => removeTempDir(root));
  for (const s of sessions) {
    it(s.name, async () => {
      expect(await sessionDiffs(root, s)).toEqual([]);
    });
  }
});
