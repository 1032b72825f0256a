/**
 * The write path of a request run (io.ts walks the request and calls qedAioWriteData per
 * run): in-place writes to allocated clusters, and allocating writes, which are serialised
 * on s.allocLock, copy the backing data around the guest's (COW), flush that data, and only
 * then point the L2 (and, for a new table, L1) entries at it.
 */
import { BDRV_ZERO_CHUNK } from '../../block/driver.js';
import { IOVector } from '../../block/iovec.js';
import type { QEDClusterRun } from './cluster.js';
import { QED_F_NEED_CHECK } from './header.js';
import { QED_AIOCB_ZERO, qedReadBackingFile, type QEDRequestState } from './io.js';
import { cancelNeedCheckTimer } from './need-check.js';
import {
  type BDRVQEDState,
  type QEDAllocReservation,
  qedAllocClusters,
  qedBytesToClusters,
  qedFile,
  qedL1Index,
  qedL2Index,
  qedOffsetIntoCluster,
  qedStartOfCluster,
  qedTrace,
  qedTracing,
  qedWriteHeader,
} from './state.js';
import { QED_ZERO_CLUSTER, qedWriteL1Table, qedWriteL2Entries, qedWriteL2Table } from './table.js';


/** Returns the bytes done; 0 means "look the tables up again" (after waiting to allocate). */
export async function qedAioWriteData(s: BDRVQEDState, acb: QEDRequestState, run: QEDClusterRun): Promise<number> {
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
      // For the same reasons, a caller that orders its writes may issue its next one now.
      acb.onAllocated?.();
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
  const headLen = qedOffsetIntoCluster(s, pos);
  const tailStart = pos + len;
  const tailLen = qedStartOfCluster(s, tailStart + cs - 1) - tailStart;
  // Zeros without a backing file, and over zero clusters (what qedReadBackingFile would fill
  // in): the shared padding, read by the write only. Backing data: buffers of this write's.
  const copy = run.kind !== 'zero' && s.bs.backing !== null;
  const head = copy ? new Uint8Array(headLen) : qedZeroPad(s, headLen);
  const tail = copy ? new Uint8Array(tailLen) : qedZeroPad(s, tailLen);
  if (qedTracing(s)) {
    qedTrace(s, 'qedAioWritePrefill', { acb, start: headStart, len: head.length, offset: cluster });
    qedTrace(s, 'qedAioWritePostfill', { acb, start: tailStart, len: tail.length, offset: cluster + head.length + len });
  }
  if (copy) {
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

/** `len` bytes of zeros (at most a cluster) from the image's shared padding, never written to. */
function qedZeroPad(s: BDRVQEDState, len: number): Uint8Array {
  s.zeroPad ??= new Uint8Array(s.header.clusterSize);
  return s.zeroPad.subarray(0, len);
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

