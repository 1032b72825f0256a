/**
 * Refcounts of everything an L1 table reaches (QEMU's qcow2_update_snapshot_refcount), the
 * workhorse of snapshot create, apply and delete: +1, -1 or 0 on every L2 table and every data
 * or compressed cluster, with the COPIED flags recomputed from the resulting counts.
 * Callers hold s.lock.
 */
import { BlockError } from '../../block/errors.js';
import { getL2Entry, l2Load, setL2Entry } from './cluster.js';
import { qcow2SignalCorruption } from './corrupt.js';
import { L1E_OFFSET_MASK, L2E_OFFSET_MASK, QCOW_OFLAG_COPIED, clusterType, decodeCompressed } from './entries.js';
import { qcow2GetRefcount, updateRefcount } from './refcount.js';
import { decodeTable, encodeTable } from './table-switch.js';
import { type BDRVQcow2State, qcow2File, qcow2WriteCaches } from './state.js';

const hex = (n: number): string => `0x${n.toString(16)}`;

/** An L1 table's entries: the active one from memory, any other from the file. */
export async function qcow2ReadL1(s: BDRVQcow2State, l1Offset: number, l1Size: number, padTo = l1Size): Promise<BigUint64Array> {
  const raw = new Uint8Array(Math.max(l1Size, padTo) * 8);
  if (l1Size > 0) await qcow2File(s).pread(l1Offset, raw.subarray(0, l1Size * 8));
  return decodeTable(raw);
}


/** Write the caches and flush the file (bdrv_flush on the qcow2 node, lock held). */
export async function qcow2FlushLocked(s: BDRVQcow2State): Promise<void> {
  await qcow2WriteCaches(s);
  await qcow2File(s).flush();
}

/** The host ranges (in clusters) an L1 table references, each as often as it is referenced. */
async function referencedClusters(s: BDRVQcow2State, l1: BigUint64Array): Promise<Map<number, number>> {
  const counts = new Map<number, number>();
  const add = (offset: number, length: number): void => {
    const first = Math.floor(offset / s.clusterSize);
    const last = Math.floor((offset + length - 1) / s.clusterSize);
    for (let c = first; c <= last; c++) counts.set(c, (counts.get(c) ?? 0) + 1);
  };
  for (const l1e of l1) {
    const l2Offset = Number(l1e & L1E_OFFSET_MASK);
    if (l2Offset === 0) continue;
    const t = await l2Load(s, l2Offset);
    try {
      for (let j = 0; j < s.l2Size; j++) {
        const entry = getL2Entry(s, t.data, j);
        const type = clusterType(entry, !s.extendedL2);
        if (type === 'compressed') {
          const c = decodeCompressed(entry, s.compressed);
          add(c.offset, c.length);
        } else if (type === 'normal' || type === 'zero-alloc') {
          add(Number(entry & L2E_OFFSET_MASK), 1);
        }
      }
    } finally {
      s.l2Cache.put(t);
    }
    add(l2Offset, 1);
  }
  return counts;
}

/**
 * Would +1 through this L1 table overflow a refcount? Checked before anything is written, so
 * that a snapshot that cannot be counted leaves no trace (QEMU 7.2 fails half-way instead).
 */
export async function qcow2SnapshotRefcountsFit(s: BDRVQcow2State, l1: BigUint64Array): Promise<boolean> {
  for (const [cluster, n] of await referencedClusters(s, l1)) {
    if ((await qcow2GetRefcount(s, cluster)) + n > s.refcountMax) return false;
  }
  return true;
}

/**
 * Add `addend` (+1, -1 or 0) to the refcount of every cluster the L1 table at `l1Offset`
 * reaches, and set COPIED exactly where a count is now 1. The active table is taken from
 * memory (snapshot apply relies on this: its on-disk copy has already been replaced).
 */
export async function qcow2UpdateSnapshotRefcount(s: BDRVQcow2State, l1Offset: number, l1Size: number, addend: -1 | 0 | 1): Promise<void> {
  const active = l1Offset === s.l1TableOffset;
  const l1 = active ? s.l1Table : await qcow2ReadL1(s, l1Offset, l1Size);
  const decrease = addend < 0;
  let l1Modified = false;
  for (let i = 0; i < l1Size; i++) {
    const oldL1 = l1[i];
    if (oldL1 === 0n) continue;
    const l2Offset = Number(oldL1 & L1E_OFFSET_MASK);
    if (l2Offset % s.clusterSize !== 0) {
      qcow2SignalCorruption(s, true, `L2 table offset ${hex(l2Offset)} unaligned (L1 index: ${hex(i)})`);
      throw new BlockError('EIO', undefined, { op: 'snapshot' });
    }
    const t = await l2Load(s, l2Offset);
    try {
      for (let j = 0; j < s.l2Size; j++) {
        const old = getL2Entry(s, t.data, j);
        let entry = old & ~QCOW_OFLAG_COPIED;
        const offset = Number(entry & L2E_OFFSET_MASK);
        let refcount = 0;
        switch (clusterType(entry, !s.extendedL2)) {
          case 'compressed': {
            if (addend !== 0) {
              const c = decodeCompressed(entry, s.compressed);
              await updateRefcount(s, c.offset, c.length, 1, decrease, 'snapshot');
            }
            // Compressed clusters are never written in place: never COPIED.
            refcount = 2;
            break;
          }
          case 'normal':
          case 'zero-alloc':
            if (offset % s.clusterSize !== 0) {
              qcow2SignalCorruption(s, true, `Cluster allocation offset ${hex(offset)} unaligned (L2 offset: ${hex(l2Offset)}, L2 index: ${hex(j)})`);
              throw new BlockError('EIO', undefined, { op: 'snapshot' });
            }
            if (addend !== 0) await updateRefcount(s, offset, 1, 1, decrease, 'snapshot');
            refcount = await qcow2GetRefcount(s, offset / s.clusterSize);
            break;
          default:
            break;
        }
        if (refcount === 1) entry |= QCOW_OFLAG_COPIED;
        if (entry === old) continue;
        // An entry losing COPIED must not reach the disk before the count that makes it
        // shared: until then writes in place are still right.
        if (addend > 0) await s.l2Cache.setDependency(s.refcountCache);
        setL2Entry(s, t.data, j, entry);
        s.l2Cache.markDirty(t);
      }
    } finally {
      s.l2Cache.put(t);
    }
    if (addend !== 0) await updateRefcount(s, l2Offset, 1, 1, decrease, 'snapshot');
    const refcount = await qcow2GetRefcount(s, l2Offset / s.clusterSize);
    const next = refcount === 1 ? BigInt(l2Offset) | QCOW_OFLAG_COPIED : BigInt(l2Offset);
    if (next !== oldL1) {
      l1[i] = next;
      l1Modified = true;
    }
  }
  // Every count and L2 change is durable before the caller points anything at them.
  await qcow2FlushLocked(s);
  // A table that loses its reference anyway (-1) is not worth rewriting.
  if (addend >= 0 && l1Modified) {
    const file = qcow2File(s);
    await file.pwrite(l1Offset, encodeTable(l1.subarray(0, l1Size)));
    await file.flush();
  }
}
