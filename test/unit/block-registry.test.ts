import { describe, expect, it } from 'vitest';
import {
  AIOPool,
  BlockAIOCB,
  BlockDriverRegistry,
  BlockDriverState,
  BlockError,
  IOVector,
  defaultRegistry,
  driverIO,
  genericAioPool,
  memDriver,
  type BlockDriver,
} from '../../src/index.js';
import { makeMem } from './block-helpers.js';

function prober(name: string, score: number | ((buf: Uint8Array) => number)): BlockDriver {
  return { formatName: name, probe: (buf) => (typeof score === 'number' ? score : score(buf)) };
}

describe('BlockDriverRegistry', () => {
  it('finds drivers by name and lists them in registration order', () => {
    const r = new BlockDriverRegistry();
    const a = prober('a', 1);
    const b = prober('b', 2);
    r.register(a).register(b);
    expect(r.find('a')).toBe(a);
    expect(r.find('zz')).toBeUndefined();
    expect(r.list().map((d) => d.formatName)).toEqual(['a', 'b']);
    expect(() => r.require('zz')).toThrow(BlockError);
    // Re-registering a name replaces it and moves it last.
    const a2 = prober('a', 3);
    r.register(a2);
    expect(r.find('a')).toBe(a2);
    expect(r.list().map((d) => d.formatName)).toEqual(['b', 'a']);
  });

  it('probe: highest score wins, ties go to the latest registered, no claim is EMEDIUMTYPE', () => {
    const r = new BlockDriverRegistry();
    const raw = prober('raw', 1);
    const magic = prober('magic', (buf) => (buf[0] === 0x51 ? 100 : 0));
    const tieA = prober('tieA', 50);
    const tieB = prober('tieB', 50);
    r.register(raw).register(magic).register(tieA).register(tieB);
    expect(r.probe(new Uint8Array([0x51]), 'x').formatName).toBe('magic');
    expect(r.probe(new Uint8Array([0]), 'x').formatName).toBe('tieB');
    r.register(tieA); // now later than tieB
    expect(r.probe(new Uint8Array([0]), 'x').formatName).toBe('tieA');
    const none = new BlockDriverRegistry().register(prober('z', 0)).register({ formatName: 'noprobe' });
    try {
      none.probe(new Uint8Array(16), 'img');
      expect.unreachable();
    } catch (e) {
      expect(e).toBeInstanceOf(BlockError);
      expect((e as BlockError).code).toBe('EMEDIUMTYPE');
      expect((e as BlockError).message).toBe('Could not determine image format');
    }
  });

  it('probe sees at most 2 KiB and gets the filename', () => {
    const r = new BlockDriverRegistry();
    let seen = -1;
    let name = '';
    r.register({
      formatName: 'p',
      probe(buf, filename) {
        seen = buf.length;
        name = filename;
        return 1;
      },
    });
    r.probe(new Uint8Array(10000), 'disk.img');
    expect(seen).toBe(2048);
    expect(name).toBe('disk.img');
    r.probe(new Uint8Array(100), 'd');
    expect(seen).toBe(100);
  });

  it('findProtocol: by prefix, else the file driver', () => {
    const r = new BlockDriverRegistry();
    expect(() => r.findProtocol('/tmp/x')).toThrow(BlockError);
    const file: BlockDriver = { formatName: 'file', protocolName: 'file', isProtocol: true };
    r.register(file).register(memDriver);
    expect(r.findProtocol('mem:disk').formatName).toBe('mem');
    expect(r.findProtocol('/tmp/mem:x')).toBe(file);
    expect(r.findProtocol('file:/tmp/x')).toBe(file);
    expect(r.findProtocol('memory')).toBe(file);
  });

  it('the default registry has every built-in driver and raw loses to a magic', () => {
    const names = defaultRegistry.list().map((d) => d.formatName);
    for (const n of ['file', 'mem', 'raw', 'qed', 'blkdebug', 'blkverify']) expect(names).toContain(n);
    const qedMagic = new Uint8Array(64);
    qedMagic.set([0x51, 0x45, 0x44, 0x00]);
    expect(defaultRegistry.probe(qedMagic, 'x').formatName).toBe('qed');
    expect(defaultRegistry.probe(new Uint8Array(64), 'x').formatName).toBe('raw');
  });
});

/** An in-memory protocol with only sector-based AIO hooks and its own AIOCB pool. */
function aioOnlyDriver(size: number): { drv: BlockDriver; pool: AIOPool<BlockAIOCB>; calls: string[] } {
  const pool = new AIOPool<BlockAIOCB>((p) => new BlockAIOCB(p));
  const calls: string[] = [];
  const drv: BlockDriver = {
    formatName: 'aioonly',
    protocolName: 'aioonly',
    isProtocol: true,
    requestAlignment: 512,
    async open(bs) {
      bs.opaque = new Uint8Array(size);
    },
    getLength: (bs) => (bs.opaque as Uint8Array).length,
    aioReadv(bs, sectorNum, qiov, nbSectors, cb) {
      calls.push(`r${sectorNum}+${nbSectors}`);
      return pool.get(bs, cb).start(async () => {
        await Promise.resolve();
        qiov.copyFrom((bs.opaque as Uint8Array).subarray(sectorNum * 512, (sectorNum + nbSectors) * 512));
      });
    },
    aioWritev(bs, sectorNum, qiov, nbSectors, cb) {
      calls.push(`w${sectorNum}+${nbSectors}`);
      return pool.get(bs, cb).start(async () => {
        await Promise.resolve();
        qiov.copyTo((bs.opaque as Uint8Array).subarray(sectorNum * 512, (sectorNum + nbSectors) * 512));
      });
    },
  };
  return { drv, pool, calls };
}

describe('read/write adapters', () => {
  it('an AIO-only driver gets coroutine hooks (bytes to sectors) without being mutated', async () => {
    const { drv, calls } = aioOnlyDriver(8192);
    const keys = Object.keys(drv).sort();
    const io = driverIO(drv);
    expect(io.coPreadv).toBeTypeOf('function');
    expect(io.coPwritev).toBeTypeOf('function');
    expect(io.aioReadv).toBeTypeOf('function');
    expect(Object.keys(drv).sort()).toEqual(keys);
    expect(driverIO(drv)).toBe(io);

    const r = new BlockDriverRegistry().register(drv);
    const bs = await BlockDriverState.open('aioonly:x', { registry: r, format: 'aioonly' });
    expect(bs.requestAlignment).toBe(512);
    // Unaligned byte requests are padded by the generic layer, then reach the AIO hooks in sectors.
    await bs.pwrite(1000, new Uint8Array(100).fill(9));
    expect(calls).toEqual(['r1+1', 'r2+1', 'w1+2']);
    const back = new Uint8Array(102);
    await bs.pread(999, back);
    expect(back[0]).toBe(0);
    expect(back.subarray(1, 101).every((b) => b === 9)).toBe(true);
    expect(back[101]).toBe(0);
    // A direct adapter call with bytes that are not whole sectors is refused.
    await expect(io.coPreadv!(bs, 1, 512, IOVector.alloc(512))).rejects.toMatchObject({ code: 'EINVAL' });
    await bs.close();
  });

  it('a coroutine-only driver gets AIO hooks through the generic pool; callbacks are never synchronous', async () => {
    const name = makeMem(4096);
    const r = new BlockDriverRegistry().register(memDriver);
    const bs = await BlockDriverState.open(name, { registry: r, format: 'mem' });
    const io = driverIO(memDriver);
    expect(io.aioWritev).toBeTypeOf('function');
    const before = genericAioPool.created;
    let done = 0;
    let returned = false;
    const acb = io.aioWritev!(bs, 1, IOVector.from(new Uint8Array(512).fill(4)), 1, (err) => {
      expect(err).toBeNull();
      expect(returned).toBe(true);
      done++;
    });
    returned = true;
    expect(acb).toBeInstanceOf(BlockAIOCB);
    expect(acb.pool).toBe(genericAioPool);
    expect(done).toBe(0);
    await new Promise<void>((resolve) => {
      const buf = new Uint8Array(512);
      io.aioReadv!(bs, 1, IOVector.from(buf), 1, (err) => {
        expect(err).toBeNull();
        expect(buf.every((b) => b === 4)).toBe(true);
        resolve();
      });
    });
    expect(done).toBe(1);
    expect(genericAioPool.created - before).toBeLessThanOrEqual(2);
    await bs.close();
  });
});
