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
  {
    name: 'qcow2 bitmap subcommand: actions, refusals, resulting images',
    setup: [
      ['qemu-img', 'create', '-q', '-f', 'qcow2', 'a.qcow2', '4M'],
      ['qemu-img', 'create', '-q', '-f', 'qcow2', 'other.qcow2', '4M'],
      ['qemu-img', 'bitmap', '--add', '-g', '4k', 'other.qcow2', 'src'],
      ['qemu-io', '-c', 'write 64k 8k', '-c', 'write 3M 4k', 'other.qcow2'],
      ['qemu-img', 'create', '-q', '-f', 'qcow2', 'big.qcow2', '8M'],
      ['qemu-img', 'bitmap', '--add', 'big.qcow2', 'src'],
      ['qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'compat=0.10', 'v2.qcow2', '1M'],
      ['qemu-img', 'create', '-q', '-f', 'raw', 'r.raw', '1M'],
      // A bitmap whose writer died: left in use.
      ['qemu-img', 'create', '-q', '-f', 'qcow2', 'crashed.qcow2', '1M'],
      ['qemu-img', 'bitmap', '--add', 'crashed.qcow2', 'b'],
      ['sh', "qemu-io -c 'write 0 64k' -c abort crashed.qcow2 >/dev/null 2>&1; true"],
    ],
    steps: [
      { args: ['bitmap', 'a.qcow2', 'b0'], merged: true },
      { args: ['bitmap', '-g', '4096', '--remove', 'a.qcow2', 'b0'], merged: true },
      { args: ['bitmap', '-F', 'raw', '--remove', 'a.qcow2', 'b0'], merged: true },
      { args: ['bitmap', '-b', 'x', '--remove', 'a.qcow2', 'b0'], merged: true },
      { args: ['bitmap', '--remove', 'a.qcow2'], merged: true },
      { args: ['bitmap', '--add', 'a.qcow2', ''], merged: true },
      { args: ['bitmap', '--add', '-g', '1000', 'a.qcow2', 'b1'], merged: true },
      { args: ['bitmap', '--remove', 'a.qcow2', 'nope'], merged: true },
      ['bitmap', '--add', 'a.qcow2', 'b0'],
      ['bitmap', '--add', 'a.qcow2', 'b0'],
      ['bitmap', '--add', '-g', '512', '--disable', 'a.qcow2', 'small'],
      ['bitmap', '--add', '--granularity', '2G', 'a.qcow2', 'huge'],
      ['bitmap', '--merge', 'src', '-b', 'other.qcow2', '-F', 'qcow2', 'a.qcow2', 'small'],
      ['bitmap', '--merge', 'src', '-b', 'other.qcow2', 'a.qcow2', 'b0'],
      ['bitmap', '--merge', 'src', '-b', 'big.qcow2', 'a.qcow2', 'b0'],
      ['bitmap', '--merge', 'small', 'a.qcow2', 'huge'],
      ['bitmap', '--clear', '--enable', 'a.qcow2', 'huge'],
      ['bitmap', '--remove', 'a.qcow2', 'huge'],
      ['bitmap', '--add', 'v2.qcow2', 'b'],
      ['bitmap', '--add', '-f', 'raw', 'r.raw', 'b'],
      ['info', 'crashed.qcow2'],
      ['check', 'crashed.qcow2'],
      ['bitmap', '--clear', 'crashed.qcow2', 'b'],
      ['bitmap', '--disable', 'crashed.qcow2', 'b'],
      ['bitmap', '--merge', 'b', 'crashed.qcow2', 'b'],
      ['bitmap', '--add', 'crashed.qcow2', 'c'],
      ['bitmap', '--remove', 'crashed.qcow2', 'b'],
      ['info', 'a.qcow2'],
      ['check', 'a.qcow2'],
      ['info', 'crashed.qcow2'],
    ],
    images: ['a.qcow2', 'crashed.qcow2', 'other.qcow2'],
  },
  {
    name: 'qcow2 convert --bitmaps: copies, refusals, broken bitmaps',
    setup: [
      ['qemu-img', 'create', '-q', '-f', 'qcow2', 's.qcow2', '4M'],
      ['qemu-img', 'bitmap', '--add', 's.qcow2', 'b0'],
      ['qemu-img', 'bitmap', '--add', '-g', '4k', '--disable', 's.qcow2', 'b1'],
      ['qemu-io', '-c', 'write -P 3 1M 8k', '-c', 'write -z 3M 64k', 's.qcow2'],
      ['qemu-img', 'bitmap', '--add', '-g', '512', 's.qcow2', 'b2'],
      ['qemu-io', '-c', 'write -P 4 2M 1k', 's.qcow2'],
      ['qemu-img', 'create', '-q', '-f', 'raw', 'r.raw', '4M'],
      ['qemu-img', 'create', '-q', '-f', 'qcow2', 'c.qcow2', '4M'],
      ['qemu-img', 'bitmap', '--add', 'c.qcow2', 'bad'],
      ['qemu-img', 'bitmap', '--add', 'c.qcow2', 'good'],
      ['sh', "qemu-io -c 'write 0 4k' -c abort c.qcow2 >/dev/null 2>&1; true"],
    ],
    steps: [
      ['convert', '--bitmaps', '-O', 'qcow2', 's.qcow2', 't2.qcow2'],
      ['convert', '--bitmaps', 's.qcow2', 't1.raw'],
      ['convert', '--bitmaps', '-O', 'qcow2', 'r.raw', 't3.qcow2'],
      { args: ['convert', '--skip-broken-bitmaps', '-O', 'qcow2', 's.qcow2', 't5.qcow2'], merged: true },
      ['convert', '--bitmaps', '-O', 'qcow2', 'c.qcow2', 't6.qcow2'],
      ['convert', '--bitmaps', '--skip-broken-bitmaps', '-O', 'qcow2', 'c.qcow2', 't7.qcow2'],
      ['convert', '--bitmaps', '-O', 'qcow2', 's.qcow2', 'c.qcow2', 't8.qcow2'],
      ['convert', '--bitmaps', '-n', '-O', 'qcow2', 's.qcow2', 't2.qcow2'],
      ['convert', '--bitmaps', '-B', 's.qcow2', '-F', 'qcow2', '-O', 'qcow2', 's.qcow2', 't9.qcow2'],
      ['convert', '--bitmaps', '-O', 'qcow2', '-o', 'compat=0.10', 's.qcow2', 't10.qcow2'],
      ['info', 't2.qcow2'],
      ['info', 't7.qcow2'],
      ['check', 't2.qcow2'],
    ],
    images: ['t2.qcow2', 't7.qcow2', 't9.qcow2'],
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
