/**
 * A node's sector-based AIO requests (QEMU's bdrv_aio_readv/writev/flush). Two routes: the
 * driver's own AIO (its pool, its cancel) when the request may take the fast path and nothing
 * overlapping is in flight; otherwise a generic AIOCB running the coroutine path.
 *
 * A request counts in flight from submission until just before its callback runs, so close()
 * issued right after submitting waits for it. Refused requests are reported through the
 * callback in a later microtask, never by throwing.
 */
import { AIO_DONE_NOW, AIO_SUBMITTED, AIOPool, BlockAIOCB, genericAioPool, type CompletionFunc } from '../aio.js';
import { BDRV_SECTOR_SIZE } from '../driver.js';
import { BlockError, toBlockError } from '../errors.js';
import type { IOVector } from '../iovec.js';
import type { BlockDriverState } from '../node.js';
import { bdrvFlush } from './flush.js';
import { coPreadv } from './read.js';
import { checkArgs, checkOpen, checkWritable, fastBegin, fastEnd, fastPathOk, fastRun, invalidNumber } from './requests.js';
import { NO_FLAGS, coPwritev } from './write.js';
import { bdrvPwritevSubmit } from './write-submit.js';
import type { AioRwFn } from '../registry.js';

export function aioFlush(bs: BlockDriverState, cb: CompletionFunc): BlockAIOCB {
  try {
    checkOpen(bs, 'aio_flush');
  } catch (e) {
    return aioFail(bs, e, 'aio_flush', cb);
  }
  return aioGeneric(bs, cb, () => bdrvFlush(bs));
}

/** Report a refused request through the callback, in a later microtask, never by throwing. */
function aioFail(bs: BlockDriverState, e: unknown, op: string, cb: CompletionFunc): BlockAIOCB {
  const err = toBlockError(e, { op });
  return genericAioPool.get(bs, cb).start(() => Promise.reject(err));
}

/**
 * Run `work` under a generic AIOCB, counted in flight; the count drops in the callback, which
 * runs exactly once even when the request is cancelled before it starts.
 */
function aioGeneric(bs: BlockDriverState, cb: CompletionFunc, work: (acb: BlockAIOCB) => Promise<void>): BlockAIOCB {
  bs.requests.inFlight++;
  const acb = genericAioPool.get(bs, cb);
  acb.countedOn = bs;
  return acb.start(work);
}

/**
 * A generic AIOCB for a read or write: the request's arguments live in the pooled object, so
 * submitting one makes no closure (the work function is the same for every request).
 */
class RwAIOCB extends BlockAIOCB {
  write = false;
  offset = 0;
  bytes = 0;
  qiov: IOVector | null = null;

  override reset(bs: BlockDriverState | null, cb: CompletionFunc | null): void {
    super.reset(bs, cb);
    // Back in the pool: no caller's buffers kept alive.
    this.qiov = null;
  }
}

/** The pool of the generic path's reads and writes (exported for tests). */
export const rwAioPool = new AIOPool<RwAIOCB>((pool) => new RwAIOCB(pool as unknown as AIOPool<BlockAIOCB>));

/**
 * The work of a generic read or write. The paths that take a closure (fastRun's) are helpers
 * of their own: a function that makes a closure allocates its context on every call, taken
 * or not, and this runs for every request.
 */
function rwWork(acb: RwAIOCB): Promise<void> {
  const bs = acb.bs!;
  if (!acb.write) return aioGenericRead(bs, acb.offset, acb.bytes, acb.qiov!);
  // Started through the driver's callback hook: no promise until the AIOCB's callback.
  if (bs.driver.pwritevSubmit !== undefined && bdrvPwritevSubmit(bs, acb.offset, acb.qiov!, NO_FLAGS, acb.submittedDone)) {
    return AIO_SUBMITTED;
  }
  return aioGenericWrite(bs, acb.offset, acb.bytes, acb.qiov!);
}

export function aioRw(bs: BlockDriverState, write: boolean, sectorNum: number, qiov: IOVector, nbSectors: number, cb: CompletionFunc): BlockAIOCB {
  const op = write ? 'aio_write' : 'aio_read';
  let offset: number;
  let bytes: number;
  try {
    checkOpen(bs, op);
    if (invalidNumber(sectorNum) || invalidNumber(nbSectors)) {
      throw new BlockError('EINVAL', `${op}: invalid sector ${sectorNum} count ${nbSectors}`, { op });
    }
    // Only now: a sector count of another type (a BigInt) would throw here, not report.
    offset = sectorNum * BDRV_SECTOR_SIZE;
    bytes = nbSectors * BDRV_SECTOR_SIZE;
    // Whole sectors from valid counts: checkArgs can only fail on the sum, so it is asked
    // (and reports) only then.
    if (offset + bytes > Number.MAX_SAFE_INTEGER) checkArgs(bs, op, offset, bytes);
    if (qiov.size !== bytes) {
      throw new BlockError('EINVAL', `${op}: vector of ${qiov.size} bytes for ${nbSectors} sectors`, { op });
    }
    if (write) checkWritable(bs, op);
  } catch (e) {
    return aioFail(bs, e, op, cb);
  }

  const native = write ? bs.io.nativeAioWritev : bs.io.nativeAioReadv;
  // The driver's AIO pool does not order requests: it also needs nothing overlapping in
  // flight, serialising or not. A native write stays inside the length even on a growable
  // node (the driver's AIO path does not extend its storage). A read the driver may serve
  // inside the call (its preadvNow hook) takes the generic AIOCB, which tries the hook when it
  // runs: no tracked request and no completion closure for a read that is done at once.
  if (
    native !== undefined &&
    (write || bs.driver.preadvNow === undefined) &&
    fastPathOk(bs, write, offset, bytes) &&
    !bs.requests.overlaps(offset, offset + bytes) &&
    !(write && bs.growable && offset + bytes > (bs.lengthNow() ?? 0))
  ) {
    return aioNative(bs, native, write, sectorNum, qiov, nbSectors, cb);
  }
  // The generic path still takes the request fast path when it applies (decided when the
  // request runs, not at submission: other requests may have started or ended meanwhile).
  bs.requests.inFlight++;
  const acb = rwAioPool.get(bs, cb);
  acb.countedOn = bs;
  acb.write = write;
  acb.offset = offset;
  acb.bytes = bytes;
  acb.qiov = qiov;
  return acb.start(rwWork);
}

/**
 * The driver's own AIO, tracked as a fast-path request until its callback. Apart from aioRw:
 * a function that makes a closure allocates its context on every call, and aioRw runs for
 * every request, most of which take the generic AIOCB.
 */
function aioNative(bs: BlockDriverState, native: AioRwFn, write: boolean, sectorNum: number, qiov: IOVector, nbSectors: number, cb: CompletionFunc): BlockAIOCB {
  const offset = sectorNum * BDRV_SECTOR_SIZE;
  const req = fastBegin(bs, offset, nbSectors * BDRV_SECTOR_SIZE);
  let ended = false;
  return native(bs, sectorNum, qiov, nbSectors, (err) => {
    if (ended) return;
    ended = true;
    fastEnd(bs, req, write);
    cb(err);
  });
}

function aioGenericWrite(bs: BlockDriverState, offset: number, bytes: number, qiov: IOVector): Promise<void> {
  const fn = bs.io.coPwritev;
  if (fn !== undefined && fastPathOk(bs, true, offset, bytes)) {
    return fastRun(bs, offset, bytes, true, () => fn(bs, offset, bytes, qiov, NO_FLAGS));
  }
  return coPwritev(bs, offset, qiov, NO_FLAGS);
}

function aioGenericRead(bs: BlockDriverState, offset: number, bytes: number, qiov: IOVector): Promise<void> {
  const fn = bs.io.coPreadv;
  if (fn !== undefined && fastPathOk(bs, false, offset, bytes)) {
    if (bs.driver.preadvNow?.(bs, offset, bytes, qiov) === true) return AIO_DONE_NOW;
    return fastRead(bs, fn, offset, bytes, qiov);
  }
  return coPreadv(bs, offset, qiov);
}

/** A read the page cache did not answer, on the fast path (its closure kept out of aioGenericRead). */
function fastRead(bs: BlockDriverState, fn: NonNullable<BlockDriverState['io']['coPreadv']>, offset: number, bytes: number, qiov: IOVector): Promise<void> {
  return fastRun(bs, offset, bytes, false, () => fn(bs, offset, bytes, qiov));
}
