/**
 * qcow2 header codec: the fixed header (v2: 72 bytes, v3: 104 or more) and the whole first
 * cluster, as pure functions over bytes; the extensions and the feature name table are in
 * header-ext.ts (re-exported here).
 *
 * Design: decodeHeader turns bytes into numbers without judging them (u64 fields above 2^53
 * decode as Infinity, so every later range check fails on them); validateHeader applies
 * QEMU 7.2's open-time checks in QEMU's order with QEMU's messages; decodeExtensions
 * (header-ext.ts) walks the extension area; encodeHeaderCluster builds the whole first cluster as QEMU's full header
 * rewrite does (header, unknown header bytes, backing format, data file, feature table,
 * bitmaps, unknown extensions, end marker, backing name, zeros).
 */
import { BlockError } from '../../block/errors.js';
import {
  QCOW2_EXT_MAGIC_BACKING_FORMAT,
  QCOW2_EXT_MAGIC_BITMAPS,
  QCOW2_EXT_MAGIC_CRYPTO_HEADER,
  QCOW2_EXT_MAGIC_DATA_FILE,
  QCOW2_EXT_MAGIC_END,
  QCOW2_EXT_MAGIC_FEATURE_TABLE,
  encodeFeatureTable,
  putExtension,
  type Qcow2Feature,
  type Qcow2UnknownExtension,
} from './header-ext.js';

// The extension codec lives in header-ext.ts; importers of the header see one module.
export * from './header-ext.js';

export const QCOW_MAGIC = 0x514649fb;
export const QCOW2_V2_HEADER_SIZE = 72;
/** v3 fields up to header_length. */
export const QCOW2_V3_MIN_HEADER_SIZE = 104;
/** What QEMU 7.2 writes for v3 (compression_type + padding included). */
export const QCOW2_V3_HEADER_SIZE = 112;

export const QCOW2_INCOMPAT_DIRTY = 1n << 0n;
export const QCOW2_INCOMPAT_CORRUPT = 1n << 1n;
export const QCOW2_INCOMPAT_DATA_FILE = 1n << 2n;
export const QCOW2_INCOMPAT_COMPRESSION = 1n << 3n;
export const QCOW2_INCOMPAT_EXTL2 = 1n << 4n;
export const QCOW2_INCOMPAT_MASK = 0x1fn;
export const QCOW2_COMPAT_LAZY_REFCOUNTS = 1n << 0n;
export const QCOW2_COMPAT_FEAT_MASK = 1n;
export const QCOW2_AUTOCLEAR_BITMAPS = 1n << 0n;
export const QCOW2_AUTOCLEAR_DATA_FILE_RAW = 1n << 1n;
export const QCOW2_AUTOCLEAR_MASK = 3n;

export const QCOW2_COMPRESSION_TYPE_ZLIB = 0;
export const QCOW2_COMPRESSION_TYPE_ZSTD = 1;

export const MIN_CLUSTER_BITS = 9;
export const MAX_CLUSTER_BITS = 21;
/** Hard limits (QEMU's): no table is ever sized from an image beyond these. */
export const QCOW_MAX_REFTABLE_SIZE = 8 * 1024 * 1024;
export const QCOW_MAX_L1_SIZE = 32 * 1024 * 1024;
export const QCOW_MAX_SNAPSHOTS = 65536;
export const QCOW2_MAX_BACKING_FILE_NAME = 1023;
const INT_MAX = 0x7fffffff;

/** The header fields, decoded; 64-bit fields above 2^53 read as Infinity. */
export interface QCowHeader {
  magic: number;
  version: number;
  backingFileOffset: number;
  backingFileSize: number;
  clusterBits: number;
  size: number;
  cryptMethod: number;
  l1Size: number;
  l1TableOffset: number;
  refcountTableOffset: number;
  refcountTableClusters: number;
  nbSnapshots: number;
  snapshotsOffset: number;
  incompatibleFeatures: bigint;
  compatibleFeatures: bigint;
  autoclearFeatures: bigint;
  refcountOrder: number;
  headerLength: number;
  compressionType: number;
}

function u64(view: DataView, off: number): number {
  const v = view.getBigUint64(off);
  return v > BigInt(Number.MAX_SAFE_INTEGER) ? Infinity : Number(v);
}

/**
 * Decode the header fields from the first bytes of the file (at least 72 bytes; v3 fields
 * beyond `buf` or beyond header_length read as 0, as QEMU's zero-filled struct does).
 */
export function decodeHeader(buf: Uint8Array): QCowHeader {
  if (buf.length < QCOW2_V2_HEADER_SIZE) {
    throw new BlockError('EINVAL', 'Image is not in qcow2 format', { op: 'open' });
  }
  const full = new Uint8Array(QCOW2_V3_HEADER_SIZE);
  full.set(buf.subarray(0, QCOW2_V3_HEADER_SIZE));
  const v = new DataView(full.buffer);
  const version = v.getUint32(4);
  const h: QCowHeader = {
    magic: v.getUint32(0),
    version,
    backingFileOffset: u64(v, 8),
    backingFileSize: v.getUint32(16),
    clusterBits: v.getUint32(20),
    size: u64(v, 24),
    cryptMethod: v.getUint32(32),
    l1Size: v.getUint32(36),
    l1TableOffset: u64(v, 40),
    refcountTableOffset: u64(v, 48),
    refcountTableClusters: v.getUint32(56),
    nbSnapshots: v.getUint32(60),
    snapshotsOffset: u64(v, 64),
    incompatibleFeatures: 0n,
    compatibleFeatures: 0n,
    autoclearFeatures: 0n,
    refcountOrder: 4,
    headerLength: QCOW2_V2_HEADER_SIZE,
    compressionType: 0,
  };
  if (version >= 3) {
    h.incompatibleFeatures = v.getBigUint64(72);
    h.compatibleFeatures = v.getBigUint64(80);
    h.autoclearFeatures = v.getBigUint64(88);
    h.refcountOrder = v.getUint32(96);
    h.headerLength = v.getUint32(100);
    if (h.headerLength > QCOW2_V3_MIN_HEADER_SIZE) h.compressionType = v.getUint8(104);
  }
  return h;
}

/** The 72 or 112 header bytes (v3 header_length as given: unknown trailing fields follow). */
export function encodeHeader(h: QCowHeader): Uint8Array {
  const len = h.version >= 3 ? QCOW2_V3_HEADER_SIZE : QCOW2_V2_HEADER_SIZE;
  const buf = new Uint8Array(len);
  const v = new DataView(buf.buffer);
  v.setUint32(0, QCOW_MAGIC);
  v.setUint32(4, h.version);
  v.setBigUint64(8, BigInt(h.backingFileOffset));
  v.setUint32(16, h.backingFileSize);
  v.setUint32(20, h.clusterBits);
  v.setBigUint64(24, BigInt(h.size));
  v.setUint32(32, h.cryptMethod);
  v.setUint32(36, h.l1Size);
  v.setBigUint64(40, BigInt(h.l1TableOffset));
  v.setBigUint64(48, BigInt(h.refcountTableOffset));
  v.setUint32(56, h.refcountTableClusters);
  v.setUint32(60, h.nbSnapshots);
  v.setBigUint64(64, BigInt(h.snapshotsOffset));
  if (h.version >= 3) {
    v.setBigUint64(72, h.incompatibleFeatures);
    v.setBigUint64(80, h.compatibleFeatures);
    v.setBigUint64(88, h.autoclearFeatures);
    v.setUint32(96, h.refcountOrder);
    v.setUint32(100, h.headerLength);
    v.setUint8(104, h.compressionType);
  }
  return buf;
}

/** Entries an L2 table holds (cs/8, or cs/16 with extended L2). */
export function l2EntriesPerTable(clusterBits: number, extendedL2: boolean): number {
  return (1 << clusterBits) / (extendedL2 ? 16 : 8);
}

/** L1 entries needed to map `size` bytes (QEMU's size_to_l1). */
export function sizeToL1(size: number, clusterBits: number, extendedL2: boolean): number {
  const span = (1 << clusterBits) * l2EntriesPerTable(clusterBits, extendedL2);
  return Math.ceil(size / span);
}

function fail(code: 'EINVAL' | 'ENOTSUP' | 'EFBIG' | 'EACCES', message: string): never {
  throw new BlockError(code, message, { op: 'open' });
}

/** Does [offset, offset+size) sit at an aligned, representable place (validate_table_offset)? */
export function validTableOffset(offset: number, entries: number, entrySize: number, clusterSize: number): boolean {
  if (!Number.isFinite(offset) || offset % clusterSize !== 0) return false;
  return offset + entries * entrySize <= Number.MAX_SAFE_INTEGER;
}

/**
 * The fixed-header checks QEMU 7.2's qcow2_do_open makes before it reads the extensions (magic,
 * version, cluster size, header length, backing offset, compression type, subcluster size,
 * refcount width), in its order. The feature checks come between them and need the feature
 * table: validateFeatures.
 */
export function validateHeaderBasics(h: QCowHeader): void {
  if (h.magic !== QCOW_MAGIC) fail('EINVAL', 'Image is not in qcow2 format');
  if (h.version < 2 || h.version > 3) fail('ENOTSUP', `Unsupported qcow2 version ${h.version}`);
  if (h.clusterBits < MIN_CLUSTER_BITS || h.clusterBits > MAX_CLUSTER_BITS) {
    fail('EINVAL', `Unsupported cluster size: 2^${h.clusterBits}`);
  }
  const cs = 2 ** h.clusterBits;
  if (h.version >= 3) {
    if (h.headerLength < QCOW2_V3_MIN_HEADER_SIZE) fail('EINVAL', 'qcow2 header too short');
    if (h.headerLength > cs) fail('EINVAL', 'qcow2 header exceeds cluster size');
  }
  if (h.backingFileOffset > cs) fail('EINVAL', 'Invalid backing file offset');
  if (h.compressionType > QCOW2_COMPRESSION_TYPE_ZSTD) {
    fail('ENOTSUP', `qcow2: unknown compression type: ${h.compressionType}`);
  }
  const bit = (h.incompatibleFeatures & QCOW2_INCOMPAT_COMPRESSION) !== 0n;
  if (h.compressionType !== QCOW2_COMPRESSION_TYPE_ZLIB && !bit) {
    fail('EINVAL', 'qcow2: Compression type incompatible feature bit must be set');
  }
  if (h.compressionType === QCOW2_COMPRESSION_TYPE_ZLIB && bit) {
    fail('EINVAL', 'qcow2: Compression type incompatible feature bit must not be set');
  }
}

/** Unknown incompatible bits (named from the image's table) and the corrupt bit (qcow2_do_open). */
export function validateFeatures(h: QCowHeader, table: readonly Qcow2Feature[], writable: boolean, check: boolean): void {
  const unknown = h.incompatibleFeatures & ~QCOW2_INCOMPAT_MASK;
  if (unknown !== 0n) {
    let mask = unknown;
    const parts: string[] = [];
    for (const f of table) {
      if (f.type !== 0 || f.bit > 63) continue;
      const b = 1n << BigInt(f.bit);
      if ((mask & b) !== 0n) {
        parts.push(f.name);
        mask &= ~b;
      }
    }
    if (mask !== 0n) parts.push(`Unknown incompatible feature: ${mask.toString(16)}`);
    fail('ENOTSUP', `Unsupported qcow2 feature(s): ${parts.join(', ')}`);
  }
  if ((h.incompatibleFeatures & QCOW2_INCOMPAT_CORRUPT) !== 0n && writable && !check) {
    fail('EACCES', 'qcow2: Image is corrupt; cannot be opened read/write');
  }
  if ((h.incompatibleFeatures & QCOW2_INCOMPAT_EXTL2) !== 0n && h.clusterBits < 14) {
    fail('EINVAL', `Unsupported subcluster size: ${2 ** h.clusterBits / 32}`);
  }
  if (h.refcountOrder > 6) fail('EINVAL', 'Reference count entry width too large; may not exceed 64 bits');
}

/** Encryption and table placement checks (refcount table, snapshots, L1), after the features. */
export function validateTables(h: QCowHeader, check: boolean): void {
  const cs = 2 ** h.clusterBits;
  if (h.cryptMethod === 1) fail('EINVAL', "Parameter 'encrypt.key-secret' is required for cipher");
  if (h.cryptMethod === 2) fail('EINVAL', 'Missing CRYPTO header for crypt method 2');
  if (h.cryptMethod > 2) fail('EINVAL', `Unsupported encryption method: ${h.cryptMethod}`);
  if (h.refcountTableClusters === 0 && !check) fail('EINVAL', 'Image does not contain a reference count table');
  if (h.refcountTableClusters * cs > QCOW_MAX_REFTABLE_SIZE) fail('EINVAL', 'Reference count table too large');
  if (!validTableOffset(h.refcountTableOffset, h.refcountTableClusters * cs, 1, cs)) {
    fail('EINVAL', 'Reference count table offset invalid');
  }
  if (h.nbSnapshots > QCOW_MAX_SNAPSHOTS) fail('EINVAL', 'Snapshot table too large');
  if (!check && !validTableOffset(h.snapshotsOffset, 0, 1, cs)) fail('EINVAL', 'Snapshot table offset invalid');
  if (h.l1Size * 8 > QCOW_MAX_L1_SIZE) fail('EFBIG', 'Active L1 table too large');
  if (!validTableOffset(h.l1TableOffset, h.l1Size, 8, cs)) fail('EINVAL', 'Active L1 table offset invalid');
  const extl2 = (h.incompatibleFeatures & QCOW2_INCOMPAT_EXTL2) !== 0n;
  const needed = sizeToL1(h.size, h.clusterBits, extl2);
  if (!Number.isFinite(needed) || needed > INT_MAX) fail('EFBIG', 'Image is too big');
  if (h.l1Size < needed) fail('EINVAL', 'L1 table is too small');
}

/** Everything a full header rewrite puts into the first cluster. */
export interface HeaderClusterContents {
  header: QCowHeader;
  /** Bytes between 112 and header_length kept from a newer writer. */
  unknownHeaderFields: Uint8Array;
  backingFile: string | null;
  backingFormat: string | null;
  dataFile: string | null;
  crypto: Uint8Array | null;
  bitmaps: Uint8Array | null;
  /** In on-disk order as read; written back reversed, as QEMU's list does. */
  unknownExtensions: readonly Qcow2UnknownExtension[];
  /** Leave the feature name table out (the short stepping-stone header of header-update.ts). */
  omitFeatureTable?: boolean;
}

/**
 * Build the whole first cluster (qcow2_update_header): fixes header_length,
 * backing_file_offset and backing_file_size in the returned header. Fails with ENOSPC when the
 * contents do not fit, before anything is written.
 */
export function encodeHeaderCluster(c: HeaderClusterContents): { buf: Uint8Array; header: QCowHeader } {
  const h = { ...c.header };
  const cs = 2 ** h.clusterBits;
  const out = new Uint8Array(cs);
  const enc = new TextEncoder();
  if (h.version >= 3) h.headerLength = QCOW2_V3_HEADER_SIZE + c.unknownHeaderFields.length;
  let pos = h.version >= 3 ? QCOW2_V3_HEADER_SIZE : QCOW2_V2_HEADER_SIZE;
  if (h.version >= 3) {
    out.set(c.unknownHeaderFields, pos);
    pos += c.unknownHeaderFields.length;
  }
  if (c.backingFormat !== null && c.backingFile !== null) {
    pos = putExtension(out, pos, QCOW2_EXT_MAGIC_BACKING_FORMAT, enc.encode(c.backingFormat));
  }
  if (c.dataFile !== null) pos = putExtension(out, pos, QCOW2_EXT_MAGIC_DATA_FILE, enc.encode(c.dataFile));
  if (c.crypto !== null) pos = putExtension(out, pos, QCOW2_EXT_MAGIC_CRYPTO_HEADER, c.crypto);
  // QEMU leaves the table out of small clusters so that 512-byte images keep room for a name.
  if (h.version >= 3 && cs > 4096 && c.omitFeatureTable !== true) pos = putExtension(out, pos, QCOW2_EXT_MAGIC_FEATURE_TABLE, encodeFeatureTable());
  if (c.bitmaps !== null) pos = putExtension(out, pos, QCOW2_EXT_MAGIC_BITMAPS, c.bitmaps);
  for (let i = c.unknownExtensions.length - 1; i >= 0; i--) {
    pos = putExtension(out, pos, c.unknownExtensions[i].magic, c.unknownExtensions[i].data);
  }
  pos = putExtension(out, pos, QCOW2_EXT_MAGIC_END, new Uint8Array(0));
  if (c.backingFile !== null) {
    const name = enc.encode(c.backingFile);
    if (pos + name.length > cs) throw new BlockError('ENOSPC', 'No space left on device', { op: 'update_header' });
    out.set(name, pos);
    h.backingFileOffset = pos;
    h.backingFileSize = name.length;
  } else {
    h.backingFileOffset = 0;
    h.backingFileSize = 0;
  }
  out.set(encodeHeader(h), 0);
  return { buf: out, header: h };
}
