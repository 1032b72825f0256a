/**
 * BDRVQcow2State: what an open qcow2 image keeps in memory, and the small helpers every other
 * file shares (geometry, tracing, the file child).
 *
 * Who touches what: `lock` (QEMU's s->lock) is held by every metadata operation (lookups that
 * may load tables, allocation, L2/L1/refcount updates, flush of the caches), so the caches,
 * the tables and the allocation cursors change under one owner at a time.
 */
import type { BufferPool } from '../../block/buffer-pool.js';
import { CoMutex } from '../../block/coroutine.js';
import type { OpenOptions } from '../../block/driver.js';
import { BlockError } from '../../block/errors.js';
import type { BlockDriverState } from '../../block/node.js';
import type { Qcow2Cache } from './cache.js';
import type { Qcow2Codec } from './compress.js';
import type { Qcow2InFlight } from './inflight.js';
import type { Qcow2MetadataExtents, Qcow2OverlapIndex } from './corrupt.js';
import type { CompressedGeometry } from './entries.js';
import type { QCowHeader, Qcow2UnknownExtension } from './header.js';
import type { RefcountGetter, RefcountSetter } from './refcount-codec.js';

export interface BDRVQcow2State {
  bs: BlockDriverState;
  header: QCowHeader;
  clusterBits: number;
  clusterSize: number;
  /** Entries per L2 table, and whether they are 16-byte extended entries. */
  l2Size: number;
  extendedL2: boolean;
  /** Bytes of one L2 entry (8 or 16). */
  l2EntrySize: number;
  subclusterSize: number;
  /**
   * Active L1 entries (a typed array: 8 bytes each, however large the image says it is).
   * Changing an entry in place (here or in refcountTable) calls qcow2OverlapIndexChanged.
   */
  l1Table: BigUint64Array;
  l1TableOffset: number;
  refcountTable: BigUint64Array;
  refcountTableOffset: number;
  refcountOrder: number;
  refcountBlockEntries: number;
  refcountMax: number;
  getRefcount: RefcountGetter;
  setRefcount: RefcountSetter;
  l2Cache: Qcow2Cache;
  refcountCache: Qcow2Cache;
  /** First cluster index worth probing for a free cluster (QEMU's free_cluster_index). */
  freeClusterIndex: number;
  /** Where the next compressed cluster is packed; 0 = start a new host cluster. */
  freeByteOffset: number;
  /**
   * Cluster indices [first, last] spanning every cluster whose count dropped to 0 since the
   * allocator last flushed the L2 cache (null: none): an L2 entry on disk may still point at
   * them (reuse.ts).
   */
  freedSinceL2Flush: { first: number; last: number } | null;
  /** Settles when the last compressed write queued has taken its place in the file (io.ts). */
  compressedTurn: Promise<void>;
  compressed: CompressedGeometry;
  codec: Qcow2Codec;
  /** Header bytes 112..header_length, extensions and names kept for full header rewrites. */
  unknownHeaderFields: Uint8Array;
  unknownExtensions: Qcow2UnknownExtension[];
  backingFile: string | null;
  backingFormat: string | null;
  /** The data file name the image records (its extension), or null; the node is bs.dataFile. */
  imageDataFile: string | null;
  bitmapsExtension: Uint8Array | null;
  /**
   * The first cluster as the last full header write left it (or as opened); null when a
   * failed write left it unknown. Header fields in sector 0 are also rewritten in place, so
   * only the extent a reader reads and the bytes past sector 0 are taken from it.
   */
  headerCluster: Uint8Array | null;
  /** Lazy refcounts in use (compat bit on a v3 image). */
  useLazyRefcounts: boolean;
  /** Discarded and unmapped clusters are hole-punched in the file (qemu-io's discard=unmap). */
  discardPassthrough: boolean;
  /** Metadata preallocation detected (block status then asks the file about zeros); null: not yet. */
  metadataPreallocation: boolean | null;
  /** Marked corrupt during this open: every later request fails with EIO. */
  corrupt: boolean;
  /** Messages already printed once (QEMU suppresses repeats). */
  corruptionReported: boolean;
  /** The header write that records the corrupt bit, when one is in flight. */
  corruptWrite: Promise<void> | null;
  /** Metadata the overlap check needs besides the tables (snapshot table, bitmaps). */
  extents: Qcow2MetadataExtents;
  /** Clusters of L2 tables and refcount blocks for the overlap check; null: rebuild. */
  overlapIndex: Qcow2OverlapIndex | null;
  /** Full header rewrite (qcow2_update_header), bound at open. */
  updateHeader: () => Promise<void>;
  lock: CoMutex;
  /**
   * Planners (qcow2PlanUnlocked) waiting for `lock` or handed it and not yet running: a
   * planner only reads the tables, so while one is the lock's next owner nobody is in the
   * middle of changing them (qcow2MetadataSettled).
   */
  plannersQueued: number;
  /** Guest writes with data I/O running outside `lock` (inflight.ts). */
  inFlight: Set<Qcow2InFlight>;
  /** How many of them allocate: with none, a write needs no look for one (qcow2FirstAllocation). */
  allocationsInFlight: number;
  /**
   * A guest range [low, high) that holds every allocating write in flight, widened as they
   * begin and reset by the first to begin when none is: sequential writes start past it, and
   * need no walk over the writes in flight (qcow2FirstAllocation).
   */
  allocationsLow: number;
  allocationsHigh: number;
  /** Cluster-sized buffers for the head and tail of copy-on-write (qcow2PerformCow). */
  cowBuffers: BufferPool;
  openOptions: OpenOptions;
  closed: boolean;
}

export function qcow2State(bs: BlockDriverState): BDRVQcow2State {
  const s = bs.opaque as BDRVQcow2State | null | undefined;
  if (!s) throw new BlockError('EBADF', 'qcow2 image is not open', { op: 'qcow2' });
  return s;
}

export function qcow2File(s: BDRVQcow2State): BlockDriverState {
  const file = s.bs.file;
  if (!file) throw new BlockError('EBADF', 'qcow2 node has no file child', { op: 'qcow2' });
  return file;
}

/** Emit a trace point, building nothing when nobody listens. */
export function qcow2Trace(s: BDRVQcow2State, name: string, args: Record<string, unknown>): void {
  if (s.bs.events.listenerCount('trace') > 0) s.bs.trace(name, args);
}

export function offsetIntoCluster(s: BDRVQcow2State, offset: number): number {
  return offset % s.clusterSize;
}

export function startOfCluster(s: BDRVQcow2State, offset: number): number {
  return offset - (offset % s.clusterSize);
}

export function sizeToClusters(s: BDRVQcow2State, size: number): number {
  return Math.ceil(size / s.clusterSize);
}

export function offsetToL1Index(s: BDRVQcow2State, offset: number): number {
  return Math.floor(offset / (s.clusterSize * s.l2Size));
}

export function offsetToL2Index(s: BDRVQcow2State, offset: number): number {
  return Math.floor(offset / s.clusterSize) % s.l2Size;
}

/**
 * Nobody is in the middle of a metadata change, so a synchronous lookup sees what one under
 * s.lock would: the lock is free, or it has been handed to a planner that has not run yet
 * (its last holder released it at a consistent point, and a planner changes nothing). That
 * is the case exactly when every waiter still queued is a planner and one more planner is
 * counted: the one the lock was handed to. Without the second case, readers that met the
 * lock held once queue behind each other for good, every hand-off keeping it held.
 */
export function qcow2MetadataSettled(s: BDRVQcow2State): boolean {
  return !s.lock.isLocked || s.lock.waiting === s.plannersQueued - 1;
}

/** The dirty bit is set: refcounts on disk may be stale (lazy refcounts). */
export function qcow2IsDirty(s: BDRVQcow2State): boolean {
  return (s.header.incompatibleFeatures & 1n) !== 0n;
}

/** Refcount blocks must be kept accurate on disk (QEMU's qcow2_need_accurate_refcounts). */
export function qcow2NeedAccurateRefcounts(s: BDRVQcow2State): boolean {
  return !qcow2IsDirty(s);
}

/** Write what the caches hold (qcow2_write_caches); refcounts only while they are accurate. */
export async function qcow2WriteCaches(s: BDRVQcow2State): Promise<void> {
  await s.l2Cache.write();
  if (qcow2NeedAccurateRefcounts(s)) await s.refcountCache.write();
}
