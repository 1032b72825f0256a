/**
 * Resizing (QEMU's qcow2_co_truncate, qcow2_grow_l1_table, qcow2_shrink_l1_table and
 * preallocate_co).
 *
 * Growing the L1 table moves it: the new table is allocated (first fit) and written, then
 * the header switched to it with one synchronous 12-byte write, then the old table freed.
 * Shrinking first discards the cut-off clusters, then clears the L1 entries past the end,
 * then cuts the file after the last used cluster. The new size is written last (8 bytes at
 * offset 24), so a crash in between leaves an image of the old size with valid tables.
 */
import { BlockError } from '../../block/errors.js';
import { qcow2OverlapIndexChanged, qcow2PreWriteOverlapCheck, QCOW2_OL_ACTIVE_L1 } from './corrupt.js';
import { L1E_OFFSET_MASK, REFT_OFFSET_MASK } from './entries.js';
import { QCOW_MAX_L1_SIZE, sizeToL1 } from './header.js';
import { preallocateData, preallocateMetadata } from './prealloc.js';
import { qcow2AllocClusters, qcow2FreeClusters } from './refcount.js';
import { qcow2GetLastCluster } from './reftable.js';
import { type BDRVQcow2State, qcow2File } from './state.js';
import { encodeTable, L1_TABLE, qcow2SwitchTable } from './table-switch.js';
import { qcow2ClusterDiscard } from './zero.js';
import { qcow2WaitInFlight } from './inflight.js';
import { qcow2DataNode, qcow2HasDataFile } from './data-file.js';

/** Move the active L1 to a bigger table (qcow2_grow_l1_table). */
export async function qcow2GrowL1Table(s: BDRVQcow2State, minSize: number, exactSize: boolean): Promise<void> {
  if (minSize <= s.l1Table.length) return;
  if (minSize > Math.floor(0x7fffffff / 8)) throw new BlockError('EFBIG', undefined, { op: 'grow_l1' });
  let newSize = minSize;
  if (!exactSize) {
    newSize = Math.max(s.l1Table.length, 1);
    while (minSize > newSize) newSize = Math.ceil((newSize * 3) / 2);
  }
  if (newSize > QCOW_MAX_L1_SIZE / 8) throw new BlockError('EFBIG', undefined, { op: 'grow_l1' });
  const table = new BigUint64Array(newSize);
  table.set(s.l1Table);
  const file = qcow2File(s);
  await file.debugEvent('l1_grow_alloc_table');
  const newOffset = await qcow2AllocClusters(s, newSize * 8);
  // The table's refcount is on disk before the header can point at it.
  await s.refcountCache.flush();
  // Written and durable, then the header switched to it (l1_size and l1_table_offset at once).
  const old = { offset: s.l1TableOffset, bytes: s.l1Table.length * 8 };
  await qcow2SwitchTable(s, L1_TABLE, table, newOffset, [newSize, newOffset], old, () => {
    s.l1Table = table;
    s.l1TableOffset = newOffset;
  });
}

/** Clear the L1 entries from `maxSize` on and free their L2 tables (qcow2_shrink_l1_table). */
async function qcow2ShrinkL1Table(s: BDRVQcow2State, maxSize: number): Promise<void> {
  if (maxSize >= s.l1Table.length) return;
  const file = qcow2File(s);
  // The L2 tables that go must not be written back after the L1 stops pointing at them.
  await s.l2Cache.flush();
  const start = maxSize * 8;
  const len = (s.l1Table.length - maxSize) * 8;
  qcow2PreWriteOverlapCheck(s, QCOW2_OL_ACTIVE_L1, s.l1TableOffset + start, len);
  await file.debugEvent('l1_shrink_write_table');
  await file.pwrite(s.l1TableOffset + start, new Uint8Array(len));
  await file.flush();
  await file.debugEvent('l1_shrink_free_l2_clusters');
  for (let i = s.l1Table.length - 1; i >= maxSize; i--) {
    const off = Number(s.l1Table[i] & L1E_OFFSET_MASK);
    s.l1Table[i] = 0n;
    qcow2OverlapIndexChanged(s);
    if (off === 0) continue;
    s.l2Cache.discard(off);
    await qcow2FreeClusters(s, off, s.clusterSize, 'always');
  }
}

/**
 * Drop refcount blocks that count nothing but themselves (qcow2_shrink_reftable): the table
 * is rewritten without them first, then each one's own refcount is cleared and its cluster
 * punched, so the file can be cut after the last cluster in use.
 */
async function qcow2ShrinkReftable(s: BDRVQcow2State): Promise<void> {
  const n = s.refcountTable.length;
  const kept = new BigUint64Array(n);
  for (let i = 0; i < n; i++) {
    const off = Number(s.refcountTable[i] & REFT_OFFSET_MASK);
    if (off === 0) continue;
    const block = await s.refcountCache.get(off, 'refblock_load');
    let unused: boolean;
    const own = off / s.clusterSize;
    if (Math.floor(own / s.refcountBlockEntries) === i) {
      // The block counts itself: unused if that is all it counts.
      const idx = own % s.refcountBlockEntries;
      const rc = s.getRefcount(block.data, idx);
      s.setRefcount(block.data, idx, 0);
      unused = block.data.every((b) => b === 0);
      s.setRefcount(block.data, idx, rc);
    } else {
      unused = block.data.every((b) => b === 0);
    }
    s.refcountCache.put(block);
    kept[i] = unused ? 0n : s.refcountTable[i];
  }
  const file = qcow2File(s);
  // The table stops pointing at the blocks before their clusters are freed.
  await file.pwrite(s.refcountTableOffset, encodeTable(kept));
  await file.flush();
  const punched: number[] = [];
  for (let i = 0; i < n; i++) {
    if (s.refcountTable[i] === 0n || kept[i] !== 0n) continue;
    const off = Number(s.refcountTable[i] & REFT_OFFSET_MASK);
    const idx = Math.floor(off / s.clusterSize);
    const holder = Number(s.refcountTable[Math.floor(idx / s.refcountBlockEntries)] & REFT_OFFSET_MASK);
    if (holder !== 0) {
      const block = await s.refcountCache.get(holder, 'refblock_load');
      s.setRefcount(block.data, idx % s.refcountBlockEntries, 0);
      s.refcountCache.markDirty(block);
      s.refcountCache.put(block);
    }
    if (idx < s.freeClusterIndex) s.freeClusterIndex = idx;
    s.refcountCache.discard(off);
    punched.push(off);
    s.refcountTable[i] = 0n;
    qcow2OverlapIndexChanged(s);
  }
  for (const off of punched) {
    try {
      await file.discard(off, s.clusterSize);
    } catch {
      // Discard is advisory.
    }
  }
}

export async function qcow2Truncate(s: BDRVQcow2State, size: number, prealloc: string): Promise<void> {
  if (size % 512 !== 0) throw new BlockError('EINVAL', 'The new size must be a multiple of 512', { op: 'truncate', offset: size });
  if (prealloc !== 'off' && prealloc !== 'metadata' && prealloc !== 'falloc' && prealloc !== 'full') {
    throw new BlockError('ENOTSUP', `Unsupported preallocation mode '${prealloc}'`, { op: 'truncate', offset: size });
  }
  await s.lock.run(async () => {
    // A shrink frees clusters: no write may be in flight to them (inflight.ts).
    await qcow2WaitInFlight(s, 0, Number.POSITIVE_INFINITY);
    // v3 snapshots record their own disk size (applying one resizes back); v2 entries need
    // not, so a v2 image with snapshots keeps its size, as in QEMU.
    if (s.header.nbSnapshots > 0 && s.header.version < 3) throw new BlockError('ENOTSUP', "Can't resize a v2 image which has snapshots", { op: 'truncate' });
    const old = s.header.size;
    const newL1 = sizeToL1(size, s.clusterBits, s.extendedL2);
    if (size < old) {
      if (prealloc !== 'off') throw new BlockError('EINVAL', "Preallocation can't be used for shrinking an image", { op: 'truncate' });
      const from = Math.ceil(size / s.clusterSize) * s.clusterSize;
      if (old > from) await qcow2ClusterDiscard(s, from, old - from, 'always', true);
      await qcow2ShrinkL1Table(s, newL1);
      await qcow2ShrinkReftable(s);
      await s.l2Cache.flush();
      await s.refcountCache.flush();
      const file = qcow2File(s);
      const fileSize = await file.getLength();
      const last = await qcow2GetLastCluster(s, fileSize);
      if ((last + 1) * s.clusterSize < fileSize) await file.truncate((last + 1) * s.clusterSize);
    } else {
      await qcow2GrowL1Table(s, newL1, true);
    }
    if (qcow2HasDataFile(s)) {
      // The data file follows the size; preallocation is the metadata here, the data file's
      // own allocation is its protocol's.
      if (prealloc === 'off') await qcow2DataNode(s).truncate(size);
      else await preallocateMetadata(s, old, size, prealloc);
    } else if (prealloc === 'metadata') await preallocateMetadata(s, old, size);
    else if (prealloc === 'falloc' || prealloc === 'full') await preallocateData(s, old, size, prealloc);
    // The new size goes last: everything it exposes is in place.
    const buf = new Uint8Array(8);
    new DataView(buf.buffer).setBigUint64(0, BigInt(size));
    const file = qcow2File(s);
    await file.pwrite(24, buf);
    await file.flush();
    s.header.size = size;
  });
}
