import { readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { bdrvCreate } from '../../src/block/create.js';
import type { BlockDriver } from '../../src/block/driver.js';
import { BlockError } from '../../src/block/errors.js';
import { IOVector } from '../../src/block/iovec.js';
import { BlockDriverState } from '../../src/block/node.js';
import { BlockDriverRegistry } from '../../src/block/registry.js';
import { fileDriver } from '../../src/drivers/file/index.js';
import { setSeekAddonForTest } from '../../src/drivers/file/seek.js';
import { MEM_CHUNK_SIZE, memDriver, memStoreCreate, memStoreDelete, memStoreGet, memStoreRead } from '../../src/drivers/mem/index.js';
import { RAW_PROBE_GUARD_BYTES, rawDriver } from '../../src/drivers/raw/index.js';
import { makeTempDir, removeTempDir } from '../interop/qemu.js';
import { bytePattern, expectBytes, rejection } from './test-bytes.js';

/**
 * A format that only probes: it claims anything starting with QED's magic 'QED\0', as the qed
 * driver does. Enough for the probed-raw guard, which only asks the other drivers' probes.
 */
const qedMagicProbe: BlockDriver = {
  formatName: 'qedmagic',
  probe: (buf) => (buf.length >= 4 && buf[0] === 0x51 && buf[1] === 0x45 && buf[2] === 0x44 && buf[3] === 0 ? 100 : 0),
};

const registry = new BlockDriverRegistry().register(fileDriver).register(memDriver).register(rawDriver).register(qedMagicProbe);
const QED_MAGIC = Uint8Array.of(0x51, 0x45, 0x44, 0x00);

const pattern = bytePattern(5, 29, 10);

describe('raw driver', () => {
  let dir: string;
  let seq = 0;
  const nodes: BlockDriverState[] = [];
  const stores: string[] = [];
  beforeEach(() => {
    dir = makeTempDir('raw-driver');
  });
  afterEach(async () => {
    for (const n of nodes.splice(0)) await n.close();
    for (const s of stores.splice(0)) memStoreDelete(s);
    removeTempDir(dir);
  });
  function memName(): string {
    const n = `raw-driver-${process.pid}-${seq++}`;
    stores.push(n);
    return `mem:${n}`;
  }
  async function opened(filename: string, opts: { format?: string; readOnly?: boolean } = {}): Promise<BlockDriverState> {
    const bs = await BlockDriverState.open(filename, { registry, ...opts });
    nodes.push(bs);
    return bs;
  }

  it('probes 1 for any bytes, so it is chosen only when nothing else claims the image', () => {
    expect(rawDriver.probe!(new Uint8Array(0), 'x')).toBe(1);
    expect(rawDriver.probe!(pattern(2048, 1), 'x.img')).toBe(1);
    expect(rawDriver.probe!(QED_MAGIC, 'x.qed')).toBe(1);
    expect(registry.probe(pattern(512, 2), 'x')).toBe(rawDriver);
    expect(registry.probe(QED_MAGIC, 'x')).toBe(qedMagicProbe);
  });

  it('create passes the protocol options on: preallocation=full through raw writes the file', async () => {
    const p = join(dir, 'full.raw');
    await bdrvCreate(p, { format: 'raw', options: { size: 1 << 20, preallocation: 'full' }, registry });
    const st = await stat(p);
    expect(st.size).toBe(1 << 20);
    expect(st.blocks * 512).toBeGreaterThanOrEqual(1 << 20);
    const e = await rejection(bdrvCreate(join(dir, 'bad.raw'), { format: 'raw', options: { size: 512, preallocation: 'bogus' }, registry }));
    expect(e.message).toBe('invalid parameter value: bogus');
    // Options neither raw nor its protocol know are still refused before anything is created.
    const e2 = await rejection(bdrvCreate(join(dir, 'bad.raw'), { format: 'raw', options: { size: 512, clusterSize: 4096 }, registry }));
    expect(e2.message).toBe("Invalid parameter 'clusterSize'");
  });

  it('announces read_aio / write_aio on its file when something watches them, as QEMU raw does', async () => {
    const name = memName();
    await bdrvCreate(name, { format: 'raw', options: { size: 64 << 10 }, registry });
    const bs = await opened(name, { format: 'raw' });
    const seen: string[] = [];
    bs.file!.events.on('debug', (ev) => seen.push(ev));
    await bs.pwrite(4096, pattern(512, 1));
    await bs.pread(4096, new Uint8Array(512));
    // (The generic layer's own pwritev / pwritev_done come between.)
    expect(seen.filter((e) => e.endsWith('_aio'))).toEqual(['write_aio', 'read_aio']);
    expect(seen.indexOf('write_aio')).toBeLessThan(seen.indexOf('pwritev'));
  });

  it('create makes a sparse file of whole sectors over the file protocol', async () => {
    const p = join(dir, 'c.raw');
    await bdrvCreate(p, { format: 'raw', options: { size: 1000 }, registry });
    expect((await stat(p)).size).toBe(1024);
    await bdrvCreate(p, { format: 'raw', options: { size: 8 << 20 }, registry });
    const st = await stat(p);
    expect(st.size).toBe(8 << 20);
    expect(st.blocks * 512).toBeLessThan(1 << 20);
    expect((await readFile(p)).every((b) => b === 0)).toBe(true);
    const e = await rejection(
      rawDriver.create!(p, { size: -1 }, { registry, createFile: () => expect.fail('must validate first') }),
    );
    expect(e.code).toBe('EINVAL');
  });

  it('create over mem', async () => {
    const name = memName();
    await bdrvCreate(name, { format: 'raw', options: { size: 3 * MEM_CHUNK_SIZE }, registry });
    expect(memStoreGet(name)?.length).toBe(3 * MEM_CHUNK_SIZE);
    expect(memStoreGet(name)?.chunks.size).toBe(0);
  });

  it('passes reads and writes through unchanged, at the same offsets (file)', async () => {
    const p = join(dir, 'rw.raw');
    await bdrvCreate(p, { format: 'raw', options: { size: 1 << 20 }, registry });
    const bs = await opened(p, { format: 'raw' });
    expect(bs.driver).toBe(rawDriver);
    expect(bs.file?.driver).toBe(fileDriver);
    expect(bs.requestAlignment).toBe(1);
    const a = pattern(3000, 3);
    await bs.pwrite(1000, a);
    const segs = [pattern(7, 4), pattern(5000, 5)];
    await bs.pwritev(70_001, new IOVector(segs));
    const back = new Uint8Array(3000);
    await bs.pread(1000, back);
    expectBytes(back, a);
    const outs = [new Uint8Array(4000), new Uint8Array(1007)];
    await bs.preadv(70_001, new IOVector(outs));
    expectBytes(new IOVector(outs).toBuffer(), new IOVector(segs).toBuffer());
    await bs.flush();
    const disk = await readFile(p);
    expectBytes(disk.subarray(1000, 4000), a);
    expectBytes(disk.subarray(70_001, 75_008), new IOVector(segs).toBuffer());
    expect(await bs.getLength()).toBe(1 << 20);
    expect((await rejection(bs.pread((1 << 20) - 1, new Uint8Array(2)))).code).toBe('EIO');
  });

  it('truncate and getLength go to the protocol; getInfo; getAllocatedFileSize from the file child', async () => {
    const p = join(dir, 't.raw');
    await bdrvCreate(p, { format: 'raw', options: { size: 4096 }, registry });
    const bs = await opened(p, { format: 'raw' });
    await bs.truncate(10_240);
    expect(await bs.getLength()).toBe(10_240);
    expect((await stat(p)).size).toBe(10_240);
    await bs.pwrite(10_239, Uint8Array.of(5));
    await bs.truncate(2_048);
    expect(await bs.getLength()).toBe(2_048);
    expect((await stat(p)).size).toBe(2_048);
    expect(await bs.getInfo()).toEqual({ clusterSize: 0, isDirty: false });
    await bs.pwrite(0, new Uint8Array(2000).fill(1));
    await bs.flush();
    expect(await bs.getAllocatedFileSize()).toBe((await stat(p)).blocks * 512);
    expect(await bs.getAllocatedFileSize()).toBe(await bs.file!.getAllocatedFileSize());
  });

  it('a file whose length is not a multiple of 512 is a disk of whole sectors, like QEMU', async () => {
    const p = join(dir, 'odd.raw');
    await writeFile(p, new Uint8Array(1001).fill(0x42));
    const bs = await opened(p, { format: 'raw' });
    expect(await bs.getLength()).toBe(1024);
    // The fast-path gate's synchronous length says the same; the file's own is exact.
    expect(bs.lengthNow()).toBe(1024);
    expect(bs.file!.lengthNow()).toBe(1001);
    const tail = new Uint8Array(30).fill(0xee);
    await bs.pread(994, tail);
    expect(tail.subarray(0, 7).every((b) => b === 0x42)).toBe(true);
    expect(tail.subarray(7).every((b) => b === 0)).toBe(true);
    // QEMU's map: data up to the file end, then a zero tail at the same offsets.
    expect(await bs.blockStatus(0, 1024)).toMatchObject({ pnum: 1001, data: true, zero: false, offset: 0 });
    const z = await bs.blockStatus(1001, 23);
    expect(z).toMatchObject({ pnum: 23, allocated: true, data: false, zero: true, offset: 1001 });
    expect(z.file).toBe(bs.file);
    // Writing in the tail grows the file; past the sector end is out of the disk.
    await bs.pwrite(1010, Uint8Array.of(1, 2, 3, 4));
    expect((await stat(p)).size).toBe(1014);
    expect(await bs.getLength()).toBe(1024);
    expect((await rejection(bs.pwrite(1020, new Uint8Array(8)))).code).toBe('EIO');
    // Resizing to an odd size keeps the file exact and the disk in whole sectors.
    await bs.truncate(1500);
    expect((await stat(p)).size).toBe(1500);
    expect(await bs.getLength()).toBe(1536);
  });

  it('blockStatus comes from the protocol: same offset, file = bs.file', async () => {
    const name = memName();
    await bdrvCreate(name, { format: 'raw', options: { size: 8 * MEM_CHUNK_SIZE }, registry });
    const bs = await opened(name, { format: 'raw' });
    await bs.pwrite(2 * MEM_CHUNK_SIZE + 1, Uint8Array.of(1));
    const hole = await bs.blockStatus(0, 8 * MEM_CHUNK_SIZE);
    expect(hole).toMatchObject({ pnum: 2 * MEM_CHUNK_SIZE, allocated: true, data: false, zero: true, offset: 0 });
    expect(hole.file).toBe(bs.file);
    const data = await bs.blockStatus(2 * MEM_CHUNK_SIZE + 5, 100);
    expect(data).toMatchObject({ pnum: 100, allocated: true, data: true, zero: false, offset: 2 * MEM_CHUNK_SIZE + 5 });
    expect(data.file).toBe(bs.file);
    // Over a host file: create allocates the first block (as QEMU does), so it is data.
    const p = join(dir, 'bs.raw');
    await bdrvCreate(p, { format: 'raw', options: { size: 4096 }, registry });
    const fbs = await opened(p, { format: 'raw' });
    expect(await fbs.blockStatus(512, 4096)).toMatchObject({ pnum: 3584, data: true, zero: false, offset: 512 });
  });

  it('writeZeroes uses the protocol: native on mem (chunks dropped with unmap), fallback on file', async () => {
    const name = memName();
    await bdrvCreate(name, { format: 'raw', options: { size: 4 * MEM_CHUNK_SIZE }, registry });
    const bs = await opened(name, { format: 'raw' });
    await bs.pwrite(0, new Uint8Array(4 * MEM_CHUNK_SIZE).fill(3));
    await bs.writeZeroes(MEM_CHUNK_SIZE, 2 * MEM_CHUNK_SIZE, { mayUnmap: true });
    expect([...(memStoreGet(name)?.chunks.keys() ?? [])].sort()).toEqual([0, 3]);
    await bs.writeZeroes(10, 20, { noFallback: true });
    const all = memStoreRead(name);
    expect(all.subarray(0, 10).every((b) => b === 3)).toBe(true);
    expect(all.subarray(10, 30).every((b) => b === 0)).toBe(true);
    expect(all.subarray(30, MEM_CHUNK_SIZE).every((b) => b === 3)).toBe(true);

    const p = join(dir, 'z.raw');
    await writeFile(p, new Uint8Array(8192).fill(7));
    const fbs = await opened(p, { format: 'raw' });
    await fbs.writeZeroes(100, 5000);
    const disk = await readFile(p);
    expect(disk.subarray(100, 5100).every((b) => b === 0)).toBe(true);
    expect(disk[99]).toBe(7);
    expect(disk[5100]).toBe(7);
    // The flags reach the file protocol: with the native addon it zeroes without a fallback
    // write; without it (no fallocate), noFallback is ENOTSUP and nothing is written.
    await fbs.writeZeroes(0, 50, { noFallback: true });
    expect((await readFile(p)).subarray(0, 50).every((b) => b === 0)).toBe(true);
    const prev = setSeekAddonForTest(null);
    try {
      expect((await rejection(fbs.writeZeroes(6000, 512, { noFallback: true }))).code).toBe('ENOTSUP');
      expect((await readFile(p)).subarray(6000, 6512).every((b) => b === 7)).toBe(true);
    } finally {
      setSeekAddonForTest(prev);
    }
  });

  it('discard passes to the protocol', async () => {
    const name = memName();
    await bdrvCreate(name, { format: 'raw', options: { size: 2 * MEM_CHUNK_SIZE }, registry });
    const bs = await opened(name, { format: 'raw' });
    await bs.pwrite(0, new Uint8Array(2 * MEM_CHUNK_SIZE).fill(1));
    await bs.discard(0, MEM_CHUNK_SIZE);
    expect([...(memStoreGet(name)?.chunks.keys() ?? [])]).toEqual([1]);
  });

  it('AIO reads and writes through the raw node', async () => {
    const name = memName();
    await bdrvCreate(name, { format: 'raw', options: { size: 8192 }, registry });
    const bs = await opened(name, { format: 'raw' });
    const data = pattern(1536, 9);
    await new Promise<void>((res, rej) => bs.aioWritev(4, IOVector.from(data), 3, (e) => (e ? rej(e) : res())));
    await new Promise<void>((res, rej) => bs.aioFlush((e) => (e ? rej(e) : res())));
    expectBytes(memStoreRead(name).subarray(2048, 2048 + 1536), data);
  });

  it('flush reaches the file child; close closes it', async () => {
    const name = memName();
    memStoreCreate(name.slice(4), 512);
    const bs = await BlockDriverState.open(name, { format: 'raw', registry });
    let flushed = 0;
    const file = bs.file!;
    const orig = file.flush.bind(file);
    file.flush = async () => {
      flushed++;
      await orig();
    };
    await bs.flush();
    expect(flushed).toBe(1);
    await bs.close();
    expect(file.isOpen).toBe(false);
  });

  describe('probed-raw guard', () => {
    async function probedMem(size = 4096, head?: Uint8Array): Promise<{ bs: BlockDriverState; name: string }> {
      const name = memName();
      memStoreCreate(name.slice(4), size);
      if (head) memStoreGet(name)!.write(0, [head], head.length);
      const bs = await opened(name);
      expect(bs.driver).toBe(rawDriver);
      return { bs, name };
    }

    it('refuses a write that makes the head look like another format (EPERM), leaving the data alone', async () => {
      const { bs, name } = await probedMem();
      await bs.pwrite(0, pattern(512, 1));
      const e = await rejection(bs.pwrite(0, QED_MAGIC));
      expect(e.code).toBe('EPERM');
      expect(e.message).toContain('qedmagic');
      expectBytes(memStoreRead(name).subarray(0, 512), pattern(512, 1));
      // A whole first sector carrying the magic, in several segments.
      const sector = new Uint8Array(512);
      sector.set(QED_MAGIC);
      expect((await rejection(bs.pwritev(0, new IOVector([sector.subarray(0, 2), sector.subarray(2)])))).code).toBe('EPERM');
      // Finishing a magic whose first byte is already there is refused as well.
      await bs.pwrite(0, Uint8Array.of(0x51));
      expect((await rejection(bs.pwrite(1, QED_MAGIC.subarray(1)))).code).toBe('EPERM');
      expect(memStoreRead(name)[1]).toBe(pattern(512, 1)[1]);
      // Through AIO too.
      const aioErr = await new Promise<BlockError | null>((res) => bs.aioWritev(0, IOVector.from(sector), 1, res));
      expect(aioErr?.code).toBe('EPERM');
    });

    it('allows harmless head writes and any write past the probed bytes', async () => {
      const { bs, name } = await probedMem(8192);
      await bs.pwrite(0, pattern(1024, 2));
      await bs.pwrite(1, QED_MAGIC);
      await bs.pwrite(RAW_PROBE_GUARD_BYTES, QED_MAGIC);
      await bs.writeZeroes(0, 512);
      const all = memStoreRead(name);
      expect(all.subarray(0, 512).every((b) => b === 0)).toBe(true);
      expectBytes(all.subarray(RAW_PROBE_GUARD_BYTES, RAW_PROBE_GUARD_BYTES + 4), QED_MAGIC);
    });

    it('a write that grows a short image into a header is refused too', async () => {
      const { bs } = await probedMem(2);
      expect((await rejection(rawDriver.coPwritev!(bs, 0, 4, IOVector.from(QED_MAGIC), {}))).code).toBe('EPERM');
    });

    it('with the raw format given explicitly, the same write is allowed', async () => {
      const name = memName();
      memStoreCreate(name.slice(4), 4096);
      const bs = await opened(name, { format: 'raw' });
      await bs.pwrite(0, QED_MAGIC);
      expectBytes(memStoreRead(name).subarray(0, 4), QED_MAGIC);
      await bs.close();
      // ...and now the image probes as the other format.
      const again = await opened(name);
      expect(again.driver).toBe(qedMagicProbe);
    });

    it('over a host file as well', async () => {
      const p = join(dir, 'probed.img');
      await writeFile(p, new Uint8Array(4096));
      const bs = await opened(p);
      expect(bs.driver).toBe(rawDriver);
      expect((await rejection(bs.pwrite(0, QED_MAGIC))).code).toBe('EPERM');
      expect((await readFile(p)).subarray(0, 4).every((b) => b === 0)).toBe(true);
      const explicit = await opened(p, { format: 'raw' });
      await explicit.pwrite(0, QED_MAGIC);
      await explicit.flush();
      expectBytes((await readFile(p)).subarray(0, 4), QED_MAGIC);
    });

    it('with the package registry, the real qed probe makes a QED header write EPERM', async () => {
      // Imported here so that this file's other tests do not depend on every driver loading.
      const { defaultRegistry } = await import('../../src/index.js');
      expect(defaultRegistry.find('qed')).toBeDefined();
      const name = memName();
      memStoreCreate(name.slice(4), 64 * 1024);
      const bs = await BlockDriverState.open(name, { registry: defaultRegistry });
      nodes.push(bs);
      expect(bs.driver.formatName).toBe('raw');
      // A plausible QED header: magic, cluster size 64 KiB, table size 4, header size 1.
      const hdr = new Uint8Array(64);
      const dv = new DataView(hdr.buffer);
      dv.setUint32(0, 0x00444551, true);
      dv.setUint32(4, 65536, true);
      dv.setUint32(8, 4, true);
      dv.setUint32(12, 1, true);
      const e = await rejection(bs.pwrite(0, hdr));
      expect(e.code).toBe('EPERM');
      expect(e.message).toContain('qed');
      expect(memStoreRead(name).subarray(0, 64).every((b) => b === 0)).toBe(true);
    });

    it('concurrent head writes are checked one at a time', async () => {
      const { bs, name } = await probedMem();
      // Each write alone is harmless; together they would form the magic. The second one
      // is checked against the first one's result.
      const results = await Promise.allSettled([
        bs.pwrite(0, Uint8Array.of(0x51, 0x45)),
        bs.pwrite(2, Uint8Array.of(0x44, 0x00)),
      ]);
      expect(results.map((r) => r.status)).toEqual(['fulfilled', 'rejected']);
      expect([...memStoreRead(name).subarray(0, 4)]).toEqual([0x51, 0x45, 0, 0]);
    });
  });
});
