/**
 * Open-time repair of a dirty image (lazy refcounts after a crash): the refcounts on disk may
 * be lower than the references, so they are recomputed from every reference and written
 * before anything is allocated, then the dirty bit is cleared.
 *
 * Steps: count every reference (header, active and snapshot L1 tables, their L2 tables, data
 * and compressed clusters, snapshot table, reftable, refcount blocks); set each count that
 * differs in the existing refcount blocks; counts that need a block that does not exist yet
 * are added last, with the allocation cursor past every referenced cluster, so the new blocks
 * cannot land on a cluster that is in use but not counted. Then caches flushed, bit cleared.
 */
import { BlockError } from '../../block/errors.js';
import { getL2Entry } from './cluster.js';
import { L1E_OFFSET_MASK, L2E_OFFSET_MASK, REFT_OFFSET_MASK, clusterType, decodeCompressed } from './entries.js';
import { QCOW2_INCOMPAT_DIRTY } from './header.js';
import { qcow2UpdateHeader } from './open.js';
import { updateRefcount } from './refcount.js';
import { type BDRVQcow2State, qcow2File } from './state.js';

/** Hard bound on counted clusters: a reference table never grows past what the file can hold. */
const MAX_COUNTED_CLUSTERS = 1 << 27;

/** Count one reference to every cluster of [offset, offset+size). */
function incRange(counts: Map<number, number>, cs: number, offset: number, size: number): void {
  for (let c = Math.floor(offset / cs); c * cs < offset + size; c++) {
    if (counts.size >= MAX_COUNTED_CLUSTERS) throw new BlockError('EFBIG', 'Could not repair dirty image: too many clusters', { op: 'open' });
    counts.set(c, (counts.get(c) ?? 0) + 1);
  }
}

async function countTable(s: BDRVQcow2State, counts: Map<number, number>, l1: BigUint64Array): Promise<void> {
  const cs = s.clusterSize;
  const inc = (offset: number, size: number): void => incRange(counts, cs, offset, size);
  for (const e of l1) {
    const l2 = Number(e & L1E_OFFSET_MASK);
    if (l2 === 0 || l2 % cs !== 0) continue;
    inc(l2, cs);
    const table = await s.l2Cache.get(l2, 'l2_load');
    try {
      for (let i = 0; i < s.l2Size; i++) {
        const entry = getL2Entry(s, table.data, i);
        const t = clusterType(entry, s.header.version >= 3 && !s.extendedL2);
        if (t === 'compressed') {
          const c = decodeCompressed(entry, s.compressed);
          inc(c.offset & ~511, c.sectors * 512);
        } else if (t === 'normal' || t === 'zero-alloc') {
          const off = Number(entry & L2E_OFFSET_MASK);
          if (off % cs === 0) inc(off, cs);
        }
      }
    } finally {
      s.l2Cache.put(table);
    }
  }
}

async function readL1(s: BDRVQcow2State, offset: number, size: number): Promise<BigUint64Array> {
  const buf = new Uint8Array(size * 8);
  await qcow2File(s).pread(offset, buf);
  const v = new DataView(buf.buffer);
  return BigUint64Array.from({ length: size }, (_, i) => v.getBigUint64(i * 8));
}

/** Every reference of the image, counted per cluster index. */
async function countReferences(s: BDRVQcow2State): Promise<Map<number, number>> {
  const cs = s.clusterSize;
  const counts = new Map<number, number>();
  const inc = (offset: number, size: number): void => incRange(counts, cs, offset, size);
  inc(0, cs);
  inc(s.l1TableOffset, s.l1Table.length * 8);
  await countTable(s, counts, s.l1Table);
  for (const l1 of s.extents.inactiveL1) {
    inc(l1.offset, l1.size);
    await countTable(s, counts, await readL1(s, l1.offset, l1.size / 8));
  }
  inc(s.extents.snapshotsOffset, s.extents.snapshotsSize);
  inc(s.refcountTableOffset, s.refcountTable.length * 8);
  for (const e of s.refcountTable) {
    const rb = Number(e & REFT_OFFSET_MASK);
    if (rb !== 0) inc(rb, cs);
  }
  if (s.extents.bitmapDirectory) inc(s.extents.bitmapDirectory.offset, s.extents.bitmapDirectory.size);
  return counts;
}

export async function qcow2RepairDirty(s: BDRVQcow2State): Promise<void> {
  const cs = s.clusterSize;
  const counts = await countReferences(s);
  const fileClusters = Math.ceil((await qcow2File(s).getLength()) / cs);
  const missing: [number, number][] = [];
  let maxReferenced = 0;
  for (const c of counts.keys()) maxReferenced = Math.max(maxReferenced, c);

  // Existing blocks: every cluster they cover, up to the end of the file or the last reference.
  const upTo = Math.max(fileClusters, maxReferenced + 1);
  for (let tableIndex = 0; tableIndex * s.refcountBlockEntries < upTo; tableIndex++) {
    const rb = tableIndex < s.refcountTable.length ? Number(s.refcountTable[tableIndex] & REFT_OFFSET_MASK) : 0;
    const first = tableIndex * s.refcountBlockEntries;
    const last = Math.min(first + s.refcountBlockEntries, upTo);
    if (rb === 0) {
      for (let c = first; c < last; c++) {
        const want = counts.get(c) ?? 0;
        if (want > 0) missing.push([c, want]);
      }
      continue;
    }
    const block = await s.refcountCache.get(rb, 'refblock_load');
    try {
      for (let c = first; c < last; c++) {
        const want = Math.min(counts.get(c) ?? 0, s.refcountMax);
        const idx = c - first;
        if (s.getRefcount(block.data, idx) !== want) {
          s.setRefcount(block.data, idx, want);
          s.refcountCache.markDirty(block);
        }
      }
    } finally {
      s.refcountCache.put(block);
    }
  }
  s.freeClusterIndex = Math.max(maxReferenced + 1, fileClusters);
  for (const [c, want] of missing) await updateRefcount(s, c * cs, cs, Math.min(want, s.refcountMax), false, 'never');
  await s.refcountCache.flush();
  s.freeClusterIndex = 0;
  // Refcounts are exact on disk again: the image is clean.
  s.header.incompatibleFeatures &= ~QCOW2_INCOMPAT_DIRTY;
  await qcow2UpdateHeader(s);
}
