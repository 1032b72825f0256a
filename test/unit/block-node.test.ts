import { describe, expect, it } from 'vitest';
import {
  BlockDriverState,
  BlockError,
  IOVector,
  bdrvCreate,
  memStoreCreate,
  memStoreRead,
  memStoreWrite,
  type BlockDriver,
  type BlockErrorCode,
} from '../../src/index.js';
import { chainDriver, jitter, makeMem, makeStrictDriver, memName, testRegistry, type StrictLog } from './block-helpers.js';

async function expectCode(p: Promise<unknown>, code: BlockErrorCode): Promise<BlockError> {
  const e: unknown = await p.then(
    () => null,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(BlockError);
  expect((e as BlockError).code).toBe(code);
  return e as BlockError;
}

function pattern(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (seed * 31 + i * 7 + 1) & 0xff;
  return b;
}

async function openStrict(size: number, extra: { delay?: boolean; log?: StrictLog; readOnly?: boolean } = {}) {
  const name = makeMem(size, 'strict');
  const strict = makeStrictDriver({ delay: extra.delay, log: extra.log });
  const registry = testRegistry(strict);
  const bs = await BlockDriverState.open(name, { format: 'strict', registry, readOnly: extra.readOnly });
  return { bs, name, registry };
}

describe('BlockDriverState request checks', () => {
  it('opens a protocol node alone when the protocol is the format', async () => {
    const name = makeMem(4096);
    const bs = await BlockDriverState.open(name, { format: 'mem', registry: testRegistry() });
    expect(bs.driver.formatName).toBe('mem');
    expect(bs.file).toBeNull();
    expect(bs.requestAlignment).toBe(1);
    expect(await bs.getLength()).toBe(4096);
    await bs.close();
  });

  it('stacks a format node over the protocol node with the default alignment of 512', async () => {
    const { bs } = await openStrict(8192);
    expect(bs.driver.formatName).toBe('strict');
    expect(bs.file?.driver.formatName).toBe('mem');
    expect(bs.requestAlignment).toBe(512);
    expect(bs.isOpen).toBe(true);
    expect(bs.depth).toBe(0);
    await bs.close();
  });

  it('refuses past-the-end requests with EIO and touches nothing', async () => {
    const { bs, name } = await openStrict(4096);
    await expectCode(bs.pread(4000, new Uint8Array(200)), 'EIO');
    await expectCode(bs.pwrite(4096, new Uint8Array(1)), 'EIO');
    await expectCode(bs.writeZeroes(0, 4097), 'EIO');
    await expectCode(bs.discard(4095, 2), 'EIO');
    await expectCode(bs.blockStatus(4097, 1), 'EIO');
    expect(memStoreRead(name).every((b) => b === 0)).toBe(true);
    // Exactly up to the end is fine, and a zero-length request at the end too.
    await bs.pwrite(4000, new Uint8Array(96).fill(1));
    await bs.pread(4096, new Uint8Array(0));
    await bs.close();
  });

  it('lets child protocol nodes grow: writes past the end extend, reads past the end see zeros', async () => {
    const name = makeMem(1000);
    // Opened as a format's child (a user's node refuses: see block-bounds.test.ts).
    const bs = await BlockDriverState.open(name, { format: 'mem', registry: testRegistry(), child: true });
    expect(bs.growable).toBe(true);
    await bs.pwrite(2000, new Uint8Array(48).fill(3));
    expect(await bs.getLength()).toBe(2048);
    const back = new Uint8Array(100).fill(0xaa);
    await bs.pread(2000, back);
    expect(back.subarray(0, 48).every((b) => b === 3)).toBe(true);
    expect(back.subarray(48).every((b) => b === 0)).toBe(true);
    await bs.close();
  });

  it('refuses invalid numbers with EINVAL', async () => {
    const { bs } = await openStrict(4096);
    const buf = new Uint8Array(1);
    for (const bad of [-1, 1.5, NaN, Infinity, Number.MAX_SAFE_INTEGER + 2]) {
      await expectCode(bs.pread(bad, buf), 'EINVAL');
      await expectCode(bs.pwrite(bad, buf), 'EINVAL');
      await expectCode(bs.writeZeroes(0, bad), 'EINVAL');
      await expectCode(bs.discard(bad, 1), 'EINVAL');
      await expectCode(bs.truncate(bad), 'EINVAL');
      await expectCode(bs.isAllocated(bad, 1), 'EINVAL');
    }
    await expectCode(bs.pread(Number.MAX_SAFE_INTEGER, new Uint8Array(2)), 'EINVAL');
    await bs.close();
  });

  it('refuses changes to a read-only node with EACCES', async () => {
    const { bs, name } = await openStrict(4096, { readOnly: true });
    expect(bs.readOnly).toBe(true);
    await expectCode(bs.pwrite(0, new Uint8Array(512).fill(1)), 'EACCES');
    await expectCode(bs.writeZeroes(0, 512), 'EACCES');
    await expectCode(bs.discard(0, 512), 'EACCES');
    await expectCode(bs.truncate(8192), 'EACCES');
    await expectCode(bs.changeBackingFile('x', null), 'EACCES');
    await expectCode(bs.makeEmpty(), 'EACCES');
    await expectCode(bs.check({ leaks: true }), 'EACCES');
    // Reads and flush are fine.
    await bs.pread(0, new Uint8Array(512));
    await bs.flush();
    expect(memStoreRead(name).every((b) => b === 0)).toBe(true);
    await bs.close();
  });

  it('refuses requests on a closed node with EBADF; close is idempotent and emits once', async () => {
    const { bs } = await openStrict(4096);
    let closes = 0;
    bs.events.on('close', () => closes++);
    const file = bs.file!;
    await Promise.all([bs.close(), bs.close()]);
    await bs.close();
    expect(closes).toBe(1);
    expect(bs.isOpen).toBe(false);
    expect(file.isOpen).toBe(false);
    await expectCode(bs.pread(0, new Uint8Array(1)), 'EBADF');
    await expectCode(bs.pwrite(0, new Uint8Array(1)), 'EBADF');
    await expectCode(bs.flush(), 'EBADF');
    await expectCode(bs.getLength(), 'EBADF');
    await expectCode(bs.blockStatus(0, 1), 'EBADF');
    await expectCode(file.pread(0, new Uint8Array(1)), 'EBADF');
  });

  it('reports a missing hook as ENOTSUP, never a silent success', async () => {
    const { bs } = await openStrict(4096);
    await expectCode(bs.truncate(8192), 'ENOTSUP');
    await expectCode(bs.getInfo(), 'ENOTSUP');
    await expectCode(bs.check(), 'ENOTSUP');
    await expectCode(bs.changeBackingFile('a', null), 'ENOTSUP');
    await expectCode(bs.makeEmpty(), 'ENOTSUP');
    await bs.close();
  });

  it('uses QEMU defaults where QEMU has one: status, flush, allocated size, invalidate', async () => {
    const { bs } = await openStrict(4096);
    // No block status hook: all data, allocated.
    expect(await bs.blockStatus(100, 1000)).toEqual({ pnum: 1000, allocated: true, data: true, zero: false });
    expect(await bs.isAllocated(0, 8192)).toEqual({ allocated: true, pnum: 4096 });
    await bs.flush();
    await bs.invalidateCache();
    expect(await bs.getAllocatedFileSize()).toBeGreaterThanOrEqual(0);
    // Discard without a hook is advisory and does nothing.
    await bs.discard(0, 4096);
    await bs.close();
  });

  it('is open from driverOpen until the moment close() is called, not when the close settles', async () => {
    const { bs } = await openStrict(4096, { delay: true });
    const file = bs.file!;
    const write = bs.pwrite(0, new Uint8Array(512));
    const closing = bs.close();
    // Refused at once, though the close still waits for the write in flight.
    expect(bs.isOpen).toBe(false);
    expect(file.isOpen).toBe(true);
    await expectCode(bs.pwrite(512, new Uint8Array(512)), 'EBADF');
    await write;
    await closing;
    expect(file.isOpen).toBe(false);

    // A node whose close began before its open ended never counts as open.
    const registry = testRegistry();
    const name = makeMem(512);
    const proto = new BlockDriverState(registry.require('mem'), name, { registry });
    expect(proto.isOpen).toBe(false);
    const opening = proto.driverOpen();
    const closed = proto.close();
    await opening;
    expect(proto.isOpen).toBe(false);
    await closed;
    await expectCode(proto.pread(0, new Uint8Array(1)), 'EBADF');
  });

  it('refuses to run driverOpen on a node that is already open', async () => {
    const { bs } = await openStrict(4096);
    await expectCode(bs.driverOpen(), 'EINVAL');
    await bs.close();
  });
});

describe('alignment: read-modify-write', () => {
  it('pads an unaligned write to whole blocks and keeps the neighbours', async () => {
    const log: StrictLog = { reads: [], writes: [] };
    const { bs, name } = await openStrict(4096, { log });
    memStoreWrite(name, pattern(4096, 3));
    const data = new Uint8Array(700).fill(0xee);
    await bs.pwrite(300, data);
    const expected = pattern(4096, 3);
    expected.set(data, 300);
    expect(memStoreRead(name)).toEqual(expected);
    expect(log.writes).toEqual([[0, 1024]]);
    expect(log.reads).toEqual([
      [0, 512],
      [512, 512],
    ]);
    const back = new Uint8Array(701);
    await bs.pread(299, back);
    expect(back).toEqual(expected.subarray(299, 1000));
    await bs.close();
  });

  it('handles a request inside one block and across many blocks', async () => {
    const { bs, name } = await openStrict(8192);
    const model = pattern(8192, 9);
    memStoreWrite(name, model);
    for (const [off, len] of [
      [10, 20],
      [511, 2],
      [512, 1],
      [1000, 5000],
      [0, 8192],
      [8191, 1],
    ] as const) {
      const d = pattern(len, off);
      await bs.pwrite(off, d);
      model.set(d, off);
      expect(memStoreRead(name)).toEqual(model);
      const back = new Uint8Array(len + 2);
      const from = Math.max(0, off - 1);
      const n = Math.min(back.length, 8192 - from);
      await bs.pread(from, back.subarray(0, n));
      expect(back.subarray(0, n)).toEqual(model.subarray(from, from + n));
    }
    await bs.close();
  });

  it('clamps the padded range to an image whose size is not aligned', async () => {
    const log: StrictLog = { reads: [], writes: [] };
    const { bs, name } = await openStrict(1000, { log });
    memStoreWrite(name, pattern(1000, 1));
    const back = new Uint8Array(10);
    await bs.pread(990, back);
    expect(back).toEqual(pattern(1000, 1).subarray(990));
    expect(log.reads).toEqual([[512, 488]]);
    await bs.pwrite(700, new Uint8Array(300).fill(5));
    const model = pattern(1000, 1);
    model.fill(5, 700);
    expect(memStoreRead(name)).toEqual(model);
    expect(log.writes).toEqual([[512, 488]]);
    await bs.close();
  });

  it('never loses a write when unaligned writes share blocks concurrently', async () => {
    for (let round = 0; round < 8; round++) {
      const size = 4096;
      const { bs, name } = await openStrict(size, { delay: true });
      const model = pattern(size, round);
      memStoreWrite(name, model);
      // Cut the image into random disjoint pieces; most pieces share blocks with neighbours.
      const cuts = new Set<number>([0, size]);
      while (cuts.size < 40) cuts.add(Math.floor(Math.random() * size));
      const points = [...cuts].sort((a, b) => a - b);
      const writes: Promise<void>[] = [];
      for (let i = 0; i + 1 < points.length; i++) {
        if (Math.random() < 0.3) continue;
        const d = new Uint8Array(points[i + 1] - points[i]).fill((round * 40 + i) % 251 + 1);
        model.set(d, points[i]);
        writes.push(bs.pwrite(points[i], d));
        // Reads interleaved with the writes must not break anything either.
        if (Math.random() < 0.3) writes.push(bs.pread(points[i], new Uint8Array(d.length)));
      }
      await Promise.all(writes);
      expect(memStoreRead(name)).toEqual(model);
      await bs.close();
    }
  });

  it('orders an overlapping write after an in-flight read-modify-write (and vice versa)', async () => {
    for (let round = 0; round < 20; round++) {
      const { bs, name } = await openStrict(2048, { delay: true });
      const first = bs.pwrite(100, new Uint8Array(100).fill(1)); // RMW of block 0
      const second = bs.pwrite(0, new Uint8Array(512).fill(2)); // aligned, same block, later
      await Promise.all([first, second]);
      // The aligned write was submitted second and must win everywhere in block 0.
      expect(memStoreRead(name).subarray(0, 512).every((b) => b === 2)).toBe(true);
      await bs.close();
    }
  });

  it('writeZeroes: unaligned edges through RMW, aligned middle native; noFallback refuses', async () => {
    const { bs, name } = await openStrict(4096);
    memStoreWrite(name, new Uint8Array(4096).fill(0xff));
    await bs.writeZeroes(100, 2000);
    const got = memStoreRead(name);
    const model = new Uint8Array(4096).fill(0xff);
    model.fill(0, 100, 2100);
    expect(got).toEqual(model);
    await expectCode(bs.writeZeroes(1, 10, { noFallback: true }), 'ENOTSUP');
    // Strict has no native zeroing: even aligned, noFallback refuses.
    await expectCode(bs.writeZeroes(0, 512, { noFallback: true }), 'ENOTSUP');
    expect(memStoreRead(name)).toEqual(model);
    await bs.close();
  });

  it('writeZeroes falls back to a zero buffer when the native hook says ENOTSUP', async () => {
    let nativeCalls = 0;
    const zeroNotsup: BlockDriver = {
      ...makeStrictDriver({ name: 'zns' }),
      async coWriteZeroes() {
        nativeCalls++;
        throw new BlockError('ENOTSUP');
      },
    };
    const name = makeMem(4096);
    memStoreWrite(name, new Uint8Array(4096).fill(7));
    const bs = await BlockDriverState.open(name, { format: 'zns', registry: testRegistry(zeroNotsup) });
    await bs.writeZeroes(512, 1024);
    expect(nativeCalls).toBe(1);
    const model = new Uint8Array(4096).fill(7);
    model.fill(0, 512, 1536);
    expect(memStoreRead(name)).toEqual(model);
    await expectCode(bs.writeZeroes(0, 512, { noFallback: true }), 'ENOTSUP');
    await bs.close();
  });
});

describe('close waits for requests in flight', () => {
  it('lets in-flight writes finish before closing the children', async () => {
    const { bs, name } = await openStrict(65536, { delay: true });
    const writes = Array.from({ length: 16 }, (_, i) => bs.pwrite(i * 4096 + 7, new Uint8Array(100).fill(i + 1)));
    const closed = bs.close();
    await Promise.all(writes);
    await closed;
    const got = memStoreRead(name);
    for (let i = 0; i < 16; i++) expect(got[i * 4096 + 7]).toBe(i + 1);
  });

  it('closes the file child even when the format close hook fails, and reports the error', async () => {
    const failing: BlockDriver = {
      ...makeStrictDriver({ name: 'failclose' }),
      async close() {
        throw new BlockError('EIO', 'close failed');
      },
    };
    const name = makeMem(4096);
    const bs = await BlockDriverState.open(name, { format: 'failclose', registry: testRegistry(failing) });
    const file = bs.file!;
    await expectCode(bs.close(), 'EIO');
    expect(file.isOpen).toBe(false);
  });
});

describe('copy-on-read', () => {
  it('copies backing data (and zeros) into the top layer on read', async () => {
    const registry = testRegistry();
    const base = memName('cor-base');
    memStoreCreate(base, 8192);
    memStoreWrite(base, pattern(4096, 5));
    const top = memName('cor-top');
    await bdrvCreate(top, { format: 'tchain', options: { size: 8192, backingFile: base, backingFmt: 'raw' }, registry });
    const bs = await BlockDriverState.open(top, { registry, copyOnRead: true });
    expect((await bs.isAllocated(0, 8192)).allocated).toBe(false);
    const back = new Uint8Array(600);
    await bs.pread(100, back);
    expect(back).toEqual(pattern(4096, 5).subarray(100, 700));
    // The whole aligned range [0, 1024) is now in the top layer.
    expect(await bs.isAllocated(0, 8192)).toEqual({ allocated: true, pnum: 1024 });
    await bs.pread(6000, new Uint8Array(10));
    expect((await bs.isAllocated(5632, 512)).allocated).toBe(true);
    await bs.close();
    // Reopened without the backing file, the copied data is there.
    const again = await BlockDriverState.open(top, { registry, noBacking: true });
    const direct = new Uint8Array(1024);
    await again.pread(0, direct);
    expect(direct).toEqual(pattern(4096, 5).subarray(0, 1024));
    await again.close();
  });

  it('writes all-zero data through the native writeZeroes hook', async () => {
    const zeroCalls: [number, number][] = [];
    const zchain: BlockDriver = {
      ...chainDriver,
      formatName: 'tchainz',
      probe: undefined,
      async coWriteZeroes(bs, offset, bytes) {
        zeroCalls.push([offset, bytes]);
        await chainDriver.coPwritev!(bs, offset, bytes, IOVector.alloc(bytes), {});
      },
    };
    const registry = testRegistry(zchain);
    const base = makeMem(8192);
    const baseData = new Uint8Array(8192);
    baseData.set(pattern(1024, 8));
    memStoreWrite(base, baseData);
    const top = memName('cor-zero');
    await bdrvCreate(top, { format: 'tchain', options: { backingFile: base, backingFmt: 'raw' }, registry });
    const bs = await BlockDriverState.open(top, { registry, format: 'tchainz', copyOnRead: true });
    const back = new Uint8Array(1000);
    await bs.pread(3000, back);
    expect(back.every((b) => b === 0)).toBe(true);
    expect(zeroCalls).toEqual([[2560, 1536]]);
    await bs.pread(0, new Uint8Array(10));
    expect(zeroCalls.length).toBe(1);
    expect(await bs.isAllocated(0, 8192)).toEqual({ allocated: true, pnum: 512 });
    await bs.close();
  });

  it('does nothing on a read-only node', async () => {
    const registry = testRegistry();
    const base = makeMem(4096);
    memStoreWrite(base, pattern(4096, 2));
    const top = memName('cor-ro');
    await bdrvCreate(top, { format: 'tchain', options: { backingFile: base, backingFmt: 'raw' }, registry });
    const bs = await BlockDriverState.open(top, { registry, copyOnRead: true, readOnly: true });
    await bs.pread(0, new Uint8Array(512));
    expect((await bs.isAllocated(0, 512)).allocated).toBe(false);
    await bs.close();
  });
});

describe('events', () => {
  it('debugWatched and traceListened follow listeners as they come and go', async () => {
    const bs = await BlockDriverState.open(makeMem(4096), { format: 'mem' });
    const fn = (): void => undefined;
    const other = (): void => undefined;
    expect(bs.debugWatched).toBe(false);
    bs.events.on('trace', fn);
    expect(bs.debugWatched).toBe(false);
    expect(bs.events.traceListened).toBe(true);
    bs.events.on('debug', fn);
    bs.events.addListener('debug', other);
    expect(bs.debugWatched).toBe(true);
    bs.events.off('debug', fn);
    expect(bs.debugWatched).toBe(true);
    bs.events.removeListener('debug', other);
    expect(bs.debugWatched).toBe(false);
    // A once() listener is dropped by the emit that calls it.
    bs.events.once('debug', fn);
    expect(bs.debugWatched).toBe(true);
    await bs.debugEvent('l2_update');
    expect(bs.debugWatched).toBe(false);
    bs.events.on('debug', fn);
    bs.events.removeAllListeners();
    expect(bs.debugWatched).toBe(false);
    expect(bs.events.traceListened).toBe(false);
    await bs.close();
  });

  it('trace emits to listeners; debugEvent emits then runs the driver hook', async () => {
    const seen: string[] = [];
    const dbg: BlockDriver = {
      ...makeStrictDriver({ name: 'dbg' }),
      async debugEvent(_bs, ev) {
        await jitter(1);
        seen.push(`hook:${ev}`);
      },
    };
    const name = makeMem(4096);
    const bs = await BlockDriverState.open(name, { format: 'dbg', registry: testRegistry(dbg) });
    bs.events.on('debug', (ev) => seen.push(`emit:${ev}`));
    const traces: unknown[] = [];
    bs.events.on('trace', (t) => traces.push(t));
    bs.trace('qedAioSetup', { sectorNum: 1 });
    await bs.debugEvent('l2_update');
    expect(seen).toEqual(['emit:l2_update', 'hook:l2_update']);
    expect(traces).toEqual([{ name: 'qedAioSetup', args: { sectorNum: 1 } }]);
    // Unaligned writes announce their RMW steps on the node, then the write itself.
    seen.length = 0;
    await bs.pwrite(10, new Uint8Array(10));
    expect(seen.filter((s) => s.startsWith('emit:'))).toEqual([
      'emit:pwritev_rmw_head',
      'emit:pwritev_rmw_after_head',
      'emit:pwritev',
      'emit:pwritev_done',
    ]);
    await bs.close();
  });
});

describe('preadv/pwritev with vectors', () => {
  it('scatters and gathers across several buffers', async () => {
    const { bs, name } = await openStrict(4096);
    const a = new Uint8Array(100).fill(1);
    const b = new Uint8Array(1000).fill(2);
    await bs.pwritev(50, new IOVector([a, b]));
    const got = memStoreRead(name);
    expect(got[49]).toBe(0);
    expect(got[50]).toBe(1);
    expect(got[150]).toBe(2);
    expect(got[1149]).toBe(2);
    expect(got[1150]).toBe(0);
    const x = new Uint8Array(60);
    const y = new Uint8Array(60);
    await bs.preadv(120, new IOVector([x, y]));
    expect(x.subarray(0, 30).every((v) => v === 1)).toBe(true);
    expect(x.subarray(30).every((v) => v === 2)).toBe(true);
    expect(y.every((v) => v === 2)).toBe(true);
    await bs.close();
  });
});
