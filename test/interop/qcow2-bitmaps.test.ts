// blk-img info on qcow2 images carrying persistent dirty bitmaps written by qemu-img 7.2:
// the bitmaps list (name, granularity, flags) in the human and JSON output, and an image whose
// bitmaps autoclear bit was cleared by a writer that did not keep them (the list is ignored).
import { afterAll, describe, expect, it } from 'vitest';
import { makeTempDir, removeTempDir, requireQemu } from './qemu.js';
import { sessionDiffs, type Session } from './img-parity-harness.js';

const qemu = requireQemu();

const sessions: Session[] = [
  {
    name: 'qcow2 info lists persistent bitmaps',
    setup: [
      ['qemu-img', 'create', '-q', '-f', 'qcow2', 'b.qcow2', '4M'],
      ['qemu-img', 'bitmap', '--add', 'b.qcow2', 'first'],
      ['qemu-img', 'bitmap', '--add', '-g', '512k', '--disable', 'b.qcow2', 'a-disabled-one'],
      ['qemu-img', 'bitmap', '--add', '-g', '512', 'b.qcow2', 'tiny'],
      ['qemu-io', '-c', 'write -P 7 0 64k', 'b.qcow2'],
      ['qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'extended_l2=on,cluster_size=64k', 'x.qcow2', '1M'],
      ['qemu-img', 'bitmap', '--add', 'x.qcow2', 'x'],
      ['qemu-img', 'create', '-q', '-f', 'qcow2', 'none.qcow2', '1M'],
      ['qemu-img', 'bitmap', '--add', 'none.qcow2', 'gone'],
      ['qemu-img', 'bitmap', '--remove', 'none.qcow2', 'gone'],
      // Clear the bitmaps autoclear bit (header byte 95) as a bitmap-unaware writer does.
      ['qemu-img', 'create', '-q', '-f', 'qcow2', 'stale.qcow2', '1M'],
      ['qemu-img', 'bitmap', '--add', 'stale.qcow2', 'stale'],
      ['sh', "printf '\\000' | dd of=stale.qcow2 bs=1 seek=95 conv=notrunc status=none"],
    ],
    steps: [
      ['info', 'b.qcow2'],
      ['info', '--output=json', 'b.qcow2'],
      ['info', 'x.qcow2'],
      ['info', '--output=json', 'x.qcow2'],
      ['info', 'none.qcow2'],
      ['info', '--output=json', 'stale.qcow2'],
      ['info', 'stale.qcow2'],
    ],
    images: ['b.qcow2', 'x.qcow2', 'none.qcow2'],
  },
];

describe.skipIf(!qemu)('blk-img parity with qemu-img 7.2 on qcow2 bitmaps', () => {
  const root = makeTempDir('qcow2-bitmaps');
  afterAll(() => removeTempDir(root));
  for (const s of sessions) {
    it(s.name, async () => {
      expect(await sessionDiffs(root, s)).toEqual([]);
    });
  }
});
