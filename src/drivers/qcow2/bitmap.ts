/**
 * qcow2 persistent dirty bitmaps, the read side (QEMU's qcow2-bitmap.c): the bitmap directory
 * named by the bitmaps header extension, decoded into the list `info` shows. The directory
 * counts only while the bitmaps autoclear bit is set: a writer that did not keep bitmaps
 * cleared it, and the stale directory must then be ignored, as QEMU does.
 */
import { BlockError } from '../../block/errors.js';
import type { ImageInfoValue, OpenOptions } from '../../block/driver.js';
import { decodeText, readFields, walkAlignedEntries } from './entry-walk.js';
import { QCOW2_AUTOCLEAR_BITMAPS, type QCowHeader } from './header.js';
import type { BDRVQcow2State } from './state.js';

/** Bitmap directory entry flags. */
export const BME_FLAG_IN_USE = 1 << 0;
export const BME_FLAG_AUTO = 1 << 1;
/** Fixed part of a directory entry; then extra data, the name, padding to 8 bytes. */
const BME_HEADER_SIZE = 24;
const BME_FIELDS = {
  tableOffset: ['u64', 0],
  tableSize: ['u32', 8],
  flags: ['u32', 12],
  type: ['u8', 16],
  granularityBits: ['u8', 17],
  nameSize: ['u16', 18],
  extraSize: ['u32', 20],
} as const;
/** QEMU's limits (QCOW2_MAX_BITMAPS, QCOW2_MAX_BITMAP_DIRECTORY_SIZE). */
const QCOW2_MAX_BITMAPS = 65535;
const QCOW2_MAX_BITMAP_DIRECTORY_SIZE = 1024 * QCOW2_MAX_BITMAPS;

export interface Qcow2BitmapEntry {
  name: string;
  tableOffset: number;
  tableSize: number;
  flags: number;
  type: number;
  granularityBits: number;
  extraData: Uint8Array;
}

/** The extension's fields: nb_bitmaps, directory size and offset. */
function bitmapsExtensionFields(ext: Uint8Array): { nbBitmaps: number; size: number; offset: number } {
  const v = new DataView(ext.buffer, ext.byteOffset, ext.byteLength);
  return { nbBitmaps: v.getUint32(0), size: Number(v.getBigUint64(8)), offset: Number(v.getBigUint64(16)) };
}

function invalid(why: string): BlockError {
  return new BlockError('EINVAL', `qcow2: invalid bitmap directory: ${why}`, { op: 'bitmaps' });
}

/** Decode a bitmap directory (bitmap_list_load's parsing and entry checks). */
export function parseBitmapDirectory(dir: Uint8Array, nbBitmaps: number): Qcow2BitmapEntry[] {
  const v = new DataView(dir.buffer, dir.byteOffset, dir.byteLength);
  const out: Qcow2BitmapEntry[] = [];
  const end = walkAlignedEntries(nbBitmaps, (pos) => {
    if (pos + BME_HEADER_SIZE > dir.length) throw invalid('entry past the end of the directory');
    const h = readFields(v, pos, BME_FIELDS);
    const body = pos + BME_HEADER_SIZE;
    const end = body + h.extraSize + h.nameSize;
    if (end > dir.length) throw invalid('entry past the end of the directory');
    if (h.nameSize === 0) throw invalid('empty bitmap name');
    const { tableOffset, tableSize, flags, type, granularityBits } = h;
    out.push({ tableOffset, tableSize, flags, type, granularityBits, extraData: dir.slice(body, body + h.extraSize), name: decodeText(dir, body + h.extraSize, h.nameSize) });
    return end;
  });
  // The directory's size counts the last entry's padding too.
  if (Math.ceil(end / 8) * 8 !== dir.length) throw invalid('size does not match its entries');
  return out;
}

/** The bitmaps this image carries, or [] when there are none (or the autoclear bit is clear). */
export async function qcow2ReadBitmapList(s: BDRVQcow2State): Promise<Qcow2BitmapEntry[]> {
  const ext = s.bitmapsExtension;
  if (ext === null || (s.header.autoclearFeatures & QCOW2_AUTOCLEAR_BITMAPS) === 0n) return [];
  const { nbBitmaps, size, offset } = bitmapsExtensionFields(ext);
  if (nbBitmaps === 0) return [];
  if (nbBitmaps > QCOW2_MAX_BITMAPS || size > QCOW2_MAX_BITMAP_DIRECTORY_SIZE || offset % s.clusterSize !== 0) {
    throw invalid('bad bitmaps extension');
  }
  const file = s.bs.file;
  if (!file) throw new BlockError('EBADF', 'qcow2 node has no file child', { op: 'bitmaps' });
  const dir = new Uint8Array(size);
  await file.pread(offset, dir);
  return parseBitmapDirectory(dir, nbBitmaps);
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
