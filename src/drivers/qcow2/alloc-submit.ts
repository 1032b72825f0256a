/**
 * The allocating write's callback path: a guest write into unallocated clusters of a cached
 * table (alloc-now.ts maps and counts them without a wait) has only its data write left, and
 * then its L2 entries; with a COW head or tail that reads as zeros (no backing file), the
 * zeroing of its cluster and the data form one linked request (handleAllocSpace's); with
 * one whose contents can be read at once (a backing file in the page cache), head, data and
 * tail form that one write. It goes to the file with a completion callback, and the entries
 * are set from it: no promise per request, as a rewrite (fast.ts). Whatever needs a wait (a
 * COW area to read or to ask about, a file that cannot zero so, a flush before the L2 cache
 * may be written, the lock held, a failed write to undo) takes the ordinary path's last
 * steps (io.ts).
 */
import type { CompletionFunc } from '../../block/aio.js';
import type { WriteFlags } from '../../block/driver.js';
import { type BlockError, toBlockError } from '../../block/errors.js';
import type { IOVector } from '../../block/iovec.js';
import type { BlockDriverState } from '../../block/node.js';
import { qcow2AllocNow, qcow2LinkL2Now } from './alloc-now.js';
import { mayZeroFreshCow, mergeCow, needsCow, qcow2GiveCowBuffers, qcow2MergedCowNow } from './cow.js';
import { answerAfterMarking, qcow2PwritevSubmit } from './fast.js';
import { type Qcow2InFlight, qcow2InFlightEnd } from './inflight.js';
import { type Qcow2Mapped, qcow2FinishPiece, qcow2MappedInFlight, qcow2WriteMapped } from './io.js';
import type { BDRVQcow2State } from './state.js';

/** The driver's pwritevSubmit hook: a rewrite (fast.ts), else an allocating write, else false. */
export function qcow2WritevSubmit(bs: BlockDriverState, offset: number, bytes: number, qiov: IOVector, flags: WriteFlags, done: CompletionFunc): boolean {
  if (qcow2PwritevSubmit(bs, offset, bytes, qiov, flags, done)) return true;
  const s = bs.opaque as BDRVQcow2State | null;
  // As for a rewrite: a corruption being marked, or a file that cannot start writes so.
  if (s === null || s.corruptWrite !== null || s.bs.file?.driver.pwritevSubmit === undefined) return false;
  return allocSubmit(s, s.bs.file, offset, bytes, qiov, flags, done);
}

function allocSubmit(s: BDRVQcow2State, file: BlockDriverState, offset: number, bytes: number, qiov: IOVector, flags: WriteFlags, done: CompletionFunc): boolean {
  // Subclusters have their own COW rules: not here.
  if (s.extendedL2) return false;
  const now = qcow2AllocNow(s, offset, bytes);
  if (now === null) return false;
  // The clusters are counted from here on: this write must run to its end through `done`.
  let mapped: { a: Qcow2Mapped; flight: Qcow2InFlight };
  try {
    mapped = qcow2MappedInFlight(s, offset, now);
  } catch (e) {
    // The overlap check refused and marked the image corrupt (the clusters leak, as on the
    // ordinary path): the answer after the marking, from a later turn.
    answerAfterMarking(s, toBlockError(e, { op: 'write', offset }), done, Promise.resolve());
    return true;
  }
  const { a, flight } = mapped;
  // Mapped whole: clusters, table and refcounts are handed out, and linking the entries below
  // allocates nothing (writePiece's onAllocated, for convert's in-order writes).
  flags.onAllocated?.();
  const data = qiov.size === bytes ? qiov : qiov.slice(0, bytes);
  if (a.metas.some(needsCow)) {
    if (!zeroSubmit(s, file, offset, a, flight, data, done) && !cowSubmit(s, file, offset, a, flight, data, done)) {
      settle(s, offset, qcow2WriteMapped(s, offset, a, flight, data), done);
    }
    return true;
  }
  // Data first; the L2 entries only from its completion, so none points at clusters whose
  // data is not written (and the L2 cache still waits for a flush before it reaches the disk).
  const started = file.pwritevSubmit(a.hostOffset, data, (err) => link(s, offset, a, flight, err, done));
  if (!started) settle(s, offset, qcow2WriteMapped(s, offset, a, flight, data), done);
  return true;
}

/**
 * An allocation whose COW areas read as zeros, as handleAllocSpace writes it: its clusters
 * zeroed and the data written inside them, one request to the file (zeroThenPwritevSubmit),
 * and the entry set from its completion. False, with nothing done, where the file cannot
 * take it so (cowSubmit, then qcow2WriteMapped, take the write from here).
 */
function zeroSubmit(s: BDRVQcow2State, file: BlockDriverState, offset: number, a: Qcow2Mapped, flight: Qcow2InFlight, data: IOVector, done: CompletionFunc): boolean {
  const m = a.metas.length === 1 ? a.metas[0] : null;
  // qcow2AllocNow found every entry of the allocation unallocated: with no backing file its
  // COW areas read as zeros, what handleAllocSpace's is_zero check would answer after a wait.
  if (m === null || m.overwritesData || s.bs.backing !== null) return false;
  const start = m.allocOffset + m.cowStart.offset;
  const bytes = m.cowEnd.offset + m.cowEnd.nbBytes - m.cowStart.offset;
  if (a.hostOffset < start || a.hostOffset + data.size > start + bytes) return false;
  // No second overlap check (handleAllocSpace's): the zeroed range is the allocation's
  // clusters, the first and last of which hold the data, checked when mapped.
  // The zeroing, then the data (the file keeps that order), both before the L2 entry points
  // at the cluster: the entry is set only from this request's completion.
  return file.zeroThenPwritevSubmit(start, bytes, a.hostOffset, data, (err) => {
    if (err?.code === 'ENOTSUP') {
      // Not zeroed (the data may be in place, nothing else changed): the ordinary path
      // checks and zeroes or copies the areas, and writes the data again.
      settle(s, offset, qcow2WriteMapped(s, offset, a, flight, data), done);
      return;
    }
    if (err === null) m.skipCow = true;
    link(s, offset, a, flight, err, done);
  });
}

/**
 * An allocation with a COW head or tail, as qcow2WriteMapped would write it when that needs no
 * wait: its one allocation frames the data exactly (merge_cow), its areas are not zeroed
 * instead (mayZeroFreshCow: the ordinary path then asks is_zero first) and both read at
 * once; then head, data and tail go out as one write and the entries are set from its
 * completion. False, with nothing done, otherwise: qcow2WriteMapped takes the write from here.
 */
function cowSubmit(s: BDRVQcow2State, file: BlockDriverState, offset: number, a: Qcow2Mapped, flight: Qcow2InFlight, data: IOVector, done: CompletionFunc): boolean {
  const m = a.metas.length === 1 ? a.metas[0] : null;
  if (m === null || mayZeroFreshCow(s, m) || mergeCow(s, offset, a.bytes, a.metas) !== m) return false;
  const cow = qcow2MergedCowNow(s, m, data);
  if (cow === null) return false;
  // No second overlap check (perform_cow's): the data, checked when mapped, starts in the
  // allocation's first cluster and ends in its last, and the check compares whole clusters.
  const start = m.allocOffset + m.cowStart.offset;
  // Head, data and tail in one write, all before the L2 entry points at the cluster: the
  // entry is set only from this write's completion.
  const started = file.pwritevSubmit(start, cow.whole, (err) => {
    qcow2GiveCowBuffers(s, cow.bufs);
    link(s, offset, a, flight, err, done);
  });
  if (!started) qcow2GiveCowBuffers(s, cow.bufs);
  return started;
}

/**
 * Data and COW of `a` are written (or `err` says why not): set its L2 entries now when that
 * needs no wait, else through the ordinary path's last steps; then answer `done`.
 */
function link(s: BDRVQcow2State, offset: number, a: Qcow2Mapped, flight: Qcow2InFlight, err: BlockError | null, done: CompletionFunc): void {
  if (err === null && qcow2LinkL2Now(s, a.metas)) {
    qcow2InFlightEnd(s, flight);
    answerAfterMarking(s, null, done, null);
    return;
  }
  settle(s, offset, qcow2FinishPiece(s, a, flight, err === null ? null : { error: err }), done);
}

/** Answer `done` once the ordinary path's last steps `p` settle, as qcow2CoPwritev would. */
function settle(s: BDRVQcow2State, offset: number, p: Promise<number>, done: CompletionFunc): void {
  p.then(
    () => answerAfterMarking(s, null, done, null),
    (e: unknown) => answerAfterMarking(s, toBlockError(e, { op: 'write', offset }), done, null),
  );
}
