/**
 * qcow2 header extensions: the area between the fixed header and the backing file name, and the
 * feature name table. decodeExtensions walks the area as qcow2_read_extensions does;
 * putExtension and encodeFeatureTable are the pieces header.ts's encodeHeaderCluster writes.
 */
import { BlockError } from '../../block/errors.js';
import type { QCowHeader } from './header.js';

export const QCOW2_EXT_MAGIC_END = 0;
export const QCOW2_EXT_MAGIC_BACKING_FORMAT = 0xe2792aca;
export const QCOW2_EXT_MAGIC_FEATURE_TABLE = 0x6803f857;
export const QCOW2_EXT_MAGIC_CRYPTO_HEADER = 0x0537be77;
export const QCOW2_EXT_MAGIC_BITMAPS = 0x23852875;
export const QCOW2_EXT_MAGIC_DATA_FILE = 0x44415441;

/** A header extension QEMU does not know, kept verbatim for rewrites. */
export interface Qcow2UnknownExtension {
  magic: number;
  data: Uint8Array;
}

/** One feature name table entry. */
export interface Qcow2Feature {
  type: number;
  bit: number;
  name: string;
}

/** What the extension area holds. */
export interface Qcow2Extensions {
  backingFormat: string | null;
  dataFile: string | null;
  featureTable: Qcow2Feature[];
  /** The 24 bytes of the bitmaps extension, kept as is (bitmaps are not interpreted). */
  bitmaps: Uint8Array | null;
  crypto: Uint8Array | null;
  /** In on-disk order. */
  unknown: Qcow2UnknownExtension[];
  /** Where a reader stops: just past the end marker, or the end of the extension area. */
  end: number;
}

/** QEMU 7.2's feature name table, in its order. */
export const QCOW2_FEATURE_TABLE: readonly Qcow2Feature[] = [
  { type: 0, bit: 0, name: 'dirty bit' },
  { type: 0, bit: 1, name: 'corrupt bit' },
  { type: 0, bit: 2, name: 'external data file' },
  { type: 0, bit: 3, name: 'compression type' },
  { type: 0, bit: 4, name: 'extended L2 entries' },
  { type: 1, bit: 0, name: 'lazy refcounts' },
  { type: 2, bit: 0, name: 'bitmaps' },
  { type: 2, bit: 1, name: 'raw external data' },
];

function extError(message: string): never {
  throw new BlockError('EINVAL', message, { op: 'open' });
}

/** Where the extension area ends (QEMU: the backing name offset, or the cluster end). */
export function extensionAreaEnd(h: QCowHeader): number {
  return h.backingFileOffset !== 0 ? h.backingFileOffset : 2 ** h.clusterBits;
}

function text(bytes: Uint8Array): string {
  return new TextDecoder().decode(bytes);
}

/**
 * Walk the extensions in `cluster0` (the first cluster, or as much of the file as exists).
 * Bytes past `cluster0` read as zeros (an end marker), as a short read does in QEMU.
 */
export function decodeExtensions(h: QCowHeader, cluster0: Uint8Array): Qcow2Extensions {
  const ext: Qcow2Extensions = { backingFormat: null, dataFile: null, featureTable: [], bitmaps: null, crypto: null, unknown: [], end: 0 };
  const end = extensionAreaEnd(h);
  const area = new Uint8Array(Math.max(end, h.headerLength) + 8);
  area.set(cluster0.subarray(0, Math.min(cluster0.length, area.length)));
  const v = new DataView(area.buffer);
  let offset = h.headerLength;
  while (offset < end) {
    const magic = v.getUint32(offset);
    const len = v.getUint32(offset + 4);
    offset += 8;
    if (offset + len > end) extError('Header extension too large');
    const data = area.subarray(offset, offset + len);
    switch (magic) {
      case QCOW2_EXT_MAGIC_END:
        ext.end = offset;
        return ext;
      case QCOW2_EXT_MAGIC_BACKING_FORMAT:
        if (len >= 16) extError(`ERROR: ext_backing_format: len=${len} too large (>=16)`);
        ext.backingFormat = text(data);
        break;
      case QCOW2_EXT_MAGIC_FEATURE_TABLE:
        for (let i = 0; i + 48 <= len; i += 48) {
          const nameBytes = data.subarray(i + 2, i + 48);
          const nul = nameBytes.indexOf(0);
          ext.featureTable.push({ type: data[i], bit: data[i + 1], name: text(nul < 0 ? nameBytes : nameBytes.subarray(0, nul)) });
        }
        break;
      case QCOW2_EXT_MAGIC_BITMAPS:
        if (len !== 24) extError('bitmaps_ext: Invalid extension length');
        ext.bitmaps = data.slice();
        break;
      case QCOW2_EXT_MAGIC_DATA_FILE:
        ext.dataFile = text(data);
        break;
      case QCOW2_EXT_MAGIC_CRYPTO_HEADER:
        ext.crypto = data.slice();
        break;
      default:
        ext.unknown.push({ magic, data: data.slice() });
    }
    offset += (len + 7) & ~7;
  }
  ext.end = Math.max(offset, h.headerLength);
  return ext;
}

/** One extension (magic, length, data padded to 8 bytes) at `pos`; returns the next position. */
export function putExtension(out: Uint8Array, pos: number, magic: number, data: Uint8Array): number {
  const padded = (data.length + 7) & ~7;
  if (pos + 8 + padded > out.length) {
    throw new BlockError('ENOSPC', 'No space left on device', { op: 'update_header' });
  }
  const v = new DataView(out.buffer, out.byteOffset);
  v.setUint32(pos, magic);
  v.setUint32(pos + 4, data.length);
  out.set(data, pos + 8);
  return pos + 8 + padded;
}

/** The feature name table extension's 384 bytes. */
export function encodeFeatureTable(): Uint8Array {
  const buf = new Uint8Array(QCOW2_FEATURE_TABLE.length * 48);
  QCOW2_FEATURE_TABLE.forEach((f, i) => {
    buf[i * 48] = f.type;
    buf[i * 48 + 1] = f.bit;
    buf.set(new TextEncoder().encode(f.name), i * 48 + 2);
  });
  return buf;
}
