/**
 * Reads (QEMU's bdrv_co_preadv): checks, the fast path, padding of unaligned requests with
 * bounce buffers, zero-fill past the end of a growable node, and copy-on-read.
 *
 * Order: argument checks (synchronous), then either the fast path (fastPathOk: the driver
 * hook right away) or, counted in flight, the bounds check, the tracked request (serialising
 * for copy-on-read), the padded driver read.
 */
import { SENDFILE_DECLINED, type SendfileReply } from '../driver-types.js';
import { isBlockError } from '../errors.js';
import { IOVector } from '../iovec.js';
import type { BlockDriverState } from '../node.js';
import { blockStatusUnchecked } from '../status.js';
import { checkArgs, checkBounds, fastBegin, fastEnd, fastPathOk, inflight, invalidNumber, notSupported, roundDown, roundUp, withTracked } from './requests.js';
import { driverPwritev } from './write.js';

export async function bdrvPreadv(bs: BlockDriverState, offset: number, qiov: IOVector): Promise<void> {
  const bytes = qiov.size;
  checkArgs(bs, 'read', offset, bytes);
  const fn = bs.io.coPreadv;
  if (fn !== undefined && fastPathOk(bs, false, offset, bytes)) {
    // Data already at hand (preadvNow's hook, behind the same gate): nothing to track.
    if (bs.driver.preadvNow?.(bs, offset, bytes, qiov) === true) return;
    const req = fastBegin(bs, offset, bytes);
    try {
      await fn(bs, offset, bytes, qiov);
    } finally {
      fastEnd(bs, req, false);
    }
    return;
  }
  await inflight(bs, 'read', () => coPreadv(bs, offset, qiov));
}

/**
 * Read now, synchronously, when the driver can without waiting (its preadvNow hook: the
 * host's page cache): true when `qiov` holds the bytes. False when nothing was done and
 * preadv must be used: only a request the fast path would take qualifies, and preadv handles
 * and reports everything else. The read starts and ends within this call, so it needs no
 * place among the tracked or in-flight requests.
 */
export function preadvNow(bs: BlockDriverState, offset: number, qiov: IOVector): boolean {
  const drv = bs.driver;
  if (drv.preadvNow === undefined) return false;
  const bytes = qiov.size;
  if (invalidNumber(offset) || offset + bytes > Number.MAX_SAFE_INTEGER || !fastPathOk(bs, false, offset, bytes)) return false;
  return drv.preadvNow(bs, offset, bytes, qiov);
}

/**
 * A read's reply sent from the host file into a socket now (the sendfileNow hook), behind
 * preadvNow's checks: SENDFILE_DECLINED when nothing was sent.
 */
export function sendfileNow(bs: BlockDriverState, offset: number, bytes: number, reply: SendfileReply): number {
  const drv = bs.driver;
  if (drv.sendfileNow === undefined) return SENDFILE_DECLINED;
  if (invalidNumber(offset) || offset + bytes > Number.MAX_SAFE_INTEGER || !fastPathOk(bs, false, offset, bytes)) return SENDFILE_DECLINED;
  return drv.sendfileNow(bs, offset, bytes, reply);
}

/** The slow path of a read that passed the synchronous checks and is counted in flight. */
export async function coPreadv(bs: BlockDriverState, offset: number, qiov: IOVector): Promise<void> {
  const bytes = qiov.size;
  const len = await checkBounds(bs, 'read', offset, bytes);
  if (bytes === 0) return;
  const cor = bs.copyOnReadActive;
  await withTracked(bs, offset, bytes, cor, async () => {
    if (cor) await copyOnReadv(bs, offset, qiov, len);
    else await paddingPreadv(bs, offset, qiov, len);
  });
}

export async function driverPreadv(bs: BlockDriverState, offset: number, bytes: number, qiov: IOVector): Promise<void> {
  const fn = bs.io.coPreadv;
  if (!fn) throw notSupported(bs, 'read');
  await fn(bs, offset, bytes, qiov);
}

/**
 * An aligned driver read (bdrv_aligned_preadv); what lies past the end of a growable node
 * reads as zeros, and the driver never sees that part.
 */
export async function alignedPreadv(bs: BlockDriverState, offset: number, qiov: IOVector, len: number): Promise<void> {
  const n = Math.max(0, Math.min(qiov.size, len - offset));
  if (n > 0) await driverPreadv(bs, offset, n, n === qiov.size ? qiov : qiov.slice(0, n));
  if (n < qiov.size) qiov.memset(n, 0);
}

/**
 * Pad an unaligned read out to the request alignment with bounce buffers (bdrv_padding_*).
 * The padded end is clamped to the image length: only the last block of an image whose size
 * is not aligned can be short, and the driver gets exactly that.
 */
export async function paddingPreadv(bs: BlockDriverState, offset: number, qiov: IOVector, len: number): Promise<void> {
  const bytes = qiov.size;
  const align = bs.requestAlignment;
  const start = roundDown(offset, align);
  const end = Math.min(roundUp(offset + bytes, align), Math.max(len, offset + bytes));
  if (start === offset && end === offset + bytes) {
    await alignedPreadv(bs, offset, qiov, len);
    return;
  }
  const padded = new IOVector();
  if (offset > start) padded.add(new Uint8Array(offset - start));
  for (const b of qiov.iov) padded.add(b);
  if (end > offset + bytes) padded.add(new Uint8Array(end - offset - bytes));
  await alignedPreadv(bs, start, padded, len);
}

/**
 * Copy-on-read (qemu-io -C): read the aligned range, then write whatever this layer does not
 * allocate back into it. The request is serialising, so nothing changes the range between
 * the read and the write-back and rewriting a little more than needed is harmless.
 */
async function copyOnReadv(bs: BlockDriverState, offset: number, qiov: IOVector, len: number): Promise<void> {
  const align = bs.requestAlignment;
  const start = roundDown(offset, align);
  const end = Math.min(roundUp(offset + qiov.size, align), len);
  const bounce = new Uint8Array(end - start);
  await driverPreadv(bs, start, end - start, IOVector.from(bounce));

  let pos = start;
  while (pos < end) {
    const st = await blockStatusUnchecked(bs, pos, end - pos);
    const pieceEnd = Math.min(end, roundUp(pos + st.pnum, align));
    if (!st.allocated) {
      const piece = bounce.subarray(pos - start, pieceEnd - start);
      await copyOnReadWrite(bs, pos, piece);
    }
    pos = pieceEnd;
  }
  qiov.copyFrom(bounce.subarray(offset - start, offset - start + qiov.size));
}

async function copyOnReadWrite(bs: BlockDriverState, offset: number, data: Uint8Array): Promise<void> {
  const zero = bs.driver.coWriteZeroes?.bind(bs.driver);
  if (zero && IOVector.from(data).isZero()) {
    try {
      await zero(bs, offset, data.length, {});
      return;
    } catch (e) {
      if (!isBlockError(e, 'ENOTSUP')) throw e;
    }
  }
  await driverPwritev(bs, offset, data.length, IOVector.from(data), {});
}
