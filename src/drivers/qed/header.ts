/**
 * QED header: constants, the pure 64-byte codec and the validity rules of the format.
 *
 * Everything here is a pure function over numbers and bytes: no I/O. u64 fields are decoded as
 * BigInt, validated, and only then converted to JS numbers (byte offsets and sizes beyond
 * Number.MAX_SAFE_INTEGER are refused with a clear error instead of being silently rounded).
 */
import { BlockError } from '../../block/errors.js';

/** "QED\0" read as a little-endian u32. */
export const QED_MAGIC = 0x00444551;
/** Size of the packed header struct on disk. */
export const QED_HEADER_STRUCT_SIZE = 64;

export const QED_F_BACKING_FILE = 0x01n;
export const QED_F_NEED_CHECK = 0x02n;
export const QED_F_BACKING_FORMAT_NO_PROBE = 0x04n;
/** Incompatible features this implementation understands. */
export const QED_FEATURE_MASK = QED_F_BACKING_FILE | QED_F_NEED_CHECK | QED_F_BACKING_FORMAT_NO_PROBE;
/** No compatible or autoclear features are defined. */
export const QED_COMPAT_FEATURE_MASK = 0n;
export const QED_AUTOCLEAR_FEATURE_MASK = 0n;

export const QED_MIN_CLUSTER_SIZE = 4096;
export const QED_MAX_CLUSTER_SIZE = 64 * 1024 * 1024;
export const QED_DEFAULT_CLUSTER_SIZE = 64 * 1024;
export const QED_MIN_TABLE_SIZE = 1;
export const QED_MAX_TABLE_SIZE = 16;
export const QED_DEFAULT_TABLE_SIZE = 4;

/** Delay between the last allocating write and clearing NEED_CHECK (QEMU: 5 s, virtual clock). */
export const QED_NEED_CHECK_TIMEOUT_MS = 5000;
/** QEMU's L2 cache capacity, in tables (not part of the format). */
export const QED_L2_CACHE_SIZE = 50;
/** QEMU reads the backing name into a PATH_MAX buffer: longer names cannot be opened. */
export const QED_MAX_BACKING_NAME = 4096;

/** The 64 header bytes exactly as stored (every u64 as BigInt, nothing validated). */
export interface RawQEDHeader {
  magic: number;
  clusterSize: number;
  tableSize: number;
  headerSize: number;
  features: bigint;
  compatFeatures: bigint;
  autoclearFeatures: bigint;
  l1TableOffset: bigint;
  imageSize: bigint;
  backingFilenameOffset: number;
  backingFilenameSize: number;
}

/**
 * A validated header: offsets and sizes are safe JS integers; the feature words stay BigInt so
 * unknown bits survive a rewrite unchanged.
 */
export interface QEDHeader extends Omit<RawQEDHeader, 'l1TableOffset' | 'imageSize'> {
  l1TableOffset: number;
  imageSize: number;
}

/** Decode the first 64 bytes of an image (little-endian). */
export function decodeHeader(buf: Uint8Array): RawQEDHeader {
  if (buf.length < QED_HEADER_STRUCT_SIZE) {
    throw new BlockError('EINVAL', `QED header needs ${QED_HEADER_STRUCT_SIZE} bytes, got ${buf.length}`, {
      op: 'open',
    });
  }
  const v = new DataView(buf.buffer, buf.byteOffset, QED_HEADER_STRUCT_SIZE);
  return {
    magic: v.getUint32(0, true),
    clusterSize: v.getUint32(4, true),
    tableSize: v.getUint32(8, true),
    headerSize: v.getUint32(12, true),
    features: v.getBigUint64(16, true),
    compatFeatures: v.getBigUint64(24, true),
    autoclearFeatures: v.getBigUint64(32, true),
    l1TableOffset: v.getBigUint64(40, true),
    imageSize: v.getBigUint64(48, true),
    backingFilenameOffset: v.getUint32(56, true),
    backingFilenameSize: v.getUint32(60, true),
  };
}

/** Encode a header (validated or raw) into 64 little-endian bytes. */
export function encodeHeader(h: QEDHeader | RawQEDHeader, out = new Uint8Array(QED_HEADER_STRUCT_SIZE)): Uint8Array {
  const v = new DataView(out.buffer, out.byteOffset, QED_HEADER_STRUCT_SIZE);
  v.setUint32(0, h.magic, true);
  v.setUint32(4, h.clusterSize, true);
  v.setUint32(8, h.tableSize, true);
  v.setUint32(12, h.headerSize, true);
  v.setBigUint64(16, h.features, true);
  v.setBigUint64(24, h.compatFeatures, true);
  v.setBigUint64(32, h.autoclearFeatures, true);
  v.setBigUint64(40, BigInt(h.l1TableOffset), true);
  v.setBigUint64(48, BigInt(h.imageSize), true);
  v.setUint32(56, h.backingFilenameOffset, true);
  v.setUint32(60, h.backingFilenameSize, true);
  return out;
}

function isPowerOfTwo(n: number): boolean {
  return Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;
}

export function qedIsClusterSizeValid(clusterSize: number): boolean {
  return clusterSize >= QED_MIN_CLUSTER_SIZE && clusterSize <= QED_MAX_CLUSTER_SIZE && isPowerOfTwo(clusterSize);
}

export function qedIsTableSizeValid(tableSize: number): boolean {
  return tableSize >= QED_MIN_TABLE_SIZE && tableSize <= QED_MAX_TABLE_SIZE && isPowerOfTwo(tableSize);
}

/**
 * Largest image a geometry can address: entries² × cluster size, computed exactly (QEMU's
 * uint64 product wraps to 0 for the biggest geometries; qed-format.md §17.3 says compute it exactly).
 */
export function qedMaxImageSize(clusterSize: number, tableSize: number): bigint {
  const entries = (BigInt(tableSize) * BigInt(clusterSize)) / 8n;
  return entries * entries * BigInt(clusterSize);
}

/** Image size rule of the format: a multiple of 512 and at most the geometry's maximum. */
export function qedIsImageSizeValid(imageSize: bigint | number, clusterSize: number, tableSize: number): boolean {
  const size = BigInt(imageSize);
  if (size < 0n || size % 512n !== 0n) return false;
  return size <= qedMaxImageSize(clusterSize, tableSize);
}

/** True when a size can be held exactly in a JS number (our own limit, stricter than the format's). */
export function qedIsRepresentable(size: bigint | number): boolean {
  const n = BigInt(size);
  return n >= 0n && n <= BigInt(Number.MAX_SAFE_INTEGER);
}

/**
 * QEMU 7.2 cannot open any image with table_size = 1 (its table-offset overflow guard is
 * never satisfied). We create and open them (qed-format.md §17.1); tools warn when creating one.
 */
export function qedQemuCannotOpenTableSize(tableSize: number): boolean {
  return tableSize === 1;
}

/** What geometry the data/table offset rules need. */
export interface QEDGeometryLimits {
  clusterSize: number;
  tableSize: number;
  headerSize: number;
  /** File length rounded down to a cluster multiple. */
  fileSize: number;
}

/**
 * A data-cluster offset is valid when it is cluster aligned, lies after the header region and
 * before the (rounded-down) end of the file.
 */
export function qedCheckClusterOffset(g: QEDGeometryLimits, offset: number): boolean {
  return (
    Number.isSafeInteger(offset) &&
    offset % g.clusterSize === 0 &&
    offset >= g.headerSize * g.clusterSize &&
    offset < g.fileSize
  );
}

/**
 * A table offset is valid when both its first and its last cluster are valid cluster offsets.
 * QEMU also demands `last > first`, which rejects every table when table_size = 1; we follow
 * the spec and accept those (qed-format.md §17.1).
 */
export function qedCheckTableOffset(g: QEDGeometryLimits, offset: number): boolean {
  const last = offset + (g.tableSize - 1) * g.clusterSize;
  return qedCheckClusterOffset(g, offset) && qedCheckClusterOffset(g, last);
}

/** Text of the create-time size error, with the exact maximum (QEMU's wording). */
export function qedImageSizeMessage(clusterSize: number, tableSize: number): string {
  return (
    'QED image size must be a non-zero multiple of cluster size and less than ' +
    `${qedMaxImageSize(clusterSize, tableSize)} bytes`
  );
}

export const QED_CLUSTER_SIZE_MESSAGE = `QED cluster size must be within range [${QED_MIN_CLUSTER_SIZE}, ${QED_MAX_CLUSTER_SIZE}] and power of 2`;
export const QED_TABLE_SIZE_MESSAGE = `QED table size must be within range [${QED_MIN_TABLE_SIZE}, ${QED_MAX_TABLE_SIZE}] and power of 2`;

/** Format a feature mask the way QEMU prints it (`%x`). */
export function formatFeatures(bits: bigint): string {
  return bits.toString(16);
}

/**
 * Validate a raw header in QEMU's open order (qed-format.md §4) and convert it. `fileLength` is the
 * protocol file's length in bytes. Each failure has its own message, QEMU's wording.
 */
export function validateHeader(raw: RawQEDHeader, fileLength: number): { header: QEDHeader; fileSize: number } {
  const fail = (code: 'EINVAL' | 'ENOTSUP', message: string): never => {
    throw new BlockError(code, message, { op: 'open' });
  };
  if (raw.magic !== QED_MAGIC) fail('EINVAL', 'Image not in QED format');
  const unknown = raw.features & ~QED_FEATURE_MASK;
  if (unknown !== 0n) fail('ENOTSUP', `Unsupported QED features: ${formatFeatures(unknown)}`);
  if (!qedIsClusterSizeValid(raw.clusterSize)) fail('EINVAL', 'QED cluster size is invalid');
  const fileSize = Math.floor(fileLength / raw.clusterSize) * raw.clusterSize;
  if (!qedIsTableSizeValid(raw.tableSize)) fail('EINVAL', 'QED table size is invalid');
  if (!qedIsImageSizeValid(raw.imageSize, raw.clusterSize, raw.tableSize)) fail('EINVAL', 'QED image size is invalid');
  if (!qedIsRepresentable(raw.imageSize)) {
    fail(
      'EINVAL',
      `QED image size ${raw.imageSize} exceeds the largest size this implementation supports ` +
        `(${Number.MAX_SAFE_INTEGER} bytes)`,
    );
  }
  const limits = { clusterSize: raw.clusterSize, tableSize: raw.tableSize, headerSize: raw.headerSize, fileSize };
  // A table offset beyond 2^53 lies far past any file we can hold, so it is simply invalid.
  if (!qedIsRepresentable(raw.l1TableOffset) || !qedCheckTableOffset(limits, Number(raw.l1TableOffset))) {
    fail('EINVAL', 'QED table offset is invalid');
  }
  if (raw.headerSize > Math.floor(0xffffffff / raw.clusterSize)) fail('EINVAL', 'QED header size is too large');
  if ((raw.features & QED_F_BACKING_FILE) !== 0n) {
    if (raw.backingFilenameOffset + raw.backingFilenameSize > raw.clusterSize * raw.headerSize) {
      fail('EINVAL', 'QED backing filename offset is invalid');
    }
    if (raw.backingFilenameSize >= QED_MAX_BACKING_NAME) fail('EINVAL', 'Failed to read backing filename');
  }
  return {
    header: { ...raw, l1TableOffset: Number(raw.l1TableOffset), imageSize: Number(raw.imageSize) },
    fileSize,
  };
}
