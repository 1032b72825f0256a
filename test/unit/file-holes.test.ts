// Holes in host files: the file driver's block status through lseek(SEEK_DATA / SEEK_HOLE) (the
// native addon), and its fallback to "everything is data" without it.
import { open as fsOpen, readFile, stat, truncate, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { bdrvCreate } from '../../src/block/create.js';
import { BlockDriverState } from '../../src/block/node.js';
import { addonPath, loadSeekAddon, type SeekAddon, seekAddon, setSeekAddonForTest } from '../../src/drivers/file/seek.js';
import { fileRawRegistry as registry, useFileNodes } from './file-nodes.js';

const KiB = 1024;
const MiB = 1024 * 1024;

/**
 * The real addon. `npm ci` builds it; without a compiler it is missing and the hole tests skip
 * locally, but CI must have it (else holes silently read as data there).
 */
const realAddon = loadSeekAddon();
if (realAddon === null && process.env.CI === 'true') {
  throw new Error('the native seek addon (build/Release/blocklayer_seek.node) was not built: run `npm ci` with python3, make and a C compiler');
}

interface Run {
  start: number;
  length: number;
  data: boolean;
  zero: boolean;
  offset: number | undefined;
}

/** Walk the whole node with blockStatus (or blockStatusAbove), merging runs with the same answer. */
async function runs(bs: BlockDriverState, above = false): Promise<Run[]> {
  const len = await bs.getLength();
  const out: Run[] = [];
  for (let pos = 0; pos < len; ) {
    const st = above ? await bs.blockStatusAbove(pos, len - pos) : await bs.blockStatus(pos, len - pos);
    expect(st.pnum).toBeGreaterThan(0);
    expect(st.allocated).toBe(true);
    const last = out.at(-1);
    if (
      last !== undefined &&
      last.data === st.data &&
      last.zero === st.zero &&
      last.offset !== undefined &&
      st.offset === last.offset + last.length
    ) {
      last.length += st.pnum;
    } else {
      out.push({ start: pos, length: st.pnum, data: st.data, zero: st.zero, offset: st.offset });
    }
    pos += st.pnum;
  }
  return out;
}

function fill(n: number, v: number): Uint8Array {
  return new Uint8Array(n).fill(v);
}

/** A sparse file of `size` bytes with `extents` written (4 KiB-aligned: file system blocks). */
async function sparseFile(path: string, size: number, extents: [number, number][]): Promise<void> {
  await writeFile(path, new Uint8Array(0));
  await truncate(path, size);
  const fh = await fsOpen(path, 'r+');
  try {
    for (const [off, len] of extents) await fh.write(fill(len, 0x5a), 0, len, off);
  } finally {
    await fh.close();
  }
}

describe('file driver block status and holes', () => {
  const fx = useFileNodes('file-holes', undefined);

  describe.skipIf(realAddon === null)('with the native addon', () => {
    it('the addon loads from the package root and answers lseek', async () => {
      expect(seekAddon()).not.toBeNull();
      const p = join(fx.dir, 'a.img');
      await sparseFile(p, 1 * MiB, [[256 * KiB, 4 * KiB]]);
      const fh = await fsOpen(p, 'r');
      try {
        const a = seekAddon()!;
        expect(a.seekData(fh.fd, 0)).toBe(256 * KiB);
        expect(a.seekHole(fh.fd, 256 * KiB)).toBe(260 * KiB);
        // Trailing hole, and past the end: nothing more.
        expect(a.seekData(fh.fd, 260 * KiB)).toBe(-1);
        expect(a.seekData(fh.fd, 2 * MiB)).toBe(-1);
        expect(a.seekHole(fh.fd, 2 * MiB)).toBe(-1);
        // End of file is a hole.
        expect(a.seekHole(fh.fd, 1 * MiB - 1)).toBe(1 * MiB - 1);
        // Other errors throw with the errno name.
        expect(() => a.seekData(1 << 30, 0)).toThrow(expect.objectContaining({ code: 'EBADF', syscall: 'lseek' }));
        expect(() => a.seekData(fh.fd, -1)).toThrow(expect.objectContaining({ code: 'EINVAL' }));
        expect(() => a.seekHole(fh.fd, 0.5)).toThrow(expect.objectContaining({ code: 'EINVAL' }));
      } finally {
        await fh.close();
      }
    });

    it('a build in build/Release loads by its path, without loading node-gyp-build', () => {
      const require = createRequire(import.meta.url);
      const ngb = require.resolve('node-gyp-build');
      delete require.cache[ngb];
      expect(loadSeekAddon()).not.toBeNull();
      expect(addonPath()).toBe(join(import.meta.dirname, '../../build/Release/blocklayer_seek.node'));
      expect(require.cache[ngb]).toBeUndefined();
    });

    it('a sparse file reports its data and hole runs, each at the same offset of the file', async () => {
      const p = join(fx.dir, 'sparse.img');
      await sparseFile(p, 4 * MiB, [
        [1 * MiB, 64 * KiB],
        [3 * MiB, 4 * KiB],
        [3 * MiB + 8 * KiB, 4 * KiB],
      ]);
      const bs = await fx.opened(p);
      expect(await runs(bs)).toEqual([
        { start: 0, length: 1 * MiB, data: false, zero: true, offset: 0 },
        { start: 1 * MiB, length: 64 * KiB, data: true, zero: false, offset: 1 * MiB },
        { start: 1 * MiB + 64 * KiB, length: 2 * MiB - 64 * KiB, data: false, zero: true, offset: 1 * MiB + 64 * KiB },
        { start: 3 * MiB, length: 4 * KiB, data: true, zero: false, offset: 3 * MiB },
        { start: 3 * MiB + 4 * KiB, length: 4 * KiB, data: false, zero: true, offset: 3 * MiB + 4 * KiB },
        { start: 3 * MiB + 8 * KiB, length: 4 * KiB, data: true, zero: false, offset: 3 * MiB + 8 * KiB },
        { start: 3 * MiB + 12 * KiB, length: 1 * MiB - 12 * KiB, data: false, zero: true, offset: 3 * MiB + 12 * KiB },
      ]);
      // pnum runs to the boundary and no further than the request; the node is the file.
      const inHole = await bs.blockStatus(1 * MiB - 4 * KiB, 1 * MiB);
      expect(inHole).toMatchObject({ pnum: 4 * KiB, allocated: true, data: false, zero: true, offset: 1 * MiB - 4 * KiB });
      expect(inHole.file).toBe(bs);
      expect(await bs.blockStatus(1 * MiB + 512, 100)).toMatchObject({ pnum: 100, data: true, zero: false, offset: 1 * MiB + 512 });
      expect(await bs.blockStatus(1 * MiB + 60 * KiB, 1 * MiB)).toMatchObject({ pnum: 4 * KiB, data: true });
      expect(await bs.blockStatus(5, 7)).toMatchObject({ pnum: 7, data: false, zero: true, offset: 5 });
      // A hole is still determined by this layer (QEMU: ALLOCATED with ZERO).
      expect(await bs.isAllocated(0, 4 * MiB)).toEqual({ allocated: true, pnum: 1 * MiB });
    });

    it('what is reported as zero reads as zeros, and our own writes turn holes into data', async () => {
      const p = join(fx.dir, 'w.img');
      await sparseFile(p, 2 * MiB, [[64 * KiB, 4 * KiB]]);
      const bs = await fx.opened(p);
      await bs.pwrite(1 * MiB, fill(8 * KiB, 0x33));
      // Growing the file: the gap up to the new data is a hole, the new tail is data.
      await bs.pwrite(3 * MiB, fill(4 * KiB, 0x44));
      const got = await runs(bs);
      expect(got.filter((r) => r.data).map((r) => [r.start, r.length])).toEqual([
        [64 * KiB, 4 * KiB],
        [1 * MiB, 8 * KiB],
        [3 * MiB, 4 * KiB],
      ]);
      expect(got.at(-1)).toMatchObject({ start: 3 * MiB, length: 4 * KiB, data: true });
      for (const r of got.filter((x) => x.zero)) {
        const buf = new Uint8Array(r.length);
        await bs.pread(r.start, buf);
        expect(buf.every((b) => b === 0)).toBe(true);
      }
    });

    it('a file without holes is one data run, up to an unaligned end of file', async () => {
      const p = join(fx.dir, 'full.img');
      await writeFile(p, fill(256 * KiB + 5000, 0x11));
      const bs = await fx.opened(p);
      expect(await runs(bs)).toEqual([{ start: 0, length: 256 * KiB + 5000, data: true, zero: false, offset: 0 }]);
    });

    it('data ending inside the last block of an odd-length file: raw adds the zero sector tail', async () => {
      const p = join(fx.dir, 'odd.raw');
      await writeFile(p, Uint8Array.of(0x78));
      await truncate(p, 9000);
      const bs = await fx.opened(p, 'raw');
      expect(await bs.getLength()).toBe(9216);
      // The file system allocates whole blocks: data covers the first one.
      const blk = (await stat(p)).blksize;
      expect(await runs(bs, true)).toEqual([
        { start: 0, length: blk, data: true, zero: false, offset: 0 },
        { start: blk, length: 9216 - blk, data: false, zero: true, offset: blk },
      ]);
    });

    it('raw over a sparse file passes the runs through at the same offsets (blockStatusAbove)', async () => {
      const p = join(fx.dir, 's.raw');
      await sparseFile(p, 2 * MiB, [
        [0, 4 * KiB],
        [1 * MiB, 128 * KiB],
      ]);
      const bs = await fx.opened(p, 'raw');
      const file = await runs(bs.file!);
      expect(await runs(bs, true)).toEqual(file);
      expect(file.map((r) => r.data)).toEqual([true, false, true, false]);
      const st = await bs.blockStatusAbove(8 * KiB, 4 * KiB);
      expect(st).toMatchObject({ pnum: 4 * KiB, allocated: true, data: false, zero: true, offset: 8 * KiB, depth: 0 });
      expect(st.file).toBe(bs.file);
    });

    it('create and resize-from-empty allocate the first block, as QEMU does (the map shows it as data)', async () => {
      const p = join(fx.dir, 'c.raw');
      await bdrvCreate(p, { format: 'raw', options: { size: 1 * MiB }, registry });
      expect((await readFile(p)).every((b) => b === 0)).toBe(true);
      const bs = await fx.opened(p, 'raw');
      expect(await runs(bs, true)).toEqual([
        { start: 0, length: 4 * KiB, data: true, zero: false, offset: 0 },
        { start: 4 * KiB, length: 1 * MiB - 4 * KiB, data: false, zero: true, offset: 4 * KiB },
      ]);
      // A small image: one sector.
      const small = join(fx.dir, 'small.raw');
      await bdrvCreate(small, { format: 'raw', options: { size: 1024 }, registry });
      expect((await stat(small)).size).toBe(1024);
      expect((await stat(small)).blocks).toBeGreaterThan(0);
      // Resizing an empty file allocates; resizing a non-empty one does not touch its head.
      const e = join(fx.dir, 'e.raw');
      await writeFile(e, new Uint8Array(0));
      const ebs = await fx.opened(e, 'file');
      await ebs.truncate(64 * KiB);
      expect((await stat(e)).size).toBe(64 * KiB);
      expect(await runs(ebs)).toEqual([
        { start: 0, length: 4 * KiB, data: true, zero: false, offset: 0 },
        { start: 4 * KiB, length: 60 * KiB, data: false, zero: true, offset: 4 * KiB },
      ]);
      await sparseFile(join(fx.dir, 'h.raw'), 8 * KiB, []);
      const hbs = await fx.opened(join(fx.dir, 'h.raw'), 'file');
      await hbs.truncate(64 * KiB);
      expect(await runs(hbs)).toEqual([{ start: 0, length: 64 * KiB, data: false, zero: true, offset: 0 }]);
    });
  });

  it('without the addon (simulated missing build) every byte is data', async () => {
    const p = join(fx.dir, 'fallback.img');
    await sparseFile(p, 4 * MiB, [[1 * MiB, 64 * KiB]]);
    setSeekAddonForTest(null);
    const bs = await fx.opened(p);
    expect(await runs(bs)).toEqual([{ start: 0, length: 4 * MiB, data: true, zero: false, offset: 0 }]);
    const rbs = await fx.opened(p, 'raw');
    expect(await runs(rbs, true)).toEqual([{ start: 0, length: 4 * MiB, data: true, zero: false, offset: 0 }]);
  });

  describe('answers that cannot be trusted are data (with a scripted lseek)', () => {
    /** An addon answering from a script; `calls` records what was asked. */
    function scripted(data: (off: number) => number, hole: (off: number) => number): SeekAddon & { calls: string[] } {
      const calls: string[] = [];
      return {
        calls,
        seekData: (_fd, off) => (calls.push(`data ${off}`), data(off)),
        seekHole: (_fd, off) => (calls.push(`hole ${off}`), hole(off)),
      };
    }

    async function statusWith(a: SeekAddon, offset: number, bytes: number): Promise<object> {
      const p = join(fx.dir, 'x.img');
      await writeFile(p, new Uint8Array(64 * KiB));
      setSeekAddonForTest(a);
      const bs = await fx.opened(p);
      const st = await bs.blockStatus(offset, bytes);
      return { pnum: st.pnum, data: st.data, zero: st.zero, offset: st.offset };
    }

    it('lseek errors (a file system without SEEK_DATA): data', async () => {
      const a = scripted(
        () => {
          throw Object.assign(new Error('EINVAL: lseek: Invalid argument'), { code: 'EINVAL' });
        },
        () => 0,
      );
      expect(await statusWith(a, 4096, 8192)).toEqual({ pnum: 8192, data: true, zero: false, offset: 4096 });
    });

    it('a hole dug between SEEK_DATA and SEEK_HOLE: data, never a guessed hole', async () => {
      const a = scripted(
        (off) => off,
        (off) => off,
      );
      expect(await statusWith(a, 4096, 8192)).toEqual({ pnum: 8192, data: true, zero: false, offset: 4096 });
      expect(a.calls).toEqual(['data 4096', 'hole 4096']);
    });

    it('lseek going backwards: data', async () => {
      const a = scripted(
        (off) => off - 1,
        () => 0,
      );
      expect(await statusWith(a, 4096, 8192)).toEqual({ pnum: 8192, data: true, zero: false, offset: 4096 });
    });

    it('truncated behind our back after SEEK_DATA (SEEK_HOLE finds nothing): zeros', async () => {
      const a = scripted(
        (off) => off,
        () => -1,
      );
      expect(await statusWith(a, 4096, 8192)).toEqual({ pnum: 8192, data: false, zero: true, offset: 4096 });
    });

    it('no data past the offset: zeros for the whole request, without asking SEEK_HOLE', async () => {
      const a = scripted(
        () => -1,
        () => 0,
      );
      expect(await statusWith(a, 4096, 8192)).toEqual({ pnum: 8192, data: false, zero: true, offset: 4096 });
      expect(a.calls).toEqual(['data 4096']);
    });
  });
});
