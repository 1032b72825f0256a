/**
 * L1/L2/reftable entry codecs and cluster classification (QEMU's qcow2_get_cluster_type and
 * the extended-L2 subcluster types). Pure: entries are BigInt, decoded offsets are numbers.
 */
import { nonZeroPairAt } from '../../block/buffer-is-zero.js';

export const QCOW_OFLAG_COPIED = 1n << 63n;
export const QCOW_OFLAG_COMPRESSED = 1n << 62n;
export const QCOW_OFLAG_ZERO = 1n;

export const L1E_OFFSET_MASK = 0x00fffffffffffe00n;
export const L2E_OFFSET_MASK = 0x00fffffffffffe00n;
export const REFT_OFFSET_MASK = 0xfffffffffffffe00n;
export const L1E_RESERVED_MASK = 0x7f000000000001ffn;
export const L2E_STD_RESERVED_MASK = 0x3f000000000001fen;
export const REFT_RESERVED_MASK = 0x1ffn;

/** Extended L2 bitmaps: bit i allocated, bit 32+i reads as zeros. */
export const QCOW_L2_BITMAP_ALL_ALLOC = 0xffffffffn;
export const QCOW_L2_BITMAP_ALL_ZEROES = 0xffffffff00000000n;

export type Qcow2ClusterType = 'unallocated' | 'zero-plain' | 'zero-alloc' | 'normal' | 'compressed';

/**
 * Classify a standard L2 entry (bit 0 counts only when `zeroBit`: v3 without extended L2).
 * `dataFile`: the image has an external data file, where offset 0 is a valid data offset;
 * there every data cluster has COPIED set (its refcount is 1 by definition), which tells
 * cluster 0 from an unallocated entry.
 */
export function clusterType(entry: bigint, zeroBit = true, dataFile = false): Qcow2ClusterType {
  if ((entry & QCOW_OFLAG_COMPRESSED) !== 0n) return 'compressed';
  const offset = entry & L2E_OFFSET_MASK;
  if (zeroBit && (entry & QCOW_OFLAG_ZERO) !== 0n) return offset !== 0n ? 'zero-alloc' : 'zero-plain';
  if (offset !== 0n) return 'normal';
  return dataFile && (entry & QCOW_OFLAG_COPIED) !== 0n ? 'normal' : 'unallocated';
}

/**
 * The host offset of the standard L2 entry at byte `at` of `view` when it is plain data (an
 * offset, at most COPIED besides: none of the compressed, reserved or zero bits), else 0 and
 * the caller decodes the entry in full. Two 32-bit reads: walks over whole tables (check, map)
 * meet tens of thousands of such entries, and a BigInt each costs more than the walk.
 */
export function plainDataOffset(view: DataView, at: number): number {
  const hi = view.getUint32(at);
  const lo = view.getUint32(at + 4);
  // Offset bits are 9-55: the high word's low 24 bits and the low word's bits 9-31.
  if ((hi & 0x7f000000) !== 0 || (lo & 0x1ff) !== 0) return 0;
  return (hi & 0x00ffffff) * 2 ** 32 + lo;
}

/**
 * The first slot from `i` on (before `end`) that is not all zeros (an L2 entry and, with
 * extended L2, its bitmap; an L1 or refcount table entry), or `end`: most slots of a table are
 * unused, and tables have up to 262144 of them. One tight loop over 32-bit words finds the
 * next one without a call, or a BigInt, per slot.
 */
export function nextUsedSlot(words: Uint32Array, i: number, end: number, entrySize: number): number {
  const per = entrySize / 4;
  const stop = end * per;
  let k = i * per;
  // Near slots one by one: used entries tend to lie close together.
  for (const near = Math.min(stop, k + NEAR_WORDS); k < near; k++) if (words[k] !== 0) return Math.floor(k / per);
  // Then spans twice as long each time, searched natively: a fresh process walks a table's
  // unused tail (most of a 64 KiB refcount table, at every open and overlap index) in V8's
  // interpreter otherwise; the doubling keeps the bytes decoded within four times the distance.
  const bytes = new Uint8Array(words.buffer, words.byteOffset, words.byteLength);
  for (let span = 2 * NEAR_WORDS; k < stop; span *= 2) {
    const n = Math.min(span, stop - k);
    const at = nonZeroPairAt(bytes, 4 * k, 4 * (k + n));
    if (at >= 0) return Math.floor(at / 4 / per);
    k += n;
  }
  return end;
}

/** Words nextUsedSlot looks at one by one before it searches natively. */
const NEAR_WORDS = 256;

/** The 32-bit words of a table in memory (read into a fresh, so aligned, buffer). */
export function tableWords(table: ArrayBufferView): Uint32Array {
  return new Uint32Array(table.buffer, table.byteOffset, table.byteLength >> 2);
}

/**
 * The indices of the used (not all-zero) 64-bit entries of a table (L1, refcount table), in
 * order: the loops over such a table read only these, each read being a new BigInt, and a
 * table has thousands of entries, mostly unused.
 */
export function usedEntries(table: ArrayBufferView): number[] {
  const words = tableWords(table);
  const n = words.length >> 1;
  const used: number[] = [];
  for (let i = nextUsedSlot(words, 0, n, 8); i < n; i = nextUsedSlot(words, i + 1, n, 8)) used.push(i);
  return used;
}

/** The L2 entry at byte `at` of `view` is all zeros (unallocated, no flags): no BigInt read. */
export function l2EntryEmpty(view: DataView, at: number): boolean {
  return view.getUint32(at) === 0 && view.getUint32(at + 4) === 0;
}

/**
 * Write the L2 entry at byte `at` of `view` as `hostOffset` (cluster aligned, below 2^56) with
 * COPIED, as two 32-bit halves: a BigInt per entry was most of what linking one allocated.
 */
export function setCopiedEntry(view: DataView, at: number, hostOffset: number): void {
  view.setUint32(at, 0x80000000 + Math.floor(hostOffset / 2 ** 32));
  view.setUint32(at + 4, hostOffset >>> 0);
}

export function l2EntryOffset(entry: bigint): number {
  return Number(entry & L2E_OFFSET_MASK);
}

export function l1EntryOffset(entry: bigint): number {
  return Number(entry & L1E_OFFSET_MASK);
}

/** Geometry of compressed descriptors for a cluster size (csize_shift, csize_mask, offset mask). */
export interface CompressedGeometry {
  csizeShift: bigint;
  csizeMask: bigint;
  offsetMask: bigint;
}

export function compressedGeometry(clusterBits: number): CompressedGeometry {
  const csizeShift = BigInt(62 - (clusterBits - 8));
  return {
    csizeShift,
    csizeMask: (1n << BigInt(clusterBits - 8)) - 1n,
    offsetMask: (1n << csizeShift) - 1n,
  };
}

/** A compressed descriptor: where the data starts and how many bytes to read. */
export interface CompressedExtent {
  offset: number;
  /** Bytes from `offset` to the end of the last 512-byte sector the data may span. */
  length: number;
  /** Sectors the descriptor covers (for refcounts: the range is offset & ~511 .. + sectors*512). */
  sectors: number;
}

export function decodeCompressed(entry: bigint, g: CompressedGeometry): CompressedExtent {
  const offset = Number(entry & g.offsetMask);
  const sectors = Number((entry >> g.csizeShift) & g.csizeMask) + 1;
  return { offset, length: sectors * 512 - (offset & 511), sectors };
}

export function encodeCompressed(offset: number, bytes: number, g: CompressedGeometry): bigint {
  const sectors = Math.floor((offset + bytes - 1) / 512) - Math.floor(offset / 512);
  return QCOW_OFLAG_COMPRESSED | (BigInt(sectors) << g.csizeShift) | BigInt(offset);
}

/** Subcluster types of extended L2 entries (QEMU's QCow2SubclusterType). */
export type Qcow2SubclusterType =
  | 'normal'
  | 'compressed'
  | 'zero-plain'
  | 'zero-alloc'
  | 'unallocated-plain'
  | 'unallocated-alloc'
  | 'invalid';

/**
 * The type of subcluster `sc` (qcow2_get_subcluster_type). With extended L2 entries bit 0 of
 * the entry means nothing; an allocated cluster whose bitmap marks any subcluster both
 * allocated and zero, or an unallocated one with any allocation bit, is invalid as a whole; a
 * compressed cluster is compressed whatever its bitmap says (check reports a non-zero one).
 * `dataFile` as for clusterType.
 */
export function subclusterType(entry: bigint, bitmap: bigint, sc: number, extendedL2: boolean, zeroBit: boolean, dataFile = false): Qcow2SubclusterType {
  const t = clusterType(entry, zeroBit && !extendedL2, dataFile);
  if (!extendedL2) return t === 'unallocated' ? 'unallocated-plain' : t;
  switch (t) {
    case 'compressed':
      return t;
    case 'normal':
      if (((bitmap >> 32n) & bitmap) !== 0n) return 'invalid';
      if (((bitmap >> BigInt(32 + sc)) & 1n) !== 0n) return 'zero-alloc';
      return ((bitmap >> BigInt(sc)) & 1n) !== 0n ? 'normal' : 'unallocated-alloc';
    default:
      if ((bitmap & QCOW_L2_BITMAP_ALL_ALLOC) !== 0n) return 'invalid';
      return ((bitmap >> BigInt(32 + sc)) & 1n) !== 0n ? 'zero-plain' : 'unallocated-plain';
  }
}

/** Allocation bits of subclusters [from, to) (QCOW_OFLAG_SUB_ALLOC_RANGE). */
export function subAllocRange(from: number, to: number): bigint {
  return (1n << BigInt(to)) - (1n << BigInt(from));
}

/** Zero bits of subclusters [from, to) (QCOW_OFLAG_SUB_ZERO_RANGE). */
export function subZeroRange(from: number, to: number): bigint {
  return subAllocRange(from, to) << 32n;
}

/** Trailing zero bits of a 32-bit value; 32 for 0. */
export function ctz32(v: number): number {
  return v === 0 ? 32 : 31 - Math.clz32(v & -v);
}

/**
 * The type of subcluster `from` and how many subclusters from there share it in this cluster
 * (qcow2_get_subcluster_range_type): without extended L2 entries, or compressed, the rest of
 * the cluster. count is -1 for an invalid entry.
 */
export function subclusterRangeType(
  entry: bigint,
  bitmap: bigint,
  from: number,
  extendedL2: boolean,
  dataFile = false,
): { type: Qcow2SubclusterType; count: number } {
  const type = subclusterType(entry, bitmap, from, extendedL2, true, dataFile);
  if (type === 'invalid') return { type, count: -1 };
  if (!extendedL2) return { type, count: 1 - from };
  if (type === 'compressed') return { type, count: 32 - from };
  const alloc = Number(bitmap & QCOW_L2_BITMAP_ALL_ALLOC);
  const zero = Number(bitmap >> 32n);
  const below = from === 0 ? 0 : Number(subAllocRange(0, from));
  switch (type) {
    case 'normal':
      return { type, count: ctz32(~(alloc | below) >>> 0) - from };
    case 'zero-plain':
    case 'zero-alloc':
      return { type, count: ctz32(~(zero | below) >>> 0) - from };
    default:
      return { type, count: ctz32((zero | alloc) & ~below) - from };
  }
}
