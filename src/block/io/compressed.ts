/**
 * Compressed writes (QEMU's bdrv_co_pwritev with BDRV_REQ_WRITE_COMPRESSED): no padding and
 * no fallback, the driver writes whole clusters or refuses. qemu-io `write -c` and
 * qemu-img `convert -c` come through here.
 */
import { bdrvSetDirty } from '../dirty-bitmap.js';
import type { IOVector } from '../iovec.js';
import type { BlockDriverState } from '../node.js';
import { checkArgs, checkBounds, checkWritable, inflight, notSupported, withTracked } from './requests.js';

/** Can this node's driver write compressed clusters (block_driver_can_compress)? */
export function bdrvSupportsCompressedWrites(bs: BlockDriverState): boolean {
  return bs.driver.coPwritevCompressed !== undefined;
}

/**
 * Write `qiov` compressed at `offset`. An empty request is the end-of-stream signal that lets
 * the driver align its file (qcow2 pads it to a whole sector).
 */
export async function bdrvPwritevCompressed(bs: BlockDriverState, offset: number, qiov: IOVector): Promise<void> {
  const bytes = qiov.size;
  checkArgs(bs, 'write_compressed', offset, bytes);
  checkWritable(bs, 'write_compressed');
  const drv = bs.driver;
  if (!drv.coPwritevCompressed) throw notSupported(bs, 'write_compressed');
  await inflight(bs, 'write_compressed', async () => {
    if (bytes !== 0) await checkBounds(bs, 'write_compressed', offset, bytes);
    // Serialising: a compressed cluster replaces whole clusters, nothing may overlap it.
    await withTracked(bs, offset, bytes, true, async () => {
      await bs.debugEvent('pwritev');
      try {
        await drv.coPwritevCompressed?.(bs, offset, bytes, qiov);
      } finally {
        bs.writeGen++;
        bdrvSetDirty(bs, offset, bytes);
        await bs.debugEvent('pwritev_done');
      }
    });
  });
}
