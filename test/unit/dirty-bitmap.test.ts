// Dirty bitmaps: the bit map itself (ranges at granularity, merge, resize), the generic layer
// setting bits on every kind of write, and qcow2 keeping them across close and open: IN_USE
// while open for writing, the bits back after a reopen, an in-use bitmap loaded inconsistent.
import { describe, expect, it } from 'vitest';
import { bdrvCreate } from '../../src/block/create.js';
import {
  BdrvDirtyBitmap,
  bdrvCanStoreNewDirtyBitmap,
  bdrvCreateDirtyBitmap,
  bdrvFindDirtyBitmap,
  bdrvRemoveDirtyBitmap,
} from '../../src/block/dirty-bitmap.js';
import { BME_FLAG_AUTO, BME_FLAG_IN_USE, qcow2ReadBitmapList } from '../../src/drivers/qcow2/bitmap.js';
import { qcow2State } from '../../src/drivers/qcow2/index.js';
import { BlockDriverState } from '../../src/index.js';
import { memName } from './block-helpers.js';

function extents(bm: BdrvDirtyBitmap): [number, number][] {
  return [...bm.dirtyExtents()].map((e) => [e.offset, e.bytes]);
}

describe('BdrvDirtyBitmap', () => {
  it('sets whole chunks, merges, and follows a resize', () => {
    const bm = new BdrvDirtyBitmap('a', 4096, 1 << 20);
    bm.setRange(4095, 2);
    bm.setRange(65536, 65536 * 2);
    expect(extents(bm)).toEqual([
      [0, 8192],
      [65536, 131072],
    ]);
    const other = new BdrvDirtyBitmap('b', 65536, 1 << 20);
    other.setRange((1 << 20) - 1, 1);
    bm.merge(other);
    expect(extents(bm).at(-1)).toEqual([(1 << 20) - 65536, 65536]);
    bm.truncate(100000);
    expect(extents(bm)).toEqual([
      [0, 8192],
      [65536, 100000 - 65536],
    ]);
    bm.truncate(1 << 20);
    expect(extents(bm)).toEqual([
      [0, 8192],
      [65536, 102400 - 65536],
    ]);
    bm.clear();
    expect(extents(bm)).toEqual([]);
  });
});

describe('qcow2 persistent dirty bitmaps', () => {
  async function image(): Promise<string> {
    const name = memName('qcow2');
    await bdrvCreate(name, { format: 'qcow2', options: { size: 4 << 20 } });
    return name;
  }

  it('sets bits on write, zero write and discard, and keeps them across close', async () => {
    const name = await image();
    let bs = await BlockDriverState.open(name);
    await bdrvCanStoreNewDirtyBitmap(bs, 'b', 65536);
    const bm = await bdrvCreateDirtyBitmap(bs, 65536, 'b');
    bm.persistent = true;
    const off = await bdrvCreateDirtyBitmap(bs, 512, 'off');
    off.persistent = true;
    off.enabled = false;
    await bs.pwrite(70000, new Uint8Array(10));
    await bs.writeZeroes(1 << 20, 65536);
    await bs.discard(2 << 20, 131072);
    expect(extents(bm)).toEqual([
      [65536, 65536],
      [1 << 20, 65536],
      [2 << 20, 131072],
    ]);
    expect(extents(off)).toEqual([]);
    await bs.close();

    bs = await BlockDriverState.open(name);
    const list = await qcow2ReadBitmapList(qcow2State(bs));
    // Open for writing: on disk, both are in use until close stores them. Bitmaps new in a
    // session are stored newest first, as QEMU's list keeps them.
    expect(list.map((e) => [e.name, e.flags])).toEqual([
      ['off', BME_FLAG_IN_USE],
      ['b', BME_FLAG_AUTO | BME_FLAG_IN_USE],
    ]);
    const again = bdrvFindDirtyBitmap(bs, 'b');
    expect(again && extents(again)).toEqual(extents(bm));
    expect(bdrvFindDirtyBitmap(bs, 'off')?.enabled).toBe(false);
    await bs.pwrite(0, new Uint8Array(1));
    // Chunk 0 joins the dirty chunk 1 loaded from disk.
    expect(again && extents(again)[0]).toEqual([0, 131072]);
    await bdrvRemoveDirtyBitmap(bs, 'off');
    expect((await qcow2ReadBitmapList(qcow2State(bs))).map((e) => e.name)).toEqual(['b']);
    await bs.close();

    bs = await BlockDriverState.open(name, { readOnly: true });
    expect((await qcow2ReadBitmapList(qcow2State(bs))).map((e) => [e.name, e.flags])).toEqual([['b', BME_FLAG_AUTO]]);
    expect((await bs.check()).leaks).toBe(0);
    await bs.close();
  });

  it('loads a bitmap left in use as inconsistent and never stores it as clean', async () => {
    const name = await image();
    let bs = await BlockDriverState.open(name);
    const bm = await bdrvCreateDirtyBitmap(bs, 65536, 'b');
    bm.persistent = true;
    await bs.close();
    bs = await BlockDriverState.open(name);
    // A writer that dies here leaves IN_USE on disk: model it by not storing at close.
    bs.dirtyBitmaps.length = 0;
    await bs.close();
    bs = await BlockDriverState.open(name);
    const b = bdrvFindDirtyBitmap(bs, 'b');
    expect(b?.inconsistent).toBe(true);
    await bs.pwrite(0, new Uint8Array(1));
    await bs.close();
    bs = await BlockDriverState.open(name, { readOnly: true });
    expect((await qcow2ReadBitmapList(qcow2State(bs))).map((e) => e.flags)).toEqual([BME_FLAG_AUTO | BME_FLAG_IN_USE]);
    await bs.close();
  });
});
