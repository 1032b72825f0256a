import { describe, expect, it } from 'vitest';
import { bdrvCreate } from '../../src/block/create.js';
import { memStoreGet, memStoreRestore, memStoreSnapshot } from '../../src/drivers/mem/index.js';
import {
  decodeHeader,
  getL2Bitmap,
  getL2Entry,
  L1E_OFFSET_MASK,
  L2E_OFFSET_MASK,
  qcow2CoPwritevCompressed,
  qcow2GetRefcount,
  qcow2State,
  QCOW2_INCOMPAT_CORRUPT,
  QCOW2_INCOMPAT_DIRTY,
  type BDRVQcow2State,
} from '../../src/drivers/qcow2/index.js';
import { BlockDriverState, type BlkDebugEvent, BlockError, IOVector } from '../../src/index.js';
import { memName } from './block-helpers.js';

async function newImage(options: Record<string, string | number | boolean> = {}, size = 16 << 20): Promise<string> {
  const name = memName('qcow2');
  await bdrvCreate(name, { format: 'qcow2', options: { size, ...options } });
  return name;
}

function store(name: string): NonNullable<ReturnType<typeof memStoreGet>> {
  const st = memStoreGet(name.slice(4));
  if (!st) throw new Error('no store');
  return st;
}

/** The image's first `len` bytes. */
function fileBytes(name: string, len = 65536): Uint8Array {
  const out = new Uint8Array(len);
  store(name).read(0, [out], len);
  return out;
}

function patchFile(name: string, offset: number, bytes: Uint8Array): void {
  store(name).write(offset, [bytes], bytes.length);
}

/** Every cluster an active L2 entry or L1 entry points at has a non-zero refcount. */
async function referencedClustersCounted(s: BDRVQcow2State): Promise<void> {
  for (const l1 of s.l1Table) {
    const l2 = Number(l1 & L1E_OFFSET_MASK);
    if (l2 === 0) continue;
    expect(await qcow2GetRefcount(s, l2 / s.clusterSize)).toBeGreaterThan(0);
    const t = await s.l2Cache.get(l2, 'l2_load');
    for (let i = 0; i < s.l2Size; i++) {
      const off = Number(getL2Entry(s, t.data, i) & L2E_OFFSET_MASK);
      if (off !== 0) expect(await qcow2GetRefcount(s, off / s.clusterSize)).toBeGreaterThan(0);
    }
    s.l2Cache.put(t);
  }
}

describe('qcow2 driver', () => {
  it('reads back what it wrote: in place, COW of partial clusters, zeroes, discard', async () => {
    const name = await newImage();
    const bs = await BlockDriverState.open(name, { format: 'qcow2' });
    try {
      await bs.pwrite(1000, new Uint8Array(70000).fill(7));
      await bs.pwrite(5000, new Uint8Array(10).fill(8));
      await bs.writeZeroes(65536, 65536);
      await bs.discard(3 << 20, 1 << 20);
      const buf = new Uint8Array(200000);
      await bs.pread(0, buf);
      expect(buf[999]).toBe(0);
      expect(buf[1000]).toBe(7);
      expect(buf[5000]).toBe(8);
      expect(buf[65535]).toBe(7);
      expect(buf[65536]).toBe(0);
      expect(buf[131072]).toBe(0);
      const st = await bs.blockStatus(65536, 65536);
      expect(st).toMatchObject({ allocated: true, zero: true, data: false });
      const info = await bs.driver.getSpecificInfo?.(bs);
      expect(info?.data).toEqual({
        compat: '1.1',
        'compression-type': 'zlib',
        'lazy-refcounts': false,
        'refcount-bits': 16,
        corrupt: false,
        'extended-l2': false,
      });
    } finally {
      await bs.close();
    }
  });

  it('announces QEMU debug events in allocation order', async () => {
    const name = await newImage();
    const bs = await BlockDriverState.open(name, { format: 'qcow2' });
    const seen: BlkDebugEvent[] = [];
    bs.file!.events.on('debug', (e) => seen.push(e));
    try {
      await bs.pwrite(0, new Uint8Array(4096).fill(1));
      await bs.flush();
    } finally {
      await bs.close();
    }
    const at = (e: BlkDebugEvent): number => seen.indexOf(e);
    // The COW areas read as zeros: the new cluster is zeroed whole (cluster_alloc_space), not copied.
    expect(seen).not.toContain('cow_write');
    for (const e of ['cluster_alloc', 'l2_alloc_write', 'l1_update', 'cluster_alloc_space', 'write_aio', 'l2_update', 'refblock_update_part'] as const) {
      expect(seen, e).toContain(e);
    }
    expect(at('l2_alloc_write')).toBeLessThan(at('l1_update'));
    expect(at('l1_update')).toBeLessThan(at('cluster_alloc_space'));
    expect(at('cluster_alloc_space')).toBeLessThan(at('write_aio'));
    expect(seen.lastIndexOf('refblock_update_part')).toBeLessThan(seen.lastIndexOf('l2_update'));
  });

  for (const target of ['active L2 table', 'refcount block'] as const) {
    it(`refuses a data write over an ${target} allocated after earlier writes`, async () => {
      // 512-byte clusters: each L2 table maps 32 KiB, so the second write allocates a new
      // table after the overlap check has seen the metadata once.
      const name = await newImage({ cluster_size: 512 });
      const bs = await BlockDriverState.open(name, { format: 'qcow2' });
      const errors: string[] = [];
      const orig = console.error;
      console.error = (m: string) => errors.push(m);
      try {
        await bs.pwrite(0, new Uint8Array(512).fill(1));
        await bs.pwrite(65536, new Uint8Array(512).fill(2));
        const s = qcow2State(bs);
        const victim =
          target === 'active L2 table' ? Number(s.l1Table[2] & L1E_OFFSET_MASK) : Number(s.refcountTable[0] & 0xfffffffffffffe00n);
        expect(victim).toBeGreaterThan(0);
        // Point guest cluster 1 (allocated, COPIED) at the victim, as a damaged image would.
        const { table } = await import('../../src/drivers/qcow2/cluster.js').then((m) => m.qcow2GetClusterTable(s, 0));
        new DataView(table.data.buffer).setBigUint64(8, BigInt(victim) | 0x8000000000000000n);
        s.l2Cache.put(table);
        await expect(bs.pwrite(512, new Uint8Array(512))).rejects.toMatchObject({ code: 'EIO' });
      } finally {
        console.error = orig;
        await bs.close();
      }
      expect(errors[0]).toBe(
        `qcow2: Marking image as corrupt: Preventing invalid write on metadata (overlaps with ${target}); further corruption events will be suppressed`,
      );
    });
  }

  it('refuses a write over metadata, marks the image corrupt, and later read-write opens fail', async () => {
    const name = await newImage();
    let bs = await BlockDriverState.open(name, { format: 'qcow2' });
    await bs.pwrite(0, new Uint8Array(512).fill(1));
    await bs.flush();
    const s = qcow2State(bs);
    // Point guest cluster 1 at the L1 table (cluster 3), as a damaged image would.
    const { table } = await import('../../src/drivers/qcow2/cluster.js').then((m) => m.qcow2GetClusterTable(s, 65536));
    new DataView(table.data.buffer).setBigUint64(8, 0x8000000000030000n);
    s.l2Cache.markDirty(table);
    s.l2Cache.put(table);
    const errors: string[] = [];
    const orig = console.error;
    console.error = (m: string) => errors.push(m);
    try {
      await expect(bs.pwrite(65536, new Uint8Array(512))).rejects.toMatchObject({ code: 'EIO' });
      // Later requests find no driver, as in QEMU.
      await expect(bs.pread(0, new Uint8Array(512))).rejects.toMatchObject({ code: 'ENOMEDIUM' });
    } finally {
      console.error = orig;
      await bs.close();
    }
    expect(errors[0]).toBe(
      'qcow2: Marking image as corrupt: Preventing invalid write on metadata (overlaps with active L1 table); further corruption events will be suppressed',
    );
    expect(decodeHeader(fileBytes(name)).incompatibleFeatures & QCOW2_INCOMPAT_CORRUPT).toBe(QCOW2_INCOMPAT_CORRUPT);
    await expect(BlockDriverState.open(name, { format: 'qcow2' })).rejects.toThrow('qcow2: Image is corrupt; cannot be opened read/write');
    bs = await BlockDriverState.open(name, { format: 'qcow2', readOnly: true });
    try {
      expect((await bs.driver.getSpecificInfo?.(bs))?.data.corrupt).toBe(true);
      const buf = new Uint8Array(512);
      await bs.pread(0, buf);
      expect(buf[0]).toBe(1);
    } finally {
      await bs.close();
    }
  });

  it('repairs the refcounts of a dirty lazy-refcounts image on a read-write open', async () => {
    const name = await newImage({ lazy_refcounts: true });
    const bs = await BlockDriverState.open(name, { format: 'qcow2' });
    await bs.pwrite(0, new Uint8Array(4096).fill(3));
    await bs.pwrite(8 << 20, new Uint8Array(4096).fill(4));
    await bs.flush();
    // The state a crash leaves: dirty bit set, L2 entries on disk, data refcounts not.
    const crashed = memStoreSnapshot(name.slice(4));
    await bs.close();
    memStoreRestore(name.slice(4), crashed);
    expect(decodeHeader(fileBytes(name)).incompatibleFeatures & QCOW2_INCOMPAT_DIRTY).toBe(QCOW2_INCOMPAT_DIRTY);

    const ro = await BlockDriverState.open(name, { format: 'qcow2', readOnly: true });
    // The first write's refcounts went out before the dirty bit did; the second's did not.
    expect(await qcow2GetRefcount(qcow2State(ro), 5)).toBe(1);
    expect(await qcow2GetRefcount(qcow2State(ro), 6)).toBe(0);
    await ro.close();

    const again = await BlockDriverState.open(name, { format: 'qcow2' });
    try {
      const s = qcow2State(again);
      expect(s.header.incompatibleFeatures & QCOW2_INCOMPAT_DIRTY).toBe(0n);
      await referencedClustersCounted(s);
      // New allocations do not land on the repaired clusters.
      await again.pwrite(1 << 20, new Uint8Array(4096).fill(5));
      const buf = new Uint8Array(4096);
      await again.pread(0, buf);
      expect(buf[0]).toBe(3);
      await again.pread(8 << 20, buf);
      expect(buf[0]).toBe(4);
    } finally {
      await again.close();
    }
    expect(decodeHeader(fileBytes(name)).incompatibleFeatures & QCOW2_INCOMPAT_DIRTY).toBe(0n);
  });

  it('writes and reads compressed clusters; refuses unaligned ones', async () => {
    const name = await newImage();
    const bs = await BlockDriverState.open(name, { format: 'qcow2' });
    try {
      const s = qcow2State(bs);
      const data = new Uint8Array(65536).fill(0x11);
      await qcow2CoPwritevCompressed(s, 0, 65536, IOVector.from(data));
      await qcow2CoPwritevCompressed(s, 65536, 65536, IOVector.from(data));
      await expect(qcow2CoPwritevCompressed(s, 512, 65536, IOVector.from(data))).rejects.toMatchObject({ code: 'EINVAL' });
      await expect(qcow2CoPwritevCompressed(s, 0, 65536, IOVector.from(data))).rejects.toMatchObject({ code: 'EIO' });
      const buf = new Uint8Array(131072);
      await bs.pread(0, buf);
      expect(buf.every((b) => b === 0x11)).toBe(true);
      // Two 79-byte streams packed into one host cluster (refcount 2), as QEMU does.
      const t = await s.l2Cache.get(Number(s.l1Table[0] & L1E_OFFSET_MASK), 'l2_load');
      expect(getL2Entry(s, t.data, 0)).toBe(0x4000000000050000n);
      expect(getL2Entry(s, t.data, 1)).toBe(0x400000000005004fn);
      s.l2Cache.put(t);
      expect(await qcow2GetRefcount(s, 5)).toBe(2);
      // Overwriting a compressed cluster copies it and frees the old bytes.
      await bs.pwrite(100, new Uint8Array(10).fill(2));
      await bs.pread(0, buf);
      expect(buf[99]).toBe(0x11);
      expect(buf[100]).toBe(2);
      expect(await qcow2GetRefcount(s, 5)).toBe(1);
    } finally {
      await bs.close();
    }
  });

  it('refuses images with unknown incompatible features, naming them from the feature table', async () => {
    const name = await newImage();
    const head = fileBytes(name, 4096);
    const v = new DataView(head.buffer);
    v.setBigUint64(72, 0x60n);
    // Rename feature (0,4) in the image's own table to show it is the image's names that count.
    head.fill(0, 0x78 + 4 * 48 + 2, 0x78 + 5 * 48);
    head.set(new TextEncoder().encode('frobnicate'), 0x78 + 4 * 48 + 2);
    head[0x78 + 4 * 48 + 1] = 5;
    patchFile(name, 0, head);
    await expect(BlockDriverState.open(name, { format: 'qcow2' })).rejects.toThrow(
      'Unsupported qcow2 feature(s): frobnicate, Unknown incompatible feature: 40',
    );
  });

  it('clears unknown autoclear bits on a read-write open and keeps unknown extensions (reversed)', async () => {
    const name = await newImage();
    const head = fileBytes(name, 4096);
    const v = new DataView(head.buffer);
    v.setBigUint64(88, 0x80n);
    // Two unknown extensions before the feature table: A (0xaaaaaaaa), B (0xbbbbbbbb).
    const tail = head.slice(0x70, 0x200);
    v.setUint32(0x70, 0xaaaaaaaa);
    v.setUint32(0x74, 1);
    head.fill(0, 0x78, 0x80);
    head[0x78] = 0x0a;
    v.setUint32(0x80, 0xbbbbbbbb);
    v.setUint32(0x84, 8);
    head.fill(0x0b, 0x88, 0x90);
    head.set(tail, 0x90);
    patchFile(name, 0, head);
    const ro = await BlockDriverState.open(name, { format: 'qcow2', readOnly: true });
    await ro.close();
    expect(decodeHeader(fileBytes(name)).autoclearFeatures).toBe(0x80n);
    const bs = await BlockDriverState.open(name, { format: 'qcow2' });
    await bs.close();
    const after = fileBytes(name);
    const av = new DataView(after.buffer, after.byteOffset);
    expect(decodeHeader(after).autoclearFeatures).toBe(0n);
    // Feature table first (QEMU's order), then the unknown ones reversed, then the end marker.
    expect(av.getUint32(0x70)).toBe(0x6803f857);
    expect(av.getUint32(0x1f8)).toBe(0xbbbbbbbb);
    expect(av.getUint32(0x208)).toBe(0xaaaaaaaa);
    expect(after[0x210]).toBe(0x0a);
    expect(after[0x211]).toBe(0);
    expect(av.getUint32(0x218)).toBe(0);
  });

  it('writes extended L2 images per subcluster: bitmaps, COW to subcluster boundaries, zeroes', async () => {
    // 64 KiB clusters: 2 KiB subclusters.
    const name = await newImage({ extended_l2: true });
    const bs = await BlockDriverState.open(name, { format: 'qcow2' });
    const s = qcow2State(bs);
    const slot = async (i: number): Promise<[bigint, bigint]> => {
      const t = await s.l2Cache.get(Number(s.l1Table[0] & L1E_OFFSET_MASK), 'l2_load');
      try {
        return [getL2Entry(s, t.data, i), getL2Bitmap(s, t.data, i)];
      } finally {
        s.l2Cache.put(t);
      }
    };
    try {
      await bs.pwrite(4096 + 100, new Uint8Array(1000).fill(1));
      // Subcluster 2 allocated; the file holds the cluster up to the end of that subcluster.
      expect(await slot(0)).toEqual([0x8000000000050000n, 0x4n]);
      await bs.pwrite(65536 - 512, new Uint8Array(1024).fill(2));
      expect((await slot(0))[1]).toBe(0x80000004n);
      expect(await slot(1)).toEqual([0x8000000000060000n, 0x1n]);
      await bs.writeZeroes(0, 8192, {});
      expect((await slot(0))[1]).toBe(0xf80000000n);
      await bs.writeZeroes(65536, 65536, { mayUnmap: true });
      expect(await slot(1)).toEqual([0n, 0xffffffff00000000n]);
      const buf = new Uint8Array(131072);
      await bs.pread(0, buf);
      const want = new Uint8Array(131072);
      want.fill(2, 65536 - 512, 65536);
      expect(buf).toEqual(want);
      const chk = await bs.check();
      expect([chk.corruptions, chk.leaks]).toEqual([0, 0]);
    } finally {
      await bs.close();
    }
  });

  it('validates create options with QEMU messages before writing anything', async () => {
    const name = memName('qcow2');
    await expect(bdrvCreate(name, { format: 'qcow2', options: { size: 1 << 20, cluster_size: 1000 } })).rejects.toThrow(
      'Cluster size must be a power of two between 512 and 2048k',
    );
    await expect(bdrvCreate(name, { format: 'qcow2', options: { size: 1 << 20, compat: '0.10', lazy_refcounts: true } })).rejects.toThrow(
      'Lazy refcounts only supported with compatibility level 1.1 and above (use version=v3 or greater)',
    );
    await expect(bdrvCreate(name, { format: 'qcow2', options: { size: 1 << 20, refcount_bits: 3 } })).rejects.toBeInstanceOf(BlockError);
    expect(memStoreGet(name.slice(4))).toBeUndefined();
  });
});
