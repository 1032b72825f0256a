/**
 * The allocating write's fast path: a write into unallocated clusters whose L2 table and
 * refcount blocks are all cached is mapped and counted, and once its data is written linked,
 * without a wait (no lock round trip, no promise per lookup). Each step is exactly what the
 * ordinary path (alloc.ts, refcount.ts) does between taking s.lock and dropping it when
 * nothing needs loading, with the same decisions (first fit from the same cursor, the same
 * clusters, the same entries), so each runs only while nobody holds s.lock. Anything else (a
 * table or block to load or allocate, entries that are not plain unallocated ones, an
 * allocation in flight over the range, lazy refcounts still clean, a watched debug event)
 * answers "not now" with nothing changed, and the ordinary path runs.
 *
 * The order is the ordinary one: refcounts increased in their cache here; data (and COW)
 * written by the caller; then the L2 entries set, the L2 cache made to depend on the refcount
 * cache and on a file flush, so neither entry reaches the disk before what it points at.
 */
import type { CacheEntry } from './cache.js';
import { tableView } from './cluster.js';
import { qcow2HasDataFile } from './data-file.js';
import { L1E_OFFSET_MASK, QCOW_OFLAG_COPIED, REFT_OFFSET_MASK, l2EntryEmpty } from './entries.js';
import { qcow2FirstAllocation } from './inflight.js';
import { forgetPackingIn, qcow2FreedSinceL2Flush } from './reuse.js';
import { type Qcow2L2Meta, plainL2Meta } from './subcluster.js';
import { setLinkedEntries } from './alloc.js';
import {
  type BDRVQcow2State,
  offsetIntoCluster,
  offsetToL1Index,
  offsetToL2Index,
  qcow2IsDirty,
  qcow2NeedAccurateRefcounts,
  sizeToClusters,
} from './state.js';

/**
 * The cached, writable L2 table of guest `offset` (L1 entry COPIED), or null: where both
 * write fast paths (this one and the rewrite's, fast.ts) map a request.
 */
export function qcow2WritableTableNow(s: BDRVQcow2State, offset: number): CacheEntry | null {
  const l1Index = offsetToL1Index(s, offset);
  if (l1Index >= s.l1Table.length) return null;
  const l1e = s.l1Table[l1Index];
  const l2Offset = Number(l1e & L1E_OFFSET_MASK);
  if ((l1e & QCOW_OFLAG_COPIED) === 0n || l2Offset === 0 || offsetIntoCluster(s, l2Offset) !== 0) return null;
  return s.l2Cache.lookupEntry(l2Offset) ?? null;
}

/** The cached refcount block of reftable entry `tableIndex`, or null (absent, uncached, bad). */
function cachedBlock(s: BDRVQcow2State, tableIndex: number): Uint8Array | null {
  if (tableIndex >= s.refcountTable.length) return null;
  const off = Number(s.refcountTable[tableIndex] & REFT_OFFSET_MASK);
  if (off === 0 || off % s.clusterSize !== 0) return null;
  return s.refcountCache.peek(off) ?? null;
}

/**
 * qcow2_alloc_clusters for `n` clusters from cached refcount blocks: the same first-fit
 * probe from s.freeClusterIndex (a used cluster restarts the run), then the counts set to 1.
 * Null, with the cursor untouched, when a probed block is not at hand.
 */
function allocClustersNow(s: BDRVQcow2State, n: number): number | null {
  const per = s.refcountBlockEntries;
  let idx = s.freeClusterIndex;
  // Each refcount block is looked up once, not once per cluster (a table entry, a mask and a
  // cache lookup each): the LRU order the lookups leave is the same.
  let blockEnd = idx;
  let block: Uint8Array | null = null;
  for (let run = 0; run < n; idx++) {
    if (idx >= blockEnd || block === null) {
      block = cachedBlock(s, Math.floor(idx / per));
      if (block === null) return null;
      blockEnd = (Math.floor(idx / per) + 1) * per;
    }
    run = s.getRefcount(block, idx % per) === 0 ? run + 1 : 0;
  }
  if ((idx - 1) * s.clusterSize > Number.MAX_SAFE_INTEGER) return null;
  const first = idx - n;
  // Reusing a cluster freed since the L2 cache was flushed needs that flush first (reuse.ts).
  if (qcow2FreedSinceL2Flush(s, first, n)) return null;
  countClustersNow(s, first, idx);
  return first * s.clusterSize;
}

/**
 * Clusters [first, end), probed free in cached blocks by allocClustersNow, counted as used:
 * their refcounts set to 1, the cursor moved past them. Apart from the probe: one function
 * with both loops ran enough bytecode per request for TurboFan to compile it inside a run.
 */
function countClustersNow(s: BDRVQcow2State, first: number, end: number): void {
  const per = s.refcountBlockEntries;
  for (let i = first; i < end; ) {
    // Found cached by the probe, and nothing ran since.
    const entry = s.refcountCache.lookupEntry(Number(s.refcountTable[Math.floor(i / per)] & REFT_OFFSET_MASK))!;
    s.refcountCache.markDirty(entry);
    for (const blockEnd = Math.min(end, (Math.floor(i / per) + 1) * per); i < blockEnd; i++) s.setRefcount(entry.data, i % per, 1);
  }
  s.freeClusterIndex = end;
  forgetPackingIn(s, first * s.clusterSize, (end - first) * s.clusterSize);
}

/**
 * Map a guest write of [offset, offset+bytes) that lies wholly in unallocated clusters of one
 * cached table to new clusters now (qcow2_alloc_host_offset's single handle_alloc piece), or
 * null. The caller registers the write in flight before anything else runs.
 */
export function qcow2AllocNow(s: BDRVQcow2State, offset: number, bytes: number): { hostOffset: number; bytes: number; metas: Qcow2L2Meta[] } | null {
  const file = s.bs.file;
  if (s.lock.isLocked || file === null || file.debugWatched || s.extendedL2 || qcow2HasDataFile(s) || s.corrupt || s.corruptWrite !== null) return null;
  const l2Index = offsetToL2Index(s, offset);
  const nb = sizeToClusters(s, offsetIntoCluster(s, offset) + bytes);
  if (l2Index + nb > s.l2Size || nb > Math.floor(0x7fffffff / s.clusterSize)) return null;
  if (qcow2FirstAllocation(s, offset, bytes) !== null) return null;
  const table = qcow2WritableTableNow(s, offset);
  if (table === null) return null;
  const view = tableView(table.data);
  for (let i = 0; i < nb; i++) if (!l2EntryEmpty(view, (l2Index + i) * s.l2EntrySize)) return null;
  const cluster = allocClustersNow(s, nb);
  if (cluster === null) return null;
  return { hostOffset: cluster + offsetIntoCluster(s, offset), bytes, metas: [plainL2Meta(s, cluster, offset, bytes)] };
}

/**
 * Link allocations whose data and COW are written now (qcow2_alloc_cluster_link_l2): true
 * when done; false, with nothing changed, when it needs a wait (a table to load, clusters to
 * free, the dirty bit to set, a cache flush first) or s.lock is held.
 */
export function qcow2LinkL2Now(s: BDRVQcow2State, metas: readonly Qcow2L2Meta[]): boolean {
  if (s.lock.isLocked || (s.useLazyRefcounts && !qcow2IsDirty(s))) return false;
  const tables: CacheEntry[] = [];
  // Indexed: a for-of's iterator protocol made this the largest function TurboFan compiled
  // in an allocating run.
  for (let j = 0; j < metas.length; j++) {
    const m = metas[j];
    const table = qcow2WritableTableNow(s, m.offset);
    if (table === null) return false;
    // Entries replaced would lose their clusters' references: the ordinary path frees them.
    const l2Index = offsetToL2Index(s, m.offset);
    const view = tableView(table.data);
    if (!m.keepOld) for (let i = 0; i < m.nbClusters; i++) if (!l2EntryEmpty(view, (l2Index + i) * s.l2EntrySize)) return false;
    tables.push(table);
  }
  // Refcounts of the new clusters reach the disk before the entries that point at them.
  if (qcow2NeedAccurateRefcounts(s) && !s.l2Cache.setDependencyNow(s.refcountCache)) return false;
  // The data was written but not flushed: the entries must wait for a file flush.
  s.l2Cache.dependOnFlush();
  for (let i = 0; i < metas.length; i++) {
    s.l2Cache.markDirty(tables[i]);
    setLinkedEntries(s, tables[i].data, offsetToL2Index(s, metas[i].offset), metas[i], []);
  }
  return true;
}
