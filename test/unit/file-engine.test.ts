// The native I/O engine (native/engine.c, src/drivers/file/engine.ts) on each back end: every
// operation, errors shaped as node:fs shapes them, a full slot table, stopping and closing
// with requests in flight.
import { closeSync, openSync, read as fsRead, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import { toBlockError } from '../../src/block/errors.js';
import { IOVector } from '../../src/block/iovec.js';
import { BlockDriverState } from '../../src/block/node.js';
import { BlockDriverRegistry } from '../../src/block/registry.js';
import {
  FALLOC_FL_KEEP_SIZE,
  FALLOC_FL_PUNCH_HOLE,
  FALLOC_FL_ZERO_RANGE,
  type EngineKind,
  IoEngine,
  engineChoice,
  ioEngine,
  setIoEngineForTest,
} from '../../src/drivers/file/engine.js';
import { fileDriver } from '../../src/drivers/file/index.js';
import { loadSeekAddon } from '../../src/drivers/file/seek.js';
import { makeTempDir, removeTempDir } from '../interop/qemu.js';

const hasEngine = typeof loadSeekAddon()?.engineStart === 'function';
// Locally a missing addon skips these tests; CI must have built it.
if (!hasEngine && process.env.CI === 'true') {
  throw new Error('the native addon (build/Release/blocklayer_seek.node) was not built with its I/O engine: run `npm ci`');
}
const registry = new BlockDriverRegistry().register(fileDriver);

afterAll(() => {
  setIoEngineForTest(undefined);
});

it('BLOCKLAYER_IO_ENGINE picks the engine; anything else is auto', () => {
  expect(engineChoice('io_uring')).toBe('io_uring');
  expect(engineChoice('threads')).toBe('threads');
  expect(engineChoice('fs')).toBe('fs');
  expect(engineChoice(undefined)).toBe('auto');
  expect(engineChoice('bogus')).toBe('auto');
});

it.skipIf(!hasEngine)('fs means no engine: node:fs and the thread pool', () => {
  expect(setIoEngineForTest('fs')).toBeNull();
  expect(ioEngine()).toBeNull();
});

describe.each(['io_uring', 'threads'] as EngineKind[])('I/O engine: %s', (kind) => {
  let dir = '';
  let fd = -1;
  beforeEach((ctx) => {
    if (!hasEngine) ctx.skip();
    // Lone writes stay on the back end here: its own paths are under test ("inline writes" below).
    const engine = setIoEngineForTest(kind, false);
    // io_uring refused (seccomp, old kernel): forcing it gives no engine; threads must start.
    if (engine === null && kind === 'io_uring') ctx.skip();
    expect(engine?.kind).toBe(kind);
    dir = makeTempDir('file-engine');
    writeFileSync(join(dir, 'f'), new Uint8Array(64 * 1024).fill(0x11));
    fd = openSync(join(dir, 'f'), 'r+');
  });
  afterEach(() => {
    if (fd >= 0) closeSync(fd);
    fd = -1;
    if (dir !== '') removeTempDir(dir);
    dir = '';
  });
  const engine = () => {
    const e = ioEngine();
    if (e === null) throw new Error('no engine');
    return e;
  };

  it('writes, reads back through a vector, datasyncs', async () => {
    const data = new Uint8Array(8192).map((_, i) => i & 0xff);
    expect(await engine().pwritev(fd, [data.subarray(0, 100), data.subarray(100)], 4096)).toBe(8192);
    await engine().fdatasync(fd);
    const a = new Uint8Array(3000);
    const b = new Uint8Array(5192);
    expect(await engine().preadv(fd, [a, b], 4096)).toBe(8192);
    expect([...a, ...b]).toEqual([...data]);
    expect(readFileSync(join(dir, 'f')).subarray(4096, 4096 + 8192)).toEqual(Buffer.from(data));
  });

  it('reads short at end of file, 0 past it', async () => {
    const buf = new Uint8Array(4096);
    expect(await engine().preadv(fd, buf, 64 * 1024 - 1000)).toBe(1000);
    expect(await engine().preadv(fd, buf, 1 << 20)).toBe(0);
  });

  it('fallocate: punch a hole (size kept), zero a range past the end (file grows)', async () => {
    await engine().fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 4096);
    await engine().fallocate(fd, FALLOC_FL_ZERO_RANGE, 64 * 1024, 4096).catch((e: unknown) => {
      // Some file systems have no ZERO_RANGE: the same error code the fallback path expects.
      expect((e as { code?: string }).code).toBe('ENOTSUP');
    });
    const f = readFileSync(join(dir, 'f'));
    expect(f.subarray(0, 4096).every((x) => x === 0)).toBe(true);
    expect(f[4096]).toBe(0x11);
  });

  it('a zero-write zeroes its range, then writes inside it: one request, past EOF too', async () => {
    expect(engine().canLink).toBe(true);
    const data = new Uint8Array(4096).fill(0x77);
    const zeroRange = (zo: number, zl: number, at: number) => engine().zeroThenPwritev(fd, FALLOC_FL_ZERO_RANGE, zo, zl, [data.subarray(0, 1000), data.subarray(1000)], at);
    try {
      expect(await zeroRange(4096, 16384, 8192)).toBe(4096);
    } catch (e) {
      // Some file systems have no ZERO_RANGE: then nothing was written.
      expect(e).toMatchObject({ code: 'ENOTSUP', syscall: 'fallocate' });
      expect(readFileSync(join(dir, 'f')).every((x) => x === 0x11)).toBe(true);
      return;
    }
    expect(await zeroRange(64 * 1024, 65536, 68 * 1024)).toBe(4096);
    const f = readFileSync(join(dir, 'f'));
    expect(f.length).toBe(128 * 1024);
    const expected = new Uint8Array(128 * 1024);
    expected.fill(0x11, 0, 4096).fill(0x77, 8192, 12288).fill(0x11, 20480, 64 * 1024).fill(0x77, 68 * 1024, 72 * 1024);
    expect(Buffer.from(f).equals(Buffer.from(expected))).toBe(true);
  });

  it('a zero-write whose fallocate fails names fallocate and zeroes nothing', async () => {
    // An unknown mode bit: the kernel refuses the fallocate (EOPNOTSUPP or EINVAL).
    const r = await engine()
      .zeroThenPwritev(fd, 0x4000, 0, 8192, new Uint8Array(4096).fill(0x77), 0)
      .then(
        () => null,
        (e: unknown) => e as { code?: string; syscall?: string },
      );
    expect(r?.syscall).toBe('fallocate');
    expect(['EOPNOTSUPP', 'ENOTSUP', 'EINVAL']).toContain(r?.code);
    // The data may have been written (io_uring may run the linked writev anyway), all or nothing.
    const f = readFileSync(join(dir, 'f'));
    expect(f.subarray(0, 4096).every((x) => x === f[0]) && (f[0] === 0x11 || f[0] === 0x77)).toBe(true);
    expect(f.subarray(4096).every((x) => x === 0x11)).toBe(true);
    // The slot was given back once both halves were in: the engine goes on as usual.
    expect(await engine().pwritev(fd, new Uint8Array(16).fill(0x22), 0)).toBe(16);
  });

  it('errors carry the errno code node:fs gives, so both paths map to the same BlockError', async () => {
    const bad = 0x3fffffff;
    const ours = await engine().preadv(bad, new Uint8Array(16), 0).then(
      () => null,
      (e: unknown) => e,
    );
    const theirs = await new Promise<unknown>((resolve) => fsRead(bad, new Uint8Array(16), 0, 16, 0, (e) => resolve(e)));
    expect((ours as { code?: string }).code).toBe('EBADF');
    expect(toBlockError(ours).code).toBe(toBlockError(theirs).code);
    expect((ours as { syscall?: string }).syscall).toBe('read');
  });

  it('large reads issued together (copied by io-wq, not inline) fill every buffer of their vector', async () => {
    const size = 1024 * 1024;
    const data = new Uint8Array(4 * size).map((_, i) => (i * 7 + (i >> 12)) & 0xff);
    writeFileSync(join(dir, 'f'), data);
    // Four 1 MiB reads in flight at once, one split over three buffers, beside a small write.
    const bufs = Array.from({ length: 4 }, () => new Uint8Array(size));
    const split = [new Uint8Array(1000), new Uint8Array(size - 5000), new Uint8Array(4000)];
    const done = await Promise.all([
      ...bufs.map((b, i) => engine().preadv(fd, b, i * size)),
      engine().preadv(fd, split, size),
      engine().pwritev(fd, new Uint8Array(512).fill(0x22), 4 * size),
    ]);
    expect(done).toEqual([size, size, size, size, size, 512]);
    bufs.forEach((b, i) => expect(Buffer.from(b).equals(Buffer.from(data.subarray(i * size, (i + 1) * size)))).toBe(true));
    expect(Buffer.concat(split).equals(Buffer.from(data.subarray(size, 2 * size)))).toBe(true);
  });

  it('requests in flight together: large reads go straight to io-wq, writes never do', async () => {
    const stats = loadSeekAddon()?.engineStats;
    if (stats === undefined) throw new Error('no engineStats');
    const size = 1024 * 1024;
    writeFileSync(join(dir, 'f'), new Uint8Array(4 * size).fill(0x33));
    // Writes to one file marked IOSQE_ASYNC would reach io-wq unhashed, each worker taking
    // its turn on the inode's lock; unmarked, io_uring queues them on that file's hashed list.
    const writes = [0, 1, 2, 3].map((i) => engine().pwritev(fd, new Uint8Array(64 * 1024).fill(i), i * 64 * 1024));
    expect(await Promise.all(writes)).toEqual(new Array<number>(4).fill(64 * 1024));
    expect(stats().asyncWrites).toBe(0);
    const reads = [0, 1, 2, 3].map((i) => engine().preadv(fd, new Uint8Array(size), i * size));
    expect(await Promise.all(reads)).toEqual(new Array<number>(4).fill(size));
    // The worker threads hand nothing to io-wq; io_uring marks the reads that overlapped.
    if (kind === 'io_uring') expect(stats().asyncReads).toBeGreaterThanOrEqual(3);
    else expect(stats()).toEqual({ asyncReads: 0, asyncWrites: 0, canLink: true, writerWrites: 0, inlineWrites: 0 });
    expect(readFileSync(join(dir, 'f')).subarray(3 * 64 * 1024, 4 * 64 * 1024).every((x) => x === 3)).toBe(true);
  });

  it('more requests than slots wait their turn; all complete, in place', async () => {
    const n = 700;
    const writes = Array.from({ length: n }, (_, i) => engine().pwritev(fd, new Uint8Array(64).fill(i & 0xff), i * 64));
    expect(await Promise.all(writes)).toEqual(new Array<number>(n).fill(64));
    const f = readFileSync(join(dir, 'f'));
    for (let i = 0; i < n; i++) expect(f[i * 64 + 63]).toBe(i & 0xff);
  });

  it('sleeping workers wake for every request: one at a time, in bursts, after idle pauses', async () => {
    // A wake-up lost between a worker's last look at the queue and its sleep hangs here.
    const e = engine();
    for (let round = 0; round < 60; round++) {
      expect(await e.pwritev(fd, new Uint8Array(512).fill(round), 0)).toBe(512);
      const n = 1 + (round % 9);
      const burst = Array.from({ length: n }, (_, i) => e.pwritev(fd, new Uint8Array(512).fill(round + i), 512 * (i + 1)));
      expect(await Promise.all(burst)).toEqual(new Array<number>(n).fill(512));
      if (round % 10 === 0) await new Promise((resolve) => setTimeout(resolve, 2));
    }
    const f = readFileSync(join(dir, 'f'));
    expect(f[0]).toBe(59);
    expect(f[512 * 6]).toBe(59 + 5);
  });

  it('requests issued together each take a slot of their own, all in flight at once', () => {
    // Through the addon itself: the IoEngine would queue refused requests in its backlog.
    setIoEngineForTest('fs');
    const addon = loadSeekAddon();
    if (addon?.engineStart === undefined || addon.engineSubmit === undefined || addon.engineStop === undefined) {
      throw new Error('no engine');
    }
    let delivered = 0;
    addon.engineStart(kind, (n) => (delivered += n), new Float64Array(512));
    const bufs = [0, 1, 2, 3].map((i) => new Uint8Array(4096).fill(i));
    const slots = bufs.map((b, i) => addon.engineSubmit!(1, fd, b, i * 4096, 0, 0));
    expect(slots.every((s) => s >= 0)).toBe(true);
    expect(new Set(slots).size).toBe(4);
    addon.engineStop();
    expect(delivered).toBe(4);
  });

  it('stop waits for what is in flight and settles every request', async () => {
    const e = engine();
    const reads = Array.from({ length: 300 }, () => e.preadv(fd, new Uint8Array(4096), 0));
    e.stop();
    // Synchronously drained: each completion freed a slot for the backlog, which ran too.
    const settled = await Promise.allSettled(reads);
    expect(settled.map((s) => (s.status === 'fulfilled' ? s.value : String(s.reason)))).toEqual(new Array<number>(300).fill(4096));
  });

  it('a file node closed with writes in flight lets them all land first', async () => {
    const bs = await BlockDriverState.open(join(dir, 'f'), { format: 'file', registry, child: true });
    const writes = Array.from({ length: 64 }, (_, i) => bs.pwritev(i * 1024, IOVector.from(new Uint8Array(1024).fill(i + 1))));
    const closed = bs.close();
    await Promise.all(writes);
    await closed;
    const f = readFileSync(join(dir, 'f'));
    for (let i = 0; i < 64; i++) expect(f[i * 1024 + 512]).toBe(i + 1);
  });
});

describe('I/O engine: auto over io_uring', () => {
  let dir = '';
  afterEach(() => {
    if (dir !== '') removeTempDir(dir);
    dir = '';
  });

  it('small writes go to the worker threads beside io_uring, large ones and reads to io_uring', async (ctx) => {
    if (!hasEngine) ctx.skip();
    const engine = setIoEngineForTest('auto', false);
    // io_uring refused here: auto runs the worker threads alone, with nothing beside them.
    if (engine?.kind !== 'io_uring') ctx.skip();
    const stats = loadSeekAddon()?.engineStats;
    if (stats === undefined || engine === null) throw new Error('no engineStats');
    dir = makeTempDir('file-engine');
    const path = join(dir, 'f');
    writeFileSync(path, new Uint8Array(0));
    const fd = openSync(path, 'r+');
    try {
      const small = 256 * 1024;
      const done = await Promise.all([
        engine.pwritev(fd, new Uint8Array(4096).fill(1), 0),
        engine.pwritev(fd, [new Uint8Array(small - 4096).fill(2), new Uint8Array(4096).fill(3)], 4096),
        // One byte over: io_uring's.
        engine.pwritev(fd, new Uint8Array(small + 1).fill(4), 4096 + small),
        engine.zeroThenPwritev(fd, FALLOC_FL_ZERO_RANGE, 2 * small + 8192, 8192, new Uint8Array(512).fill(5), 2 * small + 8192),
      ]);
      expect(done).toEqual([4096, small, small + 1, 512]);
      expect(stats().writerWrites).toBe(2);
      await engine.fdatasync(fd);
      const back = new Uint8Array(2 * small + 16384);
      expect(await engine.preadv(fd, back, 0)).toBe(2 * small + 16384);
      expect(stats().writerWrites).toBe(2);
      const want = new Uint8Array(back.length);
      want.fill(1, 0, 4096);
      want.fill(2, 4096, small);
      want.fill(3, small, small + 4096);
      want.fill(4, small + 4096, 2 * small + 4097);
      want.fill(5, 2 * small + 8192, 2 * small + 8704);
      expect(Buffer.from(back).equals(Buffer.from(want))).toBe(true);
    } finally {
      closeSync(fd);
    }
  });
});

describe('I/O engine: a batch of completions', () => {
  // A scripted addon: slots handed out last-freed first and freed before the batch reaches JS,
  // as native/engine.c does; the test delivers the batches itself.
  function scripted() {
    const free = [3, 2, 1, 0];
    const inFlight = new Map<number, number>();
    let deliver: (n: number) => void = () => undefined;
    let results: Float64Array = new Float64Array(0);
    const addon = {
      engineStart: (_kind: string, onComplete: (n: number) => void, r: Float64Array) => {
        deliver = onComplete;
        results = r;
        return 'threads';
      },
      engineSubmit: (_op: number, _fd: number, _b: unknown, offset: number) => {
        const slot = free.pop() ?? -1;
        if (slot >= 0) inFlight.set(slot, offset);
        return slot;
      },
      engineError: (errno: number, syscall: string) => new Error(`${syscall} ${errno}`),
      // As the addon's stop: what is in flight is delivered before it returns.
      engineStop: () => completeAll(),
    };
    /** Complete every request in flight, in slot order, as one batch: each returns its offset. */
    const completeAll = () => {
      const slots = [...inFlight.keys()].sort((a, b) => a - b);
      slots.forEach((slot, i) => {
        results[2 * i] = slot;
        results[2 * i + 1] = inFlight.get(slot)!;
        inFlight.delete(slot);
        free.push(slot);
      });
      deliver(slots.length);
    };
    return { engine: new IoEngine(addon, 'threads'), completeAll };
  }

  it('runs each callback once with its own result when callbacks submit at once', () => {
    const { engine, completeAll } = scripted();
    const got: [number, number][] = [];
    const buf = new Uint8Array(1);
    for (let i = 0; i < 3; i++) {
      // Each completion starts the next write from inside the batch, taking a slot just freed.
      engine.pwritevThen(0, buf, i, (n) => {
        got.push([i, n]);
        engine.pwritevThen(0, buf, 10 + i, (m) => got.push([10 + i, m]));
      });
    }
    completeAll();
    expect(got).toEqual([
      [0, 0],
      [1, 1],
      [2, 2],
    ]);
    completeAll();
    expect(got.slice(3).sort((a, b) => a[0] - b[0])).toEqual([
      [10, 10],
      [11, 11],
      [12, 12],
    ]);
  });

  it('a callback that stops the engine leaves the rest of its batch their own results', () => {
    const { engine, completeAll } = scripted();
    const got: [number, number][] = [];
    const buf = new Uint8Array(1);
    engine.pwritevThen(0, buf, 0, (n) => {
      got.push([0, n]);
      // Delivered inside stop(), as a nested batch that reuses the addon's results array.
      engine.pwritevThen(0, buf, 10, (m) => got.push([10, m]));
      engine.stop();
    });
    engine.pwritevThen(0, buf, 1, (n) => got.push([1, n]));
    completeAll();
    expect(got).toEqual([
      [0, 0],
      [10, 10],
      [1, 1],
    ]);
  });
});
