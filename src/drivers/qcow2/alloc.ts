/**
 * Allocation for guest writes (QEMU's qcow2_alloc_host_offset, handle_copied, handle_alloc
 * and qcow2_alloc_cluster_link_l2; calculate_l2_meta, per subcluster, is in subcluster.ts).
 *
 * A write is mapped one piece at a time: clusters already owned (COPIED) are written in
 * place; the others get new clusters, first tried right after the previous piece's host
 * clusters, otherwise first fit. Each new allocation is described by a Qcow2L2Meta (where the
 * clusters went, which head and tail must be copied from what the guest saw before). After
 * the data (and COW) is written, qcow2LinkL2 points the L2 entries at the new clusters.
 *
 * Order, per allocation: L2 table (allocated or copied and linked from L1 first, by
 * qcow2GetClusterTable) -> refcounts of the data clusters (refcount cache) -> data and COW
 * written -> L2 entries set (the L2 cache depends on the refcount cache and on a file flush,
 * so neither can reach the disk before what they point at) -> old clusters' refcounts
 * decreased (the refcount cache depends on the L2 cache).
 */
import { BlockError } from '../../block/errors.js';
import { qcow2GetClusterTable, getL2Bitmap, getL2Entry, setL2Bitmap, tableView } from './cluster.js';
import { printfHex, qcow2SignalCorruption } from './corrupt.js';
import { L2E_OFFSET_MASK, QCOW_OFLAG_COPIED, clusterType, l2EntryEmpty, setCopiedEntry } from './entries.js';
import { QCOW2_INCOMPAT_DIRTY } from './header.js';
import { qcow2FirstAllocation, qcow2WaitFor } from './inflight.js';
import { qcow2AllocClusters, qcow2AllocClustersAt, qcow2FreeAnyCluster } from './refcount.js';
import { type Qcow2L2Meta, calculateL2Meta, l2ClusterType, linkedBitmap } from './subcluster.js';
import {
  type BDRVQcow2State,
  offsetIntoCluster,
  qcow2File,
  qcow2IsDirty,
  qcow2NeedAccurateRefcounts,
  sizeToClusters,
  startOfCluster,
} from './state.js';
import { qcow2HasDataFile } from './data-file.js';

export type { Qcow2L2Meta } from './subcluster.js';

const INV_OFFSET = -1;

/** Does writing this entry need a new cluster (cluster_needs_new_alloc)? */
function needsNewAlloc(s: BDRVQcow2State, entry: bigint): boolean {
  const t = l2ClusterType(s, entry);
  if ((t === 'normal' || t === 'zero-alloc') && (entry & QCOW_OFLAG_COPIED) !== 0n) return false;
  return true;
}

/** Clusters from l2Index with the same need, and (in place) contiguous on the host. */
export function countSingleWriteClusters(s: BDRVQcow2State, nb: number, data: Uint8Array, l2Index: number, newAlloc: boolean): number {
  let expected = Number(getL2Entry(s, data, l2Index) & L2E_OFFSET_MASK);
  let i = 0;
  for (; i < nb; i++) {
    const e = getL2Entry(s, data, l2Index + i);
    if (needsNewAlloc(s, e) !== newAlloc) break;
    if (!newAlloc) {
      if (expected !== Number(e & L2E_OFFSET_MASK)) break;
      expected += s.clusterSize;
    }
  }
  return i;
}

interface Piece {
  /** 1: progress made; 0: nothing (bytes 0: stop). */
  ret: number;
  hostOffset: number;
  bytes: number;
}

/**
 * Run `fn` on the writable L2 table of guest `guest` with the number of clusters of the piece
 * inside it; the table is put back after.
 */
async function withClusterTable(
  s: BDRVQcow2State,
  guest: number,
  bytes: number,
  fn: (data: Uint8Array, l2Index: number, nb: number) => Promise<Piece>,
): Promise<Piece> {
  const { table, l2Index } = await qcow2GetClusterTable(s, guest);
  try {
    return await fn(table.data, l2Index, Math.min(sizeToClusters(s, offsetIntoCluster(s, guest) + bytes), s.l2Size - l2Index));
  } finally {
    s.l2Cache.put(table);
  }
}

/** A piece mapped to `nb` clusters from host `cluster`, with its COW described when it needs one. */
function mappedPiece(
  s: BDRVQcow2State,
  cluster: number,
  guest: number,
  bytes: number,
  nb: number,
  at: { data: Uint8Array; l2Index: number; keepOld: boolean },
  metas: Qcow2L2Meta[],
): Piece {
  const n = Math.min(bytes, nb * s.clusterSize - offsetIntoCluster(s, guest));
  const meta = calculateL2Meta(s, cluster, guest, n, at.data, at.l2Index, at.keepOld);
  if (meta) metas.push(meta);
  return { ret: 1, hostOffset: cluster + offsetIntoCluster(s, guest), bytes: n };
}

/** Clusters we own already, written in place (handle_copied). */
function handleCopied(s: BDRVQcow2State, guest: number, hostOffset: number, bytes: number, metas: Qcow2L2Meta[]): Promise<Piece> {
  return withClusterTable(s, guest, bytes, (data, l2Index, nb) => {
    const entry = getL2Entry(s, data, l2Index);
    const clusterOffset = Number(entry & L2E_OFFSET_MASK);
    if (needsNewAlloc(s, entry)) return Promise.resolve({ ret: 0, hostOffset, bytes });
    if (offsetIntoCluster(s, clusterOffset) !== 0) {
      const kind = clusterType(entry) === 'zero-alloc' ? 'Preallocated zero' : 'Data';
      qcow2SignalCorruption(s, true, `${kind} cluster offset ${printfHex(clusterOffset)} unaligned (guest offset: ${printfHex(guest)})`);
      throw new BlockError('EIO', undefined, { op: 'write', offset: guest });
    }
    // A later piece must continue exactly where the previous one ended on the host.
    if (hostOffset !== INV_OFFSET && clusterOffset !== hostOffset) return Promise.resolve({ ret: 0, hostOffset, bytes: 0 });
    const keep = countSingleWriteClusters(s, nb, data, l2Index, false);
    return Promise.resolve(mappedPiece(s, clusterOffset, guest, bytes, keep, { data, l2Index, keepOld: true }, metas));
  });
}

/** New clusters for what is not ours (handle_alloc). */
function handleAlloc(s: BDRVQcow2State, guest: number, hostOffset: number, bytes: number, metas: Qcow2L2Meta[]): Promise<Piece> {
  return withClusterTable(s, guest, bytes, async (data, l2Index, nb) => {
    nb = Math.min(nb, Math.floor(0x7fffffff / s.clusterSize));
    nb = countSingleWriteClusters(s, nb, data, l2Index, true);
    let allocOffset: number;
    if (qcow2HasDataFile(s)) {
      // A data file maps each guest cluster to the same host offset, counted by nobody
      // (do_alloc_cluster_offset); a later piece continues right there as well.
      allocOffset = startOfCluster(s, guest);
    } else if (hostOffset === INV_OFFSET) {
      allocOffset = await qcow2AllocClusters(s, nb * s.clusterSize);
    } else {
      allocOffset = startOfCluster(s, hostOffset);
      nb = await qcow2AllocClustersAt(s, allocOffset, nb);
      // The clusters right after are taken: this piece ends here.
      if (nb === 0) return { ret: 0, hostOffset, bytes: 0 };
    }
    return mappedPiece(s, allocOffset, guest, bytes, nb, { data, l2Index, keepOld: false }, metas);
  });
}

/**
 * Map guest [offset, offset+bytes) to one contiguous host range, allocating what is needed;
 * returns the host offset and how many bytes it covers (qcow2_alloc_host_offset).
 */
export async function qcow2AllocHostOffset(
  s: BDRVQcow2State,
  offset: number,
  bytes: number,
): Promise<{ hostOffset: number; bytes: number; metas: Qcow2L2Meta[] }> {
  const metas: Qcow2L2Meta[] = [];
  let start = offset;
  let remaining = bytes;
  let clusterOffset = INV_OFFSET;
  let hostOffset = INV_OFFSET;
  let cur = 0;
  for (;;) {
    if (hostOffset === INV_OFFSET && clusterOffset !== INV_OFFSET) hostOffset = clusterOffset;
    start += cur;
    remaining -= cur;
    if (clusterOffset !== INV_OFFSET) clusterOffset += cur;
    if (remaining === 0) break;
    // Another write is allocating clusters here (handle_dependencies): this piece stops
    // before them, or waits for them when they start where it does. Waiting drops s.lock,
    // so only a request that has mapped nothing yet waits; one that has writes what it
    // mapped and comes back for the rest.
    let room = remaining;
    const dep = qcow2FirstAllocation(s, start, remaining);
    if (dep) {
      if (dep.start <= startOfCluster(s, start)) {
        if (start !== offset) break;
        await qcow2WaitFor(s, dep);
        cur = 0;
        continue;
      }
      room = dep.start - start;
    }
    const copied = await handleCopied(s, start, clusterOffset, room, metas);
    if (copied.ret === 1) {
      clusterOffset = copied.hostOffset;
      cur = copied.bytes;
      continue;
    }
    if (copied.bytes === 0) break;
    const alloc = await handleAlloc(s, start, clusterOffset, room, metas);
    if (alloc.ret === 1) {
      clusterOffset = alloc.hostOffset;
      cur = alloc.bytes;
      continue;
    }
    break;
  }
  return { hostOffset, bytes: bytes - remaining, metas };
}

/** Set the dirty bit before the first L2 update of a lazy-refcounts image (qcow2_mark_dirty). */
export async function qcow2MarkDirty(s: BDRVQcow2State): Promise<void> {
  if (qcow2IsDirty(s)) return;
  const file = qcow2File(s);
  // Everything written so far must be durable before the image says refcounts may be stale
  // from here on.
  await s.l2Cache.write();
  await s.refcountCache.write();
  await file.flush();
  const v = new Uint8Array(8);
  new DataView(v.buffer).setBigUint64(0, s.header.incompatibleFeatures | QCOW2_INCOMPAT_DIRTY);
  await file.pwrite(72, v);
  await file.flush();
  s.header.incompatibleFeatures |= QCOW2_INCOMPAT_DIRTY;
}

/**
 * Set the L2 entries of an allocation in its (dirty-marked) table, collecting in `old` the
 * non-zero entries they replace.
 */
export function setLinkedEntries(s: BDRVQcow2State, data: Uint8Array, l2Index: number, m: Qcow2L2Meta, old: bigint[]): void {
  const view = tableView(data);
  for (let i = 0; i < m.nbClusters; i++) {
    const at = (l2Index + i) * s.l2EntrySize;
    if (!l2EntryEmpty(view, at)) old.push(getL2Entry(s, data, l2Index + i));
    setCopiedEntry(view, at, m.allocOffset + i * s.clusterSize);
    // With extended L2 entries, the subclusters just written become allocated.
    if (s.extendedL2) setL2Bitmap(s, data, l2Index + i, linkedBitmap(s, m, i, getL2Bitmap(s, data, l2Index + i)));
  }
}

/**
 * Point the L2 entries of an allocation at its clusters, once its data and COW are written
 * (qcow2_alloc_cluster_link_l2), then drop the references the old entries held.
 */
export async function qcow2LinkL2(s: BDRVQcow2State, m: Qcow2L2Meta): Promise<void> {
  if (s.useLazyRefcounts) await qcow2MarkDirty(s);
  // Refcounts of the new clusters reach the disk before the entries that point at them.
  if (qcow2NeedAccurateRefcounts(s)) await s.l2Cache.setDependency(s.refcountCache);
  // The data was written but not flushed: the entries must wait for a file flush.
  s.l2Cache.dependOnFlush();
  const { table, l2Index } = await qcow2GetClusterTable(s, m.offset);
  const old: bigint[] = [];
  try {
    s.l2Cache.markDirty(table);
    setLinkedEntries(s, table.data, l2Index, m, old);
  } finally {
    s.l2Cache.put(table);
  }
  // A COW'd cluster (a shared or compressed one) loses the reference this entry held. Freed
  // clusters are not punched: the next write will likely reuse them.
  if (!m.keepOld) for (const e of old) await qcow2FreeAnyCluster(s, e, 'never');
}
