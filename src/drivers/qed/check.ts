/**
 * Consistency check and repair (QEMU's qed-check.c, with the decisions of qed-format.md §17: clusters are
 * counted exactly, so no phantom leaks).
 *
 * Walk L1 and every L2 table, marking the clusters they reference in a bitmap. Invalid offsets
 * are corruptions (repairable: the entry is zeroed); a cluster referenced twice is a
 * corruption that is only reported; an unreferenced cluster is a leak (never repaired: QED
 * has no way to reuse space). Check errors are I/O failures while reading tables.
 */
import { emptyCheckResult, type CheckResult } from '../../block/driver.js';
import { BlockError, toBlockError } from '../../block/errors.js';
import { qedLimits } from './cluster.js';
import { QED_F_NEED_CHECK, qedCheckClusterOffset, qedCheckTableOffset } from './header.js';
import type { CachedL2Table } from './l2-cache.js';
import { type BDRVQEDState, type QEDRequest, qedFile, qedWaitAllocPending, qedWriteHeaderSync } from './state.js';
import {
  QED_ZERO_CLUSTER,
  QEDTable,
  qedReadTable,
  qedTakeCachedL2Table,
  qedWriteL2Table,
  qedWriteTable,
} from './table.js';

interface QEDCheck {
  s: BDRVQEDState;
  result: CheckResult;
  fix: boolean;
  /** One bit per cluster of the (rounded-down) file. */
  used: Uint8Array;
  nclusters: number;
  lastError: BlockError | null;
  /** The table an L2 table the cache does not hold is read into (made on first use). */
  scratch: CachedL2Table | null;
}

/** Mark `n` clusters from `offset` used; false (and a corruption each) if any already was. */
function qedSetUsedClusters(check: QEDCheck, offset: number, n: number): boolean {
  let cluster = offset / check.s.header.clusterSize;
  let corruptions = 0;
  for (let i = 0; i < n; i++, cluster++) {
    const byte = cluster >> 3;
    const bit = 1 << (cluster & 7);
    if (check.used[byte] & bit) corruptions++;
    check.used[byte] |= bit;
  }
  check.result.corruptions += corruptions;
  return corruptions === 0;
}

/** An entry pointing outside the image: cleared when repairing, else reported as corrupt. */
function qedCheckBadEntry(check: QEDCheck, table: QEDTable, index: number): void {
  if (check.fix) {
    table.set(index, 0);
    check.result.corruptionsFixed++;
  } else {
    check.result.corruptions++;
  }
}

/** Check one L2 table's entries; returns how many were invalid (zeroed when fixing). */
function qedCheckL2Table(check: QEDCheck, table: QEDTable): number {
  const s = check.s;
  const limits = qedLimits(s);
  let lastOffset = 0;
  let invalid = 0;
  for (let i = table.nextNonZero(0); i < s.tableNelems; i = table.nextNonZero(i + 1)) {
    const offset = table.get(i);
    if (offset === QED_ZERO_CLUSTER) continue;
    check.result.allocatedClusters++;
    if (lastOffset !== 0 && lastOffset + s.header.clusterSize !== offset) check.result.fragmentedClusters++;
    lastOffset = offset;
    if (!qedCheckClusterOffset(limits, offset)) {
      qedCheckBadEntry(check, table, i);
      invalid++;
      continue;
    }
    // A second reference is reported but cannot be repaired: which owner is right is unknown.
    qedSetUsedClusters(check, offset, 1);
  }
  return invalid;
}

/**
 * Make `request.l2Table` the L2 table at `offset`: the cache's copy when it holds one, else
 * the check's scratch table read from disk, which the cache does not take. A check reads each
 * table once: a cache entry per table was a fresh 256 KiB buffer each (zeroed, then faulted
 * in page by page by the read), some 8 MiB for a 64 GiB image.
 */
async function qedCheckReadL2Table(check: QEDCheck, request: QEDRequest, offset: number): Promise<void> {
  const s = check.s;
  if (qedTakeCachedL2Table(s, request, offset)) return;
  const scratch = (check.scratch ??= { offset, table: new QEDTable(s.tableNelems), ref: 1, writer: null });
  scratch.offset = offset;
  await qedFile(s).debugEvent('l2_load');
  await qedReadTable(s, offset, scratch.table);
  request.l2Table = scratch;
}

/** Release the table qedCheckReadL2Table took (the scratch table stays the check's). */
function qedCheckPutL2Table(check: QEDCheck, request: QEDRequest): void {
  if (request.l2Table !== check.scratch) check.s.l2Cache.unref(request.l2Table);
  request.l2Table = null;
}

async function qedCheckL1Table(check: QEDCheck): Promise<void> {
  const s = check.s;
  const limits = qedLimits(s);
  const l1 = s.l1Table;
  let l1Invalid = 0;
  for (let i = l1.nextNonZero(0); i < s.tableNelems; i = l1.nextNonZero(i + 1)) {
    const offset = l1.get(i);
    if (!qedCheckTableOffset(limits, offset)) {
      qedCheckBadEntry(check, l1, i);
      l1Invalid++;
      continue;
    }
    // A table overlapping something already seen is not read: its entries are suspect.
    if (!qedSetUsedClusters(check, offset, s.header.tableSize)) continue;

    const request: QEDRequest = { l2Table: null };
    try {
      await qedCheckReadL2Table(check, request, offset);
      const invalid = qedCheckL2Table(check, request.l2Table!.table);
      if (invalid > 0 && check.fix) {
        // Repaired tables are written whole, unflushed: the caller flushes before marking the
        // image clean.
        await qedWriteL2Table(s, request, 0, s.tableNelems, false);
        // A copy a reader cached meanwhile misses the repair.
        if (request.l2Table === check.scratch) s.l2Cache.remove(offset);
      }
    } catch (e) {
      check.result.checkErrors++;
      check.lastError = toBlockError(e, { op: 'check', offset });
      // A table we could not read or write back may differ from what the cache holds.
      qedCheckPutL2Table(check, request);
      s.l2Cache.remove(offset);
      continue;
    }
    qedCheckPutL2Table(check, request);
  }
  if (l1Invalid > 0 && check.fix) {
    try {
      await qedWriteTable(s, s.header.l1TableOffset, l1, 0, s.tableNelems, false);
    } catch (e) {
      check.result.checkErrors++;
      check.lastError = toBlockError(e, { op: 'check' });
    }
  }
}

/** Clear NEED_CHECK after a repair, only when nothing is left to repair (qed-format.md §17.5). */
async function qedCheckMarkClean(s: BDRVQEDState, result: CheckResult): Promise<void> {
  if (result.corruptions > 0 || result.checkErrors > 0) return;
  if ((s.header.features & QED_F_NEED_CHECK) === 0n) return;
  // The repairs must be durable before the image claims to be consistent.
  await qedFile(s).flush();
  s.header.features &= ~QED_F_NEED_CHECK;
  try {
    await qedWriteHeaderSync(s);
    await qedFile(s).flush();
  } catch (e) {
    s.header.features |= QED_F_NEED_CHECK;
    result.checkErrors++;
    throw e;
  }
}

/** One pass of the check (qed_check). The caller holds the allocation lock. */
export async function qedCheckPass(s: BDRVQEDState, fix: boolean): Promise<CheckResult> {
  const cs = s.header.clusterSize;
  const nclusters = s.fileSize / cs;
  const check: QEDCheck = {
    s,
    result: emptyCheckResult(),
    fix,
    used: new Uint8Array(Math.ceil(nclusters / 8) + 1),
    nclusters,
    lastError: null,
    scratch: null,
  };
  check.result.totalClusters = Math.ceil(s.header.imageSize / cs);

  qedSetUsedClusters(check, s.header.l1TableOffset, s.header.tableSize);
  await qedCheckL1Table(check);

  // Leaks are only meaningful when every table was read.
  if (check.result.checkErrors === 0) {
    // A byte of the bitmap at a time where all its 8 clusters are used: an image is mostly
    // used clusters, and this loop meets every cluster of the file before V8 optimises it.
    const used = check.used;
    let leaks = 0;
    for (let i = s.header.headerSize; i < nclusters; ) {
      if ((i & 7) === 0 && i + 8 <= nclusters && used[i >> 3] === 0xff) {
        i += 8;
        continue;
      }
      if ((used[i >> 3] & (1 << (i & 7))) === 0) leaks++;
      i++;
    }
    check.result.leaks += leaks;
    if (fix) {
      try {
        await qedCheckMarkClean(s, check.result);
      } catch {
        // counted as a check error by qedCheckMarkClean
      }
    }
  }
  s.corruptionsRemain = check.result.corruptions > 0;
  return check.result;
}

/**
 * The check hook: any repair mode fixes everything QEMU fixes (invalid offsets; never leaks,
 * never double references). After a repair that changed something, the image is checked again
 * and that second pass is reported, with the first pass's repair counts, as qemu-img does.
 */
export async function qedCheck(s: BDRVQEDState, fix: boolean): Promise<CheckResult> {
  await s.allocLock.lock();
  try {
    // The tables must not change under the check: wait for L2 updates still in flight.
    await qedWaitAllocPending(s);
    const first = await qedCheckPass(s, fix);
    if (!fix || (first.corruptionsFixed === 0 && first.leaksFixed === 0)) return first;
    const second = await qedCheckPass(s, false);
    second.corruptionsFixed = first.corruptionsFixed;
    second.leaksFixed = first.leaksFixed;
    return second;
  } finally {
    s.allocLock.unlock();
  }
}
