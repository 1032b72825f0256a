/**
 * Zero a range, then write data inside it (what QEMU's qcow2 does for a new cluster whose
 * copy-on-write areas read as zeros: bdrv_co_pwrite_zeroes with BDRV_REQ_NO_FALLBACK, then
 * the guest data). A driver with the coZeroThenPwritev hook gets both as one request (a host
 * file submits them to the kernel linked); any other node, or a request the fast path cannot
 * take, gets the two ordinary requests in that order.
 */
import type { CompletionFunc } from '../aio.js';
import { BlockError } from '../errors.js';
import type { IOVector } from '../iovec.js';
import type { BlockDriverState } from '../node.js';
import { NO_FLAGS, bdrvPwritev, bdrvWriteZeroes } from './write.js';
import { checkArgs, checkWritable, fastBegin, fastPathOk, fastRun, invalidNumber } from './requests.js';
import { trackedEnd, untrack } from './write-submit.js';

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

/**
 * bdrvZeroThenPwritev started now with a completion callback (the driver's
 * zeroThenPwritevSubmit hook), for a request that takes the fast path: true when started
 * (`done` runs later, exactly once, with the hook's contract: ENOTSUP when the range could
 * not be zeroed natively), false when nothing was done and zeroThenPwritev must be used.
 */
export function bdrvZeroThenPwritevSubmit(bs: BlockDriverState, zeroOffset: number, zeroBytes: number, offset: number, qiov: IOVector, done: CompletionFunc): boolean {
  const drv = bs.driver;
  const bytes = qiov.size;
  const align = bs.requestAlignment;
  // What bdrvZeroThenPwritev checks and the conditions of its fast path; anything else goes
  // that way, which reports what was wrong.
  if (drv.zeroThenPwritevSubmit === undefined || bs.readOnly || invalidNumber(zeroOffset) || invalidNumber(zeroBytes) || invalidNumber(offset)) return false;
  if (offset < zeroOffset || offset + bytes > zeroOffset + zeroBytes || offset % align !== 0 || bytes % align !== 0 || !fastPathOk(bs, true, zeroOffset, zeroBytes)) return false;
  // Tracked from before the hook runs until its completion, as bdrvPwritevSubmit's writes.
  const req = fastBegin(bs, zeroOffset, zeroBytes);
  let started = false;
  try {
    started = drv.zeroThenPwritevSubmit(bs, zeroOffset, zeroBytes, offset, bytes, qiov, trackedEnd(bs, req, done));
  } catch {
    // A hook that throws took nothing: the ordinary path tries again and reports the error.
  }
  if (!started) untrack(bs, req);
  return started;
}
