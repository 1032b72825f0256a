/**
 * Emptying an image after `qemu-img commit` (QEMU's qcow2_make_empty): a v3 image without
 * snapshots, bitmaps or a data file is rebuilt from scratch (make_completely_empty: header,
 * reftable, one refcount block, an empty L1, under the dirty bit); any other image has every
 * cluster discarded, the slow way that works for all (with a data file, its clusters are
 * discarded there).
 *
 * Order in the fast path: the dirty bit first, so that a crash anywhere after it leaves an
 * image the next open repairs (its references are then only the header and the tables the
 * header points at); the header switch to the new table positions is one synchronous write.
 */
import { BlockError } from '../../block/errors.js';
import { qcow2MarkDirty } from './alloc.js';
import { qcow2OverlapIndexChanged } from './corrupt.js';
import { qcow2HasDataFile } from './data-file.js';
import { QCOW2_INCOMPAT_DIRTY } from './header.js';
import { qcow2AllocClusters } from './refcount.js';
import { type BDRVQcow2State, qcow2File, qcow2WriteCaches } from './state.js';
import { qcow2ClusterDiscard } from './zero.js';
import { qcow2WaitInFlight } from './inflight.js';

/** The hook: empty the image, keeping its size and header options. */
export async function qcow2MakeEmpty(s: BDRVQcow2State): Promise<void> {
  await s.lock.run(async () => {
    await qcow2WaitInFlight(s, 0, Number.POSITIVE_INFINITY);
    const l1Clusters = Math.ceil(s.l1Table.length / (s.clusterSize / 8));
    const bitmaps = s.bitmapsExtension !== null;
    if (s.header.version >= 3 && s.header.nbSnapshots === 0 && !bitmaps && 3 + l1Clusters <= s.refcountBlockEntries && !qcow2HasDataFile(s)) {
      await makeCompletelyEmpty(s, l1Clusters);
      return;
    }
    // Discarded as QCOW2_DISCARD_SNAPSHOT: passed down, so the file really shrinks in use.
    const step = s.l2Size * s.clusterSize;
    for (let offset = 0; offset < s.header.size; offset += step) {
      await qcow2ClusterDiscard(s, offset, Math.min(step, s.header.size - offset), 'snapshot', true);
    }
  });
}

async function makeCompletelyEmpty(s: BDRVQcow2State, l1Clusters: number): Promise<void> {
  const cs = s.clusterSize;
  const file = qcow2File(s);
  // Whatever the caches hold is about to be thrown away with the tables it describes.
  s.l2Cache.reset();
  s.refcountCache.reset();
  await qcow2MarkDirty(s);
  // From here the refcounts on disk describe nothing; the dirty bit says so.
  await file.writeZeroes(s.l1TableOffset, l1Clusters * cs);
  s.l1Table.fill(0n);
  // Room for the new reftable, its block and the L1 table, right after the header.
  await file.writeZeroes(cs, (2 + l1Clusters) * cs);
  const fields = new Uint8Array(20);
  const v = new DataView(fields.buffer);
  v.setBigUint64(0, BigInt(3 * cs));
  v.setBigUint64(8, BigInt(cs));
  v.setUint32(16, 1);
  await file.pwrite(40, fields);
  await file.flush();
  s.l1TableOffset = 3 * cs;
  s.refcountTable = new BigUint64Array(cs / 8);
  s.refcountTableOffset = cs;
  // The first refcount block goes between the reftable and the L1 table.
  const entry = new Uint8Array(8);
  new DataView(entry.buffer).setBigUint64(0, BigInt(2 * cs));
  await file.pwrite(cs, entry);
  await file.flush();
  s.refcountTable[0] = BigInt(2 * cs);
  qcow2OverlapIndexChanged(s);
  s.freeClusterIndex = 0;
  const offset = await qcow2AllocClusters(s, 3 * cs + s.l1Table.length * 8);
  if (offset !== 0) throw new BlockError('EIO', 'First cluster in emptied image is in use', { op: 'make_empty' });
  // Counts and tables agree again: the image may say so (qcow2_mark_clean).
  s.header.incompatibleFeatures &= ~QCOW2_INCOMPAT_DIRTY;
  await qcow2WriteCaches(s);
  await file.flush();
  await s.updateHeader();
  await file.truncate((3 + l1Clusters) * cs);
}
