/**
 * Zero a range, then write data inside it (what QEMU's qcow2 does for a new cluster whose
 * copy-on-write areas read as zeros: bdrv_co_pwrite_zeroes with BDRV_REQ_NO_FALLBACK, then
 * the guest data). A driver with the coZeroThenPwritev hook gets both as one request (a host
 * file submits them to the kernel linked); any other node, or a request the fast path cannot
 * take, gets the two ordinary requests in that order.
 */
import { BlockError } from '../errors.js';
import type { IOVector } from '../iovec.js';
import type { BlockDriverState } from '../node.js';
import { NO_FLAGS, bdrvPwritev, bdrvWriteZeroes } from './write.js';
import { checkArgs, checkWritable, fastPathOk, fastRun } from './requests.js';

/**
 * Zero [zeroOffset, +zeroBytes) without a fallback write, then write `qiov` at `offset`, which
 * must lie inside the zeroed range. ENOTSUP when the node cannot zero natively: nothing
 * outside the data was changed, the data may have been written (the hook's contract).
 */
export async function bdrvZeroThenPwritev(bs: BlockDriverState, zeroOffset: number, zeroBytes: number, offset: number, qiov: IOVector): Promise<void> {
  const bytes = qiov.size;
  checkArgs(bs, 'write_zeroes', zeroOffset, zeroBytes);
  checkArgs(bs, 'write', offset, bytes);
  checkWritable(bs, 'write');
  if (offset < zeroOffset || offset + bytes > zeroOffset + zeroBytes) {
    throw new BlockError('EINVAL', `write: ${offset}+${bytes} is not inside the zeroed range ${zeroOffset}+${zeroBytes}`, { op: 'write', offset, path: bs.filename });
  }
  const hook = bs.driver.coZeroThenPwritev?.bind(bs.driver);
  const align = bs.requestAlignment;
  // The fast path's conditions over the whole range (no debug events watched, no padding, no
  // conflict): the hook then does exactly what the two requests below would.
  if (hook !== undefined && offset % align === 0 && bytes % align === 0 && fastPathOk(bs, true, zeroOffset, zeroBytes)) {
    await fastRun(bs, zeroOffset, zeroBytes, true, () => hook(bs, zeroOffset, zeroBytes, offset, bytes, qiov));
    return;
  }
  // The data must not be written before the zeroing: it would be cleared.
  await bdrvWriteZeroes(bs, zeroOffset, zeroBytes, { noFallback: true });
  await bdrvPwritev(bs, offset, qiov, NO_FLAGS);
}
