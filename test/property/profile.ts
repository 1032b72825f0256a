/**
 * Format profiles: everything the property suites need to know about the format under test,
 * so that one property runs on QED or qcow2 by taking a profile instead of being copied.
 * A profile says how to create an image for a geometry, which geometries and backing chains
 * to draw, what check reports after clean operation, which debug events the driver
 * announces (the blkdebug property), where its metadata lies in a file (the corruption
 * property) and how far a sparse image can grow (the huge property).
 */
import type fc from 'fast-check';
import type { BlockErrorCode, CreateOptions } from '../../src/index.js';
import type { BackingKind, Geometry } from './harness.js';

/** Where a valid image keeps its metadata, as the corruption property needs it. */
export interface MetadataLayout {
  clusterSize: number;
  l1Offset: number;
  l1Entries: number;
  /** Entries of one L2 table and their size in bytes (8, or 16 with extended L2). */
  l2Entries: number;
  l2EntryBytes: number;
  /** Offsets of the L2 tables the active L1 points at. */
  l2Tables: number[];
  /** qcow2: the refcount table (entries) and the refcount blocks it points at. */
  reftable?: { offset: number; entries: number };
  refblocks?: number[];
  /** qcow2: bits of the compressed descriptor's offset field (62 - (cluster_bits - 8)). */
  compressedOffsetBits?: number;
}

export interface CorruptionProfile {
  /** Header fields that mutations target: name -> [byte offset, size]. */
  headerFields: Readonly<Record<string, readonly [number, number]>>;
  /** Byte order of header fields and table entries. */
  bigEndian: boolean;
  /** Table kinds beyond L1/L2 that mutations may target. */
  refcounts: boolean;
  /** Read the layout of a valid image (this profile's own create + writes). */
  layout(image: Uint8Array): MetadataLayout;
  /**
   * The state a crash leaves behind and the open-time repair must fix (QED: NEED_CHECK and L2
   * entries past EOF; qcow2: the dirty bit with refcounts of data clusters dropped to 0).
   * `picks` chooses which entries; entries the guest's data uses are never changed.
   */
  makeDirty(image: Uint8Array, picks: readonly number[]): Uint8Array;
  /** Debug events met by the open-time repair of such an image. */
  repairEvents: readonly string[];
}

export interface HugeLayout {
  options: CreateOptions;
  size: number;
  /** Guest bytes one L2 table maps. */
  l2Span: number;
}

export interface FormatProfile {
  /** The driver's format name (and the files' extension). */
  readonly name: 'qed' | 'qcow2';
  /** Geometries of the image under test. */
  geometryArb(wide: boolean): fc.Arbitrary<Geometry>;
  /** Format options of the image under test (size and backing file are added by the harness). */
  createOptions(geom: Geometry): CreateOptions;
  /** Format options of a middle layer of this format in a backing chain. */
  layerOptions(clusterSize: number): CreateOptions;
  /** Backing chains drawn for this format (the top image is always this format). */
  readonly backingKinds: readonly BackingKind[];
  /** The format keeps internal snapshots (the sequential and power-loss properties take some). */
  readonly snapshots: boolean;
  /** Whether check may report leaks after clean operation (neither format may today). */
  readonly leaksAfterCleanOps: boolean;
  /** Debug events the driver announces on its file during guest requests. */
  readonly debugEvents: readonly string[];
  /**
   * What a guest discard does: 'nothing' (QED has no discard), or 'zeroes-clusters' (whole
   * clusters may read as zeros afterwards; the rest keeps its bytes).
   */
  readonly discard: 'nothing' | 'zeroes-clusters';
  /**
   * What a grown range shows over a backing file longer than the old size: 'backing' (QED),
   * or 'backing-or-zeros' per sector (qcow2: QEMU 7.2 zeroes it when it can).
   */
  readonly grow: 'backing' | 'backing-or-zeros';
  /** A backing file name the header cannot take, and the error change-backing-file gives. */
  tooLongBackingName(clusterSize: number, extra: number): { length: number; code: BlockErrorCode };
  readonly corruption: CorruptionProfile;
  /** Sparse-image layouts near the format's limits, from two small numbers and a shrink. */
  hugeLayout(clusterBits: number, tableBits: number, shrinkSectors: number): HugeLayout;
  /** Cluster sizes (log2) the huge property draws. */
  readonly hugeClusterBits: readonly number[];
  /**
   * Option changes the amend commands draw from (keyed as the driver's amendOptions); absent:
   * the format cannot amend. An amend must keep the guest's bytes and leave check clean, or be
   * refused (EINVAL, ENOTSUP) with nothing changed.
   */
  readonly amendChoices?: readonly CreateOptions[];
  /**
   * The unit a cluster of this geometry is allocated and zeroed in (qcow2 with extended L2
   * entries: a 32nd of it); absent: the cluster. Spans placed at cluster boundaries fall on
   * these boundaries half of the time.
   */
  subclusterSize?(geom: Geometry): number;
  /**
   * The format writes compressed clusters (qemu-io write -c): the sequential and power-loss
   * properties draw compressed writes; the geometry's create options choose the compression.
   */
  readonly compressedWrites?: boolean;
  /** Whether an image of this geometry keeps persistent dirty bitmaps (the bitmap properties). */
  persistentBitmaps(geom: Geometry): boolean;
}

// ---------------------------------------------------------------------------------------------
// Byte helpers shared by the profiles' layout and mutation code.

export function getUint(b: Uint8Array, off: number, size: number, bigEndian: boolean): bigint {
  let v = 0n;
  for (let i = 0; i < size; i++) {
    const at = bigEndian ? off + i : off + size - 1 - i;
    v = (v << 8n) | BigInt(at >= 0 && at < b.length ? b[at] : 0);
  }
  return v;
}

export function putUint(b: Uint8Array, off: number, size: number, v: bigint, bigEndian: boolean): void {
  for (let i = 0; i < size; i++) {
    const at = bigEndian ? off + size - 1 - i : off + i;
    if (at >= 0 && at < b.length) b[at] = Number((v >> BigInt(8 * i)) & 0xffn);
  }
}
