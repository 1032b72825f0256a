// qcow2's copy-on-write of an allocating write's head and tail (qcow2PerformCow): the areas
// are read into reused buffers, so each must be filled in full by what the guest sees there
// (backing data, zeros past the backing file's end) whatever an earlier COW left in them.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { BufferPool } from '../../src/block/buffer-pool.js';
import { bdrvCreate } from '../../src/block/create.js';
import { BlockDriverState } from '../../src/index.js';
import { makeTempDir, removeTempDir } from '../interop/qemu.js';
import { memName, spyZeroThenPwritev } from './block-helpers.js';

const CLUSTER = 65536;

function filled(n: number, byte: number): Uint8Array {
  return new Uint8Array(n).fill(byte);
}

describe('qcow2 copy-on-write', () => {
  it('fills each COW area from the backing file, zeros past its end, whatever a buffer held', async () => {
    // 96 KiB of backing data: the second cluster's tail is half data, half past the end.
    const backName = memName('qcow2cow-back');
    await bdrvCreate(backName, { format: 'raw', options: { size: 96 * 1024 } });
    const back = await BlockDriverState.open(backName, { format: 'raw' });
    await back.pwrite(0, filled(96 * 1024, 0xaa));
    await back.close();
    const name = memName('qcow2cow');
    await bdrvCreate(name, { format: 'qcow2', options: { size: 1 << 20, backingFile: backName, backingFmt: 'raw' } });
    const bs = await BlockDriverState.open(name, { format: 'qcow2' });
    try {
      // One after the other, tails only, so each COW reuses the buffer the one before filled.
      for (const c of [0, 1, 3]) await bs.pwrite(c * CLUSTER, filled(4096, 0x10 + c));
      // Heads and tails both, at once (several buffers taken together).
      await Promise.all([5, 6, 7].map((c) => bs.pwrite(c * CLUSTER + 4096, filled(512, 0x10 + c))));
      const buf = new Uint8Array(8 * CLUSTER);
      await bs.pread(0, buf);
      const expected = new Uint8Array(8 * CLUSTER);
      expected.fill(0xaa, 0, 96 * 1024);
      for (const c of [0, 1, 3]) expected.fill(0x10 + c, c * CLUSTER, c * CLUSTER + 4096);
      for (const c of [5, 6, 7]) expected.fill(0x10 + c, c * CLUSTER + 4096, c * CLUSTER + 4096 + 512);
      expect(Buffer.compare(buf, expected)).toBe(0);
      expect((await bs.check()).corruptions).toBe(0);
    } finally {
      await bs.close();
    }
  });

  it('zero COW areas: the new cluster is zeroed and the data written in one request to the file', async () => {
    for (const where of ['file', 'mem'] as const) {
      const dir = makeTempDir('qcow2cow-zero');
      const name = where === 'file' ? join(dir, 'z.qcow2') : memName('qcow2cow-zero');
      try {
        await bdrvCreate(name, { format: 'qcow2', options: { size: 1 << 20 } });
        const bs = await BlockDriverState.open(name, { format: 'qcow2' });
        const file = bs.file!;
        const calls = spyZeroThenPwritev(file);
        try {
          // Head and tail, tail only, head only; a whole cluster has no COW at all.
          await bs.pwrite(4096, filled(4096, 0x21));
          await bs.pwrite(2 * CLUSTER, filled(512, 0x22));
          await bs.pwrite(4 * CLUSTER - 1024, filled(1024, 0x23));
          await bs.pwrite(5 * CLUSTER, filled(CLUSTER, 0x24));
          expect(calls.length).toBe(3);
          for (const [zo, zb, o, n] of calls) {
            expect(zb).toBe(CLUSTER);
            expect(o >= zo && o + n <= zo + zb).toBe(true);
          }
          const buf = new Uint8Array(6 * CLUSTER);
          await bs.pread(0, buf);
          const expected = new Uint8Array(6 * CLUSTER);
          expected.fill(0x21, 4096, 8192).fill(0x22, 2 * CLUSTER, 2 * CLUSTER + 512);
          expected.fill(0x23, 4 * CLUSTER - 1024, 4 * CLUSTER).fill(0x24, 5 * CLUSTER, 6 * CLUSTER);
          expect(Buffer.compare(buf, expected)).toBe(0);
          expect((await bs.check()).corruptions).toBe(0);
        } finally {
          await bs.close();
        }
        if (where === 'file') {
          // The zeroed clusters hold zeros around the data in the file itself.
          const host = readFileSync(name);
          const first = calls[0][0];
          expect(host.subarray(first, first + CLUSTER).every((b, i) => b === (i >= 4096 && i < 8192 ? 0x21 : 0))).toBe(true);
        }
      } finally {
        removeTempDir(dir);
      }
    }
  });

  it('pools buffers of its own size only, up to its bound', () => {
    const pool = new BufferPool(4096, 2);
    const a = pool.take();
    const b = pool.take();
    const c = pool.take();
    expect([a.length, b.length, c.length]).toEqual([4096, 4096, 4096]);
    pool.give(a);
    pool.give(b);
    pool.give(c);
    pool.give(new Uint8Array(512));
    // Two kept, the last given first; then fresh ones.
    expect(pool.take()).toBe(b);
    expect(pool.take()).toBe(a);
    expect(pool.take()).not.toBe(c);
  });
});
