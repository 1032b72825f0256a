/**
 * The request fast paths. A read mapped by a cached L2 table whose data the host's page cache
 * holds completes inside the call (the preadvNow hook); a rewrite of clusters the image owns
 * (COPIED) is mapped without a wait. Each is exactly what the ordinary path does between
 * taking s.lock and dropping it with no wait in between, so each runs only while no metadata
 * change is under way: a rewrite while nobody holds s.lock, a read also while the lock is
 * handed to a planner (qcow2MetadataSettled). Anything else (a table to load, an allocation or a write in flight over the range,
 * a corrupt entry, a watched debug event) answers "not now" and the ordinary path runs and
 * reports any error; only a rewrite's overlap check refuses here, as it would there.
 */
import type { CompletionFunc } from '../../block/aio.js';
import type { WriteFlags } from '../../block/driver.js';
import { type BlockError, toBlockError } from '../../block/errors.js';
import type { IOVector } from '../../block/iovec.js';
import type { BlockDriverState } from '../../block/node.js';
import { qcow2WritableTableNow } from './alloc-now.js';
import { qcow2GetHostOffsetNow, qcow2L2OffsetNow, tableView } from './cluster.js';
import { plainDataOffset } from './entries.js';
import { type Qcow2InFlight, qcow2FirstAllocation, qcow2InFlightBegin, qcow2InFlightEnd } from './inflight.js';
import { qcow2PreWriteOverlapCheck } from './corrupt.js';
import { qcow2HasDataFile } from './data-file.js';
import { type BDRVQcow2State, offsetIntoCluster, qcow2MetadataSettled, offsetToL2Index, sizeToClusters } from './state.js';

/**
 * Nobody is changing metadata, and the file's debug events need no announcing. Images with an
 * external data file take the ordinary path, which sends their data to the data file.
 */
function quiet(s: BDRVQcow2State, settled: boolean): BlockDriverState | null {
  const file = s.bs.file;
  if (file === null || qcow2HasDataFile(s) || !settled || s.corrupt || s.corruptWrite !== null || file.debugWatched) return null;
  return file;
}

/** The preadvNow hook: the whole read now, or false (nothing done that matters). */
export function qcow2PreadvNow(bs: BlockDriverState, offset: number, bytes: number, qiov: IOVector): boolean {
  const s = bs.opaque as BDRVQcow2State | null;
  // Before the mapping: a read the file would decline (a convert's 1 MiB chunk) is mapped
  // once, by coPreadv. Zero and unallocated clusters that large are read there too.
  if (s === null || s.bs.file?.preadvNowTooLarge(bytes) !== false) return false;
  // A guest read of backing data takes the ordinary path (copy-on-read, the backing's events).
  return readNow(s, offset, bytes, qiov, false);
}

/**
 * The file and the host offset of a read of [offset, offset+bytes) that lies in plain data
 * clusters of a cached table, contiguous on the host, while nothing changes metadata: the one
 * file read is all that is left of it (readNow's common case, for a read too large for the
 * page cache hook). Null otherwise: the ordinary path plans and reads it.
 */
export function qcow2PlainRead(s: BDRVQcow2State, offset: number, bytes: number): { file: BlockDriverState; host: number } | null {
  const file = quiet(s, qcow2MetadataSettled(s));
  if (file === null) return null;
  const host = plainHostOffsetNow(s, offset, bytes);
  return host === 0 ? null : { file, host };
}

/**
 * A COW area now (qcow2PerformCow's read, outside s.lock), or false: as the hook, and data of
 * the backing file too when its length is known and its page cache holds the bytes.
 */
export function qcow2CowReadNow(s: BDRVQcow2State, offset: number, qiov: IOVector): boolean {
  return readNow(s, offset, qiov.size, qiov, true);
}

function readNow(s: BDRVQcow2State, offset: number, bytes: number, qiov: IOVector, backingToo: boolean): boolean {
  // A read changes nothing: the lock handed to a planner is as good as free.
  const file = quiet(s, qcow2MetadataSettled(s));
  if (file === null) return false;
  const cur = qiov.size === bytes ? qiov : qiov.slice(0, bytes);
  // The common case, data clusters contiguous on the host: read from the entries themselves,
  // with no run planned (an object per read).
  const host = plainHostOffsetNow(s, offset, bytes);
  if (host !== 0) return file.preadvNow(host, cur);
  const run = qcow2GetHostOffsetNow(s, offset, bytes);
  if (run === null || run.bytes !== bytes) return false;
  switch (run.kind) {
    case 'normal':
      return file.preadvNow(run.hostOffset, cur);
    case 'zero':
      cur.memset(0, 0);
      return true;
    case 'unallocated':
      return (backingToo || s.bs.backing === null) && unallocatedReadNow(s, offset, cur);
    default:
      return false;
  }
}

/**
 * What the guest sees at unallocated [offset, offset+qiov.size), read now (readBacking's
 * steps when none waits), or false: zeros without a backing file, else the backing file's
 * data from its page cache, zeros past its end.
 */
function unallocatedReadNow(s: BDRVQcow2State, offset: number, qiov: IOVector): boolean {
  const backing = s.bs.backing;
  const bytes = qiov.size;
  if (backing === null) {
    qiov.memset(0, 0);
    return true;
  }
  const len = backing.knownLength();
  if (len === null) return false;
  const n = Math.max(0, Math.min(len - offset, bytes));
  if (n > 0 && !backing.preadvNow(offset, n === bytes ? qiov : qiov.slice(0, n))) return false;
  if (n < bytes) qiov.memset(n, 0);
  return true;
}

/**
 * A COW area of a fresh allocation (alloc-now.ts: its L2 entries found unallocated, the
 * write in flight since, so nobody changed them) now, or false: what the guest sees there
 * with no run planned from the table. Inside the image only; the rest plans as ever.
 */
export function qcow2FreshCowReadNow(s: BDRVQcow2State, offset: number, qiov: IOVector): boolean {
  if (offset + qiov.size > s.header.size) return qcow2CowReadNow(s, offset, qiov);
  return unallocatedReadNow(s, offset, qiov);
}

/**
 * Map a rewrite of guest [offset, offset+bytes) now when all of it lies in clusters the image
 * owns, contiguous on the host, in a cached table (handle_copied without a wait): the write is
 * then registered in flight and its host offset returned; null sends it the ordinary way. The
 * overlap check runs here as on the ordinary path (and refuses the same way).
 */
export function qcow2RewriteNow(s: BDRVQcow2State, offset: number, bytes: number): { hostOffset: number; flight: Qcow2InFlight } | null {
  if (quiet(s, !s.lock.isLocked) === null || s.extendedL2) return null;
  const table = qcow2WritableTableNow(s, offset);
  if (table === null) return null;
  const l2Index = offsetToL2Index(s, offset);
  const nb = sizeToClusters(s, offsetIntoCluster(s, offset) + bytes);
  if (l2Index + nb > s.l2Size) return null;
  const host = plainRun(s, tableView(table.data), l2Index, nb, true);
  // Unallocated (an allocating write, alloc-now.ts), not ours or not plain: not a rewrite.
  if (host === 0) return null;
  if (qcow2FirstAllocation(s, offset, bytes) !== null) return null;
  const hostOffset = host + offsetIntoCluster(s, offset);
  qcow2PreWriteOverlapCheck(s, 0, hostOffset, bytes);
  return { hostOffset, flight: qcow2InFlightBegin(s, offset, bytes, false) };
}

/**
 * The pwritevSubmit hook: a rewrite qcow2RewriteNow maps has only its data write left, started
 * here with `done` as its completion (the ordinary path's last step, without its promises);
 * false, with nothing left in flight, otherwise.
 */
export function qcow2PwritevSubmit(bs: BlockDriverState, offset: number, bytes: number, qiov: IOVector, _flags: WriteFlags, done: CompletionFunc): boolean {
  const s = bs.opaque as BDRVQcow2State | null;
  // A corruption being marked: the ordinary path waits for it before it answers.
  // A file that cannot start writes so (not a host file) would only make us map twice.
  if (s === null || s.corruptWrite !== null || s.bs.file?.driver.pwritevSubmit === undefined) return false;
  let now: ReturnType<typeof qcow2RewriteNow>;
  try {
    now = qcow2RewriteNow(s, offset, bytes);
  } catch (e) {
    // The overlap check refused and marked the image corrupt: this request's answer (a retry
    // would find the driver gone), after the marking, from a later turn.
    answerAfterMarking(s, toBlockError(e, { op: 'write', offset }), done, Promise.resolve());
    return true;
  }
  if (now === null) return false;
  const flight = now.flight;
  const cur = qiov.size === bytes ? qiov : qiov.slice(0, bytes);
  const started = s.bs.file.pwritevSubmit(now.hostOffset, cur, (err) => {
    qcow2InFlightEnd(s, flight);
    answerAfterMarking(s, err, done, null);
  });
  if (!started) qcow2InFlightEnd(s, flight);
  return started;
}

/**
 * Answer a write as qcow2CoPwritev does: a corruption being marked is written first. `later`
 * (a settled promise) defers even an answer with nothing to wait for.
 */
export function answerAfterMarking(s: BDRVQcow2State, err: BlockError | null, done: CompletionFunc, later: Promise<void> | null): void {
  const marking = s.corruptWrite ?? later;
  if (marking === null) done(err);
  else marking.then(() => done(err), (e: unknown) => done(toBlockError(e, { op: 'write' })));
}

/**
 * The host offset of guest `offset` when [offset, offset+bytes) lies in plain data clusters of
 * a cached standard table, contiguous on the host, else 0 (qcow2GetHostOffsetNow decides):
 * what planPlainRun would plan for it, without the run.
 */
function plainHostOffsetNow(s: BDRVQcow2State, offset: number, bytes: number): number {
  if (s.extendedL2) return 0;
  const l2Offset = qcow2L2OffsetNow(s, offset);
  if (l2Offset === null || l2Offset === 0) return 0;
  const data = s.l2Cache.lookup(l2Offset);
  if (data === undefined) return 0;
  // offsetToL2Index, offsetIntoCluster and sizeToClusters spelled out: called per read, V8
  // did not inline them here.
  const cs = s.clusterSize;
  const inCluster = offset % cs;
  const l2Index = ((offset - inCluster) / cs) % s.l2Size;
  const nb = Math.ceil((inCluster + bytes) / cs);
  if (l2Index + nb > s.l2Size) return 0;
  const host = plainRun(s, tableView(data), l2Index, nb, false);
  return host === 0 ? 0 : host + inCluster;
}

/**
 * The host offset of entries [l2Index, l2Index+nb) of a standard table when all are plain
 * data (with COPIED, bit 63, when `copied`), aligned and contiguous on the host, else 0.
 * Entries are read as two 32-bit halves: a BigInt per entry was most of what a rewrite
 * allocated. Zero flags, compressed and reserved bits answer 0 (plainDataOffset), and the
 * ordinary path judges them.
 */
function plainRun(s: BDRVQcow2State, view: DataView, l2Index: number, nb: number, copied: boolean): number {
  const cs = s.clusterSize;
  const host = plainDataOffset(view, l2Index * 8);
  if (host === 0 || host % cs !== 0 || (copied && (view.getUint32(l2Index * 8) & 0x80000000) === 0)) return 0;
  // The first entry is checked: a one-cluster read (the common one) reads it only once.
  for (let i = 1; i < nb; i++) {
    const at = (l2Index + i) * 8;
    if ((copied && (view.getUint32(at) & 0x80000000) === 0) || plainDataOffset(view, at) !== host + i * cs) return 0;
  }
  return host;
}
