import { chmod, mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { IOVector } from '../../src/block/iovec.js';
import { BlockDriverState } from '../../src/block/node.js';
import { BlockDriverRegistry } from '../../src/block/registry.js';
import { fileDriver, fileStripPrefix } from '../../src/drivers/file/index.js';
import { seekAddon, setSeekAddonForTest } from '../../src/drivers/file/seek.js';
import type { FileState } from '../../src/drivers/file/state.js';
import { makeTempDir, removeTempDir } from '../interop/qemu.js';
import { bytePattern, expectBytes, rejection } from './test-bytes.js';

const registry = new BlockDriverRegistry().register(fileDriver);

const pattern = bytePattern(7, 13, 8);

// Opened as a format's child sees it (`child`): the driver's own length, growth past the end.
function open(path: string, readOnly = false): Promise<BlockDriverState> {
  return BlockDriverState.open(path, { format: 'file', registry, readOnly, child: true });
}

describe('file driver', () => {
  let dir: string;
  const nodes: BlockDriverState[] = [];
  beforeEach(() => {
    dir = makeTempDir('file-driver');
  });
  afterEach(async () => {
    for (const n of nodes.splice(0)) await n.close();
    removeTempDir(dir);
  });
  async function opened(path: string, readOnly = false): Promise<BlockDriverState> {
    const bs = await open(path, readOnly);
    nodes.push(bs);
    return bs;
  }

  it('strips an optional file: prefix', () => {
    expect(fileStripPrefix('file:/a/b')).toBe('/a/b');
    expect(fileStripPrefix('/a/b')).toBe('/a/b');
    expect(fileStripPrefix('rel')).toBe('rel');
  });

  it('create makes a sparse file of whole sectors, mode 0644 under the umask, and empties an existing one', async () => {
    const p = join(dir, 'c.img');
    await fileDriver.create!(p, { size: 1000 }, { registry, createFile: () => expect.fail('not used') });
    const st = await stat(p);
    expect(st.size).toBe(1024);
    expect(st.mode & 0o777).toBe(0o644 & ~process.umask());
    await fileDriver.create!(`file:${p}`, { size: 1 << 20 }, { registry, createFile: () => expect.fail('not used') });
    expect((await stat(p)).size).toBe(1 << 20);
    expect((await stat(p)).blocks * 512).toBeLessThan(1 << 20);
    await writeFile(p, pattern(5000, 1));
    await fileDriver.create!(p, {}, { registry, createFile: () => expect.fail('not used') });
    expect((await stat(p)).size).toBe(0);
  });

  it('create reports ENOENT / EISDIR with the path', async () => {
    const ctx = { registry, createFile: () => expect.fail('not used') };
    const missing = join(dir, 'no', 'x.img');
    const e1 = await rejection(fileDriver.create!(missing, { size: 512 }, ctx));
    expect(e1.code).toBe('ENOENT');
    expect(e1.path).toBe(missing);
    expect(e1.message).toBe(`Could not create '${missing}': No such file or directory`);
    const e2 = await rejection(fileDriver.create!(dir, { size: 512 }, ctx));
    expect(e2.code).toBe('EISDIR');
    const e3 = await rejection(fileDriver.create!(join(dir, 'neg'), { size: -1 }, ctx));
    expect(e3.code).toBe('EINVAL');
  });

  it('create preallocates: falloc reserves the space unwritten, full writes zeros, off stays sparse', async () => {
    const ctx = { registry, createFile: () => expect.fail('not used') };
    const size = 1 << 20;
    const off = join(dir, 'off.img');
    await fileDriver.create!(off, { size, preallocation: 'off' }, ctx);
    expect((await stat(off)).blocks * 512).toBeLessThan(size);
    const full = join(dir, 'full.img');
    await fileDriver.create!(full, { size: 1000, preallocation: 'full' }, ctx);
    expect((await stat(full)).size).toBe(1024);
    await fileDriver.create!(full, { size, preallocation: 'full' }, ctx);
    expect((await stat(full)).size).toBe(size);
    expect((await stat(full)).blocks * 512).toBeGreaterThanOrEqual(size);
    expect((await readFile(full)).equals(Buffer.alloc(size))).toBe(true);
    const falloc = join(dir, 'falloc.img');
    await fileDriver.create!(falloc, { size, preallocation: 'falloc' }, ctx);
    expect((await stat(falloc)).size).toBe(size);
    expect((await stat(falloc)).blocks * 512).toBeGreaterThanOrEqual(size);
    expect((await readFile(falloc)).equals(Buffer.alloc(size))).toBe(true);
    // nocow / extent_size_hint are taken (inode flags Node cannot set) and change nothing seen.
    const flags = join(dir, 'flags.img');
    await fileDriver.create!(flags, { size, nocow: true, extentSizeHint: 1 << 20 }, ctx);
    expect((await stat(flags)).size).toBe(size);
  });

  it('create with falloc writes zeros where the host cannot fallocate (posix_fallocate fallback)', async () => {
    const ctx = { registry, createFile: () => expect.fail('not used') };
    const prev = setSeekAddonForTest(null);
    try {
      const p = join(dir, 'falloc-nofs.img');
      await fileDriver.create!(p, { size: 200 * 1024, preallocation: 'falloc' }, ctx);
      expect((await stat(p)).size).toBe(200 * 1024);
      expect((await stat(p)).blocks * 512).toBeGreaterThanOrEqual(200 * 1024);
    } finally {
      setSeekAddonForTest(prev);
    }
  });

  it('create refuses bad preallocation values and a too large extent size hint before touching the file', async () => {
    const ctx = { registry, createFile: () => expect.fail('not used') };
    const p = join(dir, 'bad.img');
    await writeFile(p, pattern(4096, 3));
    const e1 = await rejection(fileDriver.create!(p, { size: 512, preallocation: 'bogus' }, ctx));
    expect([e1.code, e1.message]).toEqual(['EINVAL', 'invalid parameter value: bogus']);
    const e2 = await rejection(fileDriver.create!(p, { size: 512, extentSizeHint: 2 ** 32 }, ctx));
    expect([e2.code, e2.message]).toEqual(['EINVAL', 'Extent size hint is too large']);
    expect((await stat(p)).size).toBe(4096);
    // metadata is a known mode the file protocol refuses after creating (emptying) the file.
    const e3 = await rejection(fileDriver.create!(p, { size: 512, preallocation: 'metadata' }, ctx));
    expect([e3.code, e3.message]).toEqual(['ENOTSUP', 'Unsupported preallocation mode: metadata']);
    expect((await stat(p)).size).toBe(0);
  });

  it('truncate takes a preallocation mode for the grown range; metadata and unknown modes are refused', async () => {
    const ctx = { registry, createFile: () => expect.fail('not used') };
    const p = join(dir, 'grow.img');
    await fileDriver.create!(p, { size: 4096 }, ctx);
    const bs = await opened(p);
    await bs.truncate(1 << 20, 'full');
    expect((await stat(p)).size).toBe(1 << 20);
    expect((await stat(p)).blocks * 512).toBeGreaterThanOrEqual(1 << 20);
    expect(await bs.getLength()).toBe(1 << 20);
    await bs.truncate(2 << 20, 'falloc');
    expect((await stat(p)).blocks * 512).toBeGreaterThanOrEqual(2 << 20);
    expect(await bs.getLength()).toBe(2 << 20);
    const e1 = await rejection(bs.truncate(3 << 20, 'metadata'));
    expect([e1.code, e1.message]).toEqual(['ENOTSUP', 'Unsupported preallocation mode: metadata']);
    const e2 = await rejection(bs.truncate(3 << 20, 'bogus'));
    expect(e2.code).toBe('EINVAL');
    expect(await bs.getLength()).toBe(2 << 20);
    // A driver without truncatePreallocates gets no mode: the generic layer refuses it first.
    const plain = new BlockDriverRegistry().register({ ...fileDriver, truncatePreallocates: undefined });
    const other = await BlockDriverState.open(p, { format: 'file', registry: plain, child: true });
    nodes.push(other);
    const e3 = await rejection(other.truncate(3 << 20, 'full'));
    expect([e3.code, e3.message]).toEqual(['ENOTSUP', "Unsupported preallocation mode 'full'"]);
    await other.truncate(3 << 20, 'off');
    expect(await other.getLength()).toBe(3 << 20);
  });

  it('reads and writes bytes at unaligned offsets, with scattered vectors', async () => {
    const p = join(dir, 'rw.img');
    await writeFile(p, new Uint8Array(64 * 1024));
    const bs = await opened(`file:${p}`);
    expect(bs.requestAlignment).toBe(1);
    const data = pattern(3001, 2);
    await bs.pwrite(1001, data);
    const back = new Uint8Array(3001);
    await bs.pread(1001, back);
    expectBytes(back, data);
    // writev / readv with several segments of odd sizes
    const segs = [pattern(1, 3), pattern(511, 4), pattern(4097, 5), pattern(3, 6)];
    await bs.pwritev(7, new IOVector(segs));
    const outs = [new Uint8Array(100), new Uint8Array(4000), new Uint8Array(512)];
    await bs.preadv(7, new IOVector(outs));
    expectBytes(IOVector.from(new Uint8Array(0)).toBuffer(), new Uint8Array(0));
    expectBytes(new IOVector(outs).toBuffer(), new IOVector(segs).toBuffer());
    await bs.flush();
    const onDisk = await readFile(p);
    expectBytes(onDisk.subarray(7, 7 + 4612), new IOVector(segs).toBuffer());
    expect(onDisk.length).toBe(64 * 1024);
  });

  it('loops on short reads: more buffers than IOV_MAX in one vector', async () => {
    const p = join(dir, 'iov.img');
    const data = pattern(3000, 7);
    await writeFile(p, data);
    const bs = await opened(p);
    // The kernel takes at most 1024 iovecs per preadv: one byte per buffer forces short reads.
    const bufs = Array.from({ length: 3000 }, () => new Uint8Array(1));
    await bs.preadv(0, new IOVector(bufs));
    expectBytes(new IOVector(bufs).toBuffer(), data);
    const wbufs = Array.from({ length: 2500 }, (_, i) => Uint8Array.of((i * 3) & 0xff));
    await bs.pwritev(100, new IOVector(wbufs));
    const back = new Uint8Array(2500);
    await bs.pread(100, back);
    expectBytes(back, new IOVector(wbufs).toBuffer());
  });

  it('reads past EOF return zeros and writes past EOF grow the file (driver hooks)', async () => {
    const p = join(dir, 'grow.img');
    await writeFile(p, pattern(100, 8));
    const bs = await opened(p);
    // The generic layer bounds requests to the length; the driver itself serves any range.
    const buf = new Uint8Array(300).fill(0xee);
    await fileDriver.coPreadv!(bs, 50, 300, IOVector.from(buf));
    expectBytes(buf.subarray(0, 50), pattern(100, 8).subarray(50));
    expect(buf.subarray(50).every((b) => b === 0)).toBe(true);
    const split = [new Uint8Array(10).fill(0xee), new Uint8Array(10).fill(0xee)];
    await fileDriver.coPreadv!(bs, 95, 20, new IOVector(split));
    expect([...split[0]]).toEqual([...pattern(100, 8).subarray(95), 0, 0, 0, 0, 0]);
    expect(split[1].every((b) => b === 0)).toBe(true);

    await fileDriver.coPwritev!(bs, 10_000, 4, IOVector.from(Uint8Array.of(1, 2, 3, 4)), {});
    expect(await bs.getLength()).toBe(10_004);
    expect((await stat(p)).size).toBe(10_004);
    const gap = new Uint8Array(9900);
    await bs.pread(100, gap);
    expect(gap.every((b) => b === 0)).toBe(true);
    const tail = new Uint8Array(4);
    await bs.pread(10_000, tail);
    expect([...tail]).toEqual([1, 2, 3, 4]);
    // Through the (growable) protocol node as well: zeros past the end, writes extend.
    const past = new Uint8Array(8).fill(0xee);
    await bs.pread(10_000, past);
    expect([...past]).toEqual([1, 2, 3, 4, 0, 0, 0, 0]);
    await bs.pwrite(20_000, Uint8Array.of(9));
    expect(await bs.getLength()).toBe(20_001);
    expect((await stat(p)).size).toBe(20_001);
  });

  it('truncate shrinks and grows; getLength follows; grown space reads zeros', async () => {
    const p = join(dir, 't.img');
    await writeFile(p, pattern(8192, 9));
    const bs = await opened(p);
    expect(await bs.getLength()).toBe(8192);
    await bs.truncate(1000);
    expect(await bs.getLength()).toBe(1000);
    expect((await stat(p)).size).toBe(1000);
    await bs.truncate(5000);
    expect(await bs.getLength()).toBe(5000);
    const b = new Uint8Array(5000);
    await bs.pread(0, b);
    expectBytes(b.subarray(0, 1000), pattern(8192, 9).subarray(0, 1000));
    expect(b.subarray(1000).every((x) => x === 0)).toBe(true);
    expect((await rejection(fileDriver.truncate!(bs, -5))).code).toBe('EINVAL');
  });

  it('invalidateCache rereads a length changed behind our back', async () => {
    const p = join(dir, 'ext.img');
    await writeFile(p, new Uint8Array(512));
    const bs = await opened(p);
    await writeFile(p, new Uint8Array(2048));
    expect(await bs.getLength()).toBe(512);
    await bs.invalidateCache();
    expect(await bs.getLength()).toBe(2048);
  });

  it('without the native addon writeZeroes writes zeros (any size, past EOF too) and refuses noFallback with ENOTSUP', async () => {
    const prev = setSeekAddonForTest(null);
    try {
      await zeroesWithoutAddon();
    } finally {
      setSeekAddonForTest(prev);
    }
  });

  it('with the native addon writeZeroes with noFallback zeroes in place', async () => {
    if (seekAddon()?.zeroRange === undefined) return expect.fail('native addon not built (npm run install)');
    const p = join(dir, 'zn.img');
    await writeFile(p, new Uint8Array(8192).fill(0x99));
    const bs = await opened(p);
    await bs.writeZeroes(512, 1024, { noFallback: true });
    const disk = await readFile(p);
    expect(disk.length).toBe(8192);
    expect(disk.subarray(0, 512).every((b) => b === 0x99)).toBe(true);
    expect(disk.subarray(512, 1536).every((b) => b === 0)).toBe(true);
    expect(disk.subarray(1536).every((b) => b === 0x99)).toBe(true);
  });

  async function zeroesWithoutAddon(): Promise<void> {
    const p = join(dir, 'z.img');
    const size = 3 << 20;
    await writeFile(p, new Uint8Array(size).fill(0x99));
    const bs = await opened(p);
    await bs.writeZeroes(5, (5 << 19) + 7);
    const disk = await readFile(p);
    expect(disk.subarray(0, 5).every((b) => b === 0x99)).toBe(true);
    expect(disk.subarray(5, 5 + (5 << 19) + 7).every((b) => b === 0)).toBe(true);
    expect(disk.subarray(5 + (5 << 19) + 7).every((b) => b === 0x99)).toBe(true);
    await bs.writeZeroes(size + 100, 1000);
    expect(await bs.getLength()).toBe(size + 1100);
    expect((await stat(p)).size).toBe(size + 1100);
    const e = await rejection(bs.writeZeroes(0, 512, { noFallback: true }));
    expect(e.code).toBe('ENOTSUP');
    expect((await readFile(p)).subarray(0, 5).every((b) => b === 0x99)).toBe(true);
  }

  it('flush and FUA writes succeed and the data is in the file', async () => {
    const p = join(dir, 'f.img');
    await writeFile(p, new Uint8Array(4096));
    const bs = await opened(p);
    await bs.pwrite(0, pattern(512, 10), { fua: true });
    expectBytes((await readFile(p)).subarray(0, 512), pattern(512, 10));
    await bs.pwrite(512, pattern(512, 11));
    await bs.flush();
    expectBytes((await readFile(p)).subarray(512, 1024), pattern(512, 11));
  });

  it('getAllocatedFileSize counts host blocks (sparse file: less than its length)', async () => {
    const p = join(dir, 'a.img');
    await fileDriver.create!(p, { size: 4 << 20 }, { registry, createFile: () => expect.fail('not used') });
    const bs = await opened(p);
    const before = await bs.getAllocatedFileSize();
    expect(before).toBeLessThan(4 << 20);
    await bs.pwrite(1 << 20, pattern(256 * 1024, 12));
    await bs.flush();
    const after = await bs.getAllocatedFileSize();
    expect(after).toBeGreaterThanOrEqual(before + 256 * 1024);
    expect(after).toBe((await stat(p)).blocks * 512);
  });

  it('blockStatus: a fully written file is data at the same offset of this file (holes: file-holes.test.ts)', async () => {
    const p = join(dir, 'bs.img');
    await writeFile(p, pattern(1 << 20, 4));
    const bs = await opened(p);
    const st = await bs.blockStatus(4096, 1 << 20);
    expect(st).toMatchObject({ pnum: (1 << 20) - 4096, allocated: true, data: true, zero: false, offset: 4096 });
    expect(st.file).toBe(bs);
    expect(await bs.isAllocated(0, 512)).toEqual({ allocated: true, pnum: 512 });
  });

  it('opens read-only, and the node refuses writes there', async () => {
    const p = join(dir, 'ro.img');
    await writeFile(p, new Uint8Array(1024));
    const bs = await opened(p, true);
    expect(bs.readOnly).toBe(true);
    expect((await rejection(bs.pwrite(0, new Uint8Array(1)))).code).toBe('EACCES');
    // The handle itself is read-only: even the driver hook cannot write.
    // ...and the error is wrapped as a BlockError with op, offset and path.
    const e = await rejection(fileDriver.coPwritev!(bs, 5, 1, IOVector.from(new Uint8Array(1)), {}));
    expect(e.code).toBe('EBADF');
    expect(e).toMatchObject({ op: 'write', offset: 5, path: p });
    expect(await bs.getLength()).toBe(1024);
  });

  it('missing file -> ENOENT with QEMU-like message and the path', async () => {
    const p = join(dir, 'missing.img');
    const e = await rejection(open(p));
    expect(e.code).toBe('ENOENT');
    expect(e.path).toBe(p);
    expect(e.message).toBe(`Could not open '${p}': No such file or directory`);
    expect((await rejection(open(`file:${p}`, true))).code).toBe('ENOENT');
  });

  it('directory -> EISDIR, read-write and read-only', async () => {
    const sub = join(dir, 'sub');
    await mkdir(sub);
    const e = await rejection(open(sub));
    expect(e.code).toBe('EISDIR');
    expect(e.message).toBe(`Could not open '${sub}': Is a directory`);
    expect(e.path).toBe(sub);
    const r = await rejection(open(sub, true));
    expect(r.code).toBe('EISDIR');
    expect(r.path).toBe(sub);
  });

  it('a path through a regular file -> ENOTDIR', async () => {
    const f = join(dir, 'plain');
    await writeFile(f, 'x');
    const e = await rejection(open(join(f, 'x.img')));
    expect(e.code).toBe('ENOTDIR');
    expect(e.message).toBe(`Could not open '${join(f, 'x.img')}': Not a directory`);
  });

  // root bypasses file permission bits, so chmod 000 cannot make EACCES happen for it.
  it.skipIf(process.getuid?.() === 0)('unreadable file -> EACCES', async () => {
    const p = join(dir, 'noperm.img');
    await writeFile(p, new Uint8Array(512));
    await chmod(p, 0o000);
    const e = await rejection(open(p, true));
    expect(e.code).toBe('EACCES');
    expect(e.message).toBe(`Could not open '${p}': Permission denied`);
  });

  it('closed node: requests fail with EBADF, close is idempotent, the driver state is dropped', async () => {
    const p = join(dir, 'cl.img');
    await writeFile(p, new Uint8Array(512));
    const bs = await open(p);
    const s = bs.opaque as FileState;
    expect(s.fd).toBe(s.fh.fd);
    expect(fileDriver.lengthNow!(bs)).toBe(512);
    await bs.close();
    await bs.close();
    expect((await rejection(bs.pread(0, new Uint8Array(1)))).code).toBe('EBADF');
    expect(() => fileDriver.getLength!(bs)).toThrowError(expect.objectContaining({ code: 'EBADF' }) as Error);
    // The synchronous length and the cached descriptor are gone with the handle.
    expect(fileDriver.lengthNow!(bs)).toBeNull();
    expect(bs.lengthNow()).toBeNull();
    expect(s.fd).toBe(-1);
  });

  it('driver close waits for reads and writes still running on the descriptor', async () => {
    const p = join(dir, 'late.img');
    await writeFile(p, new Uint8Array(0));
    const bs = await open(p);
    const order: string[] = [];
    const data = pattern(4 << 20, 13);
    const w = fileDriver.coPwritev!(bs, 0, data.length, IOVector.from(data), {}).then(() => order.push('write'));
    const c = fileDriver.close!(bs).then(() => order.push('close'));
    await Promise.all([w, c]);
    expect(order).toEqual(['write', 'close']);
    expectBytes(await readFile(p), data);
    // The node still thinks it is open. Nothing was written through it, so its close asks the
    // protocol for no flush (QEMU's flushed_gen rule), and the driver state is already gone.
    await expect(bs.close()).resolves.toBeUndefined();
  });

  it('many concurrent writes and reads land where they should', async () => {
    const p = join(dir, 'cc.img');
    await writeFile(p, new Uint8Array(256 * 1024));
    const bs = await opened(p);
    await Promise.all(Array.from({ length: 64 }, (_, i) => bs.pwrite(i * 4096 + 3, pattern(4000, i))));
    const bufs = Array.from({ length: 64 }, () => new Uint8Array(4000));
    await Promise.all(bufs.map((b, i) => bs.pread(i * 4096 + 3, b)));
    bufs.forEach((b, i) => expectBytes(b, pattern(4000, i)));
  });

  describe('page-cache reads (preadNowait)', () => {
    /** The real addon with its preadNowait replaced: the rest of the driver stays real. */
    async function withNowait<T>(
      preadNowait: ((fd: number, b: readonly Uint8Array[], off: number, size: number) => number) | undefined,
      body: () => Promise<T>,
    ): Promise<T> {
      const real = seekAddon();
      if (real === null) return expect.fail('native addon not built (npm run install)');
      const prev = setSeekAddonForTest({ ...real, preadNowait });
      try {
        return await body();
      } finally {
        setSeekAddonForTest(prev);
      }
    }

    it('the addon reads cached bytes now, reports end of file as 0 and refuses non-Uint8Array buffers', async () => {
      const real = seekAddon();
      if (real?.preadNowait === undefined) return expect.fail('native addon not built (npm run install)');
      const p = join(dir, 'nw.img');
      await writeFile(p, pattern(10000, 3));
      const bs = await opened(p, true);
      const fd = (bs.opaque as { fh: { fd: number } }).fh.fd;
      const a = new Uint8Array(3000);
      const b = new Uint8Array(5000);
      // Just written: the page cache holds it (a host without RWF_NOWAIT says -2).
      const n = real.preadNowait(fd, [a, b], 100, 7000);
      if (n === -2) return;
      expect(n).toBe(7000);
      expectBytes(a, pattern(10000, 3).subarray(100, 3100));
      expectBytes(b.subarray(0, 4000), pattern(10000, 3).subarray(3100, 7100));
      expect(b.subarray(4000).every((x) => x === 0)).toBe(true);
      expect(real.preadNowait(fd, [a], 9000, 3000)).toBe(1000);
      expect(real.preadNowait(fd, [a], 20000, 3000)).toBe(0);
      expect(() => real.preadNowait!(fd, [new Uint16Array(4) as unknown as Uint8Array], 0, 8)).toThrow(/Uint8Array/);
    });

    it('a partly cached read goes to the thread pool whole; past EOF reads zeros', async () => {
      const p = join(dir, 'short.img');
      const data = pattern(20000, 5);
      await writeFile(p, data);
      const calls: number[] = [];
      const realRead = seekAddon()?.preadNowait;
      if (realRead === undefined) return expect.fail('native addon not built (npm run install)');
      // Only the first 1000 bytes "cached": the driver must read the rest itself.
      await withNowait(
        (fd, bufs, off, size) => {
          calls.push(off);
          const n = Math.min(1000, size);
          const head = new Uint8Array(n);
          const got = realRead(fd, [head], off, n);
          if (got < 0) return got;
          let rest = got;
          for (const buf of bufs) {
            const k = Math.min(rest, buf.length);
            buf.set(head.subarray(got - rest, got - rest + k));
            rest -= k;
            if (rest === 0) break;
          }
          return got;
        },
        async () => {
          const bs = await opened(p, true);
          const a = new Uint8Array(3000);
          const b = new Uint8Array(4000);
          await bs.preadv(500, new IOVector([a, b]));
          expectBytes(a, data.subarray(500, 3500));
          expectBytes(b, data.subarray(3500, 7500));
          const tail = new Uint8Array(4096).fill(0xee);
          await bs.pread(18000, tail);
          expectBytes(tail.subarray(0, 2000), data.subarray(18000));
          expect(tail.subarray(2000).every((x) => x === 0)).toBe(true);
        },
      );
      // The read past EOF never qualifies for the page-cache path (out of bounds): the pool's.
      expect(calls).toEqual([500]);
    });

    it('"would block" (-1) reads on the thread pool; "unsupported" (-2) is not asked again', async () => {
      const p = join(dir, 'wb.img');
      const data = pattern(8192, 11);
      await writeFile(p, data);
      let asked = 0;
      for (const answer of [-1, -2]) {
        asked = 0;
        await withNowait(
          () => {
            asked++;
            return answer;
          },
          async () => {
            const bs = await opened(p, true);
            for (let i = 0; i < 3; i++) {
              const buf = new Uint8Array(4096);
              await bs.pread(i * 1024, buf);
              expectBytes(buf, data.subarray(i * 1024, i * 1024 + 4096));
            }
          },
        );
        expect(asked).toBe(answer === -1 ? 3 : 1);
      }
    });

    it('reads are the same bytes with and without the page-cache path', async () => {
      const p = join(dir, 'same.img');
      const data = pattern(1 << 20, 17);
      await writeFile(p, data);
      // Reads of up to 256 KiB in three-part vectors, the last one running past EOF.
      const readAll = async (): Promise<Uint8Array> => {
        const bs = await opened(p, true);
        const out = new Uint8Array((1 << 20) + 4096);
        for (let off = 0; off < out.length; off += 200_000) {
          const end = Math.min(out.length, off + 200_000);
          const parts = [out.subarray(off, off + 777), out.subarray(off + 777, off + 70000), out.subarray(off + 70000, end)];
          await bs.preadv(off, new IOVector(parts));
        }
        return out;
      };
      let asked = 0;
      const real = seekAddon()?.preadNowait;
      if (real === undefined) return expect.fail('native addon not built (npm run install)');
      const fast = await withNowait((fd, b, off, size) => {
        asked++;
        return real(fd, b, off, size);
      }, readAll);
      // Six reads; the last one runs past EOF and goes to the pool directly.
      expect(asked).toBe(5);
      const slow = await withNowait(undefined, readAll);
      expectBytes(fast, slow);
      expectBytes(fast.subarray(0, 1 << 20), data);
      expect(fast.subarray(1 << 20).every((x) => x === 0)).toBe(true);
    });

    it('reads over 256 KiB go to the thread pool: a long copy would hold this thread up', async () => {
      const p = join(dir, 'big.img');
      const data = pattern(1 << 20, 19);
      await writeFile(p, data);
      let asked = 0;
      const real = seekAddon()?.preadNowait;
      if (real === undefined) return expect.fail('native addon not built (npm run install)');
      await withNowait(
        (fd, b, off, size) => {
          asked++;
          return real(fd, b, off, size);
        },
        async () => {
          const bs = await opened(p, true);
          const big = new Uint8Array(256 * 1024 + 512);
          await bs.pread(4096, big);
          expectBytes(big, data.subarray(4096, 4096 + big.length));
          expect(asked).toBe(0);
          await bs.pread(0, big.subarray(0, 256 * 1024));
          expect(asked).toBe(1);
        },
      );
    });
  });
});
