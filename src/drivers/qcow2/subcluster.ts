/**
 * Extended L2 entries on the write side: which subclusters a write must copy and which bits
 * its L2 update sets (QEMU's qcow2_get_subcluster_range_type, calculate_l2_meta and the bitmap
 * half of qcow2_alloc_cluster_link_l2).
 *
 * With extended L2 entries a cluster is split into 32 subclusters, each allocated (bit i of
 * the bitmap), reading as zeros (bit 32+i) or neither (read through to the backing file). A
 * write allocates the host cluster as before but only copies and marks the subclusters it
 * touches: the head and tail copy stop at the subcluster boundaries around the data, and
 * subclusters that were never written stay unallocated. Without extended L2 a cluster is one
 * subcluster, and every rule here reduces to the whole-cluster one.
 */
import { BlockError } from '../../block/errors.js';
import { getL2Bitmap, getL2Entry } from './cluster.js';
import { printfHex, qcow2SignalCorruption } from './corrupt.js';
import { qcow2HasDataFile } from './data-file.js';
import {
  L1E_OFFSET_MASK,
  QCOW_L2_BITMAP_ALL_ALLOC,
  type Qcow2ClusterType,
  type Qcow2SubclusterType,
  clusterType,
  ctz32,
  subAllocRange,
  subZeroRange,
  subclusterRangeType,
  subclusterType,
} from './entries.js';
import { type BDRVQcow2State, offsetIntoCluster, offsetToL1Index, sizeToClusters, startOfCluster } from './state.js';

/** A new allocation waiting for its L2 update (QEMU's QCowL2Meta). */
export interface Qcow2L2Meta {
  /** Host offset of the first allocated cluster. */
  allocOffset: number;
  /** Guest offset of the first cluster. */
  offset: number;
  nbClusters: number;
  /** The clusters were already ours (zero-alloc with COPIED): nothing to free. */
  keepOld: boolean;
  /** Bytes [offset + cowStart.offset, + nbBytes) are copied from the old contents. */
  cowStart: { offset: number; nbBytes: number };
  cowEnd: { offset: number; nbBytes: number };
  /** The COW areas were zeroed in the file already (handle_alloc_space): no copy. */
  skipCow: boolean;
  /**
   * keepOld with some normal (sub)clusters written: their bytes between the COW areas are
   * guest data, so the range may not be zeroed as a whole before the data write.
   */
  overwritesData: boolean;
  /** Preallocation: the clusters are linked with no subcluster marked allocated. */
  prealloc?: boolean;
}

/** Subclusters per cluster: 32 with extended L2 entries, otherwise the cluster itself. */
export function subclustersPerCluster(s: BDRVQcow2State): number {
  return s.extendedL2 ? 32 : 1;
}

/** The subcluster of its cluster that byte `offset` falls in (offset_to_sc_index). */
export function scIndex(s: BDRVQcow2State, offset: number): number {
  return Math.floor(offsetIntoCluster(s, offset) / s.subclusterSize);
}

/**
 * The cluster type of an L2 entry as the write side sees it: bit 0 is a zero flag only in a v3
 * image without extended L2 entries (there, the bitmap says what reads as zeros).
 */
export function l2ClusterType(s: BDRVQcow2State, entry: bigint): Qcow2ClusterType {
  return clusterType(entry, s.header.version >= 3 && !s.extendedL2, qcow2HasDataFile(s));
}

/** Does one of subclusters first..last of this entry hold guest data? */
function holdsData(s: BDRVQcow2State, entry: bigint, bitmap: bigint, first: number, last: number): boolean {
  const dataFile = qcow2HasDataFile(s);
  if (!s.extendedL2) return subclusterType(entry, bitmap, 0, false, true, dataFile) === 'normal';
  if (clusterType(entry, false, dataFile) !== 'normal') return false;
  const alloc = Number(bitmap & QCOW_L2_BITMAP_ALL_ALLOC) & ~Number(bitmap >> 32n);
  return (alloc & Number(subAllocRange(first, last + 1))) !== 0;
}

function invalidEntry(s: BDRVQcow2State, guestOffset: number, l2Index: number): BlockError {
  const l2Offset = Number(s.l1Table[offsetToL1Index(s, guestOffset)] & L1E_OFFSET_MASK);
  qcow2SignalCorruption(s, true, `Invalid cluster entry found (L2 offset: ${printfHex(l2Offset)}, L2 index: ${printfHex(l2Index)})`);
  return new BlockError('EIO', undefined, { op: 'write', offset: guestOffset });
}

/**
 * calculateL2Meta's answer for a write into new clusters whose entries are all zeros, without
 * extended L2 entries (what the allocating fast path maps, alloc-now.ts): the head of the
 * first cluster before the data and the tail of the last after it are copied. No entry is read
 * again, and the fast path's code stays small enough not to be worth optimising.
 */
export function plainL2Meta(s: BDRVQcow2State, hostClusterOffset: number, guestOffset: number, bytes: number): Qcow2L2Meta {
  const cowStartTo = offsetIntoCluster(s, guestOffset);
  const cowEndFrom = cowStartTo + bytes;
  const nbClusters = sizeToClusters(s, cowEndFrom);
  return {
    allocOffset: hostClusterOffset,
    offset: guestOffset - cowStartTo,
    nbClusters,
    keepOld: false,
    cowStart: { offset: 0, nbBytes: cowStartTo },
    cowEnd: { offset: cowEndFrom, nbBytes: nbClusters * s.clusterSize - cowEndFrom },
    skipCow: false,
    overwritesData: false,
  };
}

/**
 * Describe the COW a write of guest [guestOffset, +bytes) into clusters from host
 * `hostClusterOffset` needs (calculate_l2_meta); null when it needs no L2 update at all
 * (every subcluster it writes is ours and holds data already).
 *
 * New clusters copy what the guest sees around the data, down to the first and up to the last
 * subcluster the old cluster holds (an unallocated or zero cluster: just the subclusters the
 * write touches). Kept clusters copy only the touched subclusters that do not hold data yet.
 */
export function calculateL2Meta(
  s: BDRVQcow2State,
  hostClusterOffset: number,
  guestOffset: number,
  bytes: number,
  data: Uint8Array,
  l2Index: number,
  keepOld: boolean,
): Qcow2L2Meta | null {
  const cs = s.clusterSize;
  const scSize = s.subclusterSize;
  const cowStartTo = offsetIntoCluster(s, guestOffset);
  const cowEndFrom = cowStartTo + bytes;
  const nbClusters = sizeToClusters(s, cowEndFrom);
  const dataFile = qcow2HasDataFile(s);
  let skipCow = keepOld;
  let overwritesData = false;
  for (let i = 0; i < nbClusters; i++) {
    const entry = getL2Entry(s, data, l2Index + i);
    const bitmap = getL2Bitmap(s, data, l2Index + i);
    const firstSc = scIndex(s, Math.max(cowStartTo, i * cs));
    const lastSc = scIndex(s, Math.min(cowEndFrom, (i + 1) * cs) - 1);
    let type: Qcow2SubclusterType;
    if (skipCow) {
      // Kept clusters whose written subclusters all hold data need nothing.
      const r = subclusterRangeType(entry, bitmap, firstSc, s.extendedL2, dataFile);
      if (r.type !== 'normal' || firstSc + r.count <= lastSc) skipCow = false;
      type = r.type;
    } else {
      type = subclusterType(entry, bitmap, 0, s.extendedL2, true, dataFile);
    }
    if (type === 'invalid') throw invalidEntry(s, guestOffset, l2Index + i);
    if (keepOld && !overwritesData) overwritesData = holdsData(s, entry, bitmap, firstSc, lastSc);
  }
  if (skipCow) return null;

  const firstIndex = l2Index;
  const lastIndex = l2Index + nbClusters - 1;
  const startSc = scIndex(s, guestOffset);
  const endSc = scIndex(s, guestOffset + bytes - 1);
  const startType = subclusterType(getL2Entry(s, data, firstIndex), getL2Bitmap(s, data, firstIndex), startSc, s.extendedL2, true, dataFile);
  const endType = subclusterType(getL2Entry(s, data, lastIndex), getL2Bitmap(s, data, lastIndex), endSc, s.extendedL2, true, dataFile);
  const startAlloc = Number(getL2Bitmap(s, data, firstIndex) & QCOW_L2_BITMAP_ALL_ALLOC);
  const endAlloc = Number(getL2Bitmap(s, data, lastIndex) & QCOW_L2_BITMAP_ALL_ALLOC);

  let cowStartFrom: number;
  let cowEndTo: number;
  if (!keepOld) {
    switch (startType) {
      case 'compressed':
        cowStartFrom = 0;
        break;
      case 'normal':
      case 'zero-alloc':
      case 'unallocated-alloc':
        // From the first subcluster the old cluster holds, if that comes before the data.
        cowStartFrom = s.extendedL2 ? Math.min(startSc, ctz32(startAlloc)) * scSize : 0;
        break;
      case 'zero-plain':
      case 'unallocated-plain':
        cowStartFrom = startSc * scSize;
        break;
      default:
        throw invalidEntry(s, guestOffset, firstIndex);
    }
    switch (endType) {
      case 'compressed':
        cowEndTo = Math.ceil(cowEndFrom / cs) * cs;
        break;
      case 'normal':
      case 'zero-alloc':
      case 'unallocated-alloc':
        // Up to the last subcluster the old cluster holds, if that comes after the data.
        cowEndTo = Math.ceil(cowEndFrom / cs) * cs;
        if (s.extendedL2) cowEndTo -= Math.min(32 - endSc - 1, Math.clz32(endAlloc)) * scSize;
        break;
      case 'zero-plain':
      case 'unallocated-plain':
        cowEndTo = Math.ceil(cowEndFrom / scSize) * scSize;
        break;
      default:
        throw invalidEntry(s, guestOffset, lastIndex);
    }
  } else {
    // Kept clusters: a subcluster holding data is written in place, the others are filled.
    if (startType === 'normal') cowStartFrom = cowStartTo;
    else if (startType === 'zero-alloc' || startType === 'unallocated-alloc') cowStartFrom = startSc * scSize;
    else throw invalidEntry(s, guestOffset, firstIndex);
    if (endType === 'normal') cowEndTo = cowEndFrom;
    else if (endType === 'zero-alloc' || endType === 'unallocated-alloc') cowEndTo = Math.ceil(cowEndFrom / scSize) * scSize;
    else throw invalidEntry(s, guestOffset, lastIndex);
  }
  return {
    allocOffset: hostClusterOffset,
    offset: startOfCluster(s, guestOffset),
    nbClusters,
    keepOld,
    cowStart: { offset: cowStartFrom, nbBytes: cowStartTo - cowStartFrom },
    cowEnd: { offset: cowEndFrom, nbBytes: cowEndTo - cowEndFrom },
    skipCow: false,
    overwritesData,
  };
}

/**
 * The bitmap of cluster `i` of an allocation once linked: the subclusters written (data and
 * COW) become allocated and lose their zero bit; a preallocation marks none.
 */
export function linkedBitmap(s: BDRVQcow2State, m: Qcow2L2Meta, i: number, old: bigint): bigint {
  if (!s.extendedL2 || m.prealloc === true) return old;
  const cs = s.clusterSize;
  const from = Math.max(m.cowStart.offset, i * cs);
  const to = Math.min(m.cowEnd.offset + m.cowEnd.nbBytes, (i + 1) * cs);
  const first = scIndex(s, from);
  const last = scIndex(s, to - 1);
  return (old | subAllocRange(first, last + 1)) & ~subZeroRange(first, last + 1);
}
