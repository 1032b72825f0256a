// Who may go past the end of a protocol node. A node the user opens directly (qemu-io -f file,
// BlockDriverState.open with a protocol as the format) is bounded like QEMU's BlockBackend:
// requests past its (sector-rounded) length fail with EIO and change nothing. A node used as a
// child (a format's file, a filter's image, one opened with `child`) grows on writes past its
// end and reads zeros there, which is how a format driver allocates.
import { describe, expect, it } from 'vitest';
import {
  BlockDriverState,
  BlockError,
  IOVector,
  bdrvCreate,
  defaultRegistry,
  memStoreGet,
  memStoreRead,
  memStoreWrite,
  rawDriver,
  type BlockErrorCode,
} from '../../src/index.js';
import { makeMem, memName, testRegistry } from './block-helpers.js';

async function expectCode(p: Promise<unknown>, code: BlockErrorCode): Promise<void> {
  const e: unknown = await p.then(
    () => null,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(BlockError);
  expect((e as BlockError).code).toBe(code);
}

function aioWrite(bs: BlockDriverState, sector: number, n: number): Promise<BlockError | null> {
  return new Promise((resolve) => {
    bs.aioWritev(sector, IOVector.alloc(n * 512), n, (err) => resolve(err));
  });
}

function storeLength(name: string): number {
  const s = memStoreGet(name);
  if (!s) throw new Error(`no store ${name}`);
  return s.length;
}

describe('a protocol node opened by the user', () => {
  it('refuses every request past its end with EIO and changes nothing', async () => {
    const name = makeMem(4096);
    memStoreWrite(name, new Uint8Array(4096).fill(7));
    const bs = await BlockDriverState.open(name, { format: 'mem', registry: testRegistry() });
    expect(bs.growable).toBe(false);
    await expectCode(bs.pwrite(4096, new Uint8Array(512)), 'EIO');
    // Straddling the end: nothing of it is written, not even the part inside.
    await expectCode(bs.pwrite(4000, new Uint8Array(200).fill(1)), 'EIO');
    await expectCode(bs.pwritev(3584, new IOVector([new Uint8Array(512), new Uint8Array(512)])), 'EIO');
    await expectCode(bs.pread(4000, new Uint8Array(200)), 'EIO');
    await expectCode(bs.pread(4096, new Uint8Array(1)), 'EIO');
    await expectCode(bs.writeZeroes(4096, 512), 'EIO');
    await expectCode(bs.writeZeroes(4000, 200), 'EIO');
    await expectCode(bs.discard(4095, 2), 'EIO');
    // Even an empty request past the end, as qemu-io's "read 1048577 0".
    await expectCode(bs.pread(4097, new Uint8Array(0)), 'EIO');
    await expectCode(bs.pwrite(4097, new Uint8Array(0)), 'EIO');
    expect((await aioWrite(bs, 8, 1))?.code).toBe('EIO');
    expect((await aioWrite(bs, 7, 2))?.code).toBe('EIO');
    expect(storeLength(name)).toBe(4096);
    expect(memStoreRead(name).every((b) => b === 7)).toBe(true);
    // Up to the end, and empty at the end, are fine.
    await bs.pwrite(4095, Uint8Array.of(1));
    await bs.pread(4096, new Uint8Array(0));
    await bs.writeZeroes(4096, 0);
    expect(await aioWrite(bs, 7, 1)).toBeNull();
    expect(await bs.getLength()).toBe(4096);
    // Truncate still changes the size (qemu-io's truncate), and the new end bounds requests.
    await bs.truncate(8192);
    await bs.pwrite(8000, new Uint8Array(192).fill(2));
    await expectCode(bs.pwrite(8000, new Uint8Array(193)), 'EIO');
    await bs.close();
  });

  it('counts whole sectors: the tail of the last one reads zeros and a write there grows it', async () => {
    const name = makeMem(1000);
    memStoreWrite(name, new Uint8Array(1000).fill(9));
    const bs = await BlockDriverState.open(name, { format: 'mem', registry: testRegistry() });
    // QEMU's bdrv_getlength rounds up to the sector; its BlockBackend bounds by that.
    expect(await bs.getLength()).toBe(1024);
    expect(bs.knownLength()).toBe(1024);
    const back = new Uint8Array(34).fill(0xee);
    await bs.pread(990, back);
    expect([...back.subarray(0, 10)]).toEqual(new Array<number>(10).fill(9));
    expect(back.subarray(10).every((b) => b === 0)).toBe(true);
    expect(await bs.blockStatus(1000, 24)).toMatchObject({ pnum: 24 });
    await expectCode(bs.pwrite(1023, new Uint8Array(2)), 'EIO');
    expect(storeLength(name)).toBe(1000);
    await bs.pwrite(1020, Uint8Array.of(1, 2, 3, 4));
    expect(storeLength(name)).toBe(1024);
    await bs.close();
  });

  it('a filter opened as the top node is bounded too; its image is its child and grows', async () => {
    const name = makeMem(4096);
    const bs = await BlockDriverState.open(`blkdebug::${name}`, { format: 'blkdebug', registry: defaultRegistry });
    expect(bs.growable).toBe(false);
    expect(bs.file?.growable).toBe(true);
    await expectCode(bs.pwrite(4096, new Uint8Array(512)), 'EIO');
    await expectCode(bs.pread(4000, new Uint8Array(200)), 'EIO');
    expect(storeLength(name)).toBe(4096);
    await bs.close();
  });
});

describe('a protocol node used as a child', () => {
  it('under a format node: the format is bounded, its file grows and reads zeros past the end', async () => {
    const name = makeMem(4096);
    const bs = await BlockDriverState.open(name, { format: 'raw', registry: testRegistry() });
    expect(bs.growable).toBe(false);
    await expectCode(bs.pwrite(4096, new Uint8Array(512)), 'EIO');
    const file = bs.file;
    if (!file) throw new Error('raw has no file child');
    expect(file.growable).toBe(true);
    await file.pwrite(6000, new Uint8Array(48).fill(3));
    // A child reports its own length, not whole sectors.
    expect(await file.getLength()).toBe(6048);
    const past = new Uint8Array(100).fill(0xee);
    await file.pread(6000, past);
    expect(past.subarray(0, 48).every((b) => b === 3)).toBe(true);
    expect(past.subarray(48).every((b) => b === 0)).toBe(true);
    await file.writeZeroes(7000, 100);
    expect(storeLength(name)).toBe(7100);
    await bs.close();
  });

  it('QED allocates clusters by writing past the end of its file', async () => {
    const name = memName('qed');
    await bdrvCreate(name, { format: 'qed', options: { size: 16 << 20 }, registry: defaultRegistry });
    const before = storeLength(name);
    const bs = await BlockDriverState.open(name, { format: 'qed', registry: defaultRegistry });
    await bs.pwrite(8 << 20, new Uint8Array(4096).fill(5));
    expect(storeLength(name)).toBeGreaterThan(before);
    const back = new Uint8Array(4096);
    await bs.pread(8 << 20, back);
    expect(back.every((b) => b === 5)).toBe(true);
    await bs.close();
  });

  it('opened with `child`, or put in the file slot of a node built by hand', async () => {
    const name = makeMem(512);
    const registry = testRegistry();
    const child = await BlockDriverState.open(name, { format: 'mem', registry, child: true });
    expect(child.growable).toBe(true);
    await child.pwrite(1024, Uint8Array.of(1));
    expect(storeLength(name)).toBe(1025);
    await child.close();

    const proto = await BlockDriverState.open(name, { format: 'mem', registry });
    expect(proto.growable).toBe(false);
    const bs = new BlockDriverState(rawDriver, name, { registry });
    bs.file = proto;
    await bs.driverOpen();
    expect(proto.growable).toBe(true);
    await proto.pwrite(2048, Uint8Array.of(1));
    expect(storeLength(name)).toBe(2049);
    await bs.close();
  });
});
