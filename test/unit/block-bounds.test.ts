// Who may go past the end of a protocol node. A node the user opens directly (qemu-io -f file,
// BlockDriverState.open with a protocol as the format) is bounded like QEMU's BlockBackend:
// requests past its (sector-rounded) length fail with EIO and change nothing. A node used as a
// child (a format's file, a filter's image, one opened with `child`) grows on writes past its
// end and reads zeros there, which is how a format driver allocates.
import { describe, expect, it } from 'vitest';
import {
  BlockDriverState,
  bdrvCreate,
  defaultRegistry,
  rawDriver,
} from '../../src/index.js';
import { makeMem, memName, testRegistry } from './block-helpers.js';
import { expectCode, expectRefusedPastEnd, expectSectorTail, makeNines, makeSevens, storeLength } from './block-user-bounds.js';

describe('a protocol node opened by the user', () => {
  it('refuses every request past its end with EIO and changes nothing', async () => {
    const name = makeSevens();
    const bs = await BlockDriverState.open(name, { format: 'mem', registry: testRegistry() });
    expect(bs.growable).toBe(false);
    await expectRefusedPastEnd(bs, name);
    await bs.close();
  });

  it('counts whole sectors: the tail of the last one reads zeros and a write there grows it', async () => {
    const name = makeNines();
    const bs = await BlockDriverState.open(name, { format: 'mem', registry: testRegistry() });
    // QEMU's bdrv_getlength rounds up to the sector; its BlockBackend bounds by that.
    expect(await bs.getLength()).toBe(1024);
    expect(bs.knownLength()).toBe(1024);
    await expectSectorTail(bs, name);
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
