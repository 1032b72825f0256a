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
import { L1E_OFFSET_MASK, REFT_OFFSET_MASK } from './entries.js';
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

/** The high 32 bits of the offset masks (L1E_OFFSET_MASK, REFT_OFFSET_MASK); both clear bits 0-8. */
const L1E_HIGH_MASK = Number(L1E_OFFSET_MASK >> 32n);
const REFT_HIGH_MASK = Number(REFT_OFFSET_MASK >> 32n);
const LOW_MASK = Number(L1E_OFFSET_MASK & 0xffffffffn);
/** Word order of a BigUint64Array seen as 32-bit words on this host. */
const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

/**
 * Does a table entry (an L2 table or refcount block offset, masked) point at a cluster that
 * overlaps [start, start+len)? This runs before every write over tables of up to a few
 * hundred thousand entries, so the entries are read as pairs of 32-bit words, without BigInt.
 */
function tableHitsRange(table: BigUint64Array, highMask: number, start: number, len: number, cs: number): boolean {
  const words = new Uint32Array(table.buffer, table.byteOffset, table.length * 2);
  const hi = LITTLE_ENDIAN ? 1 : 0;
  for (let i = 0; i < words.length; i += 2) {
    const off = ((words[i + hi] & highMask) >>> 0) * 0x100000000 + ((words[i + 1 - hi] & LOW_MASK) >>> 0);
    if (off !== 0 && overlaps(start, len, off, cs)) return true;
  }
  return false;
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
  if (chk & QCOW2_OL_ACTIVE_L2 && tableHitsRange(s.l1Table, L1E_HIGH_MASK, start, len, cs)) return QCOW2_OL_ACTIVE_L2;
  if (chk & QCOW2_OL_REFCOUNT_BLOCK && tableHitsRange(s.refcountTable, REFT_HIGH_MASK, start, len, cs)) {
    return QCOW2_OL_REFCOUNT_BLOCK;
  }
  if (chk & QCOW2_OL_BITMAP_DIRECTORY && ext.bitmapDirectory) {
    if (overlaps(start, len, ext.bitmapDirectory.offset, ext.bitmapDirectory.size)) return QCOW2_OL_BITMAP_DIRECTORY;
  }
  return 0;
}

/** Refuse a write that would overwrite metadata (qcow2_pre_write_overlap_check). */
export function qcow2PreWriteOverlapCheck(s: BDRVQcow2State, ign: number, offset: number, size: number): void {
  const ret = qcow2CheckMetadataOverlap(s, ign, offset, size);
  if (ret === 0) return;
  qcow2SignalCorruption(s, true, `Preventing invalid write on metadata (overlaps with ${OL_NAMES[ret]})`);
  throw new BlockError('EIO', undefined, { op: 'write', offset });
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
