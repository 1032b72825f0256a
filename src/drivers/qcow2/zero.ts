/**
 * Write-zeroes and discard (QEMU's qcow2_co_pwrite_zeroes, qcow2_subcluster_zeroize,
 * zero_in_l2_slice, qcow2_co_pdiscard, discard_in_l2_slice).
 *
 * Both work on whole clusters by changing L2 entries: zero flag (v3) or unallocated. Pieces
 * of a cluster are split off first, as QEMU's generic layer does at the cluster alignment:
 * zeroing one is done natively only if the rest of its cluster already reads as zeros,
 * otherwise by writing a zero buffer; discarding one is ignored.
 *
 * Order within a table: the L2 entry changes first, then the refcount of a released cluster
 * drops (updateRefcount makes the refcount cache depend on the L2 cache).
 */
import type { WriteZeroesFlags } from '../../block/driver.js';
import { BlockError } from '../../block/errors.js';
import { IOVector } from '../../block/iovec.js';
import { getL2Entry, qcow2GetClusterTable, qcow2GetHostOffset, qcow2IsZero, setL2Entry } from './cluster.js';
import { qcow2CheckNotCorrupt } from './corrupt.js';
import { clusterType, QCOW_OFLAG_ZERO } from './entries.js';
import { qcow2WaitInFlight } from './inflight.js';
import { qcow2CoPwritev } from './io.js';
import { type Qcow2DiscardType, qcow2FreeAnyCluster } from './refcount.js';
import type { BDRVQcow2State } from './state.js';
import { qcow2DataFileIsRaw, qcow2DataNode, qcow2HasDataFile } from './data-file.js';

function isAllocatedType(t: string): boolean {
  return t === 'compressed' || t === 'normal' || t === 'zero-alloc';
}

/**
 * Rewrite the L2 entries of up to nbClusters clusters from offset, within one L2 table;
 * returns how many were handled. update gives each old entry's replacement and whether its
 * cluster is released; released clusters lose their reference only after the table is back
 * in the cache, so the L2 change is ordered before the refcount drop.
 */
async function updateL2Slice(
  s: BDRVQcow2State,
  offset: number,
  nbClusters: number,
  type: Qcow2DiscardType,
  update: (old: bigint) => { next: bigint; release: boolean },
): Promise<number> {
  const { table, l2Index } = await qcow2GetClusterTable(s, offset);
  const n = Math.min(nbClusters, s.l2Size - l2Index);
  const released: bigint[] = [];
  try {
    for (let i = 0; i < n; i++) {
      const old = getL2Entry(s, table.data, l2Index + i);
      const { next, release } = update(old);
      if (next === old) continue;
      s.l2Cache.markDirty(table);
      setL2Entry(s, table.data, l2Index + i, next);
      if (release) released.push(old);
    }
  } finally {
    s.l2Cache.put(table);
  }
  for (const e of released) await qcow2FreeAnyCluster(s, e, type);
  return n;
}

/** Zero or release whole clusters of one L2 table (zero_in_l2_slice). */
function zeroInL2Slice(s: BDRVQcow2State, offset: number, nbClusters: number, mayUnmap: boolean): Promise<number> {
  return updateL2Slice(s, offset, nbClusters, 'request', (old) => {
    const t = clusterType(old, true, qcow2HasDataFile(s));
    const unmap = t === 'compressed' || (mayUnmap && isAllocatedType(t));
    return { next: (unmap ? 0n : old) | QCOW_OFLAG_ZERO, release: unmap };
  });
}

/** Discard whole clusters of one L2 table (discard_in_l2_slice). */
function discardInL2Slice(s: BDRVQcow2State, offset: number, nbClusters: number, type: Qcow2DiscardType, full: boolean): Promise<number> {
  return updateL2Slice(s, offset, nbClusters, type, (old) => {
    const t = clusterType(old, s.header.version >= 3, qcow2HasDataFile(s));
    let next = old;
    if (full) next = 0n;
    else if (s.bs.backing || isAllocatedType(t)) next = s.header.version >= 3 ? QCOW_OFLAG_ZERO : 0n;
    return { next, release: true };
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

/** Zero cluster-aligned [offset, offset+bytes) (qcow2_subcluster_zeroize); s.lock held. */
async function qcow2ClusterZeroize(s: BDRVQcow2State, offset: number, bytes: number, mayUnmap: boolean): Promise<void> {
  // A raw data file must read as the disk without the metadata: zeroed there first.
  if (qcow2DataFileIsRaw(s)) await qcow2DataNode(s).writeZeroes(offset, bytes, { mayUnmap });
  if (s.header.version < 3) {
    // v2 has no zero flag; without a backing file an unallocated cluster reads as zeros.
    if (!s.bs.backing) return qcow2ClusterDiscard(s, offset, bytes, 'request', false);
    throw new BlockError('ENOTSUP', undefined, { op: 'write_zeroes', offset });
  }
  let nb = Math.ceil(bytes / s.clusterSize);
  let pos = offset;
  while (nb > 0) {
    const done = await zeroInL2Slice(s, pos, nb, mayUnmap);
    nb -= done;
    pos += done * s.clusterSize;
  }
}

/** One piece inside a single cluster (or whole clusters); ENOTSUP asks for the fallback. */
async function zeroPiece(s: BDRVQcow2State, offset: number, bytes: number, mayUnmap: boolean): Promise<void> {
  const cs = s.clusterSize;
  const head = offset % cs;
  const end = offset + bytes;
  let tail = Math.ceil(end / cs) * cs - end;
  if (end === s.header.size) tail = 0;
  await s.lock.run(async () => {
    // Entries change here: first let the writes in flight through them finish (inflight.ts).
    await qcow2WaitInFlight(s, offset, bytes);
    qcow2CheckNotCorrupt(s, 'write_zeroes');
    if (s.extendedL2) throw new BlockError('ENOTSUP', undefined, { op: 'write_zeroes', offset });
    let start = offset;
    let len = bytes;
    if (head !== 0 || tail !== 0) {
      // Only when the rest of the cluster already reads as zeros can it all become a zero
      // cluster; and only when nothing is allocated there (or it already is zero).
      if (!((await qcow2IsZero(s, offset - head, head)) && (await qcow2IsZero(s, end, tail)))) {
        throw new BlockError('ENOTSUP', undefined, { op: 'write_zeroes', offset });
      }
      start = offset - head;
      len = Math.min(cs, s.header.size - start);
      const run = await qcow2GetHostOffset(s, start, len);
      if (run.kind !== 'unallocated' && run.kind !== 'zero') throw new BlockError('ENOTSUP', undefined, { op: 'write_zeroes', offset });
    }
    await qcow2ClusterZeroize(s, start, len, mayUnmap);
  });
}

export async function qcow2CoWriteZeroes(s: BDRVQcow2State, offset: number, bytes: number, flags: WriteZeroesFlags): Promise<void> {
  const cs = s.clusterSize;
  let pos = offset;
  const end = offset + bytes;
  while (pos < end) {
    // Split at cluster boundaries the way QEMU's generic layer does for our alignment.
    const pieceEnd = pos % cs !== 0 || end - pos < cs ? Math.min(end, Math.floor(pos / cs) * cs + cs) : Math.floor(end / cs) * cs;
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
    if (s.extendedL2) throw new BlockError('ENOTSUP', undefined, { op: 'discard', offset });
    await qcow2ClusterDiscard(s, start, end - start, 'request', false);
  });
}
