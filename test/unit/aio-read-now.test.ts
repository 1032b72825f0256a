// Reads served inside the call (a cached table, data in the page cache) complete their AIOCB at
// once (AIO_DONE_NOW): the callback runs one bottom half after the request starts, with no
// coroutine promise in between, through the generic AIOCB and the format's preadvNow hook.
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { bdrvCreate } from '../../src/block/create.js';
import { IOVector } from '../../src/block/iovec.js';
import { BlockDriverState } from '../../src/index.js';
import { seekAddon } from '../../src/drivers/file/seek.js';
import { makeTempDir, removeTempDir } from '../interop/qemu.js';

const CLUSTER = 65536;

/** Microtask turns from submitting a read of `buf` at `offset` until its callback has run. */
async function turns(bs: BlockDriverState, offset: number, buf: Uint8Array): Promise<number> {
  let done = false;
  let error: unknown = null;
  bs.aioReadv(offset / 512, IOVector.from(buf), buf.length / 512, (e) => {
    error = e;
    done = true;
  });
  let n = 0;
  for (; !done && n < 50; n++) await Promise.resolve();
  if (error) throw error as Error;
  return n;
}

// The page cache answers only through the native addon (preadv2 with RWF_NOWAIT).
describe.skipIf(seekAddon() === null)('AIO reads served inside the call', () => {
  let dir: string;
  beforeEach(() => {
    dir = makeTempDir('aio-read-now');
  });
  afterEach(() => {
    removeTempDir(dir);
  });

  for (const format of ['qed', 'qcow2'] as const) {
    it(`${format}: a read from the page cache completes at once`, async () => {
      const path = join(dir, `img.${format}`);
      await bdrvCreate(path, { format, options: { size: 16 << 20 } });
      const bs = await BlockDriverState.open(path, { format });
      try {
        await bs.pwrite(0, new Uint8Array(CLUSTER).fill(7));
        const data = new Uint8Array(4096);
        // The bottom half that starts the request (the read and completion in it), then the
        // one that runs the callback.
        expect(await turns(bs, 4096, data)).toBe(2);
        expect(data.every((b) => b === 7)).toBe(true);
        // Unallocated (QED's request loop fills its zeros): whatever the path, the same bytes.
        const zeros = new Uint8Array(4096).fill(1);
        expect(await turns(bs, 4 * CLUSTER, zeros)).toBeGreaterThanOrEqual(2);
        expect(zeros.every((b) => b === 0)).toBe(true);
        // The node's hook: allocated data now; unallocated is the request path's to fill.
        const now = new Uint8Array(8192);
        expect(bs.preadvNow(CLUSTER - 4096, IOVector.from(now))).toBe(false);
        expect(bs.preadvNow(8192, IOVector.from(now))).toBe(true);
        expect(now.every((b) => b === 7)).toBe(true);
        expect(bs.preadvNow(4 * CLUSTER, IOVector.from(now))).toBe(format === 'qcow2');
      } finally {
        await bs.close();
      }
    });
  }
});
