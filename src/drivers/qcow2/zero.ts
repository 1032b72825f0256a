/**
 * Write-zeroes and discard (QEMU's qcow2_co_pwrite_zeroes, qcow2_subcluster_zeroize,
 * zero_in_l2_slice, zero_l2_subclusters, qcow2_co_pdiscard, discard_in_l2_slice).
 *
 * Both work by changing L2 entries: zero flag (v3) or unallocated; with extended L2 entries,
 * write-zeroes works per subcluster (zero bits set, allocation bits cleared) and discard per
 * cluster (entry 0, every subcluster zero). Pieces of a subcluster (without extended L2: of
 * a cluster) are split off first, as QEMU's generic layer does at that alignment: zeroing
 * one is done natively only if the rest of it already reads as zeros, otherwise by writing a
 * zero buffer; pieces of a cluster are ignored by discard.
 *
 * Order within a table: the L2 entry changes first, then the refcount of a released cluster
 * drops (updateRefcount makes the refcount cache depend on the L2 cache).
 */
import type { WriteZeroesFlags } from '../../block/driver.js';
import { BlockError } from '../../block/errors.js';
import { IOVector } from '../../block/iovec.js';
import { getL2Bitmap, getL2Entry, qcow2GetClusterTable, qcow2GetHostOffset, qcow2IsZero, setL2Bitmap, setL2Entry } from './cluster.js';
import { qcow2CheckNotCorrupt } from './corrupt.js';
import { QCOW_L2_BITMAP_ALL_ZEROES, QCOW_OFLAG_ZERO, subAllocRange, subZeroRange } from './entries.js';
import { qcow2WaitInFlight } from './inflight.js';
import { qcow2CoPwritev } from './io.js';
import { type Qcow2DiscardType, qcow2FreeAnyCluster } from './refcount.js';
import type { BDRVQcow2State } from './state.js';
import { qcow2DataFileIsRaw, qcow2DataNode } from './data-file.js';
import { l2ClusterType, scIndex } from './subcluster.js';

function isAllocatedType(t: string): boolean {
  return t === 'compressed' || t === 'normal' || t === 'zero-alloc';
}

/**
 * Rewrite the L2 entries of up to nbClusters clusters from offset, within one L2 table;
 * returns how many were handled. update gives each old entry's (and bitmap's) replacement and
 * whether its cluster is released; released clusters lose their reference only after the
 * table is back in the cache, so the L2 change is ordered before the refcount drop.
 */
async function updateL2Slice(
  s: BDRVQcow2State,
  offset: number,
  nbClusters: number,
  type: Qcow2DiscardType,
  update: (old: bigint, oldBitmap: bigint) => { next: bigint; nextBitmap: bigint; release: boolean },
): Promise<number> {
  const { table, l2Index } = await qcow2GetClusterTable(s, offset);
  const n = Math.min(nbClusters, s.l2Size - l2Index);
  const released: bigint[] = [];
  try {
    for (let i = 0; i < n; i++) {
      const old = getL2Entry(s, table.data, l2Index + i);
      const oldBitmap = getL2Bitmap(s, table.data, l2Index + i);
      const { next, nextBitmap, release } = update(old, oldBitmap);
      if (next === old && nextBitmap === oldBitmap) continue;
      s.l2Cache.markDirty(table);
      setL2Entry(s, table.data, l2Index + i, next);
      if (s.extendedL2) setL2Bitmap(s, table.data, l2Index + i, nextBitmap);
      if (release) released.push(old);
    }
  } finally {
    s.l2Cache.put(table);
  }
  for (const e of released) await qcow2FreeAnyCluster(s, e, type);
  return n;
}

/**
 * Zero or release whole clusters of one L2 table (zero_in_l2_slice): the zero flag, or with
 * extended L2 every subcluster's zero bit (a kept cluster stays allocated, unused).
 */
function zeroInL2Slice(s: BDRVQcow2State, offset: number, nbClusters: number, mayUnmap: boolean): Promise<number> {
  return updateL2Slice(s, offset, nbClusters, 'request', (old, oldBitmap) => {
    const t = l2ClusterType(s, old);
    const unmap = t === 'compressed' || (mayUnmap && isAllocatedType(t));
    const kept = unmap ? 0n : old;
    if (s.extendedL2) return { next: kept, nextBitmap: QCOW_L2_BITMAP_ALL_ZEROES, release: unmap };
    return { next: kept | QCOW_OFLAG_ZERO, nextBitmap: oldBitmap, release: unmap };
  });
}

/** Discard whole clusters of one L2 table (discard_in_l2_slice). */
function discardInL2Slice(s: BDRVQcow2State, offset: number, nbClusters: number, type: Qcow2DiscardType, full: boolean): Promise<number> {
  return updateL2Slice(s, offset, nbClusters, type, (old, oldBitmap) => {
    const t = l2ClusterType(s, old);
    let next = old;
    let nextBitmap = oldBitmap;
    if (full) {
      next = 0n;
      nextBitmap = 0n;
    } else if (s.bs.backing || isAllocatedType(t)) {
      // Reads as zeros afterwards (v3), rather than as the backing file.
      if (s.extendedL2) {
        next = 0n;
        nextBitmap = QCOW_L2_BITMAP_ALL_ZEROES;
      } else {
        next = s.header.version >= 3 ? QCOW_OFLAG_ZERO : 0n;
      }
    }
    return { next, nextBitmap, release: true };
  });
}

/** Discard cluster-aligned [offset, offset+bytes) (qcow2_cluster_discard); s.lock held. */
export async function qcow2ClusterDiscard(s: BDRVQcow2State, offset: number, bytes: number, type: Qcow2DiscardType, full: boolean): Promise<void> {
  let nb = Math.ceil(bytes / s.clusterSize);
  let pos = offset;
  while (nb > 0) {
    const done = await discardInL2Slice(s, pos, nb, type, full);
    nb -= done;
    pos += done * s.clusterSize;
  }
}

/**
 * Set the zero bits of nb subclusters from `offset`, inside one cluster, and clear their
 * allocation bits (zero_l2_subclusters). A compressed cluster cannot be zeroed in part:
 * ENOTSUP, and the caller writes zeros instead.
 */
async function zeroL2Subclusters(s: BDRVQcow2State, offset: number, nb: number): Promise<void> {
  // Without extended L2 entries there is no bitmap: a piece of a cluster never gets here.
  if (!s.extendedL2) throw new BlockError('EINVAL', 'qcow2: subcluster zeroing without extended L2 entries', { op: 'write_zeroes', offset });
  const sc = scIndex(s, offset);
  const { table, l2Index } = await qcow2GetClusterTable(s, offset);
  try {
    if (l2ClusterType(s, getL2Entry(s, table.data, l2Index)) === 'compressed') throw new BlockError('ENOTSUP', undefined, { op: 'write_zeroes', offset });
    const old = getL2Bitmap(s, table.data, l2Index);
    const next = (old | subZeroRange(sc, sc + nb)) & ~subAllocRange(sc, sc + nb);
    if (next !== old) {
      setL2Bitmap(s, table.data, l2Index, next);
      s.l2Cache.markDirty(table);
    }
  } finally {
    s.l2Cache.put(table);
  }
}

/**
 * Zero subcluster-aligned [offset, offset+bytes) (the end may be the image end)
 * (qcow2_subcluster_zeroize); s.lock held. Subclusters before the first and after the last
 * whole cluster get their zero bits; whole clusters become zero clusters.
 */
async function qcow2SubclusterZeroize(s: BDRVQcow2State, offset: number, bytes: number, mayUnmap: boolean): Promise<void> {
  // A raw data file must read as the disk without the metadata: zeroed there first, in
  // whole (subclusters included), as QEMU does before it looks at the version.
  if (qcow2DataFileIsRaw(s)) await qcow2DataNode(s).writeZeroes(offset, bytes, { mayUnmap });
  if (s.header.version < 3) {
    // v2 has no zero flag; without a backing file an unallocated cluster reads as zeros.
    if (!s.bs.backing) return qcow2ClusterDiscard(s, offset, bytes, 'request', false);
    throw new BlockError('ENOTSUP', undefined, { op: 'write_zeroes', offset });
  }
  const cs = s.clusterSize;
  let end = offset + bytes;
  const head = Math.min(end, Math.ceil(offset / cs) * cs) - offset;
  let pos = offset + head;
  const tail = end >= s.header.size ? 0 : end - Math.max(pos, end - (end % cs));
  end -= tail;
  if (head > 0) await zeroL2Subclusters(s, offset, Math.ceil(head / s.subclusterSize));
  let nb = Math.ceil((end - pos) / cs);
  while (nb > 0) {
    const done = await zeroInL2Slice(s, pos, nb, mayUnmap);
    nb -= done;
    pos += done * cs;
  }
  if (tail > 0) await zeroL2Subclusters(s, end, Math.ceil(tail / s.subclusterSize));
}

/**
 * One piece inside a single subcluster (or whole subclusters); ENOTSUP asks for the fallback.
 * Without extended L2 entries a subcluster is the cluster.
 */
async function zeroPiece(s: BDRVQcow2State, offset: number, bytes: number, mayUnmap: boolean): Promise<void> {
  const sc = s.subclusterSize;
  const head = offset % sc;
  const end = offset + bytes;
  await s.lock.run(async () => {
    // Entries change here: first let the writes in flight through them finish (inflight.ts).
    await qcow2WaitInFlight(s, offset, bytes);
    qcow2CheckNotCorrupt(s, 'write_zeroes');
    // The image end is read under s.lock: a truncate running meanwhile may have moved it,
    // and a piece that ended the image before may now end inside a (sub)cluster.
    const tail = end === s.header.size ? 0 : Math.ceil(end / sc) * sc - end;
    let start = offset;
    let len = bytes;
    if (head !== 0 || tail !== 0) {
      // Only when the rest of the subcluster already reads as zeros can it all become zero;
      // and only when it holds no data there (or already is zero).
      if (!((await qcow2IsZero(s, offset - head, head)) && (await qcow2IsZero(s, end, tail)))) {
        throw new BlockError('ENOTSUP', undefined, { op: 'write_zeroes', offset });
      }
      start = offset - head;
      len = Math.min(sc, s.header.size - start);
      const run = await qcow2GetHostOffset(s, start, len);
      if (run.kind !== 'unallocated' && run.kind !== 'zero') throw new BlockError('ENOTSUP', undefined, { op: 'write_zeroes', offset });
    }
    await qcow2SubclusterZeroize(s, start, len, mayUnmap);
  });
}

export async function qcow2CoWriteZeroes(s: BDRVQcow2State, offset: number, bytes: number, flags: WriteZeroesFlags): Promise<void> {
  // QEMU's write-zeroes alignment for qcow2 is the subcluster.
  const sc = s.subclusterSize;
  let pos = offset;
  const end = offset + bytes;
  while (pos < end) {
    // Split at subcluster boundaries the way QEMU's generic layer does for our alignment.
    const pieceEnd = pos % sc !== 0 || end - pos < sc ? Math.min(end, Math.floor(pos / sc) * sc + sc) : Math.floor(end / sc) * sc;
    const n = pieceEnd - pos;
    try {
      await zeroPiece(s, pos, n, flags.mayUnmap === true);
    } catch (e) {
      if (!(e instanceof BlockError) || e.code !== 'ENOTSUP' || flags.noFallback) throw e;
      // The generic fallback: an ordinary write of zeros.
      await qcow2CoPwritev(s, pos, n, IOVector.alloc(n));
    }
    pos = pieceEnd;
  }
}

export async function qcow2CoDiscard(s: BDRVQcow2State, offset: number, bytes: number): Promise<void> {
  const cs = s.clusterSize;
  const start = Math.ceil(offset / cs) * cs;
  let end = Math.floor((offset + bytes) / cs) * cs;
  // The partial cluster at the end of an image whose size is not cluster aligned counts whole.
  if (offset + bytes === s.header.size && end < offset + bytes && end >= start) end = offset + bytes;
  if (end <= start) return;
  if (s.header.version < 3 && s.bs.backing) return;
  await s.lock.run(async () => {
    // Clusters are freed here: first let the writes in flight to them finish (inflight.ts).
    await qcow2WaitInFlight(s, start, end - start);
    qcow2CheckNotCorrupt(s, 'discard');
    await qcow2ClusterDiscard(s, start, end - start, 'request', false);
  });
}
