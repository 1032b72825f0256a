// Writes started with a completion callback (the pwritevSubmit hook, block/io/write-submit.ts):
// a raw AIO write and a file node's pwritev reach the I/O engine through pwritevThen, land,
// and end exactly once; a failed or short write ends the way coPwritev ends it; what the hook
// does not take (FUA, a node whose events are watched) goes the ordinary way.
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { bdrvCreate } from '../../src/block/create.js';
import { IOVector } from '../../src/block/iovec.js';
import { BlockDriverState, type BlockError } from '../../src/index.js';
import { IoEngine, ioEngine, type EngineDone } from '../../src/drivers/file/engine.js';
import { loadSeekAddon } from '../../src/drivers/file/seek.js';
import { makeTempDir, removeTempDir } from '../interop/qemu.js';
import { aioWriteAt } from './block-helpers.js';

const hasEngine = typeof loadSeekAddon()?.engineStart === 'function';

/** The engine's next write fails with ENOSPC, from a later turn. */
function failNextEngineWrite(): void {
  vi.spyOn(IoEngine.prototype, 'pwritevThen').mockImplementationOnce((_fd, _b, _o, done: EngineDone) => {
    setImmediate(() => done(-28 /* ENOSPC */));
  });
}

/**
 * A qcow2 image over two clusters of 0x3c in a raw backing file, its L2 table and refcount
 * block made by a first COW write (the ordinary path) into cluster 0.
 */
async function openCowImage(dir: string): Promise<BlockDriverState> {
  const backing = join(dir, 'back.raw');
  writeFileSync(backing, new Uint8Array(2 * 65536).fill(0x3c));
  const img = join(dir, 'img.qcow2');
  await bdrvCreate(img, { format: 'qcow2', options: { size: 16 << 20, backingFile: backing, backingFmt: 'raw' } });
  const bs = await BlockDriverState.open(img, { format: 'qcow2' });
  expect((await aioWriteAt(bs, 0, new Uint8Array(4096).fill(1))).err).toBeNull();
  return bs;
}

describe.skipIf(!hasEngine)('writes started with a completion callback', () => {
  let dir = '';
  let path = '';
  beforeEach(() => {
    dir = makeTempDir('write-submit');
    path = join(dir, 'img.raw');
    writeFileSync(path, new Uint8Array(1 << 20));
  });
  afterEach(() => {
    vi.restoreAllMocks();
    removeTempDir(dir);
  });

  it('a raw AIO write and a file pwritev each go out as one pwritevThen, no promise write', async () => {
    const then = vi.spyOn(IoEngine.prototype, 'pwritevThen');
    const promised = vi.spyOn(IoEngine.prototype, 'pwritev');
    const bs = await BlockDriverState.open(path, { format: 'raw' });
    try {
      const gen = bs.writeGen;
      const r = await aioWriteAt(bs, 65536, new Uint8Array(65536).fill(0x5a));
      expect(r).toEqual({ err: null, sync: false });
      await bs.file!.pwritev(4096, IOVector.from(new Uint8Array(4096).fill(0x6b)));
      expect(then).toHaveBeenCalledTimes(2);
      expect(promised).not.toHaveBeenCalled();
      // Counted as written (flush generation) and no longer in flight on either node.
      expect(bs.writeGen).toBe(gen + 1);
      expect(bs.requests.inFlight).toBe(0);
      expect(bs.file!.requests.inFlight).toBe(0);
    } finally {
      await bs.close();
    }
    const f = readFileSync(path);
    expect(f.subarray(65536, 131072).every((b) => b === 0x5a)).toBe(true);
    expect(f.subarray(4096, 8192).every((b) => b === 0x6b)).toBe(true);
  });

  it('a failed write reports its error through the callback once, and nothing stays in flight', async () => {
    const bs = await BlockDriverState.open(path, { format: 'raw' });
    try {
      // The engine answers EIO (-5) from a later turn, as a completion would.
      vi.spyOn(IoEngine.prototype, 'pwritevThen').mockImplementation((_fd, _b, _o, done: EngineDone) => {
        setImmediate(() => done(-5));
      });
      const cb = vi.fn();
      bs.aioWritev(0 + 128, IOVector.from(new Uint8Array(4096)), 8, cb);
      await vi.waitFor(() => expect(cb).toHaveBeenCalled());
      await new Promise((r) => setImmediate(r));
      expect(cb).toHaveBeenCalledTimes(1);
      expect((cb.mock.calls[0][0] as BlockError).code).toBe('EIO');
      expect(bs.requests.inFlight).toBe(0);
      expect(bs.file!.requests.inFlight).toBe(0);
    } finally {
      vi.restoreAllMocks();
      await bs.close();
    }
  });

  it('a short write is finished by the ordinary path: every byte lands', async () => {
    const bs = await BlockDriverState.open(path, { format: 'raw' });
    try {
      const engine = ioEngine()!;
      const real = engine.pwritevThen.bind(engine);
      // The first write of the request writes only its first 1000 bytes.
      vi.spyOn(engine, 'pwritevThen').mockImplementationOnce((fd, bufs, offset, done) => {
        real(fd, (bufs instanceof Uint8Array ? bufs : bufs[0]).subarray(0, 1000), offset, done);
      });
      const data = new Uint8Array(8192).map((_, i) => (i * 13) & 0xff);
      expect(await aioWriteAt(bs, 8192, data)).toEqual({ err: null, sync: false });
    } finally {
      await bs.close();
    }
    expect(Buffer.from(readFileSync(path).subarray(8192, 16384)).equals(Buffer.from(new Uint8Array(8192).map((_, i) => (i * 13) & 0xff)))).toBe(true);
  });

  it('FUA writes and writes whose events are watched take the ordinary path', async () => {
    const then = vi.spyOn(IoEngine.prototype, 'pwritevThen');
    const bs = await BlockDriverState.open(path, { format: 'raw' });
    try {
      // At the file node itself (a raw node above it would emulate FUA with a flush).
      await bs.file!.pwritev(4096, IOVector.from(new Uint8Array(512).fill(1)), { fua: true });
      expect(then).not.toHaveBeenCalled();
      expect(bs.file!.pwritevSubmit(4096, IOVector.from(new Uint8Array(512)), () => undefined, { fua: true })).toBe(false);
      expect(bs.file!.requests.inFlight).toBe(0);
    } finally {
      await bs.close();
    }
    expect(readFileSync(path)[4096]).toBe(1);
  });

  it('a read-only node or a request past the end is not taken (the ordinary path reports it)', async () => {
    const bs = await BlockDriverState.open(path, { format: 'raw', readOnly: true });
    try {
      expect(bs.file!.pwritevSubmit(0, IOVector.from(new Uint8Array(512)), () => undefined)).toBe(false);
      expect(bs.file!.requests.inFlight).toBe(0);
      expect(ioEngine()).not.toBeNull();
    } finally {
      await bs.close();
    }
  });

  it('qcow2: allocating writes of whole clusters go out by callback and land as the ordinary path lays them out', async () => {
    const images: Buffer[] = [];
    for (const submit of [true, false]) {
      const img = join(dir, `alloc-${submit}.qcow2`);
      await bdrvCreate(img, { format: 'qcow2', options: { size: 16 << 20 } });
      const bs = await BlockDriverState.open(img, { format: 'qcow2' });
      try {
        // Without a listener on the file's debug events only the ordinary path runs.
        if (!submit) bs.file!.events.on('debug', () => undefined);
        // The first allocation makes the L2 table and refcount block (the ordinary path).
        expect((await aioWriteAt(bs, 0, new Uint8Array(65536).fill(1))).err).toBeNull();
        const then = vi.spyOn(IoEngine.prototype, 'pwritevThen');
        const promised = vi.spyOn(bs.file!, 'pwritev');
        const sizes = [65536, 131072, 65536, 65536];
        const at = [3, 1, 6, 5].map((c) => c * 65536);
        const r = await Promise.all(at.map((o, i) => aioWriteAt(bs, o, new Uint8Array(sizes[i]).fill(0x10 + i))));
        expect(r.map((x) => x.err)).toEqual([null, null, null, null]);
        if (submit) {
          // One file request per guest write, the data only: the entries stay in the cache.
          expect(then).toHaveBeenCalledTimes(4);
          expect(promised).not.toHaveBeenCalled();
        }
        expect(bs.requests.inFlight).toBe(0);
        expect(bs.file!.requests.inFlight).toBe(0);
        const back = new Uint8Array(8 * 65536);
        await bs.pread(0, back);
        expect([0, 1, 2, 3, 5, 6, 7].map((c) => back[c * 65536 + 100])).toEqual([1, 0x11, 0x11, 0x10, 0x13, 0x12, 0]);
        const check = await bs.check();
        expect([check.corruptions, check.leaks]).toEqual([0, 0]);
      } finally {
        await bs.close();
      }
      images.push(readFileSync(img));
    }
    expect(Buffer.compare(images[0], images[1])).toBe(0);
  });

  it('qcow2: COW writes over a cached raw backing file go out as one callback write each, laid out as the ordinary path', async () => {
    const backing = join(dir, 'back.raw');
    // Five clusters and 4 KiB of backing data, the last two clusters zeros (data all the same).
    const backData = new Uint8Array(5 * 65536 + 4096);
    for (let i = 0; i < 3 * 65536; i++) backData[i] = (i >> 9) & 0xff;
    writeFileSync(backing, backData);
    const images: Buffer[] = [];
    for (const submit of [true, false]) {
      const img = join(dir, `cow-${submit}.qcow2`);
      await bdrvCreate(img, { format: 'qcow2', options: { size: 16 << 20, backingFile: backing, backingFmt: 'raw' } });
      const bs = await BlockDriverState.open(img, { format: 'qcow2' });
      try {
        if (!submit) bs.file!.events.on('debug', () => undefined);
        // The first allocation makes the L2 table and refcount block (the ordinary path).
        expect((await aioWriteAt(bs, 7 * 65536, new Uint8Array(4096).fill(1))).err).toBeNull();
        const then = vi.spyOn(IoEngine.prototype, 'pwritevThen');
        const promised = vi.spyOn(bs.file!, 'pwritev');
        // Tail only, head and tail, head only, over zeros, a tail past the backing file's end
        // (read as zeros). The overlap of the first waits for it, then rewrites in place.
        const at = [0, 65536 + 8192, 3 * 65536 - 4096, 4 * 65536 + 512, 5 * 65536 + 4096];
        const r = await Promise.all([...at, 4096].map((o, i) => aioWriteAt(bs, o, new Uint8Array(4096).fill(0x20 + i))));
        expect(r.map((x) => x.err)).toEqual([...at, 4096].map(() => null));
        if (submit) {
          // One file request per COW write (head, data and tail together), without a promise;
          // the rewrite that waited for an allocation takes the ordinary path.
          expect(then.mock.calls.slice(0, at.length).map((c) => c[1].length)).toEqual([2, 3, 2, 3, 3]);
          expect(promised.mock.calls.map((c) => c[1].size)).toEqual([4096]);
        }
        expect(bs.requests.inFlight).toBe(0);
        const back = new Uint8Array(8 * 65536);
        await bs.pread(0, back);
        const expected = new Uint8Array(8 * 65536);
        expected.set(backData);
        [...at, 4096].forEach((o, i) => expected.fill(0x20 + i, o, o + 4096));
        expected.fill(1, 7 * 65536, 7 * 65536 + 4096);
        expect(Buffer.compare(back, expected)).toBe(0);
        const check = await bs.check();
        expect([check.corruptions, check.leaks]).toEqual([0, 0]);
      } finally {
        await bs.close();
        vi.restoreAllMocks();
      }
      images.push(readFileSync(img));
    }
    expect(Buffer.compare(images[0], images[1])).toBe(0);
  });

  it('qcow2: a failed COW write links nothing and gives its cluster back', async () => {
    const bs = await openCowImage(dir);
    try {
      failNextEngineWrite();
      expect((await aioWriteAt(bs, 65536 + 4096, new Uint8Array(4096).fill(2))).err?.code).toBe('ENOSPC');
      expect(bs.requests.inFlight).toBe(0);
      const back = new Uint8Array(65536);
      await bs.pread(65536, back);
      expect(back.every((b) => b === 0x3c)).toBe(true);
      const check = await bs.check();
      expect([check.corruptions, check.leaks]).toEqual([0, 0]);
      // The image still takes COW writes afterwards.
      expect((await aioWriteAt(bs, 65536 + 4096, new Uint8Array(4096).fill(3))).err).toBeNull();
      await bs.pread(65536, back);
      expect(back.every((b, i) => b === (i >= 4096 && i < 8192 ? 3 : 0x3c))).toBe(true);
    } finally {
      await bs.close();
    }
  });

  it('qcow2: a COW read that throws once it is mapped hands the write to the ordinary path', async () => {
    const bs = await openCowImage(dir);
    try {
      // Thrown past the hook, the write would be started again and wait for itself.
      vi.spyOn(bs.backing!, 'preadvNow').mockImplementationOnce(() => {
        throw new Error('read now');
      });
      expect((await aioWriteAt(bs, 65536 + 4096, new Uint8Array(4096).fill(2))).err).toBeNull();
      expect(bs.requests.inFlight).toBe(0);
      const back = new Uint8Array(65536);
      await bs.pread(65536, back);
      expect(back.every((b, i) => b === (i >= 4096 && i < 8192 ? 2 : 0x3c))).toBe(true);
      const check = await bs.check();
      expect([check.corruptions, check.leaks]).toEqual([0, 0]);
    } finally {
      await bs.close();
    }
  }, 10_000);

  it('qcow2: a failed allocating write reports its error, links nothing and gives its clusters back', async () => {
    const img = join(dir, 'img.qcow2');
    await bdrvCreate(img, { format: 'qcow2', options: { size: 16 << 20 } });
    const bs = await BlockDriverState.open(img, { format: 'qcow2' });
    try {
      expect((await aioWriteAt(bs, 0, new Uint8Array(65536).fill(1))).err).toBeNull();
      failNextEngineWrite();
      expect((await aioWriteAt(bs, 65536, new Uint8Array(65536).fill(2))).err?.code).toBe('ENOSPC');
      expect(bs.requests.inFlight).toBe(0);
      expect(bs.file!.requests.inFlight).toBe(0);
      const back = new Uint8Array(65536);
      await bs.pread(65536, back);
      expect(back.every((b) => b === 0)).toBe(true);
      const check = await bs.check();
      expect([check.corruptions, check.leaks]).toEqual([0, 0]);
      // The image still takes allocating writes afterwards.
      expect((await aioWriteAt(bs, 65536, new Uint8Array(65536).fill(3))).err).toBeNull();
      await bs.pread(65536, back);
      expect(back.every((b) => b === 3)).toBe(true);
    } finally {
      await bs.close();
    }
  });

  for (const format of ['qed', 'qcow2'] as const) {
    it(`${format}: a rewrite of allocated clusters is one pwritevThen, ended by its callback`, async () => {
      const img = join(dir, `img.${format}`);
      await bdrvCreate(img, { format, options: { size: 16 << 20 } });
      const bs = await BlockDriverState.open(img, { format });
      try {
        // Allocating first (the ordinary path), then rewriting the same cluster.
        expect(await aioWriteAt(bs, 65536, new Uint8Array(65536).fill(1))).toEqual({ err: null, sync: false });
        const then = vi.spyOn(IoEngine.prototype, 'pwritevThen');
        // The driver hands the data write to its file with a callback, not through pwritev.
        const submitted = vi.spyOn(bs.file!, 'pwritevSubmit');
        const promised = vi.spyOn(bs.file!, 'pwritev');
        expect(await aioWriteAt(bs, 65536, new Uint8Array(65536).fill(2))).toEqual({ err: null, sync: false });
        expect(then).toHaveBeenCalledTimes(1);
        expect(submitted).toHaveBeenCalledTimes(1);
        expect(promised).not.toHaveBeenCalled();
        expect(bs.requests.inFlight).toBe(0);
        expect(bs.file!.requests.inFlight).toBe(0);
        // Two rewrites at once, and a read back through the image.
        const both = await Promise.all([aioWriteAt(bs, 65536, new Uint8Array(4096).fill(3)), aioWriteAt(bs, 69632, new Uint8Array(4096).fill(4))]);
        expect(both.map((r) => r.err)).toEqual([null, null]);
        const back = new Uint8Array(65536);
        await bs.pread(65536, back);
        expect(back.subarray(0, 4096).every((b) => b === 3)).toBe(true);
        expect(back.subarray(4096, 8192).every((b) => b === 4)).toBe(true);
        expect(back.subarray(8192).every((b) => b === 2)).toBe(true);
      } finally {
        await bs.close();
      }
    });

    it(`${format}: a failed rewrite reports the error and leaves nothing in flight`, async () => {
      const img = join(dir, `img.${format}`);
      await bdrvCreate(img, { format, options: { size: 16 << 20 } });
      const bs = await BlockDriverState.open(img, { format });
      try {
        expect((await aioWriteAt(bs, 0, new Uint8Array(65536).fill(1))).err).toBeNull();
        failNextEngineWrite();
        expect((await aioWriteAt(bs, 0, new Uint8Array(4096).fill(2))).err?.code).toBe('ENOSPC');
        expect(bs.requests.inFlight).toBe(0);
        expect(bs.file!.requests.inFlight).toBe(0);
        // The image still takes writes afterwards.
        expect((await aioWriteAt(bs, 0, new Uint8Array(4096).fill(3))).err).toBeNull();
      } finally {
        await bs.close();
      }
    });
  }
});
