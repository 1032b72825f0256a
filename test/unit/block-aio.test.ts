import { describe, expect, it } from 'vitest';
import {
  AIOPool,
  BlockAIOCB,
  BlockDriverRegistry,
  BlockDriverState,
  BlockError,
  IOVector,
  memDriver,
  memStoreRead,
  type BlockDriver,
  type BlockErrorCode,
} from '../../src/index.js';
import { rwAioPool } from '../../src/block/io/aio.js';
import { makeMem } from './block-helpers.js';

/** A pass-through format whose writes wait for the test to open a gate. */
function gatedDriver(): { drv: BlockDriver; started: () => number; open: () => void } {
  let started = 0;
  let release: (() => void) | null = null;
  let gate = new Promise<void>((r) => (release = r));
  const drv: BlockDriver = {
    formatName: 'gated',
    async coPreadv(bs, offset, _bytes, qiov) {
      await bs.file!.preadv(offset, qiov);
    },
    async coPwritev(bs, offset, _bytes, qiov, flags) {
      started++;
      await gate;
      await bs.file!.pwritev(offset, qiov, flags);
    },
    getLength: (bs) => bs.file!.getLength(),
  };
  return {
    drv,
    started: () => started,
    open: () => {
      release?.();
      gate = Promise.resolve();
    },
  };
}

async function openGated(size = 8192) {
  const g = gatedDriver();
  const name = makeMem(size);
  const registry = new BlockDriverRegistry().register(memDriver).register(g.drv);
  const bs = await BlockDriverState.open(name, { format: 'gated', registry });
  return { ...g, bs, name, registry };
}

function sectors(n: number, fill = 0): IOVector {
  return IOVector.from(new Uint8Array(n * 512).fill(fill));
}

/** Submit and await the callback's error (null on success). */
function run(submit: (cb: (err: BlockError | null) => void) => BlockAIOCB): Promise<BlockError | null> {
  return new Promise((resolve) => {
    submit((err) => resolve(err));
  });
}

async function ticks(n = 10): Promise<void> {
  for (let i = 0; i < n; i++) await Promise.resolve();
}

describe('AIO on BlockDriverState', () => {
  it('completes reads and writes through callbacks, never synchronously', async () => {
    const { bs, name, open } = await openGated();
    open();
    let returned = false;
    let calls = 0;
    const err = await run((cb) => {
      const acb = bs.aioWritev(2, sectors(2, 7), 2, (e) => {
        expect(returned).toBe(true);
        calls++;
        cb(e);
      });
      returned = true;
      return acb;
    });
    expect(err).toBeNull();
    expect(calls).toBe(1);
    expect(memStoreRead(name).subarray(1024, 2048).every((b) => b === 7)).toBe(true);
    const buf = sectors(1);
    expect(await run((cb) => bs.aioReadv(2, buf, 1, cb))).toBeNull();
    expect(buf.toBuffer().every((b) => b === 7)).toBe(true);
    expect(await run((cb) => bs.aioFlush(cb))).toBeNull();
    await bs.close();
  });

  it('reports refused requests through the callback in a later microtask, never by throwing', async () => {
    const { bs, open } = await openGated(4096);
    open();
    const cases: [string, (cb: (e: BlockError | null) => void) => BlockAIOCB, BlockErrorCode][] = [
      ['negative sector', (cb) => bs.aioReadv(-1, sectors(1), 1, cb), 'EINVAL'],
      ['fractional count', (cb) => bs.aioReadv(0, sectors(1), 0.5, cb), 'EINVAL'],
      ['vector size mismatch', (cb) => bs.aioWritev(0, sectors(2), 1, cb), 'EINVAL'],
      ['past the end', (cb) => bs.aioReadv(7, sectors(2), 2, cb), 'EIO'],
    ];
    for (const [what, submit, code] of cases) {
      let sync = true;
      const p = run((cb) =>
        submit((e) => {
          expect(sync, what).toBe(false);
          cb(e);
        }),
      );
      sync = false;
      const err = await p;
      expect(err?.code, what).toBe(code);
    }
    await bs.close();
    let sync = true;
    const p = run((cb) =>
      bs.aioReadv(0, sectors(1), 1, (e) => {
        expect(sync).toBe(false);
        cb(e);
      }),
    );
    sync = false;
    expect((await p)?.code).toBe('EBADF');
    expect((await run((cb) => bs.aioFlush(cb)))?.code).toBe('EBADF');
  });

  it('refuses AIO writes on a read-only node with EACCES', async () => {
    const name = makeMem(4096);
    const registry = new BlockDriverRegistry().register(memDriver);
    const bs = await BlockDriverState.open(name, { format: 'mem', registry, readOnly: true });
    expect((await run((cb) => bs.aioWritev(0, sectors(1, 1), 1, cb)))?.code).toBe('EACCES');
    expect(memStoreRead(name).every((b) => b === 0)).toBe(true);
    await bs.close();
  });

  it('recycles AIOCBs from the pool: created stays flat, generation grows', async () => {
    const { bs, open } = await openGated();
    open();
    expect(await run((cb) => bs.aioReadv(0, sectors(1), 1, cb))).toBeNull();
    const created = rwAioPool.created;
    const seen = new Set<BlockAIOCB>();
    let lastGen = -1;
    for (let i = 0; i < 20; i++) {
      let acb!: BlockAIOCB;
      await run((cb) => (acb = bs.aioReadv(i % 16, sectors(1), 1, cb)));
      seen.add(acb);
      expect(acb.inFlight).toBe(false);
      expect(acb.generation).toBeGreaterThan(lastGen);
      lastGen = acb.generation;
    }
    expect(rwAioPool.created).toBe(created);
    expect(seen.size).toBeLessThanOrEqual(2);
    await bs.close();
  });

  it('a request is counted out before its callback runs, and its AIOCB keeps no buffers after', async () => {
    const { bs, open } = await openGated();
    open();
    const counts: number[] = [];
    let acb!: BlockAIOCB;
    const qiov = sectors(1, 7);
    const err = await run((cb) => {
      acb = bs.aioWritev(3, qiov, 1, (e) => {
        counts.push(bs.requests.inFlight);
        cb(e);
      });
      counts.push(bs.requests.inFlight);
      return acb;
    });
    expect(err).toBeNull();
    expect(counts).toEqual([1, 0]);
    expect((acb as BlockAIOCB & { qiov: IOVector | null }).qiov).toBeNull();
    await bs.close();
  });

  it('cancel before the request starts: ECANCELED, callback exactly once, nothing written', async () => {
    const { bs, name, started, open } = await openGated();
    open();
    let calls = 0;
    let error: BlockError | null = null;
    const acb = bs.aioWritev(0, sectors(1, 9), 1, (e) => {
      calls++;
      error = e;
    });
    await acb.cancel();
    expect(calls).toBe(1);
    expect((error as BlockError | null)?.code).toBe('ECANCELED');
    expect(started()).toBe(0);
    await ticks();
    expect(calls).toBe(1);
    expect(memStoreRead(name).every((b) => b === 0)).toBe(true);
    // The node is idle again: close does not hang.
    await bs.close();
  });

  it('cancel while running waits for the request to finish', async () => {
    const { bs, name, started, open } = await openGated();
    let calls = 0;
    let error: BlockError | null | undefined;
    const acb = bs.aioWritev(4, sectors(1, 5), 1, (e) => {
      calls++;
      error = e;
    });
    while (started() === 0) await ticks(1);
    let cancelled = false;
    const c = acb.cancel().then(() => (cancelled = true));
    await ticks();
    expect(cancelled).toBe(false);
    expect(calls).toBe(0);
    open();
    await c;
    expect(calls).toBe(1);
    expect(error).toBeNull();
    expect(memStoreRead(name).subarray(2048, 2560).every((b) => b === 5)).toBe(true);
    await bs.close();
  });

  it('close waits for AIO submitted just before it', async () => {
    const { bs, name, open } = await openGated();
    const results: (BlockError | null)[] = [];
    for (let i = 0; i < 4; i++) bs.aioWritev(i, sectors(1, i + 1), 1, (e) => results.push(e));
    let closed = false;
    const c = bs.close().then(() => (closed = true));
    await ticks(20);
    expect(closed).toBe(false);
    open();
    await c;
    expect(results).toEqual([null, null, null, null]);
    const data = memStoreRead(name);
    for (let i = 0; i < 4; i++) expect(data[i * 512]).toBe(i + 1);
  });

  it("dispatches to a driver's native AIO hooks and its pool; close waits for them", async () => {
    const pool = new AIOPool<BlockAIOCB>((p) => new BlockAIOCB(p));
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const native: BlockDriver = {
      formatName: 'native',
      getLength: () => 8192,
      aioReadv(bs, _sectorNum, qiov, _nb, cb) {
        return pool.get(bs, cb).start(async () => {
          await gate;
          qiov.memset(0, 0x5a);
        });
      },
    };
    const name = makeMem(8192);
    const registry = new BlockDriverRegistry().register(memDriver).register(native);
    const bs = await BlockDriverState.open(name, { format: 'native', registry });
    const buf = sectors(2);
    let err: BlockError | null | undefined;
    const acb = bs.aioReadv(0, buf, 2, (e) => (err = e));
    expect(acb.pool).toBe(pool);
    expect(pool.created).toBe(1);
    let closed = false;
    const c = bs.close().then(() => (closed = true));
    await ticks(20);
    expect(closed).toBe(false);
    release();
    await c;
    expect(err).toBeNull();
    expect(buf.toBuffer().every((b) => b === 0x5a)).toBe(true);
  });
});
