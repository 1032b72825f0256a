/**
 * The request path: the AIOCB pool, the walk, reads and write-zeroes. Every request walks its
 * range one run at a time: plan the run with qedFindCluster (cluster.ts), then execute it:
 * reads here, writes (in place and allocating, with copy-on-write) in write.ts.
 */
import { AIOPool, AIO_SUBMITTED, BlockAIOCB, type CompletionFunc } from '../../block/aio.js';
import { bdrvDebugWatched } from '../../block/debug-event.js';
import { BDRV_SECTOR_SIZE } from '../../block/driver.js';
import { BlockError } from '../../block/errors.js';
import { IOVector } from '../../block/iovec.js';
import type { BlockDriverState } from '../../block/node.js';
import { qedDataOffsetNow, qedFindCluster, type QEDClusterRun } from './cluster.js';
import { QED_F_NEED_CHECK } from './header.js';
import { startNeedCheckTimer } from './need-check.js';
import { type BDRVQEDState, type QEDRequest, qedFile, qedState, qedTrace, qedTracing } from './state.js';
import { qedAioWriteData } from './write.js';

export const QED_AIOCB_WRITE = 0x1;
export const QED_AIOCB_ZERO = 0x2;


/** Per-request state: what QEMU keeps in its QEDAIOCB. */
export interface QEDRequestState {
  flags: number;
  /** Guest data; null for write-zeroes. */
  qiov: IOVector | null;
  curPos: number;
  endPos: number;
  /** Bytes of the request done so far (offset into qiov). */
  qiovOffset: number;
  request: QEDRequest;
  /** This request holds s.allocLock: it is the one allowed to allocate. */
  allocating: boolean;
  /** Released s.allocLock early and still writes its L2 entries (counted in s.allocPending). */
  allocPending: boolean;
  /** WriteFlags.onAllocated of the request, if its caller asked. */
  onAllocated?: () => void;
}

/** A pooled AIOCB carrying the request state. */
export class QEDAIOCB extends BlockAIOCB implements QEDRequestState {
  /** The image the request runs on (set by qedAioSetup). */
  s: BDRVQEDState | null = null;
  flags = 0;
  qiov: IOVector | null = null;
  curPos = 0;
  endPos = 0;
  qiovOffset = 0;
  request: QEDRequest = { l2Table: null };
  allocating = false;
  allocPending = false;
  /** The image of a write started by qedAioWriteNow, until its completion. */
  private nowState: BDRVQEDState | null = null;
  /** qedAioWriteNow's completion, bound once per pooled AIOCB. */
  private readonly writeNowDone = (err: BlockError | null): void => {
    const s = this.nowState!;
    this.nowState = null;
    qedAioComplete(s, this);
    this.submittedDone(err);
  };

  /** Start the data write of a rewrite now; false when the file cannot take it so. */
  submitWriteNow(s: BDRVQEDState, file: BlockDriverState, hostOffset: number): boolean {
    this.nowState = s;
    if (file.pwritevSubmit(hostOffset, this.qiov!, this.writeNowDone)) return true;
    this.nowState = null;
    return false;
  }
}

export const qedAioPool = new AIOPool<QEDAIOCB>(
  (pool) => new QEDAIOCB(pool as unknown as AIOPool<BlockAIOCB>),
);

function newRequestState(flags: number, qiov: IOVector | null, pos: number, bytes: number): QEDRequestState {
  return { flags, qiov, curPos: pos, endPos: pos + bytes, qiovOffset: 0, request: { l2Table: null }, allocating: false, allocPending: false };
}

function initRequest(acb: QEDRequestState, flags: number, qiov: IOVector | null, pos: number, bytes: number): void {
  acb.flags = flags;
  acb.qiov = qiov;
  acb.curPos = pos;
  acb.endPos = pos + bytes;
  acb.qiovOffset = 0;
  // Completion left the pooled request's table reference null: reuse the object.
  acb.request.l2Table = null;
  acb.allocating = false;
  acb.allocPending = false;
}

/** qed_aio_setup: take an AIOCB from the pool and start the request as its coroutine. */
export function qedAioSetup(
  bs: BlockDriverState,
  sectorNum: number,
  qiov: IOVector | null,
  nbSectors: number,
  cb: CompletionFunc,
  flags: number,
): QEDAIOCB {
  const s = qedState(bs);
  const acb = qedAioPool.get(bs, cb);
  initRequest(acb, flags, qiov, sectorNum * BDRV_SECTOR_SIZE, nbSectors * BDRV_SECTOR_SIZE);
  acb.s = s;
  if (qedTracing(s)) qedTrace(s, 'qedAioSetup', { acb, sectorNum, nbSectors, opaque: cb, flags });
  // A request cancelled before it starts never runs: nothing of it reaches the image.
  return acb.start(qedAioWork);
}

/** The AIOCB's coroutine: one shared function, no closure per request. */
function qedAioWork(acb: QEDAIOCB): Promise<void> {
  const s = acb.s!;
  // A pooled AIOCB must not keep a closed image's state alive until it is reused.
  acb.s = null;
  // A rewrite of one allocated run: its data write ends the AIOCB, no coroutine promise.
  if (qedAioWriteNow(s, acb)) return AIO_SUBMITTED;
  return qedAioNextIo(s, acb);
}

/**
 * The whole of a write now, when one run of a cached table covers it with allocated clusters:
 * what qedAioNextIo's hot path does (the data written in place, nothing else), started here
 * with the AIOCB's completion as the file's callback; false with nothing done otherwise.
 */
function qedAioWriteNow(s: BDRVQEDState, acb: QEDAIOCB): boolean {
  if ((acb.flags & (QED_AIOCB_WRITE | QED_AIOCB_ZERO)) !== QED_AIOCB_WRITE || qedTracing(s)) return false;
  const file = qedFile(s);
  // A file that cannot start writes so (not a host file) would only make us plan twice.
  if (file.driver.pwritevSubmit === undefined || !qedDebugQuiet(file)) return false;
  // The read hook's lookup: a whole-range 'found' run of a cached table, without a request,
  // a table reference or a run object (nothing runs between the lookup and the submission).
  const host = qedDataOffsetNow(s, acb.curPos, acb.endPos - acb.curPos);
  return host >= 0 && acb.submitWriteNow(s, file, host);
}

/**
 * The preadvNow hook: the whole read now, when one run of a cached table covers it and the
 * page cache holds its data (what qedAioNextIo's first step does without a wait); false with
 * nothing done that matters otherwise (the request path plans again and reports). Reads take
 * the generic AIOCB for it (aioRw), which needs no tracked request per read.
 */
export function qedPreadvNow(bs: BlockDriverState, offset: number, bytes: number, qiov: IOVector): boolean {
  const s = bs.opaque as BDRVQEDState | null;
  // Before the mapping: a read the file would decline (a convert's 1 MiB chunk) is mapped
  // once, by coPreadv.
  if (s === null || s.bs.file?.preadvNowTooLarge(bytes) !== false) return false;
  const host = qedReadHostNow(s, offset, bytes);
  return host >= 0 && qedFile(s).preadvNow(host, qiov.size === bytes ? qiov : qiov.slice(0, bytes));
}

/**
 * Where a read of [offset, offset+bytes) starts in the file when one run of data clusters of
 * a cached table covers it and nobody traces or watches: the file read is then all of it
 * (qedAioNextIo's hot path, planned now). -1 otherwise.
 */
export function qedReadHostNow(s: BDRVQEDState, offset: number, bytes: number): number {
  const file = s.bs.file;
  if (file === null || qedTracing(s) || !qedDebugQuiet(file)) return -1;
  return qedDataOffsetNow(s, offset, bytes);
}

/** Run a request without an AIOCB (the coroutine entry points). */
export async function qedCoRequest(
  bs: BlockDriverState,
  offset: number,
  bytes: number,
  qiov: IOVector | null,
  flags: number,
  onAllocated?: () => void,
): Promise<void> {
  const s = qedState(bs);
  const req = newRequestState(flags, qiov, offset, bytes);
  req.onAllocated = onAllocated;
  qedTrace(s, 'qedAioSetup', { acb: req, sectorNum: offset / BDRV_SECTOR_SIZE, nbSectors: bytes / BDRV_SECTOR_SIZE, flags });
  await qedAioNextIo(s, req);
}

/**
 * The request loop (qed_aio_next_io): plan the next run, execute it, advance, until done.
 * Completion releases the L2 reference and, for an allocating request, the allocation lock.
 */
export async function qedAioNextIo(s: BDRVQEDState, acb: QEDRequestState): Promise<void> {
  let ret: unknown = 0;
  try {
    while (acb.curPos < acb.endPos) {
      if (qedTracing(s)) qedTrace(s, 'qedAioNextIo', { acb, ret: 0, curPos: acb.curPos });
      // Synchronous on an L2 cache hit: no await, so no microtask hop per request.
      const found = qedFindCluster(s, acb.request, acb.curPos, acb.endPos - acb.curPos);
      const run = found instanceof Promise ? await found : found;
      let done = run.length;
      if (run.kind === 'found' && (acb.flags & QED_AIOCB_ZERO) === 0 && qedDebugQuiet(qedFile(s))) {
        // The hot path (data clusters, nobody watching debug events): the data I/O straight
        // from here, no further frame and no hop through an empty debug event.
        if (acb.flags & QED_AIOCB_WRITE) {
          if (qedTracing(s)) {
            qedTrace(s, 'qedAioWriteData', { acb, ret: run.kind, offset: run.hostOffset, len: done });
            qedTrace(s, 'qedAioWriteMain', { acb, ret: 0, offset: run.hostOffset, len: done });
          }
          await qedFile(s).pwritev(run.hostOffset, qedCurrentQiov(acb, done));
        } else {
          if (qedTracing(s)) qedTrace(s, 'qedAioReadData', { acb, ret: run.kind, offset: run.hostOffset, len: done });
          // From the page cache right now when it holds the data: no await, the loop goes on.
          const file = qedFile(s);
          const cur = qedCurrentQiov(acb, done);
          if (!file.preadvNow(run.hostOffset, cur)) await file.preadv(run.hostOffset, cur);
        }
      } else {
        done = acb.flags & QED_AIOCB_WRITE ? await qedAioWriteData(s, acb, run) : await qedAioReadData(s, acb, run);
      }
      acb.curPos += done;
      acb.qiovOffset += done;
    }
  } catch (e) {
    ret = e;
    throw e;
  } finally {
    if (qedTracing(s)) qedTrace(s, 'qedAioComplete', { acb, ret });
    qedAioComplete(s, acb);
  }
}

/**
 * Nothing acts on `file`'s debug events (no listener, no blkdebug hook): announcing one would
 * do nothing, so the hot path skips it (and the microtask its settled promise costs).
 */
function qedDebugQuiet(file: BlockDriverState): boolean {
  return !bdrvDebugWatched(file);
}

/**
 * The part of the guest vector for the next `len` bytes: the vector itself when that is all
 * of it (nothing below us adds to a vector it is handed: padding builds its own).
 */
function qedCurrentQiov(acb: QEDRequestState, len: number): IOVector {
  const qiov = acb.qiov!;
  return acb.qiovOffset === 0 && len === qiov.size ? qiov : qiov.slice(acb.qiovOffset, len);
}

/**
 * Release what the request holds. An allocating request hands the allocation lock to the next
 * waiter (FIFO); when nobody waits and the image is dirty, arm the need-check timer.
 */
function qedAioComplete(s: BDRVQEDState, acb: QEDRequestState): void {
  s.l2Cache.unref(acb.request.l2Table);
  acb.request.l2Table = null;
  // A pooled AIOCB must not keep the guest's buffers alive until it is reused.
  acb.qiov = null;
  if (acb.allocating) {
    acb.allocating = false;
    s.allocLock.unlock();
  } else if (acb.allocPending) {
    acb.allocPending = false;
    if (--s.allocPending === 0) s.allocPendingDone.restartAll();
  } else {
    return;
  }
  // The burst is over when nobody allocates (the lock is free: unlock hands it to the next
  // waiter otherwise) and nobody still writes L2 entries of an allocation.
  if (!s.allocLock.isLocked && s.allocPending === 0 && (s.header.features & QED_F_NEED_CHECK) !== 0n) {
    startNeedCheckTimer(s);
  }
}

// -------------------------------------------------------------------------------------------
// Reads

/**
 * Read `qiov.size` bytes at guest offset `pos` from the backing file; what lies past the
 * backing file's end (or everything, without a backing file) reads as zeros.
 */
export async function qedReadBackingFile(s: BDRVQEDState, pos: number, qiov: IOVector): Promise<void> {
  const backing = s.bs.backing;
  const backingLength = backing ? await backing.getLength() : 0;
  if (pos >= backingLength) {
    qiov.memset(0, 0);
    return;
  }
  const size = Math.min(backingLength - pos, qiov.size);
  if (size < qiov.size) qiov.memset(size, 0);
  await qedFile(s).debugEvent('read_backing_aio');
  await backing!.preadv(pos, size === qiov.size ? qiov : qiov.slice(0, size));
}

async function qedAioReadData(s: BDRVQEDState, acb: QEDRequestState, run: QEDClusterRun): Promise<number> {
  if (qedTracing(s)) qedTrace(s, 'qedAioReadData', { acb, ret: run.kind, offset: run.hostOffset, len: run.length });
  const cur = acb.qiov!.slice(acb.qiovOffset, run.length);
  switch (run.kind) {
    case 'zero':
      cur.memset(0, 0);
      break;
    case 'l1-unallocated':
    case 'l2-unallocated':
      await qedReadBackingFile(s, acb.curPos, cur);
      break;
    case 'found': {
      const file = qedFile(s);
      await file.debugEvent('read_aio');
      await file.preadv(run.hostOffset, cur);
      break;
    }
  }
  return run.length;
}

// -------------------------------------------------------------------------------------------
// Write-zeroes

/**
 * Native zeroing works on whole clusters only (zero markers; zeros written in place over
 * allocated clusters). The generic layer hands us 512-aligned ranges; the parts that are not
 * cluster aligned are written as zero buffers through the ordinary write path, which is what
 * QEMU's generic fallback does for them, so the images come out identical. As QEMU's generic
 * layer (its write-zeroes alignment is our cluster), the head stops at the first cluster
 * boundary even when no whole cluster follows: a range across one boundary is two writes,
 * allocating two clusters one after the other, never one write allocating both at once.
 */
export async function qedCoWriteZeroes(
  bs: BlockDriverState,
  offset: number,
  bytes: number,
  noFallback: boolean,
): Promise<void> {
  const s = qedState(bs);
  const cs = s.header.clusterSize;
  const end = offset + bytes;
  const headEnd = Math.min(end, Math.ceil(offset / cs) * cs);
  const midEnd = Math.max(headEnd, Math.floor(end / cs) * cs);
  if (noFallback && (offset < headEnd || midEnd < end)) {
    throw new BlockError('ENOTSUP', 'QED can only zero whole clusters without a fallback write', {
      op: 'write_zeroes',
      offset,
    });
  }
  if (offset < headEnd) await qedCoRequest(bs, offset, headEnd - offset, IOVector.alloc(headEnd - offset), QED_AIOCB_WRITE);
  if (headEnd < midEnd) await qedCoRequest(bs, headEnd, midEnd - headEnd, null, QED_AIOCB_WRITE | QED_AIOCB_ZERO);
  if (midEnd < end) await qedCoRequest(bs, midEnd, end - midEnd, IOVector.alloc(end - midEnd), QED_AIOCB_WRITE);
}
