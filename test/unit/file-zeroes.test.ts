// Zeroing and discard on host files: fallocate through the native addon (ZERO_RANGE, PUNCH_HOLE,
// mode 0) in QEMU file-posix's order, and the fallbacks when the host or the addon cannot.
import { readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { IOVector } from '../../src/block/iovec.js';
import { BlockDriverState } from '../../src/block/node.js';
import { loadSeekAddon, type SeekAddon, setSeekAddonForTest } from '../../src/drivers/file/seek.js';
import { useFileNodes } from './file-nodes.js';
import { rejection } from './test-bytes.js';

const KiB = 1024;

const realAddon = loadSeekAddon();
if (realAddon?.punchHole === undefined && process.env.CI === 'true') {
  throw new Error('the native addon (build/Release/blocklayer_seek.node) lacks fallocate: run `npm ci`');
}
const addon: SeekAddon | null = realAddon?.punchHole === undefined ? null : realAddon;

/** A system error shaped like the addon's (code = errno name). */
function sysError(code: string): Error {
  return Object.assign(new Error(`${code}: fallocate`), { code, syscall: 'fallocate' });
}

interface Call {
  op: string;
  offset: number;
  length: number;
}

/**
 * The real addon with some fallocate modes answering an error: records every call, so the
 * order of attempts (QEMU's) can be checked on any host file system.
 */
function scripted(base: SeekAddon, fail: Partial<Record<'zeroRange' | 'punchHole' | 'allocateRange', string>>): {
  addon: SeekAddon;
  calls: Call[];
} {
  const calls: Call[] = [];
  const wrap =
    (op: 'zeroRange' | 'punchHole' | 'allocateRange') =>
    async (fd: number, offset: number, length: number): Promise<void> => {
      calls.push({ op, offset, length });
      const code = fail[op];
      if (code !== undefined) throw sysError(code);
      const fn = base[op];
      if (fn === undefined) throw sysError('ENOTSUP');
      await fn(fd, offset, length);
    };
  return {
    calls,
    addon: {
      seekData: (fd, o) => base.seekData(fd, o),
      seekHole: (fd, o) => base.seekHole(fd, o),
      zeroRange: wrap('zeroRange'),
      punchHole: wrap('punchHole'),
      allocateRange: wrap('allocateRange'),
    },
  };
}

describe.skipIf(addon === null)('file driver zeroing and discard (fallocate)', () => {
  const real = addon as SeekAddon;
  const fx = useFileNodes('file-zeroes', real);
  /** A 256 KiB file of 0x5a, all data. */
  async function dataFile(name: string, size = 256 * KiB): Promise<string> {
    const p = join(fx.dir, name);
    await writeFile(p, new Uint8Array(size).fill(0x5a));
    return p;
  }
  async function status(bs: BlockDriverState, offset: number, bytes: number): Promise<{ pnum: number; zero: boolean; data: boolean }> {
    const st = await bs.blockStatus(offset, bytes);
    return { pnum: st.pnum, zero: st.zero, data: st.data };
  }
  function expectRange(disk: Uint8Array, start: number, end: number, v: number): void {
    const bad = disk.subarray(start, end).findIndex((b) => b !== v);
    if (bad >= 0) expect.fail(`byte ${start + bad} is ${disk[start + bad]}, expected ${v}`);
  }

  it('writeZeroes with mayUnmap punches a hole: block status zero, reads zeros, size and neighbours kept', async () => {
    const p = await dataFile('u.img');
    const bs = await fx.opened(p);
    const before = (await stat(p)).blocks;
    await bs.writeZeroes(64 * KiB, 64 * KiB, { mayUnmap: true });
    expect(await status(bs, 64 * KiB, 64 * KiB)).toEqual({ pnum: 64 * KiB, zero: true, data: false });
    expect((await status(bs, 0, 64 * KiB)).data).toBe(true);
    expect((await status(bs, 128 * KiB, 64 * KiB)).data).toBe(true);
    expect((await stat(p)).blocks).toBeLessThan(before);
    const disk = await readFile(p);
    expect(disk.length).toBe(256 * KiB);
    expectRange(disk, 0, 64 * KiB, 0x5a);
    expectRange(disk, 64 * KiB, 128 * KiB, 0);
    expectRange(disk, 128 * KiB, 256 * KiB, 0x5a);
    expect(await bs.getLength()).toBe(256 * KiB);
  });

  it('discard punches a hole; unaligned edges read as zeros too', async () => {
    const p = await dataFile('d.img');
    const bs = await fx.opened(p);
    await bs.discard(4 * KiB + 100, 20 * KiB);
    // The whole blocks inside become a hole; the partial blocks at both ends are zeroed in place.
    expect(await status(bs, 8 * KiB, 16 * KiB)).toEqual({ pnum: 16 * KiB, zero: true, data: false });
    const disk = await readFile(p);
    expect(disk.length).toBe(256 * KiB);
    expectRange(disk, 0, 4 * KiB + 100, 0x5a);
    expectRange(disk, 4 * KiB + 100, 24 * KiB + 100, 0);
    expectRange(disk, 24 * KiB + 100, 256 * KiB, 0x5a);
    // Past EOF a discard changes nothing and keeps the size.
    await bs.discard(300 * KiB, 4 * KiB);
    expect((await stat(p)).size).toBe(256 * KiB);
    expect(await bs.getLength()).toBe(256 * KiB);
  });

  it('writeZeroes without mayUnmap zeroes in place (ZERO_RANGE first) and reads as zeros', async () => {
    const p = await dataFile('z.img');
    const bs = await fx.opened(p);
    const s = scripted(real, {});
    setSeekAddonForTest(s.addon);
    await bs.writeZeroes(32 * KiB, 32 * KiB, { noFallback: true });
    expect(s.calls).toEqual([{ op: 'zeroRange', offset: 32 * KiB, length: 32 * KiB }]);
    // Whether a ZERO_RANGE shows as a hole to SEEK_DATA depends on the file system (ext4 may
    // keep it as data): only the bytes are checked here; interop compares the map with QEMU's.
    expect(await bs.getLength()).toBe(256 * KiB);
    const disk = await readFile(p);
    expect(disk.length).toBe(256 * KiB);
    expectRange(disk, 0, 32 * KiB, 0x5a);
    expectRange(disk, 32 * KiB, 64 * KiB, 0);
    expectRange(disk, 64 * KiB, 256 * KiB, 0x5a);
  });

  it('zeroing past EOF grows the file (ZERO_RANGE), a punched hole past EOF does not', async () => {
    const p = await dataFile('g.img', 1001);
    const bs = await fx.opened(p);
    await bs.writeZeroes(512, 512);
    expect((await stat(p)).size).toBe(1024);
    expect(await bs.getLength()).toBe(1024);
    const disk = await readFile(p);
    expectRange(disk, 0, 512, 0x5a);
    expectRange(disk, 512, 1024, 0);
    await bs.writeZeroes(8 * KiB, 4 * KiB, { mayUnmap: true });
    expect((await stat(p)).size).toBe(1024);
    expect(await bs.getLength()).toBe(1024);
    // Wholly past EOF without unmap: grows, and the new space reads as zeros.
    await bs.writeZeroes(16 * KiB, 4 * KiB);
    expect((await stat(p)).size).toBe(20 * KiB);
    expect(await bs.getLength()).toBe(20 * KiB);
    expectRange(await readFile(p), 1024, 20 * KiB, 0);
  });

  it('mayUnmap on a host that cannot punch falls back to ZERO_RANGE (ENOTSUP, EINVAL, EBUSY)', async () => {
    for (const code of ['ENOTSUP', 'EINVAL', 'EBUSY']) {
      const p = await dataFile(`np-${code}.img`);
      const bs = await fx.opened(p);
      const s = scripted(real, { punchHole: code });
      setSeekAddonForTest(s.addon);
      await bs.writeZeroes(0, 8 * KiB, { mayUnmap: true });
      expect(s.calls.map((c) => c.op)).toEqual(['punchHole', 'zeroRange']);
      expectRange(await readFile(p), 0, 8 * KiB, 0);
    }
  });

  it('without ZERO_RANGE: punch a hole then allocate it again; ZERO_RANGE is not asked twice', async () => {
    const p = await dataFile('pa.img');
    const bs = await fx.opened(p);
    const s = scripted(real, { zeroRange: 'ENOTSUP' });
    setSeekAddonForTest(s.addon);
    await bs.writeZeroes(4 * KiB, 8 * KiB);
    expect(s.calls.map((c) => c.op)).toEqual(['zeroRange', 'punchHole', 'allocateRange']);
    s.calls.length = 0;
    await bs.writeZeroes(64 * KiB, 8 * KiB, { noFallback: true });
    expect(s.calls.map((c) => c.op)).toEqual(['punchHole', 'allocateRange']);
    const disk = await readFile(p);
    expectRange(disk, 0, 4 * KiB, 0x5a);
    expectRange(disk, 4 * KiB, 12 * KiB, 0);
    expectRange(disk, 64 * KiB, 72 * KiB, 0);
    expectRange(disk, 72 * KiB, 256 * KiB, 0x5a);
  });

  it('EINVAL from ZERO_RANGE tries the next way for this request but keeps ZERO_RANGE for later', async () => {
    const p = await dataFile('ei.img');
    const bs = await fx.opened(p);
    const s = scripted(real, { zeroRange: 'EINVAL' });
    setSeekAddonForTest(s.addon);
    await bs.writeZeroes(0, 4 * KiB);
    await bs.writeZeroes(8 * KiB, 4 * KiB);
    expect(s.calls.map((c) => c.op)).toEqual(['zeroRange', 'punchHole', 'allocateRange', 'zeroRange', 'punchHole', 'allocateRange']);
  });

  it('nothing usable: ENOTSUP, so the generic layer writes zeros, or noFallback reports ENOTSUP untouched', async () => {
    const p = await dataFile('ns.img');
    const bs = await fx.opened(p);
    const s = scripted(real, { zeroRange: 'ENOTSUP', punchHole: 'ENOTSUP', allocateRange: 'ENOTSUP' });
    setSeekAddonForTest(s.addon);
    const e = await rejection(bs.writeZeroes(0, 4 * KiB, { noFallback: true }));
    expect(e.code).toBe('ENOTSUP');
    expectRange(await readFile(p), 0, 256 * KiB, 0x5a);
    await bs.writeZeroes(0, 4 * KiB, { mayUnmap: true });
    const disk = await readFile(p);
    expectRange(disk, 0, 4 * KiB, 0);
    expectRange(disk, 4 * KiB, 256 * KiB, 0x5a);
    // Discard is advisory: it succeeds and the data stays.
    await bs.discard(64 * KiB, 64 * KiB);
    expectRange(await readFile(p), 64 * KiB, 128 * KiB, 0x5a);
  });

  it('other fallocate errors are reported, not papered over with a zero write', async () => {
    const p = await dataFile('e.img');
    const bs = await fx.opened(p);
    setSeekAddonForTest(scripted(real, { zeroRange: 'ENOSPC' }).addon);
    expect((await rejection(bs.writeZeroes(0, 4 * KiB))).code).toBe('ENOSPC');
    setSeekAddonForTest(scripted(real, { punchHole: 'EIO' }).addon);
    expect((await rejection(bs.discard(0, 4 * KiB))).code).toBe('EIO');
    expect((await rejection(bs.writeZeroes(0, 4 * KiB, { mayUnmap: true }))).code).toBe('EIO');
    expectRange(await readFile(p), 0, 256 * KiB, 0x5a);
  });

  it('addon missing (test seam): zeroing writes zeros through the generic layer, discard is a no-op', async () => {
    const p = await dataFile('m.img');
    const bs = await fx.opened(p);
    setSeekAddonForTest(null);
    await bs.writeZeroes(0, 8 * KiB, { mayUnmap: true });
    await bs.writeZeroes(250 * KiB, 12 * KiB);
    expect((await rejection(bs.writeZeroes(16 * KiB, 4 * KiB, { noFallback: true }))).code).toBe('ENOTSUP');
    await bs.discard(32 * KiB, 32 * KiB);
    const disk = await readFile(p);
    expect(disk.length).toBe(262 * KiB);
    expect(await bs.getLength()).toBe(262 * KiB);
    expectRange(disk, 0, 8 * KiB, 0);
    expectRange(disk, 8 * KiB, 250 * KiB, 0x5a);
    expectRange(disk, 250 * KiB, 262 * KiB, 0);
  });

  it('through a raw node: flags and discard reach the file', async () => {
    const p = await dataFile('r.raw');
    const bs = await fx.opened(p, 'raw');
    await bs.writeZeroes(64 * KiB, 64 * KiB, { mayUnmap: true });
    await bs.discard(192 * KiB, 64 * KiB);
    await bs.writeZeroes(0, 4 * KiB, { noFallback: true });
    expect((await status(bs, 64 * KiB, 64 * KiB)).zero).toBe(true);
    expect((await status(bs, 192 * KiB, 64 * KiB)).zero).toBe(true);
    const disk = await readFile(p);
    expectRange(disk, 0, 4 * KiB, 0);
    expectRange(disk, 4 * KiB, 64 * KiB, 0x5a);
    expectRange(disk, 64 * KiB, 128 * KiB, 0);
    expectRange(disk, 128 * KiB, 192 * KiB, 0x5a);
    expectRange(disk, 192 * KiB, 256 * KiB, 0);
  });

  it('zeroThenPwritev zeroes the range, then writes the data inside it (past EOF: the file grows)', async () => {
    const p = await dataFile('zw.img');
    const bs = await fx.opened(p);
    await bs.zeroThenPwritev(64 * KiB, 64 * KiB, 72 * KiB, IOVector.from(new Uint8Array(4 * KiB).fill(0x77)));
    await bs.zeroThenPwritev(256 * KiB, 64 * KiB, 256 * KiB, IOVector.from(new Uint8Array(8 * KiB).fill(0x66)));
    expect(await bs.getLength()).toBe(320 * KiB);
    const disk = await readFile(p);
    expect(disk.length).toBe(320 * KiB);
    expectRange(disk, 0, 64 * KiB, 0x5a);
    expectRange(disk, 64 * KiB, 72 * KiB, 0);
    expectRange(disk, 72 * KiB, 76 * KiB, 0x77);
    expectRange(disk, 76 * KiB, 128 * KiB, 0);
    expectRange(disk, 128 * KiB, 256 * KiB, 0x5a);
    expectRange(disk, 256 * KiB, 264 * KiB, 0x66);
    expectRange(disk, 264 * KiB, 320 * KiB, 0);
    await expect(bs.zeroThenPwritev(0, 4 * KiB, 2 * KiB, IOVector.from(new Uint8Array(4 * KiB)))).rejects.toMatchObject({ code: 'EINVAL' });
  });

  it('zeroThenPwritev where nothing zeroes natively: ENOTSUP, the range untouched (no engine)', async () => {
    const { addon: a, calls } = scripted(real, { zeroRange: 'ENOTSUP', punchHole: 'ENOTSUP', allocateRange: 'ENOTSUP' });
    setSeekAddonForTest(a);
    const p = await dataFile('zn.img');
    const bs = await fx.opened(p);
    await expect(bs.zeroThenPwritev(0, 64 * KiB, 0, IOVector.from(new Uint8Array(4 * KiB).fill(0x77)))).rejects.toMatchObject({ code: 'ENOTSUP' });
    expect(calls.map((c) => c.op)).toEqual(['zeroRange', 'punchHole']);
    expectRange(await readFile(p), 0, 256 * KiB, 0x5a);
  });

  it('the addon validates its arguments and rejects with the errno name', async () => {
    expect(() => real.punchHole?.(0, 0, 0)).toThrow();
    expect(() => real.zeroRange?.(-1, 0, 1)).toThrow();
    await expect(real.punchHole?.(1 << 30, 0, 1)).rejects.toMatchObject({ code: 'EBADF', syscall: 'fallocate' });
  });
});
