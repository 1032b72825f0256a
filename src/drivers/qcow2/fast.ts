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
import type { IOVector } from '../../block/iovec.js';
import type { BlockDriverState } from '../../block/node.js';
import { countSingleWriteClusters } from './alloc.js';
import { getL2Entry, qcow2GetHostOffsetNow } from './cluster.js';
import { L1E_OFFSET_MASK, L2E_OFFSET_MASK, QCOW_OFLAG_COPIED, clusterType } from './entries.js';
import { type Qcow2InFlight, qcow2FirstAllocation, qcow2InFlightBegin } from './inflight.js';
import { qcow2PreWriteOverlapCheck } from './corrupt.js';
import { qcow2HasDataFile } from './data-file.js';
import { type BDRVQcow2State, offsetIntoCluster, qcow2MetadataSettled, offsetToL1Index, offsetToL2Index, sizeToClusters } from './state.js';

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
  // A guest read of backing data takes the ordinary path (copy-on-read, the backing's events).
  return s !== null && readNow(s, offset, bytes, qiov, false);
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
  const run = qcow2GetHostOffsetNow(s, offset, bytes);
  if (run === null || run.bytes !== bytes) return false;
  const cur = qiov.size === bytes ? qiov : qiov.slice(0, bytes);
  switch (run.kind) {
    case 'normal':
      return file.preadvNow(run.hostOffset, cur);
    case 'zero':
      cur.memset(0, 0);
      return true;
    case 'unallocated': {
      const backing = s.bs.backing;
      if (backing === null) {
        // Without a backing file the guest sees zeros.
        cur.memset(0, 0);
        return true;
      }
      if (!backingToo) return false;
      // readBacking's steps, when none waits: zeros past the backing file's end.
      const len = backing.knownLength();
      if (len === null) return false;
      const n = Math.max(0, Math.min(len - offset, bytes));
      if (n > 0 && !backing.preadvNow(offset, n === bytes ? cur : cur.slice(0, n))) return false;
      if (n < bytes) cur.memset(n, 0);
      return true;
    }
    default:
      return false;
  }
}

/**
 * Map a rewrite of guest [offset, offset+bytes) now when all of it lies in clusters the image
 * owns, contiguous on the host, in a cached table (handle_copied without a wait): the write is
 * then registered in flight and its host offset returned; null sends it the ordinary way. The
 * overlap check runs here as on the ordinary path (and refuses the same way).
 */
export function qcow2RewriteNow(s: BDRVQcow2State, offset: number, bytes: number): { hostOffset: number; flight: Qcow2InFlight } | null {
  if (quiet(s, !s.lock.isLocked) === null || s.extendedL2) return null;
  const l1Index = offsetToL1Index(s, offset);
  if (l1Index >= s.l1Table.length) return null;
  const l1e = s.l1Table[l1Index];
  const l2Offset = Number(l1e & L1E_OFFSET_MASK);
  if ((l1e & QCOW_OFLAG_COPIED) === 0n || l2Offset === 0 || offsetIntoCluster(s, l2Offset) !== 0) return null;
  const data = s.l2Cache.lookup(l2Offset);
  if (data === undefined) return null;
  const l2Index = offsetToL2Index(s, offset);
  const nb = sizeToClusters(s, offsetIntoCluster(s, offset) + bytes);
  if (l2Index + nb > s.l2Size) return null;
  const entry = getL2Entry(s, data, l2Index);
  const host = Number(entry & L2E_OFFSET_MASK);
  // Unallocated (an allocating write, alloc-now.ts) or unaligned: not a rewrite.
  if (host === 0 || offsetIntoCluster(s, host) !== 0) return null;
  // Clusters that read as zeros (zero-alloc) need their flag cleared: not a plain rewrite.
  if (countSingleWriteClusters(s, nb, data, l2Index, false) < nb) return null;
  const v3 = s.header.version >= 3;
  for (let i = 0; i < nb; i++) if (clusterType(getL2Entry(s, data, l2Index + i), v3) !== 'normal') return null;
  if (qcow2FirstAllocation(s, offset, bytes) !== null) return null;
  const hostOffset = host + offsetIntoCluster(s, offset);
  qcow2PreWriteOverlapCheck(s, 0, hostOffset, bytes);
  return { hostOffset, flight: qcow2InFlightBegin(s, offset, bytes, false) };
}
