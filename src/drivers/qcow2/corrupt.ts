/**
 * The corrupt bit and the metadata overlap check (QEMU's qcow2_signal_corruption and
 * qcow2_check_metadata_overlap in its default "cached" mode).
 *
 * Every write to the file (data, L2 tables, refcount blocks, L1, reftable) is checked first
 * against the metadata QEMU checks by default: header, active L1, active L2 tables, reftable,
 * refcount blocks, snapshot table, snapshot L1 tables, bitmap directory. A write that would
 * overlap is refused: the image is marked corrupt (the bit written with a full header rewrite
 * when the image is writable), the request fails with EIO and so does every later request.
 */
import { BlockError } from '../../block/errors.js';
import { L1E_OFFSET_MASK, REFT_OFFSET_MASK, usedEntries } from './entries.js';
import { QCOW2_INCOMPAT_CORRUPT } from './header.js';
import type { BDRVQcow2State } from './state.js';

export const QCOW2_OL_MAIN_HEADER = 1 << 0;
export const QCOW2_OL_ACTIVE_L1 = 1 << 1;
export const QCOW2_OL_ACTIVE_L2 = 1 << 2;
export const QCOW2_OL_REFCOUNT_TABLE = 1 << 3;
export const QCOW2_OL_REFCOUNT_BLOCK = 1 << 4;
export const QCOW2_OL_SNAPSHOT_TABLE = 1 << 5;
export const QCOW2_OL_INACTIVE_L1 = 1 << 6;
export const QCOW2_OL_INACTIVE_L2 = 1 << 7;
export const QCOW2_OL_BITMAP_DIRECTORY = 1 << 8;
/** QEMU's default ("cached"): everything but inactive L2 tables. */
export const QCOW2_OL_DEFAULT = 0x1ff & ~QCOW2_OL_INACTIVE_L2;

const OL_NAMES: Record<number, string> = {
  [QCOW2_OL_MAIN_HEADER]: 'qcow2_header',
  [QCOW2_OL_ACTIVE_L1]: 'active L1 table',
  [QCOW2_OL_ACTIVE_L2]: 'active L2 table',
  [QCOW2_OL_REFCOUNT_TABLE]: 'refcount table',
  [QCOW2_OL_REFCOUNT_BLOCK]: 'refcount block',
  [QCOW2_OL_SNAPSHOT_TABLE]: 'snapshot table',
  [QCOW2_OL_INACTIVE_L1]: 'inactive L1 table',
  [QCOW2_OL_INACTIVE_L2]: 'inactive L2 table',
  [QCOW2_OL_BITMAP_DIRECTORY]: 'bitmap directory',
};

/** What the overlap check needs besides the tables in memory. */
export interface Qcow2MetadataExtents {
  snapshotsOffset: number;
  snapshotsSize: number;
  /** Snapshot L1 tables. */
  inactiveL1: { offset: number; size: number }[];
  bitmapDirectory: { offset: number; size: number } | null;
}

function overlaps(aStart: number, aLen: number, bStart: number, bLen: number): boolean {
  return aLen > 0 && bLen > 0 && aStart < bStart + bLen && bStart < aStart + aLen;
}

/**
 * Host clusters holding active L2 tables and refcount blocks, by cluster index, with the
 * table arrays they were read from. Every guest write is checked against them, and scanning
 * the L1 and refcount tables per write (BigInt entries, thousands of them) cost more than the
 * write itself; the index turns the check into a lookup per cluster written.
 */
export interface Qcow2OverlapIndex {
  l1: BigUint64Array;
  reftable: BigUint64Array;
  clusters: Map<number, number>;
  /**
   * Where the metadata at fixed places ends (header, active L1, reftable, snapshot table and
   * L1 tables, bitmap directory), and what it was measured from: a data write past it, the
   * common case, is checked against the clusters alone. Comparing each range in turn cost a
   * rewrite (9.3) about 2500 instructions in V8's baseline tier.
   */
  fixedEnd: number;
  l1Offset: number;
  reftableOffset: number;
  extents: Qcow2MetadataExtents;
  bitmapDirectory: Qcow2MetadataExtents['bitmapDirectory'];
}

function buildOverlapIndex(s: BDRVQcow2State): Qcow2OverlapIndex {
  const clusters = new Map<number, number>();
  const add = (offset: number, kind: number): void => {
    if (offset === 0) return;
    const c = Math.floor(offset / s.clusterSize);
    clusters.set(c, (clusters.get(c) ?? 0) | kind);
  };
  for (const i of usedEntries(s.l1Table)) add(Number(s.l1Table[i] & L1E_OFFSET_MASK), QCOW2_OL_ACTIVE_L2);
  for (const i of usedEntries(s.refcountTable)) add(Number(s.refcountTable[i] & REFT_OFFSET_MASK), QCOW2_OL_REFCOUNT_BLOCK);
  const ext = s.extents;
  let fixedEnd = s.clusterSize;
  const fixed = (offset: number, size: number): void => {
    if (size > 0) fixedEnd = Math.max(fixedEnd, offset + size);
  };
  fixed(s.l1TableOffset, s.l1Table.length * 8);
  fixed(s.refcountTableOffset, s.refcountTable.length * 8);
  fixed(ext.snapshotsOffset, ext.snapshotsSize);
  for (const l1 of ext.inactiveL1) fixed(l1.offset, l1.size);
  if (ext.bitmapDirectory) fixed(ext.bitmapDirectory.offset, ext.bitmapDirectory.size);
  return {
    l1: s.l1Table,
    reftable: s.refcountTable,
    clusters,
    fixedEnd,
    l1Offset: s.l1TableOffset,
    reftableOffset: s.refcountTableOffset,
    extents: ext,
    bitmapDirectory: ext.bitmapDirectory,
  };
}

/** The index, rebuilt if a table it was made from was replaced or moved since. */
function overlapIndexNow(s: BDRVQcow2State): Qcow2OverlapIndex {
  const idx = s.overlapIndex;
  const ext = s.extents;
  if (
    idx !== null &&
    idx.l1 === s.l1Table &&
    idx.reftable === s.refcountTable &&
    idx.l1Offset === s.l1TableOffset &&
    idx.reftableOffset === s.refcountTableOffset &&
    idx.extents === ext &&
    idx.bitmapDirectory === ext.bitmapDirectory
  ) {
    return idx;
  }
  return (s.overlapIndex = buildOverlapIndex(s));
}

/**
 * An L1 or refcount table entry was changed in place: the index is rebuilt on the next check.
 * (A table replaced by a new array is noticed without this.)
 */
export function qcow2OverlapIndexChanged(s: BDRVQcow2State): void {
  s.overlapIndex = null;
}

/** Which of the `kinds` (ACTIVE_L2, REFCOUNT_BLOCK) the cluster-aligned range [start, start+len) touches. */
function tableClustersIn(s: BDRVQcow2State, idx: Qcow2OverlapIndex, start: number, len: number, kinds: number): number {
  const first = start / s.clusterSize;
  const n = len / s.clusterSize;
  let hit = 0;
  if (n <= idx.clusters.size) {
    for (let c = first; c < first + n; c++) hit |= (idx.clusters.get(c) ?? 0) & kinds;
  } else {
    // forEach: an iterator would make an entry array per table cluster, on every write.
    idx.clusters.forEach((kind, c) => {
      if (c >= first && c < first + n) hit |= kind & kinds;
    });
  }
  if (hit === 0) return 0;
  // A hit marks the image corrupt: confirm it against the tables themselves, in case an
  // in-place change was not announced.
  s.overlapIndex = buildOverlapIndex(s);
  hit = 0;
  for (const [c, kind] of s.overlapIndex.clusters) if (c >= first && c < first + n) hit |= kind & kinds;
  return hit;
}

/** The first metadata kind [offset, offset+size) overlaps (0 = none), skipping `ign`. */
export function qcow2CheckMetadataOverlap(s: BDRVQcow2State, ign: number, offset: number, size: number): number {
  const chk = QCOW2_OL_DEFAULT & ~ign;
  const cs = s.clusterSize;
  if (size <= 0) return 0;
  if (chk & QCOW2_OL_MAIN_HEADER && offset < cs) return QCOW2_OL_MAIN_HEADER;
  // Metadata occupies whole clusters: compare cluster-aligned ranges.
  const start = offset - (offset % cs);
  const len = Math.ceil((offset + size) / cs) * cs - start;
  const idx = overlapIndexNow(s);
  if (start >= idx.fixedEnd) {
    // One cluster that holds no table, the common data write: no walk.
    if (len === cs && !idx.clusters.has(start / cs)) return 0;
    return tableClustersHit(s, idx, start, len, chk);
  }
  if (chk & QCOW2_OL_ACTIVE_L1 && s.l1Table.length > 0 && overlaps(start, len, s.l1TableOffset, s.l1Table.length * 8)) {
    return QCOW2_OL_ACTIVE_L1;
  }
  if (chk & QCOW2_OL_REFCOUNT_TABLE && overlaps(start, len, s.refcountTableOffset, s.refcountTable.length * 8)) {
    return QCOW2_OL_REFCOUNT_TABLE;
  }
  const ext = s.extents;
  if (chk & QCOW2_OL_SNAPSHOT_TABLE && overlaps(start, len, ext.snapshotsOffset, ext.snapshotsSize)) {
    return QCOW2_OL_SNAPSHOT_TABLE;
  }
  if (chk & QCOW2_OL_INACTIVE_L1) {
    for (const l1 of ext.inactiveL1) if (overlaps(start, len, l1.offset, l1.size)) return QCOW2_OL_INACTIVE_L1;
  }
  const hit = tableClustersHit(s, idx, start, len, chk);
  if (hit !== 0) return hit;
  if (chk & QCOW2_OL_BITMAP_DIRECTORY && ext.bitmapDirectory) {
    if (overlaps(start, len, ext.bitmapDirectory.offset, ext.bitmapDirectory.size)) return QCOW2_OL_BITMAP_DIRECTORY;
  }
  return 0;
}

/** The first of the `chk` kinds ACTIVE_L2, REFCOUNT_BLOCK that [start, start+len) overlaps, or 0. */
function tableClustersHit(s: BDRVQcow2State, idx: Qcow2OverlapIndex, start: number, len: number, chk: number): number {
  if ((chk & (QCOW2_OL_ACTIVE_L2 | QCOW2_OL_REFCOUNT_BLOCK)) === 0) return 0;
  const hit = tableClustersIn(s, idx, start, len, chk & (QCOW2_OL_ACTIVE_L2 | QCOW2_OL_REFCOUNT_BLOCK));
  if (hit & QCOW2_OL_ACTIVE_L2) return QCOW2_OL_ACTIVE_L2;
  if (hit & QCOW2_OL_REFCOUNT_BLOCK) return QCOW2_OL_REFCOUNT_BLOCK;
  return 0;
}

/** Refuse a write that would overwrite metadata (qcow2_pre_write_overlap_check). */
export function qcow2PreWriteOverlapCheck(s: BDRVQcow2State, ign: number, offset: number, size: number): void {
  const ret = qcow2CheckMetadataOverlap(s, ign, offset, size);
  if (ret === 0) return;
  qcow2SignalCorruption(s, true, `Preventing invalid write on metadata (overlaps with ${OL_NAMES[ret]})`);
  throw new BlockError('EIO', undefined, { op: 'write', offset });
}

/** A number as printf's %#x prints it in QEMU's messages: 0x-prefixed, but plain 0. */
export function printfHex(v: number | bigint): string {
  return v === 0 || v === 0n ? '0' : `0x${v.toString(16)}`;
}

/**
 * A corruption event. Fatal events on a writable image mark it corrupt (bit written in the
 * background by the caller's awaiting of s.corruptWrite) and stop all further I/O; the others
 * are reported once.
 */
export function qcow2SignalCorruption(s: BDRVQcow2State, fatal: boolean, message: string): void {
  const writable = !s.bs.readOnly && !s.openOptions.inactive;
  const marking = fatal && writable;
  if (!s.corruptionReported || marking) {
    console.error(
      marking
        ? `qcow2: Marking image as corrupt: ${message}; further corruption events will be suppressed`
        : `qcow2: Image is corrupt: ${message}; further non-fatal corruption events will be suppressed`,
    );
    s.corruptionReported = true;
  }
  if (!marking || s.corrupt) return;
  s.corrupt = true;
  s.header.incompatibleFeatures |= QCOW2_INCOMPAT_CORRUPT;
  // v2 images cannot store the bit; the node is unusable all the same.
  if (s.header.version >= 3) s.corruptWrite = s.updateHeader().catch(() => undefined);
}

/**
 * Fail fast once the image was marked corrupt during this open. QEMU detaches the driver from
 * the node then, so later requests fail with ENOMEDIUM ("No medium found").
 */
export function qcow2CheckNotCorrupt(s: BDRVQcow2State, op: string): void {
  if (s.corrupt) throw new BlockError('ENOMEDIUM', undefined, { op });
}
