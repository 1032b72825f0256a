/**
 * A downgrade to compat=0.10 refused because the image has zstd-compressed clusters dropped
 * the compatible and autoclear features and lazy refcounts in memory before refusing, while the
 * disk still said v3 with them. The next header write (another amend, say) then silently
 * turned lazy refcounts off on the image, and would have cleared the bitmaps' autoclear bit.
 * A refused amend must leave the image, and the driver's view of it, as they were.
 */
import { afterEach, expect, it } from 'vitest';
import { BlockDriverState, BlockError, IOVector, bdrvAmendOptions, bdrvCreate } from '../../src/index.js';
import { memStoreDelete } from '../../src/drivers/mem/index.js';

const NAME = 'mem:refused-downgrade.qcow2';

afterEach(() => {
  memStoreDelete('refused-downgrade.qcow2');
});

async function lazyRefcounts(bs: BlockDriverState): Promise<unknown> {
  return (await bs.driver.getSpecificInfo?.(bs))?.data['lazy-refcounts'];
}

it('a downgrade refused for zstd clusters keeps lazy refcounts on the image', async () => {
  await bdrvCreate(NAME, { format: 'qcow2', options: { size: 1 << 20, lazyRefcounts: true, compressionType: 'zstd' } });
  const bs = await BlockDriverState.open(NAME, { format: 'qcow2' });
  try {
    await bs.pwrite(0, new Uint8Array(4096).fill(7));
    await bs.pwritevCompressed(65536, IOVector.from(new Uint8Array(65536).fill(3)));
    const refused = await bdrvAmendOptions(bs, { compat: '0.10' }).then(
      () => null,
      (e: unknown) => e,
    );
    expect(refused).toBeInstanceOf(BlockError);
    expect((refused as BlockError).code).toBe('ENOTSUP');
    expect((refused as BlockError).message).toContain('zstd');
    expect(await lazyRefcounts(bs)).toBe(true);
    // A later header rewrite (an amend that changes nothing) writes what memory holds.
    await bdrvAmendOptions(bs, { refcountBits: 16 });
    await bs.pwrite(1 << 19, new Uint8Array(4096).fill(9));
  } finally {
    await bs.close();
  }
  const again = await BlockDriverState.open(NAME, { format: 'qcow2' });
  try {
    expect(await lazyRefcounts(again)).toBe(true);
    const r = await again.check();
    expect(r.corruptions + r.leaks + r.checkErrors).toBe(0);
  } finally {
    await again.close();
  }
});
