/**
 * The request path: reads, writes (in place and allocating, with copy-on-write), write-zeroes,
 * and the AIOCB pool. Every request walks its range one run at a time: plan the run with
 * qedFindCluster (cluster.ts), then execute it.
 */
import { AIOPool, BlockAIOCB, type CompletionFunc } from '../../block/aio.js';
import { BDRV_SECTOR_SIZE, BDRV_ZERO_CHUNK } from '../../block/driver.js';
import { BlockError } from '../../block/errors.js';
import { IOVector } from '../../block/iovec.js';
import type { BlockDriverState } from '../../block/node.js';
import { qedFindCluster, type QEDClusterRun } from './cluster.js';
import { QED_F_NEED_CHECK } from './header.js';
import { startNeedCheckTimer, cancelNeedCheckTimer } from './need-check.js';
import {
  type BDRVQEDState,
  type QEDAllocReservation,
  type QEDRequest,
  qedAllocClusters,
  qedBytesToClusters,
  qedFile,
  qedL1Index,
  qedL2Index,
  qedOffsetIntoCluster,
  qedStartOfCluster,
  qedState,
  qedTrace,
  qedTracing,
  qedWriteHeader,
} from './state.js';
import { QED_ZERO_CLUSTER, qedWriteL1Table, qedWriteL2Entries, qedWriteL2Table } from './table.js';

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
  return qedAioNextIo(s, acb);
}

/** Run a request without an AIOCB (the coroutine entry points). */
export async function qedCoRequest(
  bs: BlockDriverState,
  offset: number,
  bytes: number,
  qiov: IOVector | null,
  flags: number,
): Promise<void> {
  const s = qedState(bs);
  const req = newRequestState(flags, qiov, offset, bytes);
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
  return file.driver.debugEvent === undefined && file.events.listenerCount('debug') === 0;
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
// Writes

/** Returns the bytes done; 0 means "look the tables up again" (after waiting to allocate). */
async function qedAioWriteData(s: BDRVQEDState, acb: QEDRequestState, run: QEDClusterRun): Promise<number> {
  if (qedTracing(s)) qedTrace(s, 'qedAioWriteData', { acb, ret: run.kind, offset: run.hostOffset, len: run.length });
  if (run.kind === 'found') {
    await qedAioWriteInplace(s, acb, run.hostOffset, run.length);
    return run.length;
  }
  return qedAioWriteAlloc(s, acb, run);
}

/** Write into clusters that are already allocated: data only, no metadata, no flush. */
async function qedAioWriteInplace(s: BDRVQEDState, acb: QEDRequestState, offset: number, len: number): Promise<void> {
  const file = qedFile(s);
  if (qedTracing(s)) qedTrace(s, 'qedAioWriteMain', { acb, ret: 0, offset, len });
  if (acb.flags & QED_AIOCB_ZERO) {
    // Zeroing allocated clusters writes zeros in place (the cluster stays allocated), in
    // bounded chunks so a huge request never allocates a huge buffer.
    const zeros = new Uint8Array(Math.min(len, BDRV_ZERO_CHUNK));
    for (let done = 0; done < len; ) {
      const n = Math.min(zeros.length, len - done);
      await file.debugEvent('write_aio');
      await file.pwritev(offset + done, IOVector.from(zeros.subarray(0, n)));
      done += n;
    }
    return;
  }
  await file.debugEvent('write_aio');
  await file.pwritev(offset, acb.qiov!.slice(acb.qiovOffset, len));
}

function qedShouldSetNeedCheck(s: BDRVQEDState): boolean {
  // With a backing file the flush between data and L2 update keeps the image consistent.
  if (s.bs.backing) return false;
  return (s.header.features & QED_F_NEED_CHECK) === 0n;
}

/**
 * Allocating write (entry 0, L1 entry 0, or a zero cluster being overwritten). Allocations
 * are serialised: the first time a request needs one it queues for s.allocLock and then looks
 * its tables up again, since the request before it may have allocated the very same clusters.
 */
async function qedAioWriteAlloc(s: BDRVQEDState, acb: QEDRequestState, run: QEDClusterRun): Promise<number> {
  if (!acb.allocating) {
    // The first allocating request of a burst stops the timer: the dirty bit stays until
    // the burst is over.
    if (!s.allocLock.isLocked) cancelNeedCheckTimer(s);
    await s.allocLock.lock();
    acb.allocating = true;
    return 0;
  }

  const cs = s.header.clusterSize;
  const pos = acb.curPos;
  const len = run.length;
  const nclusters = qedBytesToClusters(s, qedOffsetIntoCluster(s, pos) + len);
  const l2 = run.kind === 'l1-unallocated' ? null : acb.request.l2Table!;
  const index = qedL2Index(s, pos);
  if (l2) {
    // A request ahead of us that released the lock early may have allocated some of these
    // clusters without having set their entries yet. Serialised, we would have run after it
    // and found them allocated: wait for its entries and look the tables up again, so the
    // outcome (in place or a new allocation) and the file layout are the same.
    const busy = qedFindReservation(s, l2.offset, index, index + nclusters);
    if (busy) {
      await busy.done;
      return 0;
    }
  }
  const zero = (acb.flags & QED_AIOCB_ZERO) !== 0;
  if (zero && run.kind === 'zero') return len; // already reads as zeros

  const savedFileSize = s.fileSize;
  const cluster = zero ? QED_ZERO_CLUSTER : qedAllocClusters(s, nclusters);
  let linking = false;
  let reservation: QEDAllocReservation | null = null;
  try {
    if (qedShouldSetNeedCheck(s)) {
      s.header.features |= QED_F_NEED_CHECK;
      try {
        await qedWriteHeader(s);
        // qed-format.md §17.5: the dirty bit must be durable before any metadata it protects is written,
        // or a crash could leave tables pointing past EOF in an image marked clean.
        await qedFile(s).flush();
      } catch (e) {
        s.header.features &= ~QED_F_NEED_CHECK;
        throw e;
      }
    }
    if (l2 && pos + len >= acb.endPos) {
      // The last run of the request, into an L2 table already linked from L1: our clusters
      // are reserved and the dirty bit (if needed) is durable, so hand the allocation lock on
      // now: the next allocating requests write their data while ours is in flight. What
      // QEMU's serialisation guarantees still holds:
      // - layout: we allocate nothing more, so the next request allocates exactly where it
      //   would have after our completion; one that overlaps our clusters waits for our
      //   entries (qedFindReservation above) and then finds them, as it would have;
      // - data before the L2 entry pointing at it: each request sets its own entries only
      //   after its data is written (and flushed, with a backing file), and every table write
      //   copies the entries when it is issued (qedWriteL2Entries);
      // - no new table is involved (those runs keep the lock until linked from L1);
      // - we complete only after our entries are written; the need-check timer, check and
      //   close wait for us through s.allocPending.
      reservation = qedReserve(s, l2.offset, index, index + nclusters);
      acb.allocating = false;
      acb.allocPending = true;
      s.allocPending++;
      s.allocLock.unlock();
    }
    if (!zero) await qedAioWriteCow(s, acb, run, cluster, cs);
    linking = true;
    await qedAioWriteL2Update(s, acb, run, nclusters, cluster, reservation);
  } catch (e) {
    // Nothing links to the new clusters unless a table write was attempted: give them back,
    // unless a request allocated after them meanwhile (then they stay a leak).
    if (!linking && s.fileSize === savedFileSize + (zero ? 0 : nclusters * cs)) s.fileSize = savedFileSize;
    throw e;
  } finally {
    if (reservation) qedEndReservation(s, reservation);
  }
  return len;
}

function qedFindReservation(s: BDRVQEDState, l2Offset: number, start: number, end: number): QEDAllocReservation | null {
  for (const r of s.allocReservations) {
    if (r.l2Offset === l2Offset && r.start < end && start < r.end) return r;
  }
  return null;
}

function qedReserve(s: BDRVQEDState, l2Offset: number, start: number, end: number): QEDAllocReservation {
  let settle!: () => void;
  const done = new Promise<void>((resolve) => {
    settle = resolve;
  });
  const r: QEDAllocReservation = { l2Offset, start, end, done, settle };
  s.allocReservations.push(r);
  return r;
}

/** The entries are set (or the allocation failed): wake who waits. Idempotent. */
function qedEndReservation(s: BDRVQEDState, r: QEDAllocReservation): void {
  const i = s.allocReservations.indexOf(r);
  if (i < 0) return;
  s.allocReservations.splice(i, 1);
  r.settle();
}

/**
 * Fill the new clusters: untouched head and tail from the backing file (zeros without one, and
 * zeros when the clusters were zero clusters: qed-format.md §17.4), the guest data in between, all in one
 * vectored write.
 */
async function qedAioWriteCow(
  s: BDRVQEDState,
  acb: QEDRequestState,
  run: QEDClusterRun,
  cluster: number,
  cs: number,
): Promise<void> {
  const file = qedFile(s);
  const pos = acb.curPos;
  const len = run.length;

  const headStart = qedStartOfCluster(s, pos);
  const head = new Uint8Array(qedOffsetIntoCluster(s, pos));
  qedTrace(s, 'qedAioWritePrefill', { acb, start: headStart, len: head.length, offset: cluster });
  const tailStart = pos + len;
  const tail = new Uint8Array(qedStartOfCluster(s, tailStart + cs - 1) - tailStart);
  qedTrace(s, 'qedAioWritePostfill', { acb, start: tailStart, len: tail.length, offset: cluster + head.length + len });
  if (run.kind !== 'zero') {
    if (head.length > 0) await qedReadBackingFile(s, headStart, IOVector.from(head));
    if (tail.length > 0) await qedReadBackingFile(s, tailStart, IOVector.from(tail));
  }

  const data = acb.qiov!.slice(acb.qiovOffset, len);
  const whole = new IOVector([head, ...data.iov, tail]);
  qedTrace(s, 'qedAioWriteMain', { acb, ret: 0, offset: cluster + head.length, len });
  if (head.length > 0 || tail.length > 0) await file.debugEvent('cow_write');
  await file.debugEvent('write_aio');
  await file.pwritev(cluster, whole);

  if (s.bs.backing) {
    // With a backing file the untouched parts of the clusters hold backing data: it must be
    // durable before the L2 table points here, or a crash would expose zeros in its place.
    await qedFlushWrittenData(s);
  }
}

/**
 * Flush the file for data whose write has completed (the COW flush before an L2 update),
 * sharing flushes between concurrent allocating requests: a flush issued after a write
 * completed makes it durable, so callers that arrive while one is in flight (it may have
 * started before their data was written: they never join it) wait together for the next one,
 * issued when it settles. A lone request flushes at once, as before.
 */
function qedFlushWrittenData(s: BDRVQEDState): Promise<void> {
  return s.dataFlush.run();
}

/**
 * Point the L2 entries at the new clusters (or at the zero marker). An existing L2 table gets
 * only its changed sectors rewritten; a missing one is created after the data clusters,
 * written whole and flushed, and only then linked from L1.
 */
async function qedAioWriteL2Update(
  s: BDRVQEDState,
  acb: QEDRequestState,
  run: QEDClusterRun,
  n: number,
  cluster: number,
  reservation: QEDAllocReservation | null,
): Promise<void> {
  const index = qedL2Index(s, acb.curPos);
  const step = cluster === QED_ZERO_CLUSTER ? 0 : s.header.clusterSize;

  if (run.kind === 'l1-unallocated') {
    s.l2Cache.unref(acb.request.l2Table);
    const l2 = s.l2Cache.alloc(qedAllocClusters(s, s.header.tableSize));
    acb.request.l2Table = l2;
    for (let i = 0; i < n; i++) l2.table.set(index + i, cluster + i * step);
    // The new table must be durable before L1 points to it: a crash in between would
    // otherwise leave L1 pointing at garbage.
    await qedWriteL2Table(s, acb.request, 0, s.tableNelems, true);

    // The table joins the cache (we keep our reference) before L1 points to it, so a reader
    // that follows the new L1 entry finds this copy instead of reading a second one.
    s.l2Cache.commit(l2);
    const l1Index = qedL1Index(s, acb.curPos);
    const old = s.l1Table.get(l1Index);
    s.l1Table.set(l1Index, l2.offset);
    try {
      await qedWriteL1Table(s, l1Index, 1);
    } catch (e) {
      s.l1Table.set(l1Index, old);
      s.l2Cache.remove(l2.offset);
      throw e;
    }
    return;
  }

  const l2 = acb.request.l2Table!;
  const table = l2.table;
  const saved: number[] = [];
  for (let i = 0; i < n; i++) {
    saved.push(table.get(index + i));
    table.set(index + i, cluster + i * step);
  }
  // Our entries are visible now: a request waiting on our reservation may look again.
  if (reservation) qedEndReservation(s, reservation);
  // Our data is written (and flushed, with a backing file) before these entries were set, and
  // the table is already linked from L1: what is left to order is this table write against
  // the other updates of the same table, which qedWriteL2Entries keeps in order (and merges).
  try {
    await qedWriteL2Entries(s, l2, index, n);
  } catch (e) {
    // This runs before the chain's next write copies the sectors (that copy happens at least
    // one microtask after ours is resumed), so the write that follows carries the old values.
    for (let i = 0; i < n; i++) table.set(index + i, saved[i]);
    throw e;
  }
}

// -------------------------------------------------------------------------------------------
// Write-zeroes

/**
 * Native zeroing works on whole clusters only (zero markers; zeros written in place over
 * allocated clusters). The generic layer hands us 512-aligned ranges; the parts that are not
 * cluster aligned are written as zero buffers through the ordinary write path, which is what
 * QEMU's generic fallback does for them, so the images come out identical.
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
  let midStart = Math.ceil(offset / cs) * cs;
  let midEnd = Math.floor(end / cs) * cs;
  if (midStart >= midEnd) {
    midStart = end;
    midEnd = end;
  }
  if (noFallback && (offset < midStart || midEnd < end)) {
    throw new BlockError('ENOTSUP', 'QED can only zero whole clusters without a fallback write', {
      op: 'write_zeroes',
      offset,
    });
  }
  if (offset < midStart) await qedCoRequest(bs, offset, midStart - offset, IOVector.alloc(midStart - offset), QED_AIOCB_WRITE);
  if (midStart < midEnd) await qedCoRequest(bs, midStart, midEnd - midStart, null, QED_AIOCB_WRITE | QED_AIOCB_ZERO);
  if (midEnd < end) await qedCoRequest(bs, midEnd, end - midEnd, IOVector.alloc(end - midEnd), QED_AIOCB_WRITE);
}
