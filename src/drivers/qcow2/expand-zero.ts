/**
 * Zero clusters turned into something v2 can say, for a downgrade to compat=0.10 (QEMU's
 * qcow2_expand_zero_clusters and expand_zero_clusters_in_l1): v2 has no zero flag. The active
 * L1 is visited first, through the L2 cache; then every snapshot's L1, its tables read from
 * and written to the file directly.
 *
 * Per zero entry: without a backing file a plain zero cluster just becomes unallocated;
 * otherwise the entry gets a cluster written with zeros (its own one, or the one it kept).
 * An L2 table shared by k L1 tables (refcount k) gives a new cluster refcount k: each of
 * them references it.
 *
 * Where we differ from QEMU 7.2: a zero entry that kept its cluster while that cluster is
 * also another entry's data (a snapshot taken before the zero write) gets a new cluster.
 * QEMU zeroes the shared cluster in place, which changes the snapshot's data, and marks the
 * entry COPIED with a refcount of 2 (measured: `qemu-img check` then finds an error).
 */
import { BlockError } from '../../block/errors.js';
import { getL2Entry, l2Load, setL2Entry } from './cluster.js';
import { QCOW2_OL_ACTIVE_L2, QCOW2_OL_INACTIVE_L2, qcow2PreWriteOverlapCheck, qcow2SignalCorruption } from './corrupt.js';
import { clusterType, L1E_OFFSET_MASK, L2E_OFFSET_MASK, QCOW_OFLAG_COPIED } from './entries.js';
import { qcow2AllocClusters, qcow2FreeClusters, qcow2GetRefcount, updateRefcount } from './refcount.js';
import { validateSnapshotL1 } from './snapshot.js';
import { qcow2FlushLocked, qcow2ReadL1 } from './snapshot-refcount.js';
import { qcow2ReadSnapshots } from './snapshot-table.js';
import { type BDRVQcow2State, offsetIntoCluster, qcow2File } from './state.js';

const hex = (n: number): string => `0x${n.toString(16)}`;

/** An L2 table offset must be cluster aligned; otherwise the image is corrupt. */
function checkL2Offset(s: BDRVQcow2State, l2Offset: number, l1Index: number): void {
  if (offsetIntoCluster(s, l2Offset) === 0) return;
  qcow2SignalCorruption(s, true, `L2 table offset ${hex(l2Offset)} unaligned (L1 index: ${hex(l1Index)})`);
  throw new BlockError('EIO', undefined, { op: 'amend' });
}

/** One L2 table being expanded: where it is, how many L1 tables share it, its entries. */
interface L2Visit {
  l2Offset: number;
  l2Refcount: number;
  data: Uint8Array;
  /** Shared clusters entries stopped pointing at: they lose `l2Refcount` references once the table is on disk. */
  released: number[];
}

/**
 * Expand entry `j` of the table; true when the entry changed. A cluster allocated here is
 * counted (and written with zeros) before the entry names it; the caller orders the table
 * write after both.
 */
async function expandEntry(s: BDRVQcow2State, t: L2Visit, j: number): Promise<boolean> {
  const entry = getL2Entry(s, t.data, j);
  const type = clusterType(entry, true);
  if (type !== 'zero-plain' && type !== 'zero-alloc') return false;
  if (type === 'zero-plain' && s.bs.backing === null) {
    setL2Entry(s, t.data, j, 0n);
    return true;
  }
  let offset = Number(entry & L2E_OFFSET_MASK);
  const corrupt = (at: number): never => {
    qcow2SignalCorruption(s, true, `Cluster allocation offset ${hex(at)} unaligned (L2 offset: ${hex(t.l2Offset)}, L2 index: ${hex(j)})`);
    throw new BlockError('EIO', undefined, { op: 'amend' });
  };
  if (type === 'zero-alloc' && offsetIntoCluster(s, offset) !== 0) corrupt(offset);
  // A kept cluster with references beyond this entry's is someone else's data as well.
  const shared = type === 'zero-alloc' && (await qcow2GetRefcount(s, offset / s.clusterSize)) > t.l2Refcount ? offset : 0;
  const fresh = type === 'zero-plain' || shared !== 0;
  if (fresh) {
    offset = await qcow2AllocClusters(s, s.clusterSize);
    if (t.l2Refcount > 1) {
      try {
        await updateRefcount(s, offset, s.clusterSize, t.l2Refcount - 1, false, 'other');
      } catch (e) {
        await qcow2FreeClusters(s, offset, s.clusterSize, 'other');
        throw e;
      }
    }
  }
  try {
    qcow2PreWriteOverlapCheck(s, 0, offset, s.clusterSize);
    await qcow2File(s).writeZeroes(offset, s.clusterSize);
  } catch (e) {
    if (fresh) await updateRefcount(s, offset, s.clusterSize, t.l2Refcount, true, 'always');
    throw e;
  }
  setL2Entry(s, t.data, j, BigInt(offset) | (t.l2Refcount === 1 ? QCOW_OFLAG_COPIED : 0n));
  if (shared !== 0) t.released.push(shared);
  return true;
}

/** The active L1's tables, through the cache; the L2 cache waits for the counts and the zeros. */
async function expandActive(s: BDRVQcow2State, step: () => void): Promise<void> {
  for (let i = 0; i < s.l1Table.length; i++) {
    const l2Offset = Number(s.l1Table[i] & L1E_OFFSET_MASK);
    if (l2Offset !== 0) {
      checkL2Offset(s, l2Offset, i);
      const l2Refcount = await qcow2GetRefcount(s, l2Offset / s.clusterSize);
      const table = await l2Load(s, l2Offset);
      const t: L2Visit = { l2Offset, l2Refcount, data: table.data, released: [] };
      try {
        for (let j = 0; j < s.l2Size; j++) {
          if (!(await expandEntry(s, t, j))) continue;
          s.l2Cache.markDirty(table);
          await s.l2Cache.setDependency(s.refcountCache);
          s.l2Cache.dependOnFlush();
        }
      } finally {
        s.l2Cache.put(table);
      }
      // The decrease waits for the L2 cache (updateRefcount's dependency).
      for (const c of t.released) await updateRefcount(s, c, s.clusterSize, l2Refcount, true, 'other');
    }
    step();
  }
}

/** One snapshot's L1: each changed table written in place once its new clusters are durable. */
async function expandInactive(s: BDRVQcow2State, l1: BigUint64Array, step: () => void): Promise<void> {
  const file = qcow2File(s);
  for (let i = 0; i < l1.length; i++) {
    const l2Offset = Number(l1[i] & L1E_OFFSET_MASK);
    if (l2Offset !== 0) {
      checkL2Offset(s, l2Offset, i);
      const t: L2Visit = { l2Offset, l2Refcount: await qcow2GetRefcount(s, l2Offset / s.clusterSize), data: new Uint8Array(s.clusterSize), released: [] };
      await file.pread(l2Offset, t.data);
      let dirty = false;
      for (let j = 0; j < s.l2Size; j++) if (await expandEntry(s, t, j)) dirty = true;
      if (dirty) {
        // New clusters counted and their zeros on disk before the table names them (QEMU
        // writes the table without this flush: a crash could leave a count of 0 referenced).
        await qcow2FlushLocked(s);
        qcow2PreWriteOverlapCheck(s, QCOW2_OL_INACTIVE_L2 | QCOW2_OL_ACTIVE_L2, l2Offset, s.clusterSize);
        await file.pwrite(l2Offset, t.data);
        await file.flush();
      }
      // Only now may a shared cluster the table let go of lose those references.
      for (const c of t.released) await updateRefcount(s, c, s.clusterSize, t.l2Refcount, true, 'other');
    }
    step();
  }
}

/** qcow2_expand_zero_clusters: progress counts L1 entries over the active and every snapshot table. */
export async function qcow2ExpandZeroClusters(s: BDRVQcow2State, progress: (done: number, total: number) => void): Promise<void> {
  const snapshots = await qcow2ReadSnapshots(s);
  const total = s.l1Table.length + snapshots.reduce((n, sn) => n + sn.l1Size, 0);
  let visited = 0;
  const step = (): void => progress(++visited, total);
  await expandActive(s, step);
  if (snapshots.length === 0) return;
  // Snapshots' tables are read and written below the cache: the cache's changes go to disk
  // first (a table the active L1 shares is then read already expanded), and no cached copy
  // may outlive a direct write.
  await s.l2Cache.flush();
  s.l2Cache.clear();
  for (const sn of snapshots) {
    validateSnapshotL1(s, sn);
    await expandInactive(s, await qcow2ReadL1(s, sn.l1TableOffset, sn.l1Size), step);
  }
}
