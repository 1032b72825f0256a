import { describe, expect, it } from 'vitest';
import { BlockError, IOVector, memStoreRead, memStoreWrite, VirtualClock } from '../../src/index.js';
import { L2Cache } from '../../src/drivers/qed/index.js';
import { qedAioPool } from '../../src/drivers/qed/io.js';
import {
  compact,
  createQed,
  firstDiff,
  memRaw,
  newMemQed,
  openQed,
  pattern,
  qedS,
  readAll,
  recRegistry,
  recStore,
  rng,
  setU64,
  u64,
} from './qed-helpers.js';

const CS = 4096;
const L2SPAN = 512 * CS; // ts=1, 4K clusters: 2 MiB per L2 table

describe('qed: allocation layout', () => {
  it('appends data clusters first, then a new L2 table, and links L1 → L2 → data', async () => {
    const { name, bs } = await newMemQed({ size: 8 << 20, clusterSize: CS, tableSize: 1 });
    await bs.pwrite(0, pattern(3 * CS, 1));
    await bs.close();
    const f = memStoreRead(name);
    // header | L1 | data×3 | L2
    expect(f.length).toBe(2 * CS + 3 * CS + CS);
    expect(u64(f, CS)).toBe(5 * CS); // L1[0] -> L2 after the data
    expect([u64(f, 5 * CS), u64(f, 5 * CS + 8), u64(f, 5 * CS + 16), u64(f, 5 * CS + 24)]).toEqual([
      2 * CS,
      3 * CS,
      4 * CS,
      0,
    ]);
    expect(firstDiff(f.subarray(2 * CS, 5 * CS), pattern(3 * CS, 1))).toBe(-1);
  });

  it('splits a write straddling an L2 boundary into one run per table', async () => {
    const { name, bs } = await newMemQed({ size: 8 << 20, clusterSize: CS, tableSize: 1 });
    const data = pattern(2 * CS, 2);
    await bs.pwrite(L2SPAN - CS, data);
    const back = new Uint8Array(2 * CS);
    await bs.pread(L2SPAN - CS, back);
    expect(firstDiff(back, data)).toBe(-1);
    const st = await bs.blockStatus(L2SPAN - CS, 2 * CS);
    expect(st.pnum).toBe(CS); // runs never cross an L2 boundary
    await bs.close();
    const f = memStoreRead(name);
    // data(run 1) | L2 #0 | data(run 2) | L2 #1
    expect(u64(f, CS)).toBe(3 * CS);
    expect(u64(f, CS + 8)).toBe(5 * CS);
    expect(u64(f, 3 * CS + 511 * 8)).toBe(2 * CS);
    expect(u64(f, 5 * CS)).toBe(4 * CS);
  });

  it('merges host-contiguous clusters into one run', async () => {
    const { bs } = await newMemQed({ size: 8 << 20, clusterSize: CS, tableSize: 1 });
    await bs.pwrite(0, pattern(4 * CS, 3));
    const st = await bs.blockStatus(0, 8 * CS);
    expect(st).toMatchObject({ pnum: 4 * CS, allocated: true, data: true, offset: 2 * CS });
    const rest = await bs.blockStatus(4 * CS, 100 * CS);
    expect(rest).toMatchObject({ pnum: 100 * CS, allocated: false });
    await bs.close();
  });
});

describe('qed: reads and writes against a model', () => {
  async function randomRun(seed: number, withBacking: boolean): Promise<void> {
    const size = 6 << 20;
    const model = new Uint8Array(size);
    let backing: string | undefined;
    if (withBacking) {
      const b = pattern(3 * 1024 * 1024 + 1000, seed + 100); // shorter than the image, odd length
      backing = memRaw(b);
      model.set(b);
    }
    const { name, bs } = await newMemQed({
      size,
      clusterSize: CS,
      tableSize: 1,
      ...(backing ? { backingFile: backing, backingFmt: 'raw' } : {}),
    });
    const r = rng(seed);
    for (let i = 0; i < 120; i++) {
      const off = Math.floor(r() * (size - 20000));
      const len = 1 + Math.floor(r() * 20000);
      const kind = r();
      if (kind < 0.6) {
        const data = pattern(len, seed * 1000 + i);
        await bs.pwrite(off, data);
        model.set(data, off);
      } else if (kind < 0.75) {
        await bs.writeZeroes(off, len);
        model.fill(0, off, off + len);
      } else {
        const got = new Uint8Array(len);
        await bs.pread(off, got);
        expect(firstDiff(got, model.subarray(off, off + len))).toBe(-1);
      }
    }
    expect(firstDiff(await readAll(bs), model)).toBe(-1);
    const chk = await bs.check();
    expect(chk).toMatchObject({ corruptions: 0, leaks: 0, checkErrors: 0 });
    await bs.close();
    const again = await openQed(name, { readOnly: true });
    expect(firstDiff(await readAll(again), model)).toBe(-1);
    await again.close();
  }

  it('random I/O without a backing file', async () => {
    await randomRun(1, false);
  });

  it('random I/O over a raw backing file shorter than the image', async () => {
    await randomRun(2, true);
  });

  it('copies the untouched head and tail of a new cluster from the backing file', async () => {
    const base = pattern(6000, 9);
    const backing = memRaw(base);
    const { name, bs } = await newMemQed({ size: 64 * 1024, clusterSize: CS, tableSize: 1, backingFile: backing, backingFmt: 'raw' });
    await bs.pwrite(1000, new Uint8Array(100).fill(0xaa));
    await bs.pwrite(2 * CS + 100, new Uint8Array(10).fill(0xbb)); // past the backing EOF
    const model = new Uint8Array(64 * 1024);
    model.set(base);
    model.fill(0xaa, 1000, 1100);
    model.fill(0xbb, 2 * CS + 100, 2 * CS + 110);
    expect(firstDiff(await readAll(bs), model)).toBe(-1);
    await bs.close();
    // The cluster in the file holds the whole COW result.
    const f = memStoreRead(name);
    expect(firstDiff(f.subarray(2 * CS, 3 * CS), model.subarray(0, CS))).toBe(-1);
  });
});

describe('qed: padding of new clusters', () => {
  it('without a backing file, and over zero clusters, pads from one shared zero buffer it never writes to', async () => {
    const backing = memRaw(new Uint8Array(4 * CS).fill(0x55));
    for (const backingFile of [undefined, backing]) {
      const { bs } = await newMemQed({ size: 16 * CS, clusterSize: CS, tableSize: 1, ...(backingFile ? { backingFile, backingFmt: 'raw' } : {}) });
      await bs.writeZeroes(4 * CS, CS);
      const model = new Uint8Array(16 * CS);
      if (backingFile) model.fill(0x55, 0, 4 * CS);
      model.fill(0, 4 * CS, 5 * CS);
      // Head and tail, one after the other and at once, and a partial write into the zero cluster.
      const writes: [number, number, number][] = [
        [100, 200, 0x11],
        [2 * CS + 3000, 500, 0x12],
        [6 * CS, 1000, 0x13],
        [7 * CS + 2048, 2048, 0x14],
        [4 * CS + 512, 512, 0x15],
      ];
      await bs.pwrite(writes[0][0], new Uint8Array(writes[0][1]).fill(writes[0][2]));
      await Promise.all(writes.slice(1).map(([o, n, v]) => bs.pwrite(o, new Uint8Array(n).fill(v))));
      for (const [o, n, v] of writes) model.fill(v, o, o + n);
      expect(firstDiff(await readAll(bs), model)).toBe(-1);
      // Shared only where there was nothing to copy: then it stays all zeros.
      const pad = qedS(bs).zeroPad;
      expect(pad?.length).toBe(CS);
      expect(pad!.every((b) => b === 0)).toBe(true);
      await bs.close();
    }
  });
});

describe('qed: zero clusters', () => {
  it('aligned write-zeroes makes zero markers: nothing allocated, no backing fall-through', async () => {
    const backing = memRaw(new Uint8Array(4 * CS).fill(0x55));
    const { name, bs } = await newMemQed({ size: 16 * CS, clusterSize: CS, tableSize: 1, backingFile: backing, backingFmt: 'raw' });
    await bs.writeZeroes(0, 2 * CS);
    const got = new Uint8Array(3 * CS);
    await bs.pread(0, got);
    expect(got.subarray(0, 2 * CS).every((x) => x === 0)).toBe(true);
    expect(got.subarray(2 * CS).every((x) => x === 0x55)).toBe(true);
    expect(await bs.blockStatus(0, 4 * CS)).toMatchObject({ pnum: 2 * CS, allocated: true, zero: true, data: false });
    expect(await bs.isAllocated(0, 4 * CS)).toEqual({ allocated: true, pnum: 2 * CS });
    await bs.close();
    const f = memStoreRead(name);
    expect(f.length).toBe(3 * CS); // only the new L2 table
    expect([u64(f, 2 * CS), u64(f, 2 * CS + 8), u64(f, 2 * CS + 16)]).toEqual([1, 1, 0]);
  });

  it('qed-format.md §17.4: a partial write into a zero cluster leaves the rest zero, not backing data', async () => {
    const backing = memRaw(new Uint8Array(4 * CS).fill(0x55));
    const { bs } = await newMemQed({ size: 16 * CS, clusterSize: CS, tableSize: 1, backingFile: backing, backingFmt: 'raw' });
    await bs.writeZeroes(0, CS);
    await bs.pwrite(512, new Uint8Array(512).fill(0x11));
    const got = new Uint8Array(CS);
    await bs.pread(0, got);
    const want = new Uint8Array(CS);
    want.fill(0x11, 512, 1024);
    expect(firstDiff(got, want)).toBe(-1);
    expect(await bs.blockStatus(0, CS)).toMatchObject({ allocated: true, data: true });
    await bs.close();
  });

  it('unaligned write-zeroes writes zeros (allocating, as QEMU’s fallback does); noFallback refuses', async () => {
    const { name, bs } = await newMemQed({ size: 16 * CS, clusterSize: CS, tableSize: 1 });
    const before = memStoreRead(name);
    await expect(bs.writeZeroes(512, 512, { noFallback: true })).rejects.toMatchObject({ code: 'ENOTSUP' });
    await expect(bs.writeZeroes(512, CS * 2, { noFallback: true })).rejects.toMatchObject({ code: 'ENOTSUP' });
    expect(firstDiff(memStoreRead(name), before)).toBe(-1);
    await bs.writeZeroes(512, 512);
    expect(await bs.blockStatus(0, CS)).toMatchObject({ allocated: true, data: true, pnum: CS });
    // Mixed: unaligned head and tail are written, the aligned middle becomes markers.
    await bs.writeZeroes(4 * CS + 512, 2 * CS);
    expect(await bs.blockStatus(4 * CS, CS)).toMatchObject({ data: true });
    expect(await bs.blockStatus(5 * CS, CS)).toMatchObject({ zero: true, data: false, allocated: true });
    expect(await bs.blockStatus(6 * CS, CS)).toMatchObject({ data: true });
    await bs.close();
  });

  it('zeroing allocated clusters writes zeros in place and keeps them allocated', async () => {
    const { bs } = await newMemQed({ size: 16 * CS, clusterSize: CS, tableSize: 1 });
    await bs.pwrite(0, pattern(2 * CS, 4));
    await bs.writeZeroes(0, 2 * CS);
    expect(await bs.blockStatus(0, 2 * CS)).toMatchObject({ allocated: true, data: true, offset: 2 * CS, pnum: 2 * CS });
    expect((await readAll(bs)).every((x) => x === 0)).toBe(true);
    // Zeroing zero clusters again changes nothing.
    await bs.writeZeroes(8 * CS, CS);
    await bs.writeZeroes(8 * CS, CS);
    expect(await bs.blockStatus(8 * CS, CS)).toMatchObject({ zero: true });
    await bs.close();
  });
});

describe('qed: invalid table entries', () => {
  it('fails with EINVAL instead of reading a wild offset', async () => {
    const { name, bs } = await newMemQed({ size: 8 << 20, clusterSize: CS, tableSize: 1 });
    await bs.pwrite(0, pattern(CS, 5));
    await bs.pwrite(L2SPAN, pattern(CS, 5));
    await bs.close();
    const f = memStoreRead(name);
    const l2 = u64(f, CS);
    setU64(f, l2, 1 << 30); // data entry past EOF
    setU64(f, CS + 8, 12345); // unaligned L2 offset
    memStoreWrite(name, f);
    const ro = await openQed(name, { readOnly: true });
    await expect(ro.pread(0, new Uint8Array(512))).rejects.toMatchObject({ code: 'EINVAL' });
    await expect(ro.pread(L2SPAN, new Uint8Array(512))).rejects.toMatchObject({ code: 'EINVAL' });
    await expect(ro.blockStatus(0, 512)).rejects.toBeInstanceOf(BlockError);
    await ro.close();
  });
});

describe('qed: concurrency', () => {
  it('many concurrent allocating writes into the same clusters give the model and no leaks', async () => {
    const { name, bs } = await newMemQed({ size: 8 << 20, clusterSize: CS, tableSize: 1 });
    const model = new Uint8Array(8 << 20);
    const r = rng(7);
    const sectors = new Set<number>();
    while (sectors.size < 96) sectors.add(Math.floor(r() * 64) * 8 + Math.floor(r() * 8) + (r() < 0.3 ? 4096 : 0));
    const jobs = [...sectors].map((sec, i) => {
      const data = pattern(512, i + 1);
      model.set(data, sec * 512);
      return bs.pwrite(sec * 512, data);
    });
    // Reads of untouched and touched places run beside them.
    jobs.push(bs.pread(0, new Uint8Array(CS)));
    await Promise.all(jobs);
    expect(firstDiff(await readAll(bs), model)).toBe(-1);
    const chk = await bs.check();
    expect(chk).toMatchObject({ corruptions: 0, leaks: 0 });
    const clusters = new Set([...sectors].map((s) => Math.floor((s * 512) / CS)));
    await bs.close();
    // Every touched cluster allocated exactly once, plus the two L2 tables.
    expect(memStoreRead(name).length).toBe(2 * CS + clusters.size * CS + 2 * CS);
  });

  it('AIO: pooled AIOCBs; a request cancelled before it starts leaves nothing behind', async () => {
    const { name, bs } = await newMemQed({ size: 1 << 20, clusterSize: CS, tableSize: 1 });
    const results: (string | null)[] = [];
    const a = bs.aioWritev(0, IOVector.from(new Uint8Array(CS).fill(1)), CS / 512, (e) => results.push(e ? e.code : null));
    const b = bs.aioWritev(64, IOVector.from(new Uint8Array(CS).fill(2)), CS / 512, (e) => results.push(e ? e.code : null));
    await b.cancel(); // cancelled before its coroutine ran
    await new Promise<void>((resolve) => {
      const done = (): void => (results.length >= 2 ? resolve() : void setTimeout(done, 1));
      done();
    });
    expect(results.sort()).toEqual(['ECANCELED', null].sort());
    void a;
    const got = new Uint8Array(2 * 32 * 1024);
    await bs.pread(0, got);
    expect(got[0]).toBe(1);
    expect(got[32 * 1024]).toBe(0);
    expect(await bs.isAllocated(32 * 1024, CS)).toMatchObject({ allocated: false });
    // A running request is waited for and finishes its table updates.
    const c = bs.aioWritev(128, IOVector.from(new Uint8Array(CS).fill(3)), CS / 512, () => undefined);
    await Promise.resolve();
    await Promise.resolve();
    await c.cancel();
    const check = await bs.check();
    expect(check.corruptions).toBe(0);
    expect(qedAioPool.created).toBeGreaterThan(0);
    await bs.close();
    void name;
  });
});

describe('qed: allocation order of concurrent requests', () => {
  it('requests allocate in arrival order: a cached L2 table does not make a request yield (regression)', async () => {
    // 4K/ts=2: one L2 table maps 4 MiB. Table #0 exists and is cached; A needs it, B needs a
    // new table. Submitted A then B, QEMU allocates A's cluster first (its coroutine reaches
    // the allocation queue before B's even starts); so must we.
    const { bs } = await newMemQed({ size: 16 << 20, clusterSize: CS, tableSize: 2 });
    await bs.pwrite(0, new Uint8Array(CS).fill(1));
    const done: Promise<void>[] = [];
    const submit = (off: number, fill: number): void => {
      done.push(
        new Promise<void>((resolve, reject) => {
          bs.aioWritev(off / 512, IOVector.from(new Uint8Array(CS).fill(fill)), CS / 512, (e) => (e ? reject(e) : resolve()));
        }),
      );
    };
    submit(8 * CS, 2); // A: table #0, cached
    submit(5 << 20, 3); // B: no table yet
    submit(12 * CS, 4); // C: table #0 again
    await Promise.all(done);
    const a = await bs.blockStatus(8 * CS, CS);
    const b = await bs.blockStatus(5 << 20, CS);
    const c = await bs.blockStatus(12 * CS, CS);
    // Fresh file: header, L1 (2), data 0, L2 #0 (2) = 6 clusters; then A, B + its table, C.
    expect([a.offset, b.offset, c.offset]).toEqual([6 * CS, 7 * CS, 10 * CS]);
    await bs.close();
  });
});

describe('qed: write and flush ordering (qed-format.md §13)', () => {
  async function scenario(backing: boolean, existingL2: boolean): Promise<string[]> {
    const registry = recRegistry();
    const name = `rec:order-${backing}-${existingL2}-${Math.random()}`;
    let base: string | undefined;
    if (backing) base = memRaw(new Uint8Array(64 * CS).fill(0x77));
    await createQed(name, { size: 64 * CS, clusterSize: CS, tableSize: 1, ...(base ? { backingFile: base, backingFmt: 'raw' } : {}) }, registry);
    const bs = await openQed(name, { registry, clock: new VirtualClock() });
    if (existingL2) await bs.pwrite(10 * CS, new Uint8Array(CS).fill(9));
    const st = recStore(name);
    st.log.length = 0;
    await bs.pwrite(CS + 512, new Uint8Array(512).fill(1));
    const ops = compact(st.log);
    await bs.close();
    return ops;
  }

  it('no backing, new L2: dirty header + flush, data, whole L2, flush, L1 sector', async () => {
    // file: header 0 | L1 4096 | data 8192 | L2 12288
    expect(await scenario(false, false)).toEqual(['W@0+512', 'F', 'W@8192+4096', 'W@12288+4096', 'F', 'W@4096+512']);
  });

  it('no backing, existing L2: data then the one L2 sector, no flush (the dirty bit covers it)', async () => {
    // the first write made the image dirty already; L2 at 12288, entry 1 in its first sector
    expect(await scenario(false, true)).toEqual(['W@16384+4096', 'W@12288+512']);
  });

  it('backing file, new L2: data, flush, whole L2, flush, L1 sector; never dirty', async () => {
    expect(await scenario(true, false)).toEqual(['W@8192+4096', 'F', 'W@12288+4096', 'F', 'W@4096+512']);
  });

  it('backing file, existing L2: data, flush, L2 sector', async () => {
    expect(await scenario(true, true)).toEqual(['W@16384+4096', 'F', 'W@12288+512']);
  });

  it('in-place writes touch data only', async () => {
    const registry = recRegistry();
    const name = `rec:inplace-${Math.random()}`;
    await createQed(name, { size: 64 * CS, clusterSize: CS, tableSize: 1 }, registry);
    const bs = await openQed(name, { registry, clock: new VirtualClock() });
    await bs.pwrite(0, new Uint8Array(2 * CS).fill(1));
    recStore(name).log.length = 0;
    await bs.pwrite(512, new Uint8Array(CS).fill(2));
    expect(compact(recStore(name).log)).toEqual(['W@8704+4096']);
    await bs.close();
  });
});

describe('qed: L2 cache', () => {
  it('evicts only unreferenced tables, least recently used first', () => {
    const c = new L2Cache(8, 2);
    const a = c.alloc(100);
    c.commit(a); // held by us (ref 1)
    for (const off of [200, 300, 400]) {
      const e = c.alloc(off);
      e.ref = 0;
      c.commit(e);
    }
    expect(c.has(100)).toBe(true); // in use: never evicted
    expect(c.size).toBe(2);
    expect(c.has(400)).toBe(true);
    c.unref(a);
    const e = c.alloc(500);
    e.ref = 0;
    c.commit(e);
    expect(c.has(100)).toBe(false);
    expect(c.size).toBe(2);
    const f = c.find(400)!;
    expect(f.ref).toBe(1);
    c.unref(f);
    expect(f.ref).toBe(0);
  });

  it('stays bounded while touching more L2 tables than it holds', async () => {
    const { bs } = await newMemQed({ size: 128 << 20, clusterSize: CS, tableSize: 1 });
    for (let i = 0; i < 64; i++) await bs.pwrite(i * L2SPAN, new Uint8Array(512).fill(i + 1));
    qedS(bs).l2Cache.clear();
    const got = new Uint8Array(512);
    for (let i = 0; i < 64; i++) {
      await bs.pread(i * L2SPAN, got);
      expect(got[0]).toBe(i + 1);
      expect(qedS(bs).l2Cache.size).toBeLessThanOrEqual(50);
    }
    expect(qedS(bs).l2Cache.size).toBe(50);
    await bs.close();
  });
});

describe('qed: native AIO under load', () => {
  it('mixed concurrent aioReadv/aioWritev over shared clusters match the model', async () => {
    const base = pattern(1 << 20, 77);
    const backing = memRaw(base);
    const { bs } = await newMemQed({ size: 2 << 20, clusterSize: CS, tableSize: 1, backingFile: backing, backingFmt: 'raw' });
    const model = new Uint8Array(2 << 20);
    model.set(base);
    const r = rng(99);
    const used = new Set<number>();
    const pending: Promise<void>[] = [];
    const reads: { sector: number; buf: Uint8Array }[] = [];
    for (let i = 0; i < 200; i++) {
      let sector: number;
      do sector = Math.floor(r() * 4096);
      while (used.has(sector));
      used.add(sector);
      const p = new Promise<void>((resolve, reject) => {
        if (i % 3 === 0) {
          // Reads of sectors nobody writes: their content is fixed.
          const buf = new Uint8Array(512);
          reads.push({ sector, buf });
          bs.aioReadv(sector, IOVector.from(buf), 1, (e) => (e ? reject(e) : resolve()));
        } else {
          const data = pattern(512, i + 1000);
          model.set(data, sector * 512);
          bs.aioWritev(sector, IOVector.from(data), 1, (e) => (e ? reject(e) : resolve()));
        }
      });
      pending.push(p);
    }
    await Promise.all(pending);
    for (const { sector, buf } of reads) expect(firstDiff(buf, model.subarray(sector * 512, sector * 512 + 512))).toBe(-1);
    expect(firstDiff(await readAll(bs), model)).toBe(-1);
    expect(await bs.check()).toMatchObject({ corruptions: 0, leaks: 0 });
    await bs.close();
  });
});

describe('qed: exact sizes (qed-format.md §17.2, §17.3)', () => {
  it('one 32 MiB allocating write with 4 KiB clusters (QEMU mis-sizes this) is exact', async () => {
    const { name, bs } = await newMemQed({ size: 64 << 20, clusterSize: CS, tableSize: 16 });
    const data = pattern(32 << 20, 3);
    await bs.pwrite(CS, data);
    const back = new Uint8Array(32 << 20);
    await bs.pread(CS, back);
    expect(firstDiff(back, data)).toBe(-1);
    expect(await bs.check()).toMatchObject({ corruptions: 0, leaks: 0, allocatedClusters: 8192 });
    await bs.close();
    // header + L1 (16 clusters) + 8192 data clusters + two L2 tables (16 clusters each): one
    // L2 maps 32 MiB, and the write starts one cluster in, so its last cluster is in the second
    expect(memStoreRead(name).length).toBe((1 + 16 + 8192 + 2 * 16) * CS);
  });

  it('accepts geometries whose maximum QEMU computes as 0', async () => {
    const cs = 16 << 20;
    const { bs } = await newMemQed({ size: 1 << 30, clusterSize: cs, tableSize: 1 });
    expect(await bs.getLength()).toBe(1 << 30);
    expect(bs.lengthNow()).toBe(1 << 30);
    await bs.pwrite((1 << 30) - 512, new Uint8Array(512).fill(5));
    const got = new Uint8Array(512);
    await bs.pread((1 << 30) - 512, got);
    expect(got[511]).toBe(5);
    await bs.close();
  });
});

describe('qed: concurrency with a jittery protocol', () => {
  for (const seed of [1, 2, 3]) {
    it(`seed ${seed}: concurrent writes, zeroing and reads in shared clusters match the model`, async () => {
      const registry = recRegistry();
      const base = pattern(3 << 19, seed);
      const backing = memRaw(base);
      const name = `rec:jitter-${seed}-${Math.random()}`;
      const withBacking = seed !== 2;
      await createQed(name, { size: 4 << 20, clusterSize: CS, tableSize: 1, ...(withBacking ? { backingFile: backing, backingFmt: 'raw' } : {}) }, registry);
      const bs = await openQed(name, { registry, clock: new VirtualClock() });
      const model = new Uint8Array(4 << 20);
      if (withBacking) model.set(base);
      const r = rng(seed * 17);
      recStore(name).jitter = r;
      // Disjoint units: 512-byte sectors for writes/reads, whole clusters for zeroing, so the
      // model is exact whatever the interleaving.
      const busy = new Set<number>();
      const jobs: Promise<void>[] = [];
      for (let i = 0; i < 150; i++) {
        const kind = r();
        if (kind < 0.15) {
          const c = 512 + Math.floor(r() * 400); // clusters in the upper half
          if ([...Array(8).keys()].some((k) => busy.has(c * 8 + k))) continue;
          for (let k = 0; k < 8; k++) busy.add(c * 8 + k);
          model.fill(0, c * CS, (c + 1) * CS);
          jobs.push(bs.writeZeroes(c * CS, CS));
          continue;
        }
        const sec = Math.floor(r() * 8192);
        if (busy.has(sec)) continue;
        busy.add(sec);
        if (kind < 0.8) {
          const data = pattern(512, seed * 1000 + i);
          model.set(data, sec * 512);
          jobs.push(bs.pwrite(sec * 512, data));
        } else {
          const want = model.slice(sec * 512, sec * 512 + 512);
          const got = new Uint8Array(512);
          jobs.push(bs.pread(sec * 512, got).then(() => expect(firstDiff(got, want)).toBe(-1)));
        }
      }
      await Promise.all(jobs);
      recStore(name).jitter = undefined;
      expect(firstDiff(await readAll(bs), model)).toBe(-1);
      expect(await bs.check()).toMatchObject({ corruptions: 0, leaks: 0, checkErrors: 0 });
      await bs.close();
    });
  }
});
