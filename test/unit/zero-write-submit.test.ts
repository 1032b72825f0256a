// Zero-writes started with a completion callback (the zeroThenPwritevSubmit hook): a file node
// hands the zeroing and the data to the I/O engine as one linked request and ends it once,
// later; qcow2's allocating writes whose COW areas read as zeros (no backing file) take it
// with their L2 entry set from its completion, laid out as the ordinary path lays them out;
// a refused zeroing or a failed request ends the way the ordinary path ends it.
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { bdrvCreate } from '../../src/block/create.js';
import { IOVector } from '../../src/block/iovec.js';
import { BlockDriverState, BlockError } from '../../src/index.js';
import { IoEngine, ioEngine, type EngineDone } from '../../src/drivers/file/engine.js';
import { loadSeekAddon } from '../../src/drivers/file/seek.js';
import { makeTempDir, removeTempDir } from '../interop/qemu.js';
import { aioWriteAt } from './block-helpers.js';

const hasEngine = typeof loadSeekAddon()?.engineStart === 'function';
const CS = 65536;

/** The engine's next zero-write ends with `res` (and `headFailed`), from a later turn, doing nothing. */
function failNextZeroWrite(res: number, headFailed: boolean): void {
  vi.spyOn(IoEngine.prototype, 'zeroThenPwritevThen').mockImplementationOnce((_fd, _m, _zo, _zl, _b, _o, done: EngineDone) => {
    setImmediate(() => done(res, headFailed));
  });
}

/** A fresh qcow2 image without a backing file, its L2 table and refcount block made by a first write. */
async function openImage(img: string, watched = false): Promise<BlockDriverState> {
  await bdrvCreate(img, { format: 'qcow2', options: { size: 16 << 20 } });
  const bs = await BlockDriverState.open(img, { format: 'qcow2' });
  // With a listener on the file's debug events only the ordinary path runs.
  if (watched) bs.file!.events.on('debug', () => undefined);
  expect((await aioWriteAt(bs, 0, new Uint8Array(CS).fill(1))).err).toBeNull();
  return bs;
}

describe.skipIf(!hasEngine || ioEngine()?.canLink !== true)('zero-writes started with a completion callback', () => {
  let dir = '';
  beforeEach(() => {
    dir = makeTempDir('zero-write-submit');
  });
  afterEach(() => {
    vi.restoreAllMocks();
    removeTempDir(dir);
  });

  it('a file node: zeroed, then the data, ended once from a later turn; refused where the ordinary path must run', async () => {
    const path = join(dir, 'f.raw');
    writeFileSync(path, new Uint8Array(2 * CS).fill(0x5a));
    const bs = await BlockDriverState.open(path, { format: 'raw' });
    const file = bs.file!;
    try {
      const end = await new Promise<{ err: BlockError | null; sync: boolean; started: boolean }>((resolve) => {
        let returned = false;
        const started = file.zeroThenPwritevSubmit(CS, 2 * CS, CS + 4096, IOVector.from(new Uint8Array(4096).fill(7)), (err) => resolve({ err, sync: !returned, started }));
        returned = true;
        expect(started).toBe(true);
        expect(file.requests.inFlight).toBe(1);
      });
      expect([end.err, end.sync]).toEqual([null, false]);
      expect(file.requests.inFlight).toBe(0);
      // Grown to the zeroed range's end: the length is known without asking.
      expect(file.lengthNow()).toBe(3 * CS);
      // Data outside the zeroed range, or debug events watched: not taken.
      expect(file.zeroThenPwritevSubmit(CS, CS, 0, IOVector.from(new Uint8Array(4096)), () => undefined)).toBe(false);
      file.events.on('debug', () => undefined);
      expect(file.zeroThenPwritevSubmit(0, CS, 0, IOVector.from(new Uint8Array(4096)), () => undefined)).toBe(false);
      expect(file.requests.inFlight).toBe(0);
    } finally {
      await bs.close();
    }
    const disk = readFileSync(path);
    expect(disk.length).toBe(3 * CS);
    expect(disk.subarray(0, CS).every((b) => b === 0x5a)).toBe(true);
    expect(disk.subarray(CS, 3 * CS).every((b, i) => b === (i >= 4096 && i < 8192 ? 7 : 0))).toBe(true);
  });

  it('qcow2: 4 KiB allocating writes go out as one linked request each, laid out as the ordinary path', async () => {
    const images: Buffer[] = [];
    for (const submit of [true, false]) {
      const img = join(dir, `z-${submit}.qcow2`);
      const bs = await openImage(img, !submit);
      try {
        const linked = vi.spyOn(IoEngine.prototype, 'zeroThenPwritevThen');
        const promised = vi.spyOn(bs.file!, 'zeroThenPwritev');
        // Head and tail, tail only, head only, two at once in one cluster (the second waits
        // for the first, then rewrites in place), and a whole cluster (no COW).
        const at = [3 * CS + 4096, 1 * CS, 5 * CS - 4096, 5 * CS + 8192, 5 * CS + 16384];
        const r = await Promise.all([...at.map((o, i) => aioWriteAt(bs, o, new Uint8Array(4096).fill(0x20 + i))), aioWriteAt(bs, 7 * CS, new Uint8Array(CS).fill(0x30))]);
        expect(r.map((x) => x.err)).toEqual([...at, 0].map(() => null));
        if (submit) {
          expect(linked).toHaveBeenCalledTimes(4);
          expect(promised).not.toHaveBeenCalled();
        }
        expect(bs.requests.inFlight).toBe(0);
        expect(bs.file!.requests.inFlight).toBe(0);
        const back = new Uint8Array(8 * CS);
        await bs.pread(0, back);
        const expected = new Uint8Array(8 * CS).fill(1, 0, CS).fill(0x30, 7 * CS);
        at.forEach((o, i) => expected.fill(0x20 + i, o, o + 4096));
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

  it('qcow2: a zeroing the file system refuses (ENOTSUP) hands the write to the ordinary path', async () => {
    const bs = await openImage(join(dir, 'n.qcow2'));
    try {
      failNextZeroWrite(-95 /* EOPNOTSUPP */, true);
      expect((await aioWriteAt(bs, CS + 4096, new Uint8Array(4096).fill(2))).err).toBeNull();
      // The file now knows it cannot zero so: the next allocation goes the ordinary way at once.
      const linked = vi.spyOn(IoEngine.prototype, 'zeroThenPwritevThen');
      linked.mockClear();
      expect((await aioWriteAt(bs, 2 * CS + 4096, new Uint8Array(4096).fill(3))).err).toBeNull();
      expect(linked).not.toHaveBeenCalled();
      expect(bs.requests.inFlight).toBe(0);
      const back = new Uint8Array(2 * CS);
      await bs.pread(CS, back);
      expect(back.every((b, i) => b === (i >= 4096 && i < 8192 ? 2 : i >= CS + 4096 && i < CS + 8192 ? 3 : 0))).toBe(true);
      const check = await bs.check();
      expect([check.corruptions, check.leaks]).toEqual([0, 0]);
    } finally {
      await bs.close();
    }
  });

  it('qcow2: a file that answers ENOTSUP (data written or not) has the ordinary path zero the cluster and write again', async () => {
    const bs = await openImage(join(dir, 'e.qcow2'));
    try {
      const file = bs.file!;
      // The hook's contract: nothing outside the data changed, the data maybe written.
      vi.spyOn(file, 'zeroThenPwritevSubmit').mockImplementationOnce((_zo, _zb, o, _q, done) => {
        void file.pwrite(o, new Uint8Array(4096).fill(0xee)).then(() => done(new BlockError('ENOTSUP')));
        return true;
      });
      const zeroed = vi.spyOn(file, 'zeroThenPwritev');
      expect((await aioWriteAt(bs, CS + 8192, new Uint8Array(4096).fill(4))).err).toBeNull();
      expect(zeroed).toHaveBeenCalledTimes(1);
      expect(bs.requests.inFlight).toBe(0);
      const back = new Uint8Array(CS);
      await bs.pread(CS, back);
      expect(back.every((b, i) => b === (i >= 8192 && i < 12288 ? 4 : 0))).toBe(true);
      const check = await bs.check();
      expect([check.corruptions, check.leaks]).toEqual([0, 0]);
    } finally {
      await bs.close();
    }
  });

  it('qcow2: a failed zero-write reports its error, links nothing and gives its cluster back', async () => {
    const bs = await openImage(join(dir, 'f.qcow2'));
    try {
      failNextZeroWrite(-28 /* ENOSPC */, false);
      expect((await aioWriteAt(bs, CS + 4096, new Uint8Array(4096).fill(2))).err?.code).toBe('ENOSPC');
      expect(bs.requests.inFlight).toBe(0);
      expect(bs.file!.requests.inFlight).toBe(0);
      const back = new Uint8Array(CS);
      await bs.pread(CS, back);
      expect(back.every((b) => b === 0)).toBe(true);
      const check = await bs.check();
      expect([check.corruptions, check.leaks]).toEqual([0, 0]);
      // The image still takes such writes afterwards.
      expect((await aioWriteAt(bs, CS + 4096, new Uint8Array(4096).fill(3))).err).toBeNull();
      await bs.pread(CS, back);
      expect(back.every((b, i) => b === (i >= 4096 && i < 8192 ? 3 : 0))).toBe(true);
    } finally {
      await bs.close();
    }
  });
});
