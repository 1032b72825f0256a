// The synchronous read path (BlockDriver.preadvNow, BlockDriverState.preadvNow): used only for
// requests the async fast path would take, never for anything that must wait, fail or pad;
// raw passes it through to its file; the file driver answers from the page cache.
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { BlockDriver } from '../../src/block/driver.js';
import { IOVector } from '../../src/block/iovec.js';
import { BlockDriverState } from '../../src/block/node.js';
import { BlockDriverRegistry } from '../../src/block/registry.js';
import { fileDriver } from '../../src/drivers/file/index.js';
import { seekAddon } from '../../src/drivers/file/seek.js';
import { rawDriver } from '../../src/drivers/raw/index.js';
import { makeTempDir, removeTempDir } from '../interop/qemu.js';
import { bytePattern, expectBytes } from './test-bytes.js';

const SIZE = 64 * 1024;
const pattern = bytePattern(3, 7, 11);

/** A protocol over a byte array whose preadvNow says yes unless told otherwise; counts calls. */
function syncProtocol(store: Uint8Array, counts: { now: number; co: number }, answer = { now: true }): BlockDriver {
  return {
    formatName: 'syncproto',
    protocolName: 'syncproto',
    isProtocol: true,
    requestAlignment: 512,
    open: () => Promise.resolve(),
    preadvNow(_bs, offset, bytes, qiov) {
      counts.now++;
      if (!answer.now) return false;
      qiov.copyFrom(store.subarray(offset, offset + bytes));
      return true;
    },
    coPreadv(_bs, offset, bytes, qiov) {
      counts.co++;
      qiov.copyFrom(store.subarray(offset, offset + bytes));
      return Promise.resolve();
    },
    coPwritev(_bs, offset, bytes, qiov) {
      qiov.copyTo(store.subarray(offset, offset + bytes));
      return new Promise<void>((resolve) => setTimeout(resolve, 5));
    },
    getLength: () => store.length,
  };
}

describe('preadvNow', () => {
  it('takes aligned in-bounds reads of an open node; preadv uses it and skips coPreadv', async () => {
    const store = pattern(SIZE, 1);
    const counts = { now: 0, co: 0 };
    const registry = new BlockDriverRegistry().register(syncProtocol(store, counts));
    const bs = await BlockDriverState.open('x', { format: 'syncproto', registry });
    const buf = new Uint8Array(4096);
    expect(bs.preadvNow(8192, IOVector.from(buf))).toBe(true);
    expectBytes(buf, store.subarray(8192, 8192 + 4096));
    await bs.pread(0, buf);
    expectBytes(buf, store.subarray(0, 4096));
    expect(counts).toEqual({ now: 2, co: 0 });
    // A driver that says no: preadv reads through coPreadv.
    const no = { now: 0, co: 0 };
    const reg2 = new BlockDriverRegistry().register(syncProtocol(store, no, { now: false }));
    const bs2 = await BlockDriverState.open('y', { format: 'syncproto', registry: reg2 });
    await bs2.pread(512, buf);
    expectBytes(buf, store.subarray(512, 512 + 4096));
    expect(no).toEqual({ now: 1, co: 1 });
    await bs.close();
    await bs2.close();
  });

  it('declines what must wait, pad or fail, without calling the driver', async () => {
    const store = pattern(SIZE, 2);
    const counts = { now: 0, co: 0 };
    const registry = new BlockDriverRegistry().register(syncProtocol(store, counts));
    const bs = await BlockDriverState.open('x', { format: 'syncproto', registry });
    const v = (n: number): IOVector => IOVector.from(new Uint8Array(n));
    expect(bs.preadvNow(100, v(512))).toBe(false); // unaligned: read-modify padding
    expect(bs.preadvNow(0, v(100))).toBe(false);
    expect(bs.preadvNow(SIZE - 512, v(1024))).toBe(false); // past the end: EIO is preadv's
    expect(bs.preadvNow(-512, v(512))).toBe(false);
    expect(bs.preadvNow(0.5, v(512))).toBe(false);
    // An unaligned write in flight read-modify-writes (serialising): overlapping reads wait.
    const w = bs.pwrite(1000, new Uint8Array(100).fill(9));
    await new Promise<void>((resolve) => setTimeout(resolve, 1));
    expect(bs.preadvNow(512, v(1024))).toBe(false);
    expect(bs.preadvNow(8192, v(512))).toBe(true); // not overlapping
    await w;
    expect(bs.preadvNow(512, v(1024))).toBe(true);
    await bs.close();
    expect(bs.preadvNow(0, v(512))).toBe(false); // closed: EBADF is preadv's
    expect(counts.now).toBe(2);
  });

  it('is not used for copy-on-read opens', async () => {
    const store = pattern(SIZE, 3);
    const counts = { now: 0, co: 0 };
    const registry = new BlockDriverRegistry().register(syncProtocol(store, counts));
    const bs = await BlockDriverState.open('x', { format: 'syncproto', registry, copyOnRead: true });
    expect(bs.preadvNow(0, IOVector.from(new Uint8Array(512)))).toBe(false);
    expect(counts.now).toBe(0);
    await bs.close();
  });

  describe('over host files', () => {
    let dir: string;
    beforeEach(() => {
      dir = makeTempDir('preadv-now');
    });
    afterEach(() => removeTempDir(dir));

    it('file answers from the page cache (up to 256 KiB) and raw passes it through', async () => {
      if (seekAddon()?.preadNowait === undefined) return expect.fail('native addon not built (npm run install)');
      const p = join(dir, 'r.img');
      const data = pattern(1 << 20, 4);
      await writeFile(p, data);
      const registry = new BlockDriverRegistry().register(fileDriver).register(rawDriver);
      const raw = await BlockDriverState.open(p, { format: 'raw', registry, readOnly: true });
      const buf = new Uint8Array(256 * 1024);
      // Just written: cached (unless the host has no RWF_NOWAIT reads at all).
      const ok = raw.preadvNow(4096, IOVector.from(buf));
      expect(ok).toBe(raw.file!.preadvNow(0, IOVector.from(new Uint8Array(512))));
      if (ok) expectBytes(buf, data.subarray(4096, 4096 + buf.length));
      expect(raw.preadvNow(0, IOVector.from(new Uint8Array(256 * 1024 + 512)))).toBe(false);
      await raw.close();
    });
  });
});
