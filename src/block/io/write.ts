/**
 * Writes, zero writes and discard (QEMU's bdrv_co_pwritev, bdrv_co_pwrite_zeroes,
 * bdrv_co_pdiscard): padding with read-modify-write, FUA emulation, the debug events of a
 * write, and the write generation a flush looks at.
 *
 * Order of a write: argument and read-only checks (synchronous), then the fast path or,
 * counted in flight, the bounds check, the tracked request (serialising when it needs RMW:
 * nothing may change the head or tail block between our read and our write), the RMW reads,
 * `pwritev`, the driver write, `pwritev_done`, and writeGen++ (even on failure: the driver may
 * have written part of it).
 */
import { bdrvSetDirty } from '../dirty-bitmap.js';
import { BlockError, isBlockError } from '../errors.js';
import { BDRV_ZERO_CHUNK, type WriteFlags, type WriteZeroesFlags } from '../driver.js';
import { IOVector } from '../iovec.js';
import type { BlockDriverState } from '../node.js';
import { bdrvFlush } from './flush.js';
import { alignedPreadv } from './read.js';
import { pwritevSubmitted } from './write-submit.js';
import { checkArgs, checkBounds, checkWritable, fastBegin, fastEnd, fastPathOk, inflight, notSupported, roundDown, roundUp, withTracked } from './requests.js';

/** Default write flags, shared (never mutated). */
export const NO_FLAGS: WriteFlags = Object.freeze({});

export function bdrvPwritev(bs: BlockDriverState, offset: number, qiov: IOVector, flags: WriteFlags): Promise<void> {
  // A driver that starts writes with a callback (a host file): one promise for the request.
  if (bs.driver.pwritevSubmit !== undefined && qiov instanceof IOVector) {
    const p = pwritevSubmitted(bs, offset, qiov, flags);
    if (p !== null) return p;
  }
  return bdrvPwritevAsync(bs, offset, qiov, flags);
}

async function bdrvPwritevAsync(bs: BlockDriverState, offset: number, qiov: IOVector, flags: WriteFlags): Promise<void> {
  const bytes = qiov.size;
  checkArgs(bs, 'write', offset, bytes);
  checkWritable(bs, 'write');
  const fn = bs.io.coPwritev;
  // An emulated FUA needs the flush of driverPwritev: no fast path for it.
  const fastFlags = flags.fua !== true || bs.driver.supportsFua === true;
  if (fn !== undefined && fastFlags && fastPathOk(bs, true, offset, bytes)) {
    const req = fastBegin(bs, offset, bytes);
    try {
      await fn(bs, offset, bytes, qiov, flags);
    } finally {
      fastEnd(bs, req, true);
    }
    return;
  }
  await inflight(bs, 'write', () => coPwritev(bs, offset, qiov, flags));
}

/** The slow path of a write that passed the synchronous checks and is counted in flight. */
export async function coPwritev(bs: BlockDriverState, offset: number, qiov: IOVector, flags: WriteFlags): Promise<void> {
  const len = await writeBounds(bs, 'write', offset, qiov.size);
  if (qiov.size === 0) return;
  await trackedPwritev(bs, offset, qiov, flags, len);
}

/** The length for a write's padding; a growable node with byte alignment needs none. */
async function writeBounds(bs: BlockDriverState, op: string, offset: number, bytes: number): Promise<number> {
  if (bs.growable && bs.requestAlignment === 1) return Number.MAX_SAFE_INTEGER;
  return checkBounds(bs, op, offset, bytes);
}

async function trackedPwritev(bs: BlockDriverState, offset: number, qiov: IOVector, flags: WriteFlags, len: number): Promise<void> {
  const bytes = qiov.size;
  const align = bs.requestAlignment;
  const aligned = offset % align === 0 && (bytes % align === 0 || offset + bytes === len);
  // Only a read-modify-write must not run beside overlapping requests.
  await withTracked(bs, offset, bytes, !aligned, () => paddingPwritev(bs, offset, qiov, flags, len));
}

/**
 * Write whole blocks (bdrv_padding_*): an unaligned request reads the partial head and tail
 * blocks and writes them with it. The caller holds a serialising tracked request, so no other
 * write can slip in between our read and our write.
 */
async function paddingPwritev(bs: BlockDriverState, offset: number, qiov: IOVector, flags: WriteFlags, len: number): Promise<void> {
  const bytes = qiov.size;
  const align = bs.requestAlignment;
  const reqEnd = offset + bytes;
  const start = roundDown(offset, align);
  // A growable node may be written past its end; padding never reaches beyond both ends.
  const end = Math.min(roundUp(reqEnd, align), Math.max(len, reqEnd));
  if (start === offset && end === reqEnd) {
    await alignedPwritev(bs, offset, bytes, qiov, flags);
    return;
  }
  const headBlockEnd = Math.min(start + align, end);
  const tailStart = roundDown(reqEnd, align);
  let head: Uint8Array | null = null;
  let tail: Uint8Array | null = null;
  if (offset > start || (reqEnd < end && tailStart === start)) {
    await bs.debugEvent('pwritev_rmw_head');
    head = new Uint8Array(headBlockEnd - start);
    await alignedPreadv(bs, start, IOVector.from(head), len);
    await bs.debugEvent('pwritev_rmw_after_head');
  }
  if (reqEnd < end && tailStart > start) {
    await bs.debugEvent('pwritev_rmw_tail');
    tail = new Uint8Array(end - tailStart);
    await alignedPreadv(bs, tailStart, IOVector.from(tail), len);
    await bs.debugEvent('pwritev_rmw_after_tail');
  }
  const padded = new IOVector();
  if (head && tailStart === start && reqEnd < end) {
    // Head and tail are the same block: patch the request into it.
    qiov.copyTo(head.subarray(offset - start, reqEnd - start), 0, bytes);
    padded.add(head);
  } else {
    if (head) padded.add(head.subarray(0, offset - start));
    for (const b of qiov.iov) padded.add(b);
    if (tail) padded.add(tail.subarray(reqEnd - tailStart));
  }
  await alignedPwritev(bs, start, end - start, padded, flags);
}

/**
 * The driver write of an aligned request (QEMU's bdrv_aligned_pwritev): `pwritev` before it,
 * after any RMW reads; `pwritev_done` after it even when it failed, so a blkdebug rule on it
 * arms for what the format does next. Counts for the next flush.
 */
async function alignedPwritev(bs: BlockDriverState, offset: number, bytes: number, qiov: IOVector, flags: WriteFlags): Promise<void> {
  await bs.debugEvent('pwritev');
  try {
    await driverPwritev(bs, offset, bytes, qiov, flags);
  } finally {
    bs.writeGen++;
    bdrvSetDirty(bs, offset, bytes);
    await bs.debugEvent('pwritev_done');
  }
}

/** The driver's write hook, with FUA emulated by a flush when the driver lacks it. */
export async function driverPwritev(bs: BlockDriverState, offset: number, bytes: number, qiov: IOVector, flags: WriteFlags): Promise<void> {
  const fn = bs.io.coPwritev;
  if (!fn) throw notSupported(bs, 'write');
  if (flags.fua !== true || bs.driver.supportsFua === true) {
    await fn(bs, offset, bytes, qiov, flags);
    return;
  }
  // FUA emulation (QEMU's bdrv_driver_pwritev): the driver writes without it, then this
  // node is flushed. The flush runs before the write counts in writeGen, so it reaches its
  // flush_to_disk step only for earlier writes, as QEMU's does.
  await fn(bs, offset, bytes, qiov, NO_FLAGS);
  await bdrvFlush(bs);
}

export async function bdrvWriteZeroes(bs: BlockDriverState, offset: number, bytes: number, flags: WriteZeroesFlags): Promise<void> {
  checkArgs(bs, 'write_zeroes', offset, bytes);
  checkWritable(bs, 'write_zeroes');
  await inflight(bs, 'write_zeroes', async () => {
    const len = Math.max(await writeBounds(bs, 'write_zeroes', offset, bytes), offset + bytes);
    if (bytes === 0) return;
    const align = bs.requestAlignment;
    const reqEnd = offset + bytes;
    // The unaligned head and tail are written as zero buffers through the RMW path; the
    // aligned middle goes to the driver's native zeroing if it has one.
    let midStart = roundUp(offset, align);
    let midEnd = reqEnd === len ? reqEnd : roundDown(reqEnd, align);
    if (midStart >= midEnd) {
      midStart = reqEnd;
      midEnd = reqEnd;
    }
    if ((offset < midStart || midEnd < reqEnd) && flags.noFallback) {
      throw new BlockError('ENOTSUP', 'write_zeroes: unaligned request needs a fallback write', {
        op: 'write_zeroes',
        offset,
        path: bs.filename,
      });
    }
    // Head and tail are plain writes and keep the request's FUA (QEMU's zero padding).
    const padFlags: WriteFlags = flags.fua === true ? { fua: true } : NO_FLAGS;
    if (offset < midStart) {
      await trackedPwritev(bs, offset, IOVector.alloc(midStart - offset), padFlags, len);
    }
    if (midStart < midEnd) {
      await withTracked(bs, midStart, midEnd - midStart, false, () => zeroRange(bs, midStart, midEnd - midStart, flags));
    }
    if (midEnd < reqEnd && midEnd >= midStart) {
      const tailFrom = Math.max(midEnd, offset);
      await trackedPwritev(bs, tailFrom, IOVector.alloc(reqEnd - tailFrom), padFlags, len);
    }
  });
}

/**
 * The aligned middle of a zero write reaching this node: announced once as `pwritev_zero`
 * and closed by `pwritev_done`, as QEMU does, whichever way the zeroing is done below.
 */
async function zeroRange(bs: BlockDriverState, offset: number, bytes: number, flags: WriteZeroesFlags): Promise<void> {
  await bs.debugEvent('pwritev_zero');
  try {
    await zeroRangeDriver(bs, offset, bytes, { mayUnmap: flags.mayUnmap, noFallback: flags.noFallback });
    // No driver zeroes with FUA: one flush after the whole range (not one per fallback
    // chunk), before the range counts in writeGen, as QEMU's bdrv_co_do_pwrite_zeroes.
    if (flags.fua === true) await bdrvFlush(bs);
  } finally {
    bs.writeGen++;
    bdrvSetDirty(bs, offset, bytes);
    await bs.debugEvent('pwritev_done');
  }
}

/** Aligned zeroing: native hook, else (or on ENOTSUP) a zero buffer written in chunks. */
async function zeroRangeDriver(bs: BlockDriverState, offset: number, bytes: number, flags: WriteZeroesFlags): Promise<void> {
  const native = bs.driver.coWriteZeroes?.bind(bs.driver);
  if (native) {
    try {
      await native(bs, offset, bytes, flags);
      return;
    } catch (e) {
      if (!isBlockError(e, 'ENOTSUP')) throw e;
    }
  }
  if (flags.noFallback) throw notSupported(bs, 'write_zeroes');
  const chunkMax = Math.max(bs.requestAlignment, roundDown(BDRV_ZERO_CHUNK, bs.requestAlignment));
  const zeros = new Uint8Array(Math.min(chunkMax, bytes));
  for (let pos = offset; pos < offset + bytes; ) {
    const n = Math.min(zeros.length, offset + bytes - pos);
    await driverPwritev(bs, pos, n, IOVector.from(zeros.subarray(0, n)), NO_FLAGS);
    pos += n;
  }
}

/**
 * Discard is advisory, as in QEMU: a driver without the hook ignores it, and only the
 * aligned part of the range is passed down.
 */
export async function bdrvDiscard(bs: BlockDriverState, offset: number, bytes: number): Promise<void> {
  checkArgs(bs, 'discard', offset, bytes);
  checkWritable(bs, 'discard');
  await inflight(bs, 'discard', async () => {
    const len = Math.max(await writeBounds(bs, 'discard', offset, bytes), offset + bytes);
    const hook = bs.driver.coDiscard?.bind(bs.driver);
    if (bytes === 0 || !hook) return;
    const align = bs.requestAlignment;
    const start = roundUp(offset, align);
    const end = offset + bytes === len ? len : roundDown(offset + bytes, align);
    if (start >= end) return;
    try {
      await withTracked(bs, start, end - start, false, () => hook(bs, start, end - start));
    } finally {
      // Discarded data counts as written for the next flush (QEMU's write_gen), and for
      // dirty bitmaps: it may read differently now.
      bs.writeGen++;
      bdrvSetDirty(bs, start, end - start);
    }
  });
}
