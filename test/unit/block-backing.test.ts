import { describe, expect, it } from 'vitest';
import {
  BlockDriverRegistry,
  BlockDriverState,
  BlockError,
  MAX_BACKING_DEPTH,
  bdrvCreate,
  memStoreCreate,
  memStoreExists,
  memDriver,
  memStoreWrite,
  rawDriver,
  type BlockDriver,
} from '../../src/index.js';
import { chainDriver, makeStrictDriver, memName, testRegistry } from './block-helpers.js';

const registry = testRegistry();

async function openError(filename: string, opts: Parameters<typeof BlockDriverState.open>[1] = {}): Promise<BlockError> {
  const e: unknown = await BlockDriverState.open(filename, { registry, ...opts }).then(
    async (bs) => {
      await bs.close();
      return null;
    },
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(BlockError);
  return e as BlockError;
}

/** A unique mem "directory" for one test. */
function dir(): string {
  return memName('dir');
}

async function mkChain(filename: string, backingFile: string, backingFmt = 'tchain', size = 4096): Promise<void> {
  await bdrvCreate(filename, {
    format: 'tchain',
    options: { size, backingFile: backingFile === '' ? undefined : backingFile, backingFmt: backingFile === '' ? undefined : backingFmt },
    unsafe: true,
    registry,
  });
}

describe('backing chains', () => {
  it('probes the format and opens the backing file relative to the image, read-only', async () => {
    const d = dir();
    memStoreCreate(`${d}/base.raw`, 4096);
    memStoreWrite(`${d}/base.raw`, new Uint8Array(4096).fill(0x11));
    await mkChain(`${d}/sub/top.tc`, '../base.raw', 'raw');
    const bs = await BlockDriverState.open(`${d}/sub/top.tc`, { registry });
    expect(bs.driver.formatName).toBe('tchain');
    expect(bs.backingFile).toBe('../base.raw');
    expect(bs.backingFormat).toBe('raw');
    expect(bs.fullBackingFilename).toBe(`${d}/base.raw`);
    const backing = bs.backing!;
    expect(backing.driver.formatName).toBe('raw');
    expect(backing.readOnly).toBe(true);
    expect(backing.depth).toBe(1);
    expect(bs.readOnly).toBe(false);
    const buf = new Uint8Array(10);
    await bs.pread(100, buf);
    expect(buf.every((b) => b === 0x11)).toBe(true);
    await bs.pwrite(0, new Uint8Array(512).fill(0x22));
    await expect(backing.pwrite(0, new Uint8Array(1))).rejects.toMatchObject({ code: 'EACCES' });
    await bs.close();
    expect(backing.isOpen).toBe(false);
  });

  it('probes the backing format when none is recorded, and options.backingFormat overrides', async () => {
    const d = dir();
    await mkChain(`${d}/base.tc`, '');
    await mkChain(`${d}/top.tc`, 'base.tc', '');
    const bs = await BlockDriverState.open(`${d}/top.tc`, { registry });
    expect(bs.backingFormat).toBe('');
    expect(bs.backing!.driver.formatName).toBe('tchain');
    await bs.close();
    // Forcing raw opens the same bytes as raw.
    const forced = await BlockDriverState.open(`${d}/top.tc`, { registry, backingFormat: 'raw' });
    expect(forced.backing!.driver.formatName).toBe('raw');
    await forced.close();
  });

  it('walks allocation through the chain (isAllocatedAbove, blockStatusAbove)', async () => {
    const d = dir();
    await mkChain(`${d}/base.tc`, '', 'tchain', 8192);
    await mkChain(`${d}/mid.tc`, 'base.tc', 'tchain', 8192);
    await mkChain(`${d}/top.tc`, 'mid.tc', 'tchain', 8192);
    {
      const base = await BlockDriverState.open(`${d}/base.tc`, { registry });
      await base.pwrite(0, new Uint8Array(1024).fill(1));
      await base.close();
      const mid = await BlockDriverState.open(`${d}/mid.tc`, { registry, noBacking: true });
      await mid.pwrite(2048, new Uint8Array(512).fill(2));
      await mid.close();
    }
    const top = await BlockDriverState.open(`${d}/top.tc`, { registry });
    await top.pwrite(4096, new Uint8Array(512).fill(3));
    const mid = top.backing!;
    const base = mid.backing!;
    expect(base.depth).toBe(2);
    expect(await top.isAllocatedAbove(null, 0, 8192)).toEqual({ allocated: true, pnum: 1024 });
    expect(await top.isAllocatedAbove(base, 0, 8192)).toEqual({ allocated: false, pnum: 2048 });
    expect(await top.isAllocatedAbove(null, 1024, 8192 - 1024)).toEqual({ allocated: false, pnum: 1024 });
    expect(await top.isAllocatedAbove(null, 2048, 4096)).toEqual({ allocated: true, pnum: 512 });
    expect(await top.isAllocatedAbove(top, 4096, 512)).toEqual({ allocated: false, pnum: 512 });
    expect(await top.isAllocatedAbove(null, 4096, 4096)).toEqual({ allocated: true, pnum: 512 });
    expect(await top.blockStatusAbove(0, 8192)).toMatchObject({ allocated: true, depth: 2, pnum: 1024 });
    expect(await top.blockStatusAbove(2048, 8192 - 2048)).toMatchObject({ allocated: true, depth: 1, pnum: 512 });
    expect(await top.blockStatusAbove(4096, 4096)).toMatchObject({ allocated: true, depth: 0, pnum: 512 });
    expect(await top.blockStatusAbove(6000, 100)).toMatchObject({ allocated: false, depth: 2, pnum: 100 });
    // This layer only.
    expect(await top.blockStatus(0, 8192)).toMatchObject({ allocated: false, pnum: 4096 });
    await top.close();
  });

  it('reports a missing backing file as ENOENT with QEMU-like wording and leaves nothing open', async () => {
    const d = dir();
    await mkChain(`${d}/top.tc`, 'nothere.tc');
    const e = await openError(`${d}/top.tc`);
    expect(e.code).toBe('ENOENT');
    expect(e.message).toBe(`Could not open backing file: Could not open '${d}/nothere.tc': No such file or directory`);
    // noBacking opens the image alone.
    const bs = await BlockDriverState.open(`${d}/top.tc`, { registry, noBacking: true });
    expect(bs.backing).toBeNull();
    expect(bs.backingFile).toBe('nothere.tc');
    expect(bs.fullBackingFilename).toBe(`${d}/nothere.tc`);
    await bs.close();
  });

  it('closes what it opened when an open fails anywhere in the chain', async () => {
    const d = dir();
    let live = 0;
    const countedMem: BlockDriver = {
      ...memDriver,
      async open(bs, o) {
        await memDriver.open!(bs, o);
        live++;
      },
      async close(bs) {
        live--;
        await memDriver.close!(bs);
      },
    };
    const failing: BlockDriver = {
      ...makeStrictDriver({ name: 'failing' }),
      probe: (buf) => (buf[0] === 0x43 && buf[1] === 0x4e ? 100 : 0),
      async open() {
        throw new BlockError('EIO', 'boom');
      },
    };
    const reg = new BlockDriverRegistry().register(countedMem).register(rawDriver).register(chainDriver).register(failing);
    memStoreCreate(`${d}/base.cnt`, 4096);
    memStoreWrite(`${d}/base.cnt`, new Uint8Array([0x43, 0x4e]));
    await bdrvCreate(`${d}/mid.tc`, { format: 'tchain', options: { size: 4096, backingFile: 'base.cnt' }, unsafe: true, registry: reg });
    await bdrvCreate(`${d}/top.tc`, { format: 'tchain', options: { size: 4096, backingFile: 'mid.tc' }, unsafe: true, registry: reg });
    expect(live).toBe(0);
    const e = await BlockDriverState.open(`${d}/top.tc`, { registry: reg }).then(
      () => null,
      (err: unknown) => err as BlockError,
    );
    expect(e?.code).toBe('EIO');
    expect(e?.message).toBe('Could not open backing file: boom');
    expect(live).toBe(0);
    // A format open failing at the top closes its protocol node too.
    const bad = await BlockDriverState.open(`${d}/base.cnt`, { registry: reg, format: 'tchain' }).then(
      () => null,
      (err: unknown) => err as BlockError,
    );
    expect(bad?.code).toBe('EINVAL');
    expect(live).toBe(0);
    // And a good chain opens three protocol nodes and closes them all.
    const ok = await BlockDriverState.open(`${d}/mid.tc`, { registry: reg, backingFormat: 'raw' });
    expect(live).toBe(2);
    await ok.close();
    expect(live).toBe(0);
  });

  it('refuses a cycle with a clear error instead of overflowing the stack', async () => {
    const d = dir();
    await mkChain(`${d}/a.tc`, 'b.tc');
    await mkChain(`${d}/b.tc`, './a.tc');
    const e = await openError(`${d}/a.tc`);
    expect(e.code).toBe('ELOOP');
    expect(e.message).toContain('cycle');
    expect(e.message).toContain(`${d}/a.tc -> ${d}/b.tc -> ${d}/a.tc`);
    // An image that is its own backing file.
    await mkChain(`${d}/self.tc`, 'self.tc');
    expect((await openError(`${d}/self.tc`)).code).toBe('ELOOP');
  });

  it(`opens ${MAX_BACKING_DEPTH} backing levels and refuses one more`, async () => {
    const d = dir();
    const n = MAX_BACKING_DEPTH + 1; // images 0..n, image i backed by i+1
    await mkChain(`${d}/img${n}.tc`, '');
    for (let i = n - 1; i >= 0; i--) await mkChain(`${d}/img${i}.tc`, `img${i + 1}.tc`);
    // img1 has exactly MAX_BACKING_DEPTH levels below it.
    const ok = await BlockDriverState.open(`${d}/img1.tc`, { registry });
    let levels = 0;
    for (let b = ok.backing; b; b = b.backing) levels++;
    expect(levels).toBe(MAX_BACKING_DEPTH);
    await ok.close();
    const e = await openError(`${d}/img0.tc`);
    expect(e.code).toBe('ELOOP');
    expect(e.message).toContain('too deep');
  });

  it('resolves absolute and protocol-prefixed backing names as they are', async () => {
    const d = dir();
    const other = memName('abs');
    memStoreCreate(other, 4096);
    await mkChain(`${d}/top.tc`, other, 'raw');
    const bs = await BlockDriverState.open(`${d}/top.tc`, { registry });
    expect(bs.fullBackingFilename).toBe(other);
    await bs.close();
  });

  it('changeBackingFile updates the node and the image; the open backing stays', async () => {
    const d = dir();
    await mkChain(`${d}/base.tc`, '');
    await mkChain(`${d}/top.tc`, 'base.tc');
    const bs = await BlockDriverState.open(`${d}/top.tc`, { registry });
    const oldBacking = bs.backing;
    await bs.changeBackingFile('other.tc', 'tchain');
    expect(bs.backingFile).toBe('other.tc');
    expect(bs.backingFormat).toBe('tchain');
    expect(bs.fullBackingFilename).toBe(`${d}/other.tc`);
    expect(bs.backing).toBe(oldBacking);
    await bs.close();
    const again = await BlockDriverState.open(`${d}/top.tc`, { registry, noBacking: true });
    expect(again.backingFile).toBe('other.tc');
    await again.close();
  });

  it('fails cleanly when no driver claims the image', async () => {
    const name = memName('unknown');
    memStoreCreate(name, 4096);
    // Without raw nobody claims it.
    const noRaw = new BlockDriverRegistry().register(memDriver).register(chainDriver);
    const e = await BlockDriverState.open(name, { registry: noRaw }).then(
      () => null,
      (err: unknown) => err as BlockError,
    );
    expect(e?.code).toBe('EMEDIUMTYPE');
    expect(e?.message).toBe('Could not determine image format');
    expect(memStoreExists(name)).toBe(true);
  });

  it('rejects an unknown format name', async () => {
    const name = memName('fmt');
    memStoreCreate(name, 512);
    const e = await openError(name, { format: 'nope' });
    expect(e.code).toBe('EINVAL');
    expect(e.message).toContain("'nope'");
  });
});
