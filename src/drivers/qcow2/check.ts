/**
 * Consistency check and repair (QEMU 7.2's qcow2_check_refcounts and qcow2_co_check).
 *
 * State: an in-memory refcount table (the IMRT: one count per host cluster, built by walking
 * the header, the active and snapshot L1/L2 tables, the snapshot table, the reftable and the
 * refcount blocks), compared with the refcounts on disk. Every message goes to `report`, in
 * QEMU's words, in QEMU's order.
 *
 * Order of a repair (-r all), as QEMU's: entries that must change (misaligned zero clusters,
 * and our additions below) are rewritten while walking; a refcount block past the end of the
 * file grows the file; then either the refcount structure is rebuilt from the IMRT
 * (check-rebuild.ts: refcounts on disk that are 0 but referenced, unusable reftable entries)
 * and the old structures are freed as leaks, or every mismatch is fixed in place; last,
 * COPIED flags follow the refcounts. `-r leaks` only lowers refcounts that are too high.
 *
 * Where we differ from QEMU 7.2 (on purpose): COPIED is set only on clusters whose count did
 * not overflow, so two guest clusters never alias; zero entries of a v2 image and data
 * references into metadata are corruptions (repaired into zero or unallocated entries); L1
 * and L2 entries with reserved bits set are repaired by clearing the bits.
 *
 * The caller holds s.lock; qcow2Check takes it.
 */
import { emptyCheckResult, type CheckFix, type CheckResult } from '../../block/driver.js';
import { BlockError, ERRNO_MESSAGES, toBlockError } from '../../block/errors.js';
import { qcow2WriteL1Entry } from './cluster.js';
import { QCOW2_OL_ACTIVE_L2, qcow2PreWriteOverlapCheck } from './corrupt.js';
import { L1E_OFFSET_MASK, L2E_OFFSET_MASK, QCOW_OFLAG_COPIED, clusterType, nextUsedSlot, plainDataOffset, tableWords } from './entries.js';
import { QCOW2_INCOMPAT_CORRUPT, QCOW2_INCOMPAT_DIRTY } from './header.js';
import { calculateRefcounts, type CheckRun, type Imrt } from './check-imrt.js';
import { rebuildRefcounts } from './check-rebuild.js';
import { updateRefcount } from './refcount.js';
import { RefcountReader } from './refcount-now.js';
import { CheckSeen } from './check-seen.js';
import { type BDRVQcow2State, qcow2File } from './state.js';
import { qcow2HasDataFile } from './data-file.js';

export { rebuildRefcounts } from './check-rebuild.js';
export type { CheckRun } from './check-imrt.js';

const hex = (v: bigint | number): string => v.toString(16);

/**
 * The refcount of a cluster as the refcount structures on disk say (QEMU's
 * qcow2_get_refcount), without the driver's corruption signalling: an unusable reftable
 * entry is a check error here, never a reason to mark the image corrupt mid-check.
 */
export async function onDiskRefcount(s: BDRVQcow2State, clusterIndex: number): Promise<number> {
  const tableIndex = Math.floor(clusterIndex / s.refcountBlockEntries);
  if (tableIndex >= s.refcountTable.length) return 0;
  const off = Number(s.refcountTable[tableIndex] & 0xfffffffffffffe00n);
  if (off === 0) return 0;
  if (off % s.clusterSize !== 0) throw new BlockError('EIO', undefined, { op: 'check', offset: off });
  const e = await s.refcountCache.get(off, 'refblock_load');
  try {
    return s.getRefcount(e.data, clusterIndex % s.refcountBlockEntries);
  } finally {
    s.refcountCache.put(e);
  }
}

/**
 * Compare the IMRT with the refcounts on disk (compare_refcounts): lower on disk is a
 * corruption (0 on disk needs a rebuild), higher a leak; fixed as `fix` allows. Returns the
 * highest cluster in use by either.
 */
async function compareRefcounts(c: CheckRun, fix: CheckFix): Promise<number> {
  const { s, res, imrt } = c;
  const counts = new RefcountReader(s);
  const h = { highest: 0 };
  for (let i = sameRefcountsNow(c, counts, 0, h); i < imrt.n; i = sameRefcountsNow(c, counts, i + 1, h)) {
    let r1: number | null = counts.now(i);
    try {
      // From the cached block without a wait per cluster (a repair below changes it there).
      if (r1 === null) {
        counts.forget();
        r1 = await onDiskRefcount(s, i);
      }
    } catch (e) {
      c.report(`Can't get refcount for cluster ${i}: ${ERRNO_MESSAGES[toBlockError(e).code]}`);
      res.checkErrors++;
      continue;
    }
    const r2 = imrt.counts[i];
    if (r1 > 0 || r2 > 0) h.highest = i;
    if (r1 === r2) continue;
    let fixed: 'leaksFixed' | 'corruptionsFixed' | null = null;
    if (r1 === 0) c.rebuild = true;
    else if (r1 > r2 && fix.leaks) fixed = 'leaksFixed';
    else if (r1 < r2 && fix.errors) fixed = 'corruptionsFixed';
    c.report(`${fixed ? 'Repairing' : r1 < r2 ? 'ERROR' : 'Leaked'} cluster ${i} refcount=${r1} reference=${r2}`);
    if (fixed) {
      // The repair waits and may change the reftable: nothing kept holds after it.
      counts.forget();
      try {
        // Freed clusters are punched (QEMU's QCOW2_DISCARD_ALWAYS).
        await updateRefcount(s, i * s.clusterSize, 1, Math.abs(r1 - r2), r1 > r2, 'always');
        res[fixed]++;
        continue;
      } catch {
        // Counted below as still wrong.
      }
    }
    if (r1 < r2) res.corruptions++;
    else res.leaks++;
  }
  return h.highest;
}

/**
 * From cluster `i` on, pass over the clusters whose refcount in the cached blocks equals the
 * IMRT's count, noting the highest in use in `h`; returns the first other one (a mismatch, or
 * a block that must be read), or the IMRT's end. The common case of compareRefcounts as one
 * synchronous loop, which V8 optimises while it runs.
 */
function sameRefcountsNow(c: CheckRun, counts: RefcountReader, i: number, h: { highest: number }): number {
  const { n, counts: expected } = c.imrt;
  for (; i < n; i++) {
    const r = counts.now(i);
    if (r === null || r !== expected[i]) return i;
    if (r > 0) h.highest = i;
  }
  return i;
}

/** Read `bytes` at `offset` of the file; what lies past its end reads as zeros. */
export async function readClamped(c: CheckRun, offset: number, bytes: number): Promise<Uint8Array> {
  const buf = new Uint8Array(bytes);
  const len = await qcow2File(c.s).getLength();
  if (offset < len) await qcow2File(c.s).pread(offset, buf.subarray(0, Math.min(bytes, len - offset)));
  return buf;
}

/**
 * COPIED must be set exactly where the refcount is 1 (check_oflag_copied), in the active L1
 * and in the L2 tables it points at. A cluster whose count overflowed never gets it.
 */
async function checkOflagCopied(c: CheckRun, fix: CheckFix): Promise<void> {
  const { s, res } = c;
  const file = qcow2File(s);
  const counts = new RefcountReader(s);
  // From the cached block now (no wait per data cluster), else read.
  const wanted = async (cluster: number): Promise<{ refcount: number; copied: boolean } | null> => {
    let refcount = counts.now(cluster);
    if (refcount === null) {
      counts.forget();
      try {
        refcount = await onDiskRefcount(s, cluster);
      } catch {
        // Already reported by compareRefcounts.
        return null;
      }
    }
    return { refcount, copied: refcount === 1 && !c.imrt.overflowed.has(cluster) };
  };
  const dataFile = qcow2HasDataFile(s);
  // Plain data entries are decoded without a BigInt (standard entries in the image file).
  const plainEntries = !s.extendedL2 && !dataFile;
  for (let i = 0; i < s.l1Table.length; i++) {
    const l1Entry = s.l1Table[i];
    const l2Offset = Number(l1Entry & L1E_OFFSET_MASK);
    if (l2Offset === 0) continue;
    const w = await wanted(Math.floor(l2Offset / s.clusterSize));
    if (w && w.copied !== ((l1Entry & QCOW_OFLAG_COPIED) !== 0n)) {
      c.report(`${fix.errors ? 'Repairing' : 'ERROR'} OFLAG_COPIED L2 cluster: l1_index=${i} l1_entry=${hex(l1Entry)} refcount=${w.refcount}`);
      if (fix.errors) {
        s.l1Table[i] = w.copied ? l1Entry | QCOW_OFLAG_COPIED : l1Entry & ~QCOW_OFLAG_COPIED;
        try {
          await qcow2WriteL1Entry(s, i);
        } catch (e) {
          s.l1Table[i] = l1Entry;
          res.checkErrors++;
          throw e;
        }
        res.corruptionsFixed++;
      } else {
        res.corruptions++;
      }
    }

    // A table the counting pass kept (plain data entries only) is decided from its list.
    counts.forget();
    const kept = c.seen?.table(i, l2Offset);
    if (kept && c.seen?.copiedRight(kept, (k) => counts.now(k), c.imrt.overflowed)) continue;

    const tableBytes = s.l2Size * s.l2EntrySize;
    let table: Uint8Array;
    try {
      table = await readClamped(c, l2Offset, tableBytes);
    } catch (e) {
      c.report(`ERROR: Could not read L2 table: ${ERRNO_MESSAGES[toBlockError(e).code]}`);
      res.checkErrors++;
      throw e;
    }
    counts.forget();
    let dirty = false;
    const view = new DataView(table.buffer, table.byteOffset, table.byteLength);
    const words = tableWords(table);
    const es = s.l2EntrySize;
    for (let j = nextUsedSlot(words, 0, s.l2Size, es); j < s.l2Size; j = nextUsedSlot(words, j + 1, s.l2Size, es)) {
      const plain = plainEntries ? plainDataOffset(view, j * es) : 0;
      if (plain !== 0) {
        // The common case, decided now: a data cluster whose COPIED is right.
        const cluster = Math.floor(plain / s.clusterSize);
        const refcount = counts.now(cluster);
        const copied = (view.getUint8(j * es) & 0x80) !== 0;
        if (refcount !== null && copied === (refcount === 1 && !c.imrt.overflowed.has(cluster))) continue;
      }
      const l2Entry = view.getBigUint64(j * es);
      const type = clusterType(l2Entry, !s.extendedL2, dataFile);
      const dataOffset = Number(l2Entry & L2E_OFFSET_MASK);
      if (!(type === 'normal' || (type === 'zero-alloc' && dataOffset !== 0))) continue;
      // With an external data file the data clusters have no refcount of their own.
      const dw = dataFile ? { refcount: 1, copied: true } : await wanted(Math.floor(dataOffset / s.clusterSize));
      if (!dw || dw.copied === ((l2Entry & QCOW_OFLAG_COPIED) !== 0n)) continue;
      c.report(`${fix.errors ? 'Repairing' : 'ERROR'} OFLAG_COPIED data cluster: l2_entry=${hex(l2Entry)} refcount=${dw.refcount}`);
      if (fix.errors) {
        new DataView(table.buffer).setBigUint64(j * s.l2EntrySize, dw.copied ? l2Entry | QCOW_OFLAG_COPIED : l2Entry & ~QCOW_OFLAG_COPIED);
        dirty = true;
        res.corruptionsFixed++;
      } else {
        res.corruptions++;
      }
    }
    if (!dirty) continue;
    try {
      qcow2PreWriteOverlapCheck(s, QCOW2_OL_ACTIVE_L2, l2Offset, tableBytes);
    } catch (e) {
      c.report(`ERROR: Could not write L2 table; metadata overlap check failed: ${ERRNO_MESSAGES[toBlockError(e).code]}`);
      res.checkErrors++;
      throw e;
    }
    try {
      await file.pwrite(l2Offset, table);
    } catch (e) {
      c.report(`ERROR: Could not write L2 table: ${ERRNO_MESSAGES[toBlockError(e).code]}`);
      res.checkErrors++;
      throw e;
    }
    // The cached copy (if any) is stale now.
    s.l2Cache.discard(l2Offset);
  }
}

/** The most host clusters a check counts (8 bytes each: 2 GiB of counts). */
const MAX_IMRT_CLUSTERS = 2 ** 28;

/** A new run over `s` with an empty IMRT the size of the file. */
async function newRun(s: BDRVQcow2State, fix: CheckFix, report: (line: string) => void, res: CheckResult): Promise<CheckRun> {
  const fileLen = await qcow2File(s).getLength();
  const n = Math.ceil(fileLen / s.clusterSize);
  // One count per host cluster of the file, as QEMU's g_try_new0: a file too large to count
  // in memory (a damaged image grown by a sparse write far out) fails the check (EFBIG).
  if (n > MAX_IMRT_CLUSTERS) {
    report('ERROR: Could not allocate the refcount table for the check');
    res.checkErrors++;
    throw new BlockError('EFBIG', undefined, { op: 'check' });
  }
  const imrt: Imrt = { counts: new Float64Array(n), n, overflowed: new Set() };
  return { s, res, report, imrt, fileLen, rebuild: false, metadata: new Map(), seen: new CheckSeen() };
}

/** qcow2_check_refcounts: build, compare, repair or rebuild, then COPIED. */
async function qcow2CheckRefcounts(s: BDRVQcow2State, fix: CheckFix, report: (line: string) => void): Promise<CheckResult> {
  const res = emptyCheckResult();
  res.totalClusters = Math.ceil(s.header.size / s.clusterSize);
  const c = await newRun(s, fix, report, res);
  await calculateRefcounts(c, fix);
  // Compared once without fixing (what is wrong), then again with fixing, as QEMU does.
  const before = { ...res };
  let highest = await compareRefcounts(c, {});

  if (c.rebuild && fix.errors) {
    const old = { ...res };
    report('Rebuilding refcount structure');
    await rebuildRefcounts(s, c);
    // The new structure replaced the old one: count everything again, then free what the
    // old structure occupied (it is leaked now).
    const again = await newRun(s, {}, report, { ...emptyCheckResult(), totalClusters: res.totalClusters });
    await calculateRefcounts(again, {});
    let freshLeaks = 0;
    if (fix.leaks) {
      const saved = again.res;
      again.res = emptyCheckResult();
      again.rebuild = false;
      highest = await compareRefcounts(again, { leaks: true });
      if (again.rebuild) report('ERROR rebuilt refcount structure is still broken');
      freshLeaks = again.res.leaks;
      again.res = saved;
    }
    const now = again.res;
    res.corruptions = now.corruptions;
    res.leaks = now.leaks;
    res.checkErrors += now.checkErrors;
    if (res.corruptions < old.corruptions) res.corruptionsFixed += old.corruptions - res.corruptions;
    if (res.leaks < old.leaks) res.leaksFixed += old.leaks - res.leaks;
    res.leaks += freshLeaks;
    c.imrt = again.imrt;
    // The COPIED pass reads every table after a rebuild, as QEMU's does.
    c.seen = undefined;
  } else if (fix.errors || fix.leaks) {
    if (c.rebuild) {
      report('ERROR need to rebuild refcount structures');
      res.checkErrors++;
      throw new BlockError('EIO', undefined, { op: 'check' });
    }
    if (res.leaks || res.corruptions) {
      Object.assign(res, before);
      highest = await compareRefcounts(c, fix);
    }
  }

  await checkOflagCopied(c, fix);
  res.imageEndOffset = (highest + 1) * s.clusterSize;
  return res;
}

/**
 * The check hook with s.lock held (qcow2_co_check_locked): the caches are written first (the
 * check reads tables from the file), and after a repair that left nothing wrong the dirty and
 * corrupt bits are cleared.
 */
export async function qcow2CheckLocked(s: BDRVQcow2State, fix: CheckFix): Promise<CheckResult> {
  const report = fix.report ?? ((): void => undefined);
  await s.l2Cache.flush();
  await s.refcountCache.flush();
  const res = await qcow2CheckRefcounts(s, fix, report);
  // Repairs went through the refcount cache: on disk before the image claims consistency.
  if (fix.errors || fix.leaks) {
    await s.l2Cache.flush();
    await s.refcountCache.flush();
    if (res.checkErrors === 0 && res.corruptions === 0) await qcow2MarkCleanAndConsistent(s);
  }
  return res;
}

/** qcow2_mark_clean + qcow2_mark_consistent: each bit cleared with a full header rewrite. */
async function qcow2MarkCleanAndConsistent(s: BDRVQcow2State): Promise<void> {
  const bits = QCOW2_INCOMPAT_DIRTY | QCOW2_INCOMPAT_CORRUPT;
  if ((s.header.incompatibleFeatures & bits) === 0n) return;
  const old = s.header.incompatibleFeatures;
  s.header.incompatibleFeatures &= ~bits;
  try {
    await s.updateHeader();
  } catch (e) {
    s.header.incompatibleFeatures = old;
    throw e;
  }
}

/** The driver's check hook: qcow2CheckLocked under s.lock. */
export async function qcow2Check(s: BDRVQcow2State, fix: CheckFix): Promise<CheckResult> {
  await s.lock.lock();
  try {
    return await qcow2CheckLocked(s, fix);
  } finally {
    s.lock.unlock();
  }
}

