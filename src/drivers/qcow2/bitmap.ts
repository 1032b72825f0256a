/**
 * qcow2 persistent dirty bitmaps, the directory (QEMU's qcow2-bitmap.c): the bitmap directory
 * named by the bitmaps header extension, decoded and encoded with QEMU's checks, and the list
 * `info` shows. The directory counts only while the bitmaps autoclear bit is set: a writer that
 * did not keep bitmaps cleared it, and the stale directory is then ignored (the open drops the
 * extension from memory), as QEMU does. Loading and storing the bits: bitmap-store.ts.
 */
import { BlockError } from '../../block/errors.js';
import type { ImageInfoValue, OpenOptions } from '../../block/driver.js';
import { QCOW2_AUTOCLEAR_BITMAPS, type QCowHeader } from './header.js';
import { type BDRVQcow2State, qcow2File } from './state.js';

/** Bitmap directory entry flags. */
export const BME_FLAG_IN_USE = 1 << 0;
export const BME_FLAG_AUTO = 1 << 1;
const BME_RESERVED_FLAGS = 0xfffffffc;
/** Fixed part of a directory entry; then extra data, the name, padding to 8 bytes. */
const BME_HEADER_SIZE = 24;
/** The only bitmap type: dirty tracking. */
export const BT_DIRTY_TRACKING_BITMAP = 1;
/** QEMU's limits (qcow2-bitmap.c, qcow2.h). */
export const QCOW2_MAX_BITMAPS = 65535;
export const QCOW2_MAX_BITMAP_DIRECTORY_SIZE = 1024 * QCOW2_MAX_BITMAPS;
export const BME_MAX_TABLE_SIZE = 0x8000000;
export const BME_MAX_PHYS_SIZE = 0x20000000;
export const BME_MAX_GRANULARITY_BITS = 31;
export const BME_MIN_GRANULARITY_BITS = 9;
export const BME_MAX_NAME_SIZE = 1023;

export interface Qcow2BitmapEntry {
  name: string;
  tableOffset: number;
  /** Entries (u64) of the bitmap table. */
  tableSize: number;
  flags: number;
  granularityBits: number;
}

/** nb_bitmaps, directory size and offset: all 0 when the image has no (valid) bitmaps. */
export interface Qcow2BitmapDir {
  nbBitmaps: number;
  size: number;
  offset: number;
}

/** The directory the bitmaps extension names (s->nb_bitmaps and friends). */
export function bitmapDir(s: BDRVQcow2State): Qcow2BitmapDir {
  const ext = s.bitmapsExtension;
  if (ext === null) return { nbBitmaps: 0, size: 0, offset: 0 };
  const v = new DataView(ext.buffer, ext.byteOffset, ext.byteLength);
  return { nbBitmaps: v.getUint32(0), size: Number(v.getBigUint64(8)), offset: Number(v.getBigUint64(16)) };
}

/** Record a new directory in memory: the extension for the next header write, the overlap check's extent. */
export function setBitmapDir(s: BDRVQcow2State, d: Qcow2BitmapDir): void {
  if (d.nbBitmaps === 0) {
    s.bitmapsExtension = null;
    s.extents.bitmapDirectory = null;
    return;
  }
  const ext = new Uint8Array(24);
  const v = new DataView(ext.buffer);
  v.setUint32(0, d.nbBitmaps);
  v.setBigUint64(8, BigInt(d.size));
  v.setBigUint64(16, BigInt(d.offset));
  s.bitmapsExtension = ext;
  s.extents.bitmapDirectory = { offset: d.offset, size: d.size };
}

function invalid(why: string): BlockError {
  return new BlockError('EINVAL', why, { op: 'bitmaps' });
}

/** Bytes of a directory entry (calc_dir_entry_size). */
export function dirEntrySize(nameSize: number, extraDataSize = 0): number {
  return (BME_HEADER_SIZE + nameSize + extraDataSize + 7) & ~7;
}

/** What the entry checks depend on: the image's cluster size and the disk's length. */
export interface BitmapGeometry {
  clusterSize: number;
  diskSize: number;
}

export function bitmapGeometry(s: BDRVQcow2State): BitmapGeometry {
  return { clusterSize: s.clusterSize, diskSize: s.header.size };
}

/** check_dir_entry: the constraints every entry read or written must meet. */
export function dirEntryValid(s: BitmapGeometry, e: Qcow2BitmapEntry & { type: number; nameSize: number }): boolean {
  const bad =
    e.tableSize === 0 ||
    e.tableOffset === 0 ||
    e.tableOffset % s.clusterSize !== 0 ||
    e.tableSize > BME_MAX_TABLE_SIZE ||
    e.granularityBits > BME_MAX_GRANULARITY_BITS ||
    e.granularityBits < BME_MIN_GRANULARITY_BITS ||
    (e.flags & BME_RESERVED_FLAGS) !== 0 ||
    e.nameSize > BME_MAX_NAME_SIZE ||
    e.type !== BT_DIRTY_TRACKING_BITMAP;
  if (bad) return false;
  const physBytes = e.tableSize * s.clusterSize;
  if (physBytes > BME_MAX_PHYS_SIZE) return false;
  // A consistent bitmap must cover the whole disk; an in-use one may be stale after a resize.
  return (e.flags & BME_FLAG_IN_USE) !== 0 || s.diskSize <= physBytes * 8 * 2 ** e.granularityBits;
}

/** Decode a bitmap directory with QEMU's checks and messages (bitmap_list_load). */
export function parseBitmapDirectory(s: BitmapGeometry, dir: Uint8Array, nbBitmaps: number): Qcow2BitmapEntry[] {
  const v = new DataView(dir.buffer, dir.byteOffset, dir.byteLength);
  const out: Qcow2BitmapEntry[] = [];
  let pos = 0;
  while (pos < dir.length) {
    if (pos + BME_HEADER_SIZE > dir.length) throw invalid('Broken bitmap directory');
    if (out.length + 1 > nbBitmaps) throw invalid('More bitmaps found than specified in header extension');
    const nameSize = v.getUint16(pos + 18);
    const extraSize = v.getUint32(pos + 20);
    const end = pos + dirEntrySize(nameSize, extraSize);
    if (end > dir.length) throw invalid('Broken bitmap directory');
    if (extraSize !== 0) throw invalid('Bitmap extra data is not supported');
    const nameStart = pos + BME_HEADER_SIZE;
    const e = {
      tableOffset: Number(v.getBigUint64(pos)),
      tableSize: v.getUint32(pos + 8),
      flags: v.getUint32(pos + 12),
      type: v.getUint8(pos + 16),
      granularityBits: v.getUint8(pos + 17),
      nameSize,
      name: new TextDecoder().decode(dir.subarray(nameStart, nameStart + nameSize)),
    };
    if (!dirEntryValid(s, e)) throw invalid(`Bitmap '${e.name}' doesn't satisfy the constraints`);
    out.push({ name: e.name, tableOffset: e.tableOffset, tableSize: e.tableSize, flags: e.flags, granularityBits: e.granularityBits });
    pos = end;
  }
  if (out.length !== nbBitmaps) throw invalid('Less bitmaps found than specified in header extension');
  return out;
}

/** Encode a directory (bitmap_list_store's layout); every entry is checked first. */
export function encodeBitmapDirectory(s: BitmapGeometry, list: readonly Qcow2BitmapEntry[]): Uint8Array {
  const names = list.map((e) => new TextEncoder().encode(e.name));
  const size = names.reduce((n, b) => n + dirEntrySize(b.length), 0);
  if (size === 0 || size > QCOW2_MAX_BITMAP_DIRECTORY_SIZE) throw invalid('Invalid bitmap directory size');
  const dir = new Uint8Array(size);
  const v = new DataView(dir.buffer);
  let pos = 0;
  list.forEach((e, i) => {
    if (!dirEntryValid(s, { ...e, type: BT_DIRTY_TRACKING_BITMAP, nameSize: names[i].length })) throw invalid(`Bitmap '${e.name}' doesn't satisfy the constraints`);
    v.setBigUint64(pos, BigInt(e.tableOffset));
    v.setUint32(pos + 8, e.tableSize);
    v.setUint32(pos + 12, e.flags);
    v.setUint8(pos + 16, BT_DIRTY_TRACKING_BITMAP);
    v.setUint8(pos + 17, e.granularityBits);
    v.setUint16(pos + 18, names[i].length);
    dir.set(names[i], pos + BME_HEADER_SIZE);
    pos += dirEntrySize(names[i].length);
  });
  return dir;
}

/** The bitmaps this image carries, or [] when there are none (or the autoclear bit was clear). */
export async function qcow2ReadBitmapList(s: BDRVQcow2State): Promise<Qcow2BitmapEntry[]> {
  const { nbBitmaps, size, offset } = bitmapDir(s);
  if (nbBitmaps === 0) return [];
  if (size === 0) throw invalid('Requested bitmap directory size is zero');
  if (size > QCOW2_MAX_BITMAP_DIRECTORY_SIZE) throw invalid('Requested bitmap directory size is too big');
  const dir = new Uint8Array(size);
  await qcow2File(s).pread(offset, dir);
  return parseBitmapDirectory(bitmapGeometry(s), dir, nbBitmaps);
}

/** qcow2_get_bitmap_info_list: Qcow2BitmapInfo in QAPI order (name, granularity, flags). */
export function bitmapInfoList(list: readonly Qcow2BitmapEntry[]): ImageInfoValue[] {
  return list.map((e) => {
    const flags: string[] = [];
    if (e.flags & BME_FLAG_IN_USE) flags.push('in-use');
    if (e.flags & BME_FLAG_AUTO) flags.push('auto');
    return { name: e.name, granularity: 2 ** e.granularityBits, flags };
  });
}

/**
 * A bitmaps extension without the autoclear bit: some writer did not keep the bitmaps, so
 * they are all stale and their clusters may be leaked. Said at every open, as QEMU does.
 */
export function warnStaleBitmaps(header: QCowHeader, ext: Uint8Array | null, options: OpenOptions): void {
  if (ext === null || (header.autoclearFeatures & QCOW2_AUTOCLEAR_BITMAPS) !== 0n) return;
  options.onWarning?.('a program lacking bitmap support modified this file, so all bitmaps are now considered inconsistent');
  options.onErrorPrintf?.("Some clusters may be leaked, run 'qemu-img check -r' on the image file to fix.");
}
