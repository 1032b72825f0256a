/**
 * The write half of the request path: writes (allocate with qcow2AllocHostOffset, write data
 * and COW (cow.ts), link the L2 entries) and compressed writes. Reads are in read.ts.
 *
 * Locking: planning and every metadata change happen under s.lock; data I/O runs without it
 * (qcow2_co_pwritev_task). A write maps one host-contiguous piece under the lock (allocating
 * what it needs), registers it in flight (inflight.ts), writes data and COW unlocked, and
 * takes the lock again only to link new clusters into L2. Rewrites of clusters we own
 * (COPIED) change no metadata at all.
 */
import { BlockError } from '../../block/errors.js';
import type { IOVector } from '../../block/iovec.js';
import { qcow2AllocHostOffset, qcow2LinkL2 } from './alloc.js';
import { qcow2AllocNow, qcow2LinkL2Now } from './alloc-now.js';
import { handleAllocSpace, mayZeroCow, mergeCow, needsCow, qcow2PerformCow } from './cow.js';
import { type Qcow2InFlight, qcow2InFlightBegin, qcow2InFlightEnd, qcow2WaitInFlight } from './inflight.js';
import { qcow2GetClusterTable, getL2Entry, setL2Bitmap, setL2Entry } from './cluster.js';
import { qcow2CheckNotCorrupt, qcow2PreWriteOverlapCheck } from './corrupt.js';
import { qcow2DataNode, qcow2HasDataFile, qcow2PreWriteDataCheck } from './data-file.js';
import { qcow2RewriteNow } from './fast.js';
import { L2E_OFFSET_MASK, encodeCompressed } from './entries.js';
import { qcow2AllocBytes, qcow2FreeClusters } from './refcount.js';
import { type BDRVQcow2State, qcow2File } from './state.js';

export type Qcow2Mapped = Awaited<ReturnType<typeof qcow2AllocHostOffset>>;


/**
 * A mapped piece goes in flight: from here until its end, writes that would allocate the same
 * clusters wait for it, zero and discard there wait for it. Called with s.lock held, or in
 * the same synchronous step as the mapping. A refused overlap check throws: clusters
 * allocated for a piece that never got in flight are linked nowhere, a leak at worst, as
 * QEMU's; the request fails.
 */
export function qcow2MappedInFlight(s: BDRVQcow2State, offset: number, a: Qcow2Mapped): { a: Qcow2Mapped; flight: Qcow2InFlight } {
  if (a.bytes === 0) throw new BlockError('EIO', 'qcow2: no progress allocating clusters', { op: 'write', offset });
  qcow2PreWriteDataCheck(s, a.hostOffset, a.bytes);
  return { a, flight: qcow2InFlightBegin(s, offset, a.bytes, a.metas.length > 0) };
}

/** Map one piece under s.lock, allocating what it needs (the ordinary path). */
async function mapLocked(s: BDRVQcow2State, offset: number, bytes: number): Promise<{ a: Qcow2Mapped; flight: Qcow2InFlight }> {
  await s.lock.lock();
  try {
    qcow2CheckNotCorrupt(s, 'write');
    return qcow2MappedInFlight(s, offset, await qcow2AllocHostOffset(s, offset, bytes));
  } finally {
    s.lock.unlock();
  }
}

/**
 * Write one host-contiguous piece of a guest write at `offset` (at most `bytes`, data from
 * qiov at qiovOffset); returns how many bytes it covered (qcow2_co_pwritev_task).
 */
async function writePiece(s: BDRVQcow2State, offset: number, bytes: number, qiov: IOVector, qiovOffset: number, onAllocated?: () => void): Promise<number> {
  // Unallocated clusters of a cached table are mapped at once (alloc-now.ts), as under the
  // lock below when nothing needs loading.
  const now = qcow2AllocNow(s, offset, bytes);
  const { a, flight } = now !== null ? qcow2MappedInFlight(s, offset, now) : await mapLocked(s, offset, bytes);
  // The last piece is mapped: its clusters, tables and refcounts are handed out, and linking
  // its entries allocates nothing. A later write may map now and still come after us.
  if (a.bytes === bytes) onAllocated?.();
  return qcow2WriteMapped(s, offset, a, flight, qiov.slice(qiovOffset, a.bytes));
}

/** The rest of writePiece once the piece is mapped and in flight: data, COW, then L2. */
export async function qcow2WriteMapped(s: BDRVQcow2State, offset: number, a: Qcow2Mapped, flight: Qcow2InFlight, data: IOVector): Promise<number> {
  const file = qcow2DataNode(s);
  let failure: { error: unknown } | null = null;
  try {
    // Zeroing whole new clusters beats copying zeros; then the data, alone or framed by its
    // COW; then the other COW areas. All of it before any L2 entry points at the clusters.
    const cow = a.metas.some(needsCow);
    // The data may go with the zeroing of its cluster (one request to the file).
    const written = cow && a.metas.some((m) => mayZeroCow(s, m)) && (await handleAllocSpace(s, a.metas, a.hostOffset, data));
    const merged = cow && !written ? mergeCow(s, offset, a.bytes, a.metas) : null;
    if (!merged && !written) {
      if (file.debugWatched) await file.debugEvent('write_aio');
      await file.pwritev(a.hostOffset, data);
    }
    for (const m of a.metas) if (needsCow(m)) await qcow2PerformCow(s, m, m === merged ? data : null, false);
  } catch (e) {
    failure = { error: e };
  }
  return qcow2FinishPiece(s, a, flight, failure);
}

/**
 * A piece's data and COW are written (or `failure` says why not): link its allocations into
 * L2, or give their clusters back, and end it in flight; returns the bytes it covered.
 */
export async function qcow2FinishPiece(s: BDRVQcow2State, a: Qcow2Mapped, flight: Qcow2InFlight, failure: { error: unknown } | null): Promise<number> {
  if (a.metas.length === 0) {
    qcow2InFlightEnd(s, flight);
    if (failure) throw failure.error;
    return a.bytes;
  }
  // Data and COW are written: the entries now, when that needs no wait (the same entries and
  // cache dependencies as qcow2LinkL2 below).
  if (failure === null && qcow2LinkL2Now(s, a.metas)) {
    qcow2InFlightEnd(s, flight);
    return a.bytes;
  }

  await s.lock.lock();
  let linked = 0;
  try {
    if (failure) throw failure.error;
    // Per allocation, its L2 entries now that data and COW are written
    // (qcow2_alloc_cluster_link_l2; the cache orders them after a file flush).
    for (const m of a.metas) {
      await qcow2LinkL2(s, m);
      linked++;
    }
  } catch (e) {
    // Nothing points at the clusters of the allocations not linked: give them back
    // (qcow2_alloc_cluster_abort). Clusters of a data file were never counted: nothing to give.
    const counted = !qcow2HasDataFile(s);
    for (const m of a.metas.slice(linked)) {
      if (counted && !m.keepOld) await qcow2FreeClusters(s, m.allocOffset, m.nbClusters * s.clusterSize, 'never');
    }
    throw e;
  } finally {
    qcow2InFlightEnd(s, flight);
    s.lock.unlock();
  }
  return a.bytes;
}

/**
 * A guest write: the one place every guest write to a qcow2 image passes (data and the zero
 * buffers of the write-zeroes fallback alike).
 */
export async function qcow2CoPwritev(s: BDRVQcow2State, offset: number, bytes: number, qiov: IOVector, onAllocated?: () => void): Promise<void> {
  try {
    const now = qcow2RewriteNow(s, offset, bytes);
    if (now !== null) {
      // A rewrite of clusters we own allocates nothing.
      onAllocated?.();
      // Mapped and in flight already: only the data write is left (debug events unwatched).
      try {
        await qcow2File(s).pwritev(now.hostOffset, qiov.size === bytes ? qiov : qiov.slice(0, bytes));
      } finally {
        qcow2InFlightEnd(s, now.flight);
      }
      return;
    }
    for (let done = 0; done < bytes; ) done += await writePiece(s, offset + done, bytes - done, qiov, done, onAllocated);
  } finally {
    if (s.corruptWrite) await s.corruptWrite;
  }
}

/**
 * Write one compressed cluster (qcow2_co_pwritev_compressed_task): whole clusters only (the
 * last may be short at the image end), into an unallocated or zero-plain entry.
 */
export async function qcow2CoPwritevCompressed(s: BDRVQcow2State, offset: number, bytes: number, qiov: IOVector): Promise<void> {
  const cs = s.clusterSize;
  const size = s.header.size;
  if (offset % cs !== 0 || (bytes !== cs && offset + bytes !== size) || bytes > cs) {
    throw new BlockError('EINVAL', undefined, { op: 'write_compressed', offset });
  }
  // Clusters may compress at once (a codec off the main thread), but they take their host
  // bytes in the order they came: a convert -c writes in guest order and qemu-img's image
  // packs the clusters in that order. The turn passes on once this one holds s.lock (the
  // next then queues behind it), or, written uncompressed, once it is done.
  const prevTurn = s.compressedTurn;
  let passTurn!: () => void;
  s.compressedTurn = new Promise<void>((resolve) => {
    passTurn = resolve;
  });
  try {
    const src = new Uint8Array(cs);
    qiov.copyTo(src, 0, bytes);
    const out = await s.codec.compress(s.header.compressionType, src, cs - 1);
    await prevTurn;
    if (!out) {
      // Incompressible: an ordinary allocating write of the cluster.
      await qcow2CoPwritev(s, offset, bytes, qiov);
      return;
    }
    await s.lock.lock();
    passTurn();
    await writeCompressedLocked(s, offset, bytes, out);
  } finally {
    passTurn();
  }
}

/** The locked half of a compressed write: place `out` in the file, then link it into L2. */
async function writeCompressedLocked(s: BDRVQcow2State, offset: number, bytes: number, out: Uint8Array): Promise<void> {
  try {
    // The entry must not be changing under a write in flight (inflight.ts).
    await qcow2WaitInFlight(s, offset, bytes);
    qcow2CheckNotCorrupt(s, 'write');
    const { table, l2Index } = await qcow2GetClusterTable(s, offset);
    try {
      // Compression never overwrites: only a cluster without a host offset (unallocated or
      // plain zero; with extended L2, whatever its subclusters read as) takes one.
      if ((getL2Entry(s, table.data, l2Index) & L2E_OFFSET_MASK) !== 0n) throw new BlockError('EIO', undefined, { op: 'write_compressed', offset });
      const host = await qcow2AllocBytes(s, out.length);
      qcow2PreWriteOverlapCheck(s, 0, host, out.length);
      const file = qcow2File(s);
      await file.debugEvent('write_compressed');
      await file.pwrite(host, out);
      await file.debugEvent('l2_update_compressed');
      // The refcount increase is ordered before this entry by qcow2AllocBytes' dependency;
      // the compressed bytes must be durable first as well.
      s.l2Cache.dependOnFlush();
      s.l2Cache.markDirty(table);
      setL2Entry(s, table.data, l2Index, encodeCompressed(host, out.length, s.compressed));
      // A compressed cluster has no subclusters: its bitmap is 0.
      if (s.extendedL2) setL2Bitmap(s, table.data, l2Index, 0n);
    } finally {
      s.l2Cache.put(table);
    }
  } finally {
    s.lock.unlock();
    if (s.corruptWrite) await s.corruptWrite;
  }
}
