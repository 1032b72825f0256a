/**
 * Rebuilding the refcount structure from a check's in-memory refcounts (QEMU 7.2's
 * rebuild_refcount_structure), for `check -r all` and the open-time repair of a dirty image.
 *
 * Placement is QEMU's, so that both produce the same file: every refcount block that covers
 * a used cluster goes to the first free cluster (by the in-memory counts) at or after the
 * start of its own range; then the reftable goes to the first free run from cluster 0; if
 * that needed new blocks and the table had to grow, the table's clusters are given back and
 * the search repeats. Each block is the in-memory counts of its range, so it is right the
 * moment it is written.
 *
 * Ordering: blocks, then the reftable, flushed, and only then the header switched to the new
 * table (12 bytes at 48, synchronously): a crash before the switch leaves the old structure in
 * force and the new clusters unreferenced. The old structure is leaked afterwards; the check
 * frees it with its leak repair.
 */
import { ERRNO_MESSAGES, toBlockError } from '../../block/errors.js';
import { calculateRefcounts, growImrt, type CheckRun, type Imrt } from './check-imrt.js';
import { qcow2PreWriteOverlapCheck } from './corrupt.js';
import { emptyCheckResult } from '../../block/driver.js';
import { type BDRVQcow2State, qcow2File } from './state.js';

/**
 * Allocate `count` clusters in the IMRT, first fit from `firstFree.v` (alloc_clusters_imrt);
 * `firstFree.v` ends at the first gap seen, even one too small. Past the end the IMRT grows.
 */
function allocClustersImrt(s: BDRVQcow2State, imrt: Imrt, count: number, firstFree: { v: number }): number {
  let cluster = firstFree.v;
  let contiguous = 0;
  let firstGap = true;
  for (; cluster < imrt.n && contiguous < count; cluster++) {
    if (imrt.counts[cluster] === 0) {
      contiguous++;
      if (firstGap) {
        firstFree.v = cluster;
        firstGap = false;
      }
    } else {
      contiguous = 0;
    }
  }
  if (contiguous < count) growImrt(imrt, cluster + count - contiguous);
  cluster -= contiguous;
  for (let i = 0; i < count; i++) imrt.counts[cluster + i] = 1;
  return cluster * s.clusterSize;
}

/** A refcount block holding the IMRT's counts of table index `index`. */
function encodeRefblock(s: BDRVQcow2State, imrt: Imrt, index: number): Uint8Array {
  const block = new Uint8Array(s.clusterSize);
  const start = index * s.refcountBlockEntries;
  const end = Math.min(imrt.n, start + s.refcountBlockEntries);
  for (let k = start; k < end; k++) if (imrt.counts[k] !== 0) s.setRefcount(block, k - start, imrt.counts[k]);
  return block;
}

/**
 * Allocate (where not yet done) and write the refcount blocks covering the used clusters of
 * [first, end) (rebuild_refcounts_write_refblocks). Returns whether the reftable grew.
 */
async function writeRefblocks(c: CheckRun, first: number, end: number, reftable: number[]): Promise<boolean> {
  const { s, imrt } = c;
  const e = s.refcountBlockEntries;
  const firstFree = { v: 0 };
  let grown = false;
  for (let cluster = first; cluster < end; cluster++) {
    if (cluster >= imrt.n || imrt.counts[cluster] === 0) continue;
    const index = Math.floor(cluster / e);
    const start = index * e;
    let offset = index < reftable.length ? reftable[index] : 0;
    if (offset === 0) {
      // Never inside a block already written.
      if (firstFree.v < start) firstFree.v = start;
      offset = allocClustersImrt(s, imrt, 1, firstFree);
      // The block holding this block's own count must be written too.
      if (offset / s.clusterSize >= end) end = offset / s.clusterSize + 1;
      if (reftable.length <= index) {
        const entries = Math.ceil(((index + 1) * 8) / s.clusterSize) * (s.clusterSize / 8);
        while (reftable.length < entries) reftable.push(0);
        grown = true;
      }
      reftable[index] = offset;
    }
    try {
      qcow2PreWriteOverlapCheck(s, 0, offset, s.clusterSize);
      await qcow2File(s).pwrite(offset, encodeRefblock(s, imrt, index));
    } catch (err) {
      c.report(`ERROR writing refblock: ${ERRNO_MESSAGES[toBlockError(err).code]}`);
      c.res.checkErrors++;
      throw err;
    }
    cluster = start + e - 1;
  }
  return grown;
}

/**
 * Replace the refcount structure by one built from `run`'s in-memory counts (or, without a
 * run, from a fresh count of the image's metadata). The caller holds s.lock and has written
 * the L2 cache; the refcount cache is emptied (its blocks are about to be abandoned).
 */
export async function rebuildRefcounts(s: BDRVQcow2State, run?: CheckRun): Promise<void> {
  let c = run;
  if (!c) {
    const fileLen = await qcow2File(s).getLength();
    const n = Math.ceil(fileLen / s.clusterSize);
    const imrt = { counts: new Float64Array(n), n, overflowed: new Set<number>() };
    c = { s, res: emptyCheckResult(), report: () => undefined, imrt, fileLen, rebuild: false, metadata: new Map() };
    await calculateRefcounts(c, {});
  }
  const file = qcow2File(s);
  s.refcountCache.reset();

  const reftable: number[] = [];
  await writeRefblocks(c, 0, c.imrt.n, reftable);
  let tableOffset: number;
  let tableClusters: number;
  let grown: boolean;
  do {
    tableClusters = Math.ceil((reftable.length * 8) / s.clusterSize);
    tableOffset = allocClustersImrt(s, c.imrt, tableClusters, { v: 0 });
    // The table's own clusters now count: their blocks must say so.
    const first = tableOffset / s.clusterSize;
    grown = await writeRefblocks(c, first, first + tableClusters, reftable);
    if (grown) {
      // A bigger table is needed: give these clusters back and look again.
      for (let k = first; k < first + tableClusters; k++) c.imrt.counts[k] = 0;
    }
  } while (grown);

  const buf = new Uint8Array(reftable.length * 8);
  const v = new DataView(buf.buffer);
  reftable.forEach((off, i) => v.setBigUint64(i * 8, BigInt(off)));
  try {
    qcow2PreWriteOverlapCheck(s, 0, tableOffset, buf.length);
    await file.pwrite(tableOffset, buf);
    // Blocks and table durable before the header points at them.
    await file.flush();
  } catch (err) {
    c.report(`ERROR writing reftable: ${ERRNO_MESSAGES[toBlockError(err).code]}`);
    c.res.checkErrors++;
    throw err;
  }
  const hdr = new Uint8Array(12);
  const hv = new DataView(hdr.buffer);
  hv.setBigUint64(0, BigInt(tableOffset));
  hv.setUint32(8, tableClusters);
  try {
    await file.pwrite(48, hdr);
    await file.flush();
  } catch (err) {
    c.report(`ERROR setting reftable: ${ERRNO_MESSAGES[toBlockError(err).code]}`);
    c.res.checkErrors++;
    throw err;
  }
  s.refcountTable = BigUint64Array.from(reftable, (off) => BigInt(off));
  s.refcountTableOffset = tableOffset;
  s.header.refcountTableOffset = tableOffset;
  s.header.refcountTableClusters = tableClusters;
}
