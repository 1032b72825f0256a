// qcow2's allocating fast path (alloc-now.ts) over several refcount blocks: with 512-byte
// clusters an L2 table maps 32 KiB and a refcount block counts 256 clusters, so of sequential
// 4 KiB writes seven in eight take the fast path (their table is cached), block after block;
// each block is looked up once per write, and every cluster must still be counted in its own.
import { describe, expect, it } from 'vitest';
import { bdrvCreate } from '../../src/block/create.js';
import { BlockDriverState } from '../../src/index.js';
import { memName } from './block-helpers.js';

const KiB = 1024;

describe('qcow2: allocating writes across refcount blocks', () => {
  it('counts each new cluster once, in its own block', async () => {
    const name = memName('alloc-now');
    await bdrvCreate(name, { format: 'qcow2', options: { size: 4096 * KiB, cluster_size: 512 } });
    const bs = await BlockDriverState.open(name, { format: 'qcow2' });
    try {
      for (let i = 0; i < 320; i++) await bs.pwrite(i * 4 * KiB, new Uint8Array(4 * KiB).fill(i & 0xff));
      const result = await bs.check();
      expect(result.corruptions).toBe(0);
      expect(result.leaks).toBe(0);
      const back = new Uint8Array(4 * KiB);
      for (let i = 0; i < 320; i++) {
        await bs.pread(i * 4 * KiB, back);
        expect(back.every((b) => b === (i & 0xff))).toBe(true);
      }
    } finally {
      await bs.close();
    }
    // First fit left no free cluster inside the file: reopened (the cursor back at 0), one
    // more allocating write (an L2 table and a data cluster) lands at the end of the file.
    const again = await BlockDriverState.open(name, { format: 'qcow2' });
    try {
      const before = (await again.check()).imageEndOffset!;
      await again.pwrite(4000 * KiB, new Uint8Array(512).fill(0xee));
      expect((await again.check()).imageEndOffset! - before).toBe(2 * 512);
    } finally {
      await again.close();
    }
  });
});
