/**
 * Block status (QEMU's qcow2_co_block_status): one planned run, with metadata preallocation
 * detected once per open; and the same answer now when the L2 table is cached (the
 * blockStatusNow hook: map and convert ask once per extent, and a cached answer needs no
 * promise).
 */
import type { BlockStatus } from '../../block/driver.js';
import type { BlockDriverState } from '../../block/node.js';
import { BDRV_BLOCK_ALLOCATED, BDRV_BLOCK_DATA, BDRV_BLOCK_OFFSET_VALID, BDRV_BLOCK_ZERO, unallocatedZeroNow, type StatusExtents } from '../../block/status-extents.js';
import { type Qcow2Run, qcow2GetHostOffsetNow, qcow2L2OffsetNow, qcow2PlanUnlocked, runLimit, tableView } from './cluster.js';
import { planPlainRun } from './cluster-plain.js';
import { qcow2CheckNotCorrupt } from './corrupt.js';
import { qcow2DataNode, qcow2HasDataFile } from './data-file.js';
import { qcow2GetRefcount } from './refcount.js';
import { RefcountReader } from './refcount-now.js';
import { type BDRVQcow2State, qcow2File, qcow2State } from './state.js';

/**
 * The status of a planned run that needs nothing more (not data in a metadata-preallocated
 * image). Unallocated runs read as zeros when there is no backing file or the range starts
 * past its end (`pastBacking`).
 */
function runStatus(s: BDRVQcow2State, run: Qcow2Run, pastBacking: boolean): BlockStatus {
  // Built whole rather than spread from a partial: map and convert ask once per extent.
  switch (run.kind) {
    case 'normal':
      return run.allocated
        ? { pnum: run.bytes, allocated: true, data: true, zero: false, offset: run.hostOffset, file: qcow2DataNode(s) }
        : { pnum: run.bytes, allocated: true, data: true, zero: false };
    case 'compressed':
      return { pnum: run.bytes, allocated: true, data: true, zero: false };
    case 'zero':
      return run.allocated
        ? { pnum: run.bytes, allocated: true, data: false, zero: true, offset: run.hostOffset, file: qcow2DataNode(s) }
        : { pnum: run.bytes, allocated: true, data: false, zero: true };
    default:
      return run.allocated
        ? { pnum: run.bytes, allocated: false, data: false, zero: pastBacking, offset: run.hostOffset, file: qcow2DataNode(s) }
        : { pnum: run.bytes, allocated: false, data: false, zero: pastBacking };
  }
}

export async function qcow2BlockStatus(bs: BlockDriverState, offset: number, bytes: number): Promise<BlockStatus> {
  const s = qcow2State(bs);
  qcow2CheckNotCorrupt(s, 'block_status');
  const planned = qcow2PlanUnlocked(s, offset, bytes);
  const run = planned instanceof Promise ? await planned : planned;
  if (run.kind === 'normal' && (await qcow2MetadataPreallocated(s))) {
    // Preallocated clusters may never have been written: ask the file whether they read
    // as zeros (QEMU's BDRV_BLOCK_RECURSE), and answer for no more than the file does.
    const st = await qcow2DataNode(s).blockStatus(run.hostOffset, run.bytes);
    return { pnum: Math.min(st.pnum, run.bytes), allocated: true, data: true, zero: st.zero, offset: run.hostOffset, file: qcow2DataNode(s) };
  }
  const backing = bs.backing;
  return runStatus(s, run, run.kind === 'unallocated' && (!backing || offset >= (await backing.getLength())));
}

/**
 * The blockStatusNow hook: what qcow2BlockStatus would answer with s.lock free and nothing to
 * wait for; null when s.lock is held, the image is corrupt, the table is not cached, the
 * backing length is unknown, or data needs the preallocation decision or the file's status.
 */
export function qcow2BlockStatusNow(bs: BlockDriverState, offset: number, bytes: number): BlockStatus | null {
  const s = bs.opaque as BDRVQcow2State | null;
  if (s === null || s.lock.isLocked || s.corrupt) return null;
  const run = qcow2GetHostOffsetNow(s, offset, bytes);
  if (run === null || (run.kind === 'normal' && s.metadataPreallocation !== false)) return null;
  const pastBacking = run.kind === 'unallocated' ? unallocatedZeroNow(bs, offset) : false;
  return pastBacking === null ? null : runStatus(s, run, pastBacking);
}

/**
 * The blockStatusExtents hook: qcow2BlockStatusNow's answers for the plain runs of cached
 * tables (data contiguous on the host, unallocated entries, planned by planPlainRun), table
 * after table; it stops at anything else, which blockStatusNow or blockStatus then answers.
 */
export function qcow2BlockStatusExtents(bs: BlockDriverState, offset: number, bytes: number, out: StatusExtents): void {
  const s = bs.opaque as BDRVQcow2State | null;
  // planPlainRun knows standard entries in the image file only.
  if (s === null || s.lock.isLocked || s.corrupt || s.extendedL2 || qcow2HasDataFile(s)) return;
  out.file = qcow2DataNode(s);
  const end = offset + bytes;
  let pos = offset;
  while (pos < end && out.count < out.capacity) {
    const tableEnd = pos + runLimit(s, pos, end - pos);
    const l2Offset = qcow2L2OffsetNow(s, pos);
    if (l2Offset === null) return;
    const data = l2Offset === 0 ? null : s.l2Cache.lookup(l2Offset);
    if (data === undefined) return;
    pos = tableExtents(bs, s, data === null ? null : tableView(data), pos, tableEnd, out);
    if (pos < tableEnd) return;
  }
}

/**
 * The extents of one table from `pos` to `tableEnd` (`view` null: no table, unallocated), as
 * far as planPlainRun plans them; where it stopped. Apart from the table lookup: this loop is
 * the one V8 optimises, and the lookup's keys (file offsets) turn from small integers into
 * doubles past 2 GiB of the file, which threw the optimised code away.
 */
function tableExtents(bs: BlockDriverState, s: BDRVQcow2State, view: DataView | null, pos: number, tableEnd: number, out: StatusExtents): number {
  while (pos < tableEnd && out.count < out.capacity) {
    const run = view === null ? null : planPlainRun(s, pos, tableEnd - pos, view);
    if (view !== null && run === null) break;
    if (run === null || run.kind === 'unallocated') {
      // Zeros past the backing file's end, as qcow2BlockStatusNow answers.
      const zero = unallocatedZeroNow(bs, pos);
      if (zero === null) break;
      const n = run === null ? tableEnd - pos : run.bytes;
      out.push(n, zero ? BDRV_BLOCK_ZERO : 0, 0);
      pos += n;
    } else {
      // Data needs the preallocation decision first (qcow2BlockStatus makes it).
      if (s.metadataPreallocation !== false) break;
      out.push(run.bytes, BDRV_BLOCK_DATA | BDRV_BLOCK_ALLOCATED | BDRV_BLOCK_OFFSET_VALID, run.hostOffset);
      pos += run.bytes;
    }
  }
  return pos;
}

/**
 * Does the image look metadata-preallocated (qcow2_detect_metadata_preallocation): clearly
 * more clusters counted than the file really occupies? Decided once per open.
 */
async function qcow2MetadataPreallocated(s: BDRVQcow2State): Promise<boolean> {
  if (s.metadataPreallocation !== null) return s.metadataPreallocation;
  const file = qcow2File(s);
  let answer = false;
  try {
    const realClusters = Math.floor((await file.getAllocatedFileSize()) / s.clusterSize);
    const threshold = Math.max(Math.floor((realClusters * 10) / 9), realClusters + 2);
    const end = Math.ceil((await file.getLength()) / s.clusterSize);
    let count = 0;
    await s.lock.run(async () => {
      // Counted from cached refcount blocks a block at a time, a cluster read (and its block
      // cached) where one is not; stopped at a block's end once the threshold is reached.
      const counts = new RefcountReader(s);
      for (let i = 0; i < end && count < threshold; ) {
        const run = counts.countNonZero(i, end);
        if (run !== null) {
          count += run.count;
          i = run.next;
        } else {
          counts.forget();
          if ((await qcow2GetRefcount(s, i)) !== 0) count++;
          i++;
        }
      }
    });
    answer = count >= threshold;
  } catch {
    // Without the file's allocation there is nothing to compare with: no recursion.
  }
  s.metadataPreallocation = answer;
  return answer;
}
