// QED's allocating write around a partial cluster: without a backing file its head and tail are
// zeros, which the file zeroes natively in the same request as the data (one zeroThenPwritev),
// leaving the very bytes of QEMU's zero-padded write.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { bdrvCreate } from '../../src/block/create.js';
import { BlockDriverState } from '../../src/index.js';
import { makeTempDir, removeTempDir } from '../interop/qemu.js';
import { spyZeroThenPwritev } from './block-helpers.js';

const CS = 65536;

it('qed: a partial allocating write zeroes its cluster and writes the data in one request', async () => {
  const dir = makeTempDir('qed-cow');
  const name = join(dir, 'z.qed');
  try {
    await bdrvCreate(name, { format: 'qed', options: { size: 16 << 20 } });
    const bs = await BlockDriverState.open(name, { format: 'qed' });
    const calls = spyZeroThenPwritev(bs.file!);
    try {
      await bs.pwrite(4096, new Uint8Array(4096).fill(0x31));
      await bs.pwrite(3 * CS, new Uint8Array(CS).fill(0x32));
      await bs.pwrite(5 * CS - 512, new Uint8Array(512).fill(0x33));
      // Two partial clusters; the whole one needs no zeros.
      expect(calls.map(([, zb, o, n]) => [zb, o - calls[0][0] < CS ? 'first' : 'other', n])).toEqual([
        [CS, 'first', 4096],
        [CS, 'other', 512],
      ]);
      const buf = new Uint8Array(5 * CS);
      await bs.pread(0, buf);
      const expected = new Uint8Array(5 * CS).fill(0x31, 4096, 8192).fill(0x32, 3 * CS, 4 * CS).fill(0x33, 5 * CS - 512);
      expect(Buffer.compare(buf, expected)).toBe(0);
    } finally {
      await bs.close();
    }
    const host = readFileSync(name);
    const [zo] = calls[0];
    expect(host.subarray(zo, zo + CS).every((b, i) => b === (i >= 4096 && i < 8192 ? 0x31 : 0))).toBe(true);
  } finally {
    removeTempDir(dir);
  }
});
