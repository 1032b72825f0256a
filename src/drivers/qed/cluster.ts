/**
 * Address translation: plan the next run of a request (QEMU's qed_find_cluster).
 *
 * The planner only reads tables; the callers (read, write, block status) decide what to do
 * with the run. A run never crosses an L2-table boundary, and host-contiguous clusters merge
 * into one run so a long request costs one I/O per contiguous piece.
 */
import { BlockError, toBlockError } from '../../block/errors.js';
import { qedCheckClusterOffset, qedCheckTableOffset } from './header.js';
import { QED_UNALLOC_CLUSTER, QED_ZERO_CLUSTER, qedReadL2Table, qedTakeCachedL2Table, type QEDTable } from './table.js';
import {
  type BDRVQEDState,
  type QEDRequest,
  qedBytesToClusters,
  qedL1Index,
  qedL2Index,
  qedOffsetIntoCluster,
} from './state.js';

export type QEDClusterKind =
  /** Data clusters allocated in the image file at `hostOffset`. */
  | 'found'
  /** Zero clusters (entry 1): read as zeros, no backing fall-through. */
  | 'zero'
  /** The L2 table exists, the entries are 0: backing file or zeros. */
  | 'l2-unallocated'
  /** No L2 table for this range at all: backing file or zeros. */
  | 'l1-unallocated';

export interface QEDClusterRun {
  kind: QEDClusterKind;
  /** For 'found': host byte offset of the run's first guest byte; 0 otherwise. */
  hostOffset: number;
  /** Bytes of the run, from the queried position. */
  length: number;
}

/** Limits on what a table-entry offset may be, from the current state. */
export function qedLimits(s: BDRVQEDState) {
  return {
    clusterSize: s.header.clusterSize,
    tableSize: s.header.tableSize,
    headerSize: s.header.headerSize,
    fileSize: s.fileSize,
  };
}

/**
 * The limits of qedLimits in one reused object, for the per-request checks below: they read it
 * at once and keep nothing, and a request path that allocates nothing warms up faster.
 */
const hotLimits = { clusterSize: 0, tableSize: 0, headerSize: 0, fileSize: 0 };
function qedHotLimits(s: BDRVQEDState): typeof hotLimits {
  hotLimits.clusterSize = s.header.clusterSize;
  hotLimits.tableSize = s.header.tableSize;
  hotLimits.headerSize = s.header.headerSize;
  hotLimits.fileSize = s.fileSize;
  return hotLimits;
}

/**
 * Count how many of the `n` entries starting at `index` continue the first one (`first`, the
 * entry at `index`): the same marker (0 or 1), or consecutive cluster offsets.
 */
export function qedCountContiguousClusters(s: BDRVQEDState, table: QEDTable, index: number, n: number, first: number): number {
  const cs = s.header.clusterSize;
  let count = 1;
  if (first === QED_UNALLOC_CLUSTER || first === QED_ZERO_CLUSTER) {
    while (count < n && table.get(index + count) === first) count++;
  } else {
    while (count < n && table.get(index + count) === first + count * cs) count++;
  }
  return count;
}

/**
 * Plan the run starting at guest offset `pos`, at most `len` bytes. The request keeps a
 * reference to the L2 table it used (released by the caller, or by the next lookup).
 * An invalid table entry fails with EINVAL: nothing is ever read from a wild offset.
 *
 * The answer is synchronous (a plain run, no promise) when no table has to be read: L1
 * unallocated or an L2 cache hit, i.e. nearly every request. A read from disk, and any error,
 * comes back as a promise (errors always as a rejection, never thrown).
 */
export function qedFindCluster(
  s: BDRVQEDState,
  request: QEDRequest,
  pos: number,
  len: number,
): QEDClusterRun | Promise<QEDClusterRun> {
  try {
    // Requests are handled one L2 table at a time.
    const l2End = (Math.floor(pos / s.l2Span) + 1) * s.l2Span;
    len = Math.min(len, l2End - pos);

    const l2Offset = s.l1Table.get(qedL1Index(s, pos));
    if (l2Offset === QED_UNALLOC_CLUSTER) return { kind: 'l1-unallocated', hostOffset: 0, length: len };
    if (!qedCheckTableOffset(qedHotLimits(s), l2Offset)) {
      throw new BlockError('EINVAL', `QED L2 table offset ${l2Offset} is invalid`, { op: 'qed_find_cluster', offset: pos });
    }

    // A cached table is taken without yielding, as QEMU's coroutine runs on until real I/O:
    // otherwise a request whose table is cached would queue for allocation behind a later
    // request that needs no table at all, and concurrent writes would allocate in another
    // order than QEMU's (a different, if valid, file).
    if (!qedTakeCachedL2Table(s, request, l2Offset)) return qedFindClusterRead(s, request, pos, len, l2Offset);
    return qedFindClusterInTable(s, request, pos, len);
  } catch (e) {
    return Promise.reject(e instanceof Error ? e : toBlockError(e, { op: 'qed_find_cluster', offset: pos }));
  }
}

/**
 * The same plan now, for block status: null when the L2 table is not cached or an entry is
 * invalid (qedFindCluster then reads the table, or reports the entry). Holds no reference
 * afterwards: nothing can change the table while this runs.
 */
export function qedFindClusterNow(s: BDRVQEDState, pos: number, len: number): QEDClusterRun | null {
  const l2End = (Math.floor(pos / s.l2Span) + 1) * s.l2Span;
  len = Math.min(len, l2End - pos);
  const l2Offset = s.l1Table.get(qedL1Index(s, pos));
  if (l2Offset === QED_UNALLOC_CLUSTER) return { kind: 'l1-unallocated', hostOffset: 0, length: len };
  if (!qedCheckTableOffset(qedHotLimits(s), l2Offset)) return null;
  const request: QEDRequest = { l2Table: null };
  if (!qedTakeCachedL2Table(s, request, l2Offset)) return null;
  try {
    return qedFindClusterInTable(s, request, pos, len);
  } catch {
    return null;
  } finally {
    s.l2Cache.unref(request.l2Table);
  }
}

/**
 * The host offset of guest [pos, pos+len) when data clusters of a cached table, contiguous on
 * the host, hold all of it, else -1: qedFindClusterNow's whole-range 'found' run without a
 * request, a reference or a run object (the read hook and in-place rewrites, once per request).
 */
export function qedDataOffsetNow(s: BDRVQEDState, pos: number, len: number): number {
  if (pos + len > (Math.floor(pos / s.l2Span) + 1) * s.l2Span) return -1;
  const table = qedL2TableNow(s, pos);
  if (table === null || table === undefined) return -1;
  const inCluster = qedOffsetIntoCluster(s, pos);
  const index = qedL2Index(s, pos);
  const n = qedBytesToClusters(s, inCluster + len);
  const first = table.get(index);
  if (first === QED_UNALLOC_CLUSTER || first === QED_ZERO_CLUSTER || !qedCheckClusterOffset(qedHotLimits(s), first)) return -1;
  return qedCountContiguousClusters(s, table, index, n, first) < n ? -1 : first + inCluster;
}

/** Cache miss: read the table, then plan the run in it. */
async function qedFindClusterRead(
  s: BDRVQEDState,
  request: QEDRequest,
  pos: number,
  len: number,
  l2Offset: number,
): Promise<QEDClusterRun> {
  await qedReadL2Table(s, request, l2Offset);
  return qedFindClusterInTable(s, request, pos, len);
}

/** Plan the run in the request's L2 table (already held). */
function qedFindClusterInTable(s: BDRVQEDState, request: QEDRequest, pos: number, len: number): QEDClusterRun {
  const run = qedPlanInTable(s, request.l2Table!.table, pos, len);
  if (!qedRunOffsetValid(s, run, pos)) {
    throw new BlockError('EINVAL', `QED data cluster offset ${run.hostOffset - qedOffsetIntoCluster(s, pos)} is invalid`, {
      op: 'qed_find_cluster',
      offset: pos,
    });
  }
  return run;
}

/** Does a run planned at `pos` (qedPlanInTable) point at a valid data cluster, if at any? */
export function qedRunOffsetValid(s: BDRVQEDState, run: QEDClusterRun, pos: number): boolean {
  return run.kind !== 'found' || qedCheckClusterOffset(qedHotLimits(s), run.hostOffset - qedOffsetIntoCluster(s, pos));
}

/**
 * The run at `pos` (at most `len` bytes, inside `table`'s span) as the table says, its data
 * offset not yet checked (the caller refuses an invalid one).
 */
export function qedPlanInTable(s: BDRVQEDState, table: QEDTable, pos: number, len: number): QEDClusterRun {
  const inCluster = qedOffsetIntoCluster(s, pos);
  const n = qedBytesToClusters(s, inCluster + len);
  const index = qedL2Index(s, pos);
  const first = table.get(index);
  const count = qedCountContiguousClusters(s, table, index, n, first);
  const length = Math.min(len, count * s.header.clusterSize - inCluster);

  if (first === QED_UNALLOC_CLUSTER) return { kind: 'l2-unallocated', hostOffset: 0, length };
  if (first === QED_ZERO_CLUSTER) return { kind: 'zero', hostOffset: 0, length };
  return { kind: 'found', hostOffset: first + inCluster, length };
}

/**
 * The L2 table covering guest `pos` now: null when L1 has none there (unallocated), undefined
 * when it is not cached or its offset is invalid (the asynchronous path reads or reports it).
 * A use of the cache, without a reference: for callers that finish before anything else runs.
 */
export function qedL2TableNow(s: BDRVQEDState, pos: number): QEDTable | null | undefined {
  const l2Offset = s.l1Table.get(qedL1Index(s, pos));
  if (l2Offset === QED_UNALLOC_CLUSTER) return null;
  if (!qedCheckTableOffset(qedHotLimits(s), l2Offset)) return undefined;
  return s.l2Cache.lookup(l2Offset)?.table;
}
