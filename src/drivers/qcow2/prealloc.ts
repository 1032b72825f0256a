/**
 * Preallocation of a grown range (QEMU's preallocate_co and the falloc/full branch of
 * qcow2_co_truncate), on create and on resize:
 * - metadata: the clusters are allocated and linked like a write would, never written; the
 *   file is extended to cover the last one;
 * - falloc, full: a new refcount structure is laid past everything in use, sized to count
 *   all the new data clusters plus one L2 table per L2 range (so linking them never needs
 *   another refcount block), the data clusters are allocated in one run right after it, the
 *   file grown over them with the protocol's preallocation (fallocate, or zeros written),
 *   then the L2 entries linked (the L2 tables go wherever first fit puts them). The cluster
 *   holding the old end is part of the run: its head is copied over from the old contents.
 */
import { BlockError } from '../../block/errors.js';
import { qcow2AllocHostOffset, qcow2LinkL2, type Qcow2L2Meta } from './alloc.js';
import { qcow2PerformCow } from './cow.js';
import { qcow2AllocClustersAt, qcow2FreeClusters, qcow2RefcountArea } from './refcount.js';
import { qcow2GetLastCluster } from './reftable.js';
import { type BDRVQcow2State, offsetIntoCluster, offsetToL2Index, qcow2File, startOfCluster } from './state.js';
import { qcow2DataNode } from './data-file.js';

/**
 * Allocate (never write) the clusters of guest [from, to) (preallocate_co). With a data file
 * the clusters are its own (host == guest), and the data file is grown with `mode`.
 */
export async function preallocateMetadata(s: BDRVQcow2State, from: number, to: number, mode = 'metadata'): Promise<void> {
  let offset = from;
  let bytes = to - from;
  let host = 0;
  let cur = 0;
  while (bytes > 0) {
    cur = Math.min(bytes, Math.floor(0x7fffffff / s.clusterSize) * s.clusterSize);
    const a = await qcow2AllocHostOffset(s, offset, cur);
    cur = a.bytes;
    host = a.hostOffset;
    for (const m of a.metas) {
      // Allocated, not written: with extended L2 no subcluster is marked as holding data.
      m.prealloc = true;
      await qcow2PerformCow(s, m);
      await qcow2LinkL2(s, m);
    }
    bytes -= cur;
    offset += cur;
  }
  // Reads of the allocated clusters must not fail past EOF: extend the file to cover them.
  const file = qcow2DataNode(s);
  if (host + cur > (await file.getLength())) await file.truncate(host + cur, mode === 'metadata' ? 'off' : mode);
}

function truncateError(message: string, e: unknown, size: number): BlockError {
  const why = e instanceof BlockError ? e.message : String(e);
  return new BlockError(e instanceof BlockError ? e.code : 'EIO', `${message}: ${why}`, { op: 'truncate', offset: size, cause: e });
}

/** Allocate guest [from, to) with data clusters the file really holds (falloc, full). */
export async function preallocateData(s: BDRVQcow2State, from: number, to: number, mode: 'falloc' | 'full'): Promise<void> {
  const cs = s.clusterSize;
  const file = qcow2File(s);
  // The new structures go after the last cluster in use, not after the file's end.
  const fileSize = await file.getLength();
  const last = await qcow2GetLastCluster(s, fileSize);
  const start = last >= 0 ? (last + 1) * cs : Math.ceil(fileSize / cs) * cs;
  let nbData = (Math.ceil(to / cs) * cs - startOfCluster(s, from)) / cs;
  // An overestimate: L2 tables need no room here (they go wherever there is some), only
  // refcounts that cover them; one more for a range not aligned to L2 tables.
  const nbL2 = Math.ceil(nbData / s.l2Size) + 1;
  let allocStart: number;
  try {
    allocStart = await qcow2RefcountArea(s, start, nbData + nbL2, true, 0, 0);
  } catch (e) {
    throw truncateError('Failed to resize refcount structures', e, to);
  }
  // Free (the area ends the file), so the whole run is allocated at once.
  const allocated = await qcow2AllocClustersAt(s, allocStart, nbData);
  if (allocated !== nbData) throw new BlockError('EIO', 'Failed to allocate data clusters', { op: 'truncate', offset: to });
  const fileEnd = allocStart + nbData * cs;
  try {
    // The clusters are in the file (and take their space) before any L2 entry points at them.
    await file.truncate(fileEnd, mode);
  } catch (e) {
    await qcow2FreeClusters(s, allocStart, nbData * cs, 'never');
    throw truncateError('Failed to resize underlying file', e, to);
  }
  let host = allocStart;
  let guest = from;
  while (nbData > 0) {
    const n = Math.min(nbData, s.l2Size - offsetToL2Index(s, guest));
    // The old end's cluster is reallocated: its head is copied from what the guest saw.
    const head = offsetIntoCluster(s, guest);
    guest = startOfCluster(s, guest);
    const m: Qcow2L2Meta = {
      allocOffset: host,
      offset: guest,
      nbClusters: n,
      keepOld: false,
      overwritesData: false,
      cowStart: { offset: 0, nbBytes: head },
      cowEnd: { offset: n * cs, nbBytes: 0 },
      skipCow: false,
      prealloc: true,
    };
    try {
      await qcow2PerformCow(s, m);
      await qcow2LinkL2(s, m);
    } catch (e) {
      // What is not linked yet is given back (what is linked stays, as QEMU leaves it).
      await qcow2FreeClusters(s, host, nbData * cs, 'other');
      throw truncateError('Failed to update L2 tables', e, to);
    }
    guest += n * cs;
    host += n * cs;
    nbData -= n;
  }
}
