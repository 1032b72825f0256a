// qcow2's copy-on-write of an allocating write's head and tail (qcow2PerformCow): the areas
// are read into reused buffers, so each must be filled in full by what the guest sees there
// (backing data, zeros past the backing file's end) whatever an earlier COW left in them.
import { describe, expect, it } from 'vitest';
import { BufferPool } from '../../src/block/buffer-pool.js';
import { bdrvCreate } from '../../src/block/create.js';
import { BlockDriverState } from '../../src/index.js';
import { memName } from './block-helpers.js';

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
