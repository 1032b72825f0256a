/**
 * Refcounts and cluster allocation (QEMU's qcow2-refcount.c, allocation half).
 *
 * State: s.refcountTable (in memory, written entry by entry), refcount blocks in
 * s.refcountCache, the cluster cursor s.freeClusterIndex and the compressed byte cursor
 * s.freeByteOffset. Callers hold s.lock.
 *
 * Allocation is QEMU's, decision for decision, so that the same requests give the same file:
 * first fit from the cursor; a refcount update that meets a missing refcount block allocates
 * one (self-describing when it lies in its own range), hooks it up and answers "again"
 * (Qcow2Again) so that the allocation is searched anew, its earlier increments undone; a
 * reftable that is too small is replaced by new self-describing structures at the end.
 */
import { BlockError } from '../../block/errors.js';
import { REFT_OFFSET_MASK, clusterType, decodeCompressed, L2E_OFFSET_MASK, nextUsedSlot, tableWords } from './entries.js';
import { printfHex, qcow2OverlapIndexChanged, qcow2SignalCorruption, qcow2PreWriteOverlapCheck, QCOW2_OL_REFCOUNT_TABLE } from './corrupt.js';
import { qcow2RefcountArea } from './reftable.js';
import { qcow2FreeDataCluster, qcow2HasDataFile } from './data-file.js';
import { forgetPackingIn, qcow2NoteFreed, qcow2FlushL2ForReuse, qcow2SyncBeforeReuse } from './reuse.js';
import { type BDRVQcow2State, qcow2File, qcow2Trace, startOfCluster, sizeToClusters, offsetIntoCluster } from './state.js';

/** QEMU's qcow2_discard_type: which frees punch holes in the file. */
export type Qcow2DiscardType = 'never' | 'always' | 'request' | 'snapshot' | 'other';

/** "The structures moved: search again" (QEMU's -EAGAIN inside the allocator). */
class Qcow2Again extends Error {}

export { qcow2RefcountArea };

/** Read the refcount table (entries past the end of the file read as 0). */
export async function qcow2LoadRefcountTable(s: BDRVQcow2State): Promise<void> {
  const file = qcow2File(s);
  const entries = (s.header.refcountTableClusters * s.clusterSize) / 8;
  const buf = new Uint8Array(entries * 8);
  const len = await file.getLength();
  await file.debugEvent('reftable_load');
  const off = s.refcountTableOffset;
  if (off < len) await file.pread(off, buf.subarray(0, Math.min(buf.length, len - off)));
  const v = new DataView(buf.buffer);
  s.refcountTable = new BigUint64Array(entries);
  // Only the used entries: a table has thousands, mostly 0, and each read makes a BigInt.
  const words = tableWords(buf);
  for (let i = nextUsedSlot(words, 0, entries, 8); i < entries; i = nextUsedSlot(words, i + 1, entries, 8)) {
    s.refcountTable[i] = v.getBigUint64(i * 8);
  }
}

function refblockOffset(s: BDRVQcow2State, tableIndex: number): number {
  if (tableIndex >= s.refcountTable.length) return 0;
  const off = Number(s.refcountTable[tableIndex] & REFT_OFFSET_MASK);
  if (off % s.clusterSize !== 0) {
    qcow2SignalCorruption(s, true, `Refblock offset ${printfHex(off)} unaligned (reftable index: ${printfHex(tableIndex)})`);
    throw new BlockError('EIO', undefined, { op: 'refcount' });
  }
  return off;
}

/** Refcount of a cluster (0 beyond the table or under an absent block). */
export async function qcow2GetRefcount(s: BDRVQcow2State, clusterIndex: number): Promise<number> {
  const tableIndex = Math.floor(clusterIndex / s.refcountBlockEntries);
  const off = refblockOffset(s, tableIndex);
  if (off === 0) return 0;
  const e = await s.refcountCache.get(off, 'refblock_load');
  try {
    return s.getRefcount(e.data, clusterIndex % s.refcountBlockEntries);
  } finally {
    s.refcountCache.put(e);
  }
}

function inSameRefcountBlock(s: BDRVQcow2State, a: number, b: number): boolean {
  const span = s.refcountBlockEntries * s.clusterSize;
  return Math.floor(a / span) === Math.floor(b / span);
}

/**
 * The refcount block covering `clusterIndex`, allocated (and the reftable grown) if needed;
 * throws Qcow2Again after allocating, since the new block may sit where the caller meant to.
 */
async function allocRefcountBlock(s: BDRVQcow2State, clusterIndex: number) {
  const file = qcow2File(s);
  await file.debugEvent('refblock_alloc');
  const tableIndex = Math.floor(clusterIndex / s.refcountBlockEntries);
  const existing = refblockOffset(s, tableIndex);
  if (existing !== 0) return s.refcountCache.get(existing, 'refblock_load');

  // The reftable is about to change, and L2 tables written later may point at clusters whose
  // counts live in the new block: write the L2 tables now.
  await qcow2FlushL2ForReuse(s);
  const newBlock = await allocClustersNoref(s, s.clusterSize);
  let block;
  if (inSameRefcountBlock(s, newBlock, clusterIndex * s.clusterSize)) {
    block = await s.refcountCache.getEmpty(newBlock);
    // The block describes itself.
    s.setRefcount(block.data, (newBlock / s.clusterSize) % s.refcountBlockEntries, 1);
  } else {
    // Counted by another block, which may itself need allocating (at most twice deep).
    await updateRefcount(s, newBlock, s.clusterSize, 1, false, 'never');
    await s.refcountCache.flush();
    block = await s.refcountCache.getEmpty(newBlock);
  }
  // The new block must be on disk before the reftable points at it.
  await file.debugEvent('refblock_alloc_write');
  s.refcountCache.markDirty(block);
  try {
    await s.refcountCache.flush();
  } finally {
    s.refcountCache.put(block);
  }

  if (tableIndex < s.refcountTable.length) {
    await file.debugEvent('refblock_alloc_hookup');
    const entry = new Uint8Array(8);
    new DataView(entry.buffer).setBigUint64(0, BigInt(newBlock));
    const at = s.refcountTableOffset + tableIndex * 8;
    qcow2PreWriteOverlapCheck(s, QCOW2_OL_REFCOUNT_TABLE, at, 8);
    await file.pwrite(at, entry);
    await file.flush();
    s.refcountTable[tableIndex] = BigInt(newBlock);
    qcow2OverlapIndexChanged(s);
    throw new Qcow2Again();
  }

  // The table is full: new self-describing structures go after everything in use so far.
  await file.debugEvent('reftable_grow');
  const blocksUsed = Math.ceil(Math.max(clusterIndex + 1, newBlock / s.clusterSize + 1) / s.refcountBlockEntries);
  const metaOffset = blocksUsed * s.refcountBlockEntries * s.clusterSize;
  await qcow2RefcountArea(s, metaOffset, 0, false, tableIndex, newBlock);
  throw new Qcow2Again();
}

/**
 * Add `addend` to (or subtract it from) the refcount of every cluster in [offset, offset+len).
 * On failure the clusters already changed are changed back, so the counts stay as they were.
 */
export async function updateRefcount(
  s: BDRVQcow2State,
  offset: number,
  length: number,
  addend: number,
  decrease: boolean,
  type: Qcow2DiscardType,
): Promise<void> {
  if (length <= 0) return;
  // A decrease must not reach the disk before the L2 tables that dropped the reference.
  if (decrease) await s.refcountCache.setDependency(s.l2Cache);
  const start = startOfCluster(s, offset);
  const last = startOfCluster(s, offset + length - 1);
  let block = null;
  let oldTableIndex = -1;
  let clusterOffset = start;
  const freed: number[] = [];
  try {
    for (; clusterOffset <= last; clusterOffset += s.clusterSize) {
      const clusterIndex = clusterOffset / s.clusterSize;
      const tableIndex = Math.floor(clusterIndex / s.refcountBlockEntries);
      if (tableIndex !== oldTableIndex) {
        if (block) s.refcountCache.put(block);
        block = null;
        try {
          block = await allocRefcountBlock(s, clusterIndex);
        } catch (e) {
          // The caller searches for free clusters again, from this range's start: those may
          // still be free (as QEMU's update_refcount, for every caller: a compressed cluster
          // or an L2 table that was the first cluster of a new block's range stays there,
          // the block right after it).
          if (e instanceof Qcow2Again) s.freeClusterIndex = Math.min(s.freeClusterIndex, start / s.clusterSize);
          throw e;
        }
      }
      oldTableIndex = tableIndex;
      if (!block) throw new BlockError('EIO', undefined, { op: 'refcount' });
      s.refcountCache.markDirty(block);
      const idx = clusterIndex % s.refcountBlockEntries;
      let refcount = s.getRefcount(block.data, idx);
      if (decrease ? refcount < addend : refcount + addend > s.refcountMax) {
        throw new BlockError('EINVAL', undefined, { op: 'refcount', offset: clusterOffset });
      }
      refcount = decrease ? refcount - addend : refcount + addend;
      if (refcount === 0 && clusterIndex < s.freeClusterIndex) s.freeClusterIndex = clusterIndex;
      s.setRefcount(block.data, idx, refcount);
      if (refcount === 0) {
        freed.push(clusterOffset);
        qcow2NoteFreed(s, clusterIndex);
      }
    }
  } catch (e) {
    if (block) s.refcountCache.put(block);
    block = null;
    // Undo what was done (this may succeed, e.g. after ENOSPC for a new refcount block).
    if (clusterOffset > offset) {
      try {
        await updateRefcount(s, offset, clusterOffset - offset, addend, !decrease, 'never');
      } catch {
        // The original error is what the caller needs to see.
      }
    }
    throw e;
  } finally {
    if (block) s.refcountCache.put(block);
  }
  if (freed.length > 0) await processDiscards(s, freed, type);
}

/** Punch freed clusters in the file when this kind of free passes discards down. */
async function processDiscards(s: BDRVQcow2State, freed: number[], type: Qcow2DiscardType): Promise<void> {
  if (!qcow2DiscardPassthrough(s, type)) return;
  for (const off of freed) s.l2Cache.discard(off);
  const file = qcow2File(s);
  let i = 0;
  while (i < freed.length) {
    let j = i + 1;
    while (j < freed.length && freed[j] === freed[j - 1] + s.clusterSize) j++;
    try {
      await file.discard(freed[i], freed[j - 1] + s.clusterSize - freed[i]);
    } catch {
      // Discard is advisory, as in QEMU.
    }
    i = j;
  }
}

export function qcow2DiscardPassthrough(s: BDRVQcow2State, type: Qcow2DiscardType): boolean {
  switch (type) {
    case 'always':
    case 'snapshot':
      return true;
    case 'request':
      return s.discardPassthrough;
    default:
      return false;
  }
}

/** The count from a cached block, or undefined when the block must be loaded first. */
function cachedRefcount(s: BDRVQcow2State, clusterIndex: number): number | undefined {
  const tableIndex = Math.floor(clusterIndex / s.refcountBlockEntries);
  const off = refblockOffset(s, tableIndex);
  if (off === 0) return 0;
  const data = s.refcountCache.peek(off);
  return data ? s.getRefcount(data, clusterIndex % s.refcountBlockEntries) : undefined;
}

/**
 * First fit from the cursor for `size` bytes of clusters; counts nothing (QEMU's
 * alloc_clusters_noref). Every probed cluster moves the cursor; a used one restarts the run.
 */
async function allocClustersNoref(s: BDRVQcow2State, size: number): Promise<number> {
  const n = sizeToClusters(s, size);
  for (;;) {
    let ok = true;
    for (let i = 0; i < n; i++) {
      const idx = s.freeClusterIndex++;
      const rc = cachedRefcount(s, idx) ?? (await qcow2GetRefcount(s, idx));
      if (rc !== 0) {
        ok = false;
        break;
      }
    }
    if (ok) break;
  }
  if ((s.freeClusterIndex - 1) * s.clusterSize > Number.MAX_SAFE_INTEGER) {
    throw new BlockError('EFBIG', undefined, { op: 'alloc_clusters' });
  }
  const found = (s.freeClusterIndex - n) * s.clusterSize;
  forgetPackingIn(s, found, n * s.clusterSize);
  await qcow2SyncBeforeReuse(s, s.freeClusterIndex - n, n);
  return found;
}

/** Run an allocator step again while the refcount structures move under it (-EAGAIN). */
async function retrying<T>(fn: () => Promise<T>): Promise<T> {
  for (;;) {
    try {
      return await fn();
    } catch (e) {
      if (e instanceof Qcow2Again) continue;
      throw e;
    }
  }
}

/** Allocate `size` bytes of whole clusters, first fit from the cursor (qcow2_alloc_clusters). */
export async function qcow2AllocClusters(s: BDRVQcow2State, size: number): Promise<number> {
  const file = qcow2File(s);
  // Once per allocating write: an unwatched event would only cost an await.
  if (file.debugWatched) await file.debugEvent('cluster_alloc');
  for (;;) {
    const offset = await allocClustersNoref(s, size);
    try {
      await updateRefcount(s, offset, size, 1, false, 'never');
      return offset;
    } catch (e) {
      // Again: updateRefcount moved the cursor back to the run's start.
      if (!(e instanceof Qcow2Again)) throw e;
    }
  }
}

/**
 * Allocate up to `n` clusters exactly at `offset` (as many as are free there); returns how
 * many (qcow2_alloc_clusters_at).
 */
export async function qcow2AllocClustersAt(s: BDRVQcow2State, offset: number, n: number): Promise<number> {
  if (n === 0) return 0;
  return retrying(async () => {
    let i = 0;
    for (; i < n; i++) if ((await qcow2GetRefcount(s, offset / s.clusterSize + i)) !== 0) break;
    forgetPackingIn(s, offset, i * s.clusterSize);
    await qcow2SyncBeforeReuse(s, offset / s.clusterSize, i);
    await updateRefcount(s, offset, i * s.clusterSize, 1, false, 'never');
    return i;
  });
}

/**
 * Allocate `size` bytes for a compressed cluster, packed after the previous one
 * (qcow2_alloc_bytes).
 */
export async function qcow2AllocBytes(s: BDRVQcow2State, size: number): Promise<number> {
  await qcow2File(s).debugEvent('cluster_alloc_bytes');
  let offset = s.freeByteOffset;
  if (offset !== 0 && (await qcow2GetRefcount(s, Math.floor(offset / s.clusterSize))) >= s.refcountMax) offset = 0;
  let freeInCluster = s.clusterSize - offsetIntoCluster(s, offset);
  const result = await retrying(async () => {
    if (offset === 0 || freeInCluster < size) {
      const newCluster = await allocClustersNoref(s, s.clusterSize);
      if (offset === 0 || Math.ceil(offset / s.clusterSize) * s.clusterSize !== newCluster) {
        offset = newCluster;
        freeInCluster = s.clusterSize;
      } else {
        freeInCluster += s.clusterSize;
      }
    }
    try {
      await updateRefcount(s, offset, size, 1, false, 'never');
    } catch (e) {
      offset = 0;
      throw e;
    }
    return offset;
  });
  // The L2 entry pointing here must wait for the refcount increase.
  await s.l2Cache.setDependency(s.refcountCache);
  s.freeByteOffset = result + size;
  if (offsetIntoCluster(s, s.freeByteOffset) === 0) s.freeByteOffset = 0;
  return result;
}

export async function qcow2FreeClusters(s: BDRVQcow2State, offset: number, size: number, type: Qcow2DiscardType): Promise<void> {
  await qcow2File(s).debugEvent('cluster_free');
  try {
    await updateRefcount(s, offset, size, 1, true, type);
  } catch (e) {
    // Leaking is safe; QEMU prints and goes on as well.
    qcow2Trace(s, 'qcow2FreeClustersFailed', { offset, size, error: e });
  }
}

/** Drop the reference an L2 entry holds, whatever its type (qcow2_free_any_cluster). */
export async function qcow2FreeAnyCluster(s: BDRVQcow2State, entry: bigint, type: Qcow2DiscardType): Promise<void> {
  if (qcow2HasDataFile(s)) return qcow2FreeDataCluster(s, entry, type);
  switch (clusterType(entry, s.header.version >= 3)) {
    case 'compressed': {
      const c = decodeCompressed(entry, s.compressed);
      await qcow2FreeClusters(s, c.offset & ~511, c.sectors * 512, type);
      return;
    }
    case 'normal':
    case 'zero-alloc': {
      const off = Number(entry & L2E_OFFSET_MASK);
      if (off % s.clusterSize !== 0) {
        qcow2SignalCorruption(s, false, `Cannot free unaligned cluster ${printfHex(off)}`);
        return;
      }
      await qcow2FreeClusters(s, off, s.clusterSize, type);
      return;
    }
    default:
      return;
  }
}
