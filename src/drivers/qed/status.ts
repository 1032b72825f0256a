/**
 * Block status (QEMU's bdrv_qed_co_block_status): one run from the same planner the request
 * path uses, and the same answer now when the L2 table is cached (the blockStatusNow hook:
 * map and convert ask once per extent, and a cached answer needs no promise).
 */
import type { BlockStatus } from '../../block/driver.js';
import type { BlockDriverState } from '../../block/node.js';
import { BDRV_BLOCK_ALLOCATED, BDRV_BLOCK_DATA, BDRV_BLOCK_OFFSET_VALID, BDRV_BLOCK_ZERO, unallocatedZeroNow, type StatusExtents } from '../../block/status-extents.js';
import { type QEDClusterRun, qedFindCluster, qedFindClusterNow, qedL2TableNow, qedPlanInTable, qedRunOffsetValid } from './cluster.js';
import type { QEDTable } from './table.js';
import { type BDRVQEDState, type QEDRequest, qedFile, qedL1Index, qedState } from './state.js';

/**
 * The status of a planned run. Not allocated here: the data comes from the backing file, and
 * reads as zeros when there is none or the range starts past its end (`pastBacking`; QEMU's
 * generic block status adds this for every format with backing support).
 */
function runStatus(s: BDRVQEDState, run: QEDClusterRun, pastBacking: boolean): BlockStatus {
  switch (run.kind) {
    case 'found':
      return { pnum: run.length, allocated: true, data: true, zero: false, offset: run.hostOffset, file: qedFile(s) };
    case 'zero':
      return { pnum: run.length, allocated: true, data: false, zero: true };
    default:
      return { pnum: run.length, allocated: false, data: false, zero: pastBacking };
  }
}

export async function qedCoBlockStatus(bs: BlockDriverState, offset: number, bytes: number): Promise<BlockStatus> {
  const s = qedState(bs);
  const request: QEDRequest = { l2Table: null };
  try {
    const run = await qedFindCluster(s, request, offset, bytes);
    const backing = bs.backing;
    const unallocated = run.kind === 'l1-unallocated' || run.kind === 'l2-unallocated';
    return runStatus(s, run, unallocated && (!backing || offset >= (await backing.getLength())));
  } finally {
    s.l2Cache.unref(request.l2Table);
  }
}

export async function qedCoIsAllocated(bs: BlockDriverState, offset: number, bytes: number): Promise<{ allocated: boolean; pnum: number }> {
  const st = await qedCoBlockStatus(bs, offset, bytes);
  return { allocated: st.allocated, pnum: st.pnum };
}

/** The blockStatusNow hook: null when the table is not cached or the backing length unknown. */
export function qedBlockStatusNow(bs: BlockDriverState, offset: number, bytes: number): BlockStatus | null {
  const s = bs.opaque as BDRVQEDState | null;
  if (s === null) return null;
  const run = qedFindClusterNow(s, offset, bytes);
  if (run === null) return null;
  const pastBacking = run.kind === 'l1-unallocated' || run.kind === 'l2-unallocated' ? unallocatedZeroNow(bs, offset) : false;
  return pastBacking === null ? null : runStatus(s, run, pastBacking);
}

/**
 * The blockStatusExtents hook: qedBlockStatusNow's answers, one run after another, a cached
 * table at a time (one L1 and cache lookup per table, not per run: map meets tens of
 * thousands of runs).
 */
export function qedBlockStatusExtents(bs: BlockDriverState, offset: number, bytes: number, out: StatusExtents): void {
  const s = bs.opaque as BDRVQEDState | null;
  if (s === null) return;
  out.file = qedFile(s);
  const end = offset + bytes;
  let pos = offset;
  while (pos < end && out.count < out.capacity) {
    const tableEnd = Math.min(end, (qedL1Index(s, pos) + 1) * s.l2Span);
    const table = qedL2TableNow(s, pos);
    if (table === undefined) return;
    pos = tableExtents(bs, s, table, pos, tableEnd, out);
    if (pos < tableEnd) return;
  }
}

/**
 * The runs of one table's span from `pos` to `tableEnd` (`table` null: no table, unallocated);
 * where it stopped (at an invalid entry, or where the backing length is not known now).
 */
function tableExtents(bs: BlockDriverState, s: BDRVQEDState, table: QEDTable | null, pos: number, tableEnd: number, out: StatusExtents): number {
  while (pos < tableEnd && out.count < out.capacity) {
    const run: QEDClusterRun = table === null ? { kind: 'l1-unallocated', hostOffset: 0, length: tableEnd - pos } : qedPlanInTable(s, table, pos, tableEnd - pos);
    if (run.kind === 'found') {
      if (!qedRunOffsetValid(s, run, pos)) break;
      out.push(run.length, BDRV_BLOCK_DATA | BDRV_BLOCK_ALLOCATED | BDRV_BLOCK_OFFSET_VALID, run.hostOffset);
    } else if (run.kind === 'zero') {
      out.push(run.length, BDRV_BLOCK_ZERO | BDRV_BLOCK_ALLOCATED, 0);
    } else {
      const zero = unallocatedZeroNow(bs, pos);
      if (zero === null) break;
      out.push(run.length, zero ? BDRV_BLOCK_ZERO : 0, 0);
    }
    pos += run.length;
  }
  return pos;
}
