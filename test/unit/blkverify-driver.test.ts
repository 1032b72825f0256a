import { afterEach, describe, expect, it } from 'vitest';
import { BlockDriverState, BlockError } from '../../src/index.js';
import { memStoreCreate, memStoreDelete, memStoreGet } from '../../src/drivers/mem/index.js';
import { blkverifyParseFilename, blkverifyTestImage } from '../../src/drivers/blkverify/index.js';

const names: string[] = [];
function mem(name: string, size: number): string {
  memStoreCreate(name, size);
  names.push(name);
  return `mem:${name}`;
}
afterEach(() => {
  for (const n of names.splice(0)) memStoreDelete(n);
});

describe('blkverify', () => {
  it('parses blkverify:RAW:IMAGE', () => {
    expect(blkverifyParseFilename('blkverify:a.raw:mem:b')).toEqual({ raw: 'a.raw', image: 'mem:b' });
    expect(() => blkverifyParseFilename('blkverify:a.raw')).toThrow(/requires raw copy and original image path/);
    expect(() => blkverifyParseFilename('blkverify::img')).toThrow(BlockError);
  });

  it('writes go to both sides and matching reads pass, unaligned too', async () => {
    const ref = mem('bv-ref', 16384);
    const img = mem('bv-img', 16384);
    const bs = await BlockDriverState.open(`blkverify:${ref}:${img}`, { format: 'raw', driverOptions: { testFormat: 'raw' } });
    expect(blkverifyTestImage(bs)?.filename).toBe(img);
    const data = new Uint8Array(1000).map((_, i) => (i * 7) & 0xff);
    await bs.pwrite(300, data);
    const back = new Uint8Array(1000);
    await bs.pread(300, back);
    expect(back).toEqual(data);
    for (const name of ['bv-ref', 'bv-img']) {
      const out = new Uint8Array(1000);
      memStoreGet(name)!.read(300, [out], 1000);
      expect(out).toEqual(data);
    }
    await bs.close();
  });

  it('fails a read with EIO naming the first differing sector and offset', async () => {
    const ref = mem('bv-ref2', 8192);
    const img = mem('bv-img2', 8192);
    // Make the image under test differ behind blkverify's back, at byte 1234.
    memStoreGet('bv-img2')!.write(1234, [new Uint8Array([0x55])], 1);
    const bs = await BlockDriverState.open(`blkverify:${ref}:${img}`, { format: 'raw', driverOptions: { testFormat: 'raw' } });
    await bs.pread(0, new Uint8Array(1024)); // before the difference: fine
    let err: unknown;
    try {
      await bs.pread(1024, new Uint8Array(2048));
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(BlockError);
    expect((err as BlockError).code).toBe('EIO');
    expect((err as BlockError).message).toBe(
      'blkverify: read sector_num=2 nb_sectors=4 contents mismatch in sector 2 (offset 1234)',
    );
    expect((err as BlockError).offset).toBe(1234);
    await bs.close();
  });

  it('a failing open of the image under test closes the reference again', async () => {
    const ref = mem('bv-ref3', 512);
    let err: unknown;
    try {
      await BlockDriverState.open(`blkverify:${ref}:mem:bv-missing`, { format: 'raw' });
    } catch (e) {
      err = e;
    }
    expect((err as BlockError).code).toBe('ENOENT');
  });
});
