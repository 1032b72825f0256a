/**
 * Internal snapshots (QEMU's qcow2-snapshot.c): create, apply (goto), delete, and the
 * read-only temporary load convert -l/-s uses. The table codec lives in snapshot-table.ts, the
 * refcount walk in snapshot-refcount.ts.
 *
 * Crash safety. Each operation orders its writes as QEMU does, so that a crash between any two
 * of them leaves references that are counted (too high at worst: leaks), never a count too low:
 * new L1 copy and refcount increases are durable before the snapshot table names the copy;
 * the table without an entry is durable before that entry's clusters are decreased; the
 * target's clusters are increased before the active L1 is overwritten. What ordering alone
 * cannot avoid is a window where COPIED flags and counts disagree (the count is 2, the flag
 * still says 1); `qemu-img check` calls that an error. So on a v3 image the operation runs
 * under the dirty bit: a crash inside it makes the next read-write open run the repair, which
 * fixes the flags and the leaks. (QEMU does not do this; v2 images, which have no dirty bit,
 * keep QEMU's behaviour and need `check -r all` after such a crash.)
 */
import type { QEMUSnapshotInfo } from '../../block/driver.js';
import { BlockError } from '../../block/errors.js';
import type { BlockDriverState } from '../../block/node.js';
import { qcow2MarkDirty } from './alloc.js';
import { QCOW2_OL_ACTIVE_L1, qcow2CheckNotCorrupt, qcow2PreWriteOverlapCheck } from './corrupt.js';
import { QCOW2_INCOMPAT_DIRTY, QCOW_MAX_L1_SIZE, QCOW_MAX_SNAPSHOTS } from './header.js';
import { qcow2AllocClusters, qcow2FreeClusters } from './refcount.js';
import { qcow2GrowL1Table } from './resize.js';
import { encodeTable } from './table-switch.js';
import { qcow2FlushLocked, qcow2ReadL1, qcow2SnapshotRefcountsFit, qcow2UpdateSnapshotRefcount } from './snapshot-refcount.js';
import { QCOW_MAX_SNAPSHOTS_SIZE, encodeSnapshotTable, qcow2ReadSnapshots, type QCowSnapshot } from './snapshot-table.js';
import { type BDRVQcow2State, qcow2File, qcow2IsDirty, qcow2State } from './state.js';
import { qcow2HasDataFile } from './data-file.js';

/** find_snapshot_by_id_and_name: by both, by id only or by name only (absent = not compared). */
function findSnapshot(list: readonly QCowSnapshot[], id: string | undefined, name: string | undefined): number {
  if (id === undefined && name === undefined) return -1;
  return list.findIndex((sn) => (id === undefined || sn.id === id) && (name === undefined || sn.name === name));
}

/** find_snapshot_by_id_or_name: the id first, then the name. */
function findByIdOrName(list: readonly QCowSnapshot[], idOrName: string): number {
  const i = findSnapshot(list, idOrName, undefined);
  return i >= 0 ? i : findSnapshot(list, undefined, idOrName);
}

/** find_new_snapshot_id: the largest numeric id (strtoul: leading digits, else 0) plus one. */
function newSnapshotId(list: readonly QCowSnapshot[]): string {
  let max = 0;
  for (const sn of list) {
    const m = /^\s*\+?(\d+)/.exec(sn.id);
    if (m) max = Math.max(max, Number(m[1]));
  }
  return String(max + 1);
}

/** qcow2_validate_table for a snapshot's L1 table. */
export function validateSnapshotL1(s: BDRVQcow2State, sn: QCowSnapshot): void {
  if (sn.l1Size * 8 > QCOW_MAX_L1_SIZE) throw new BlockError('EFBIG', 'Snapshot L1 table too large', { op: 'snapshot' });
  if (sn.l1TableOffset % s.clusterSize !== 0) throw new BlockError('EINVAL', 'Snapshot L1 table offset invalid', { op: 'snapshot' });
}

/**
 * qcow2_write_snapshots: the whole table at a new place, durable, then the header's count and
 * offset switched with one synchronous 12-byte write, then the old table freed. An empty
 * table is recorded as offset 0, as QEMU does.
 */
export async function qcow2WriteSnapshots(s: BDRVQcow2State, list: readonly QCowSnapshot[]): Promise<void> {
  const file = qcow2File(s);
  const table = encodeSnapshotTable(list);
  if (table.length > QCOW_MAX_SNAPSHOTS_SIZE) throw new BlockError('EFBIG', 'Snapshot table is too big', { op: 'snapshot' });
  const offset = table.length > 0 ? await qcow2AllocClusters(s, table.length) : 0;
  try {
    // The new table's refcount (and every change before it) is durable first.
    await qcow2FlushLocked(s);
    if (table.length > 0) {
      qcow2PreWriteOverlapCheck(s, 0, offset, table.length);
      await file.pwrite(offset, table);
    }
    // The table is on disk before the header points at it.
    await file.flush();
    const hdr = new Uint8Array(12);
    const v = new DataView(hdr.buffer);
    v.setUint32(0, list.length);
    v.setBigUint64(4, BigInt(offset));
    await file.pwrite(60, hdr);
    await file.flush();
  } catch (e) {
    if (offset > 0) await qcow2FreeClusters(s, offset, table.length, 'always');
    throw e;
  }
  const old = { offset: s.extents.snapshotsOffset, size: s.extents.snapshotsSize };
  s.header.nbSnapshots = list.length;
  s.header.snapshotsOffset = offset;
  s.extents = {
    ...s.extents,
    snapshotsOffset: offset,
    snapshotsSize: table.length,
    inactiveL1: list.map((sn) => ({ offset: sn.l1TableOffset, size: sn.l1Size * 8 })),
  };
  // Nothing points at the old table any more.
  if (old.size > 0) await qcow2FreeClusters(s, old.offset, old.size, 'snapshot');
}

/**
 * Run a snapshot operation under s.lock and, on a clean v3 image, under the dirty bit (see the
 * top of this file): set and durable before the first change, cleared with a header rewrite
 * once every count is on disk.
 */
async function underDirtyBit(s: BDRVQcow2State, op: string, fn: () => Promise<void>): Promise<void> {
  qcow2CheckNotCorrupt(s, op);
  await s.lock.run(async () => {
    const bracket = s.header.version >= 3 && !qcow2IsDirty(s);
    if (bracket) await qcow2MarkDirty(s);
    await fn();
    if (!bracket) return;
    // Counts first (the flush skips them while the image is dirty), then the clean header.
    await s.l2Cache.flush();
    await s.refcountCache.flush();
    s.header.incompatibleFeatures &= ~QCOW2_INCOMPAT_DIRTY;
    await s.updateHeader();
  });
}

/** qcow2_snapshot_create. */
export async function qcow2SnapshotCreate(bs: BlockDriverState, info: QEMUSnapshotInfo): Promise<void> {
  const s = qcow2State(bs);
  const list = await s.lock.run(() => qcow2ReadSnapshots(s));
  if (list.length >= QCOW_MAX_SNAPSHOTS) throw new BlockError('EFBIG', undefined, { op: 'snapshot_create' });
  if (qcow2HasDataFile(s)) throw new BlockError('ENOTSUP', undefined, { op: 'snapshot_create' });
  const id = info.id !== '' ? info.id : newSnapshotId(list);
  if (findSnapshot(list, id, undefined) >= 0) throw new BlockError('EEXIST', undefined, { op: 'snapshot_create' });
  // A count that would overflow is refused before anything is written.
  if (!(await s.lock.run(() => qcow2SnapshotRefcountsFit(s, s.l1Table)))) throw new BlockError('EINVAL', undefined, { op: 'snapshot_create' });
  await underDirtyBit(s, 'snapshot_create', async () => {
    const file = qcow2File(s);
    const l1Bytes = s.l1Table.length * 8;
    const l1Offset = await qcow2AllocClusters(s, l1Bytes);
    const sn: QCowSnapshot = {
      l1TableOffset: l1Offset,
      l1Size: s.l1Table.length,
      id,
      name: info.name,
      dateSec: info.dateSec,
      dateNsec: info.dateNsec,
      vmClockNsec: info.vmClockNsec,
      vmStateSize: info.vmStateSize,
      diskSize: s.header.size,
      icount: info.icount ?? -1n,
      unknownExtraData: new Uint8Array(0),
    };
    // The copy of the active L1, flags and all; made durable by the flush that ends the
    // refcount walk below, before the snapshot table names it.
    qcow2PreWriteOverlapCheck(s, 0, l1Offset, l1Bytes);
    if (l1Bytes > 0) await file.pwrite(l1Offset, encodeTable(s.l1Table));
    // +1 on everything the active L1 reaches; COPIED cleared where a count is now 2.
    await qcow2UpdateSnapshotRefcount(s, s.l1TableOffset, s.l1Table.length, 1);
    await qcow2WriteSnapshots(s, [...list, sn]);
  });
}

/** qcow2_snapshot_goto: the snapshot's L1 becomes the active one. */
export async function qcow2SnapshotGoto(bs: BlockDriverState, idOrName: string): Promise<void> {
  const s = qcow2State(bs);
  const list = await s.lock.run(() => qcow2ReadSnapshots(s));
  const i = findByIdOrName(list, idOrName);
  if (i < 0) throw new BlockError('ENOENT', undefined, { op: 'snapshot_goto' });
  const sn = list[i];
  validateSnapshotL1(s, sn);
  // As for create: a count that would overflow (narrow refcount_bits, e.g. after an amend)
  // is refused before anything is written, instead of failing half-way through the +1 walk.
  const fits = await s.lock.run(async () => qcow2SnapshotRefcountsFit(s, await qcow2ReadL1(s, sn.l1TableOffset, sn.l1Size)));
  if (!fits) throw new BlockError('EINVAL', undefined, { op: 'snapshot_goto' });
  // The image takes the snapshot's size first, through the node so that its length follows
  // (QEMU's blk_truncate, exact, no preallocation). The resize is complete on disk before the
  // apply starts: a crash in between leaves a valid image of the snapshot's size.
  if (sn.diskSize !== s.header.size) await bs.truncate(sn.diskSize, 'off');
  await underDirtyBit(s, 'snapshot_goto', async () => {
    const file = qcow2File(s);
    // The active L1 must be able to take the snapshot's entries; a shorter snapshot table
    // is padded with zeros.
    await qcow2GrowL1Table(s, sn.l1Size, true);
    const target = await qcow2ReadL1(s, sn.l1TableOffset, sn.l1Size, s.l1Table.length);
    // The target's clusters are counted (and durable) before the active L1 points at them.
    await qcow2UpdateSnapshotRefcount(s, sn.l1TableOffset, sn.l1Size, 1);
    qcow2PreWriteOverlapCheck(s, QCOW2_OL_ACTIVE_L1, s.l1TableOffset, target.length * 8);
    await file.pwrite(s.l1TableOffset, encodeTable(target));
    await file.flush();
    // Only now the old active tables lose their reference (the walk reads them from
    // memory: on disk they are already gone). Memory follows the disk even on failure.
    try {
      await qcow2UpdateSnapshotRefcount(s, s.l1TableOffset, s.l1Table.length, -1);
    } finally {
      s.l1Table = target;
    }
    // COPIED flags of the new active state, now that the old state's references are gone.
    await qcow2UpdateSnapshotRefcount(s, s.l1TableOffset, s.l1Table.length, 0);
  });
}

/** qcow2_snapshot_delete: matched by id and name. */
export async function qcow2SnapshotDelete(bs: BlockDriverState, id: string, name: string): Promise<void> {
  const s = qcow2State(bs);
  const list = await s.lock.run(() => qcow2ReadSnapshots(s));
  const i = findSnapshot(list, id, name);
  if (i < 0) throw new BlockError('ENOENT', "Can't find the snapshot", { op: 'snapshot_delete' });
  const sn = list[i];
  await underDirtyBit(s, 'snapshot_delete', async () => {
    // The table without the entry is durable before its clusters are decreased: a crash
    // afterwards leaks them, it never leaves the entry pointing at freed clusters.
    await qcow2WriteSnapshots(s, list.filter((_, k) => k !== i));
    await qcow2UpdateSnapshotRefcount(s, sn.l1TableOffset, sn.l1Size, -1);
    await qcow2FreeClusters(s, sn.l1TableOffset, sn.l1Size * 8, 'snapshot');
    // Clusters only the deleted snapshot shared are the active state's alone again.
    await qcow2UpdateSnapshotRefcount(s, s.l1TableOffset, s.l1Table.length, 0);
  });
}

/**
 * qcow2_snapshot_load_tmp: a read-only node shows the snapshot (by id and/or name) instead of
 * the active state until it is closed. Nothing is written.
 */
export async function qcow2SnapshotLoadTmp(bs: BlockDriverState, id: string | undefined, name: string | undefined): Promise<void> {
  const s = qcow2State(bs);
  if (!bs.readOnly) throw new BlockError('EPERM', undefined, { op: 'snapshot_load_tmp' });
  await s.lock.run(async () => {
    const list = await qcow2ReadSnapshots(s);
    const i = findSnapshot(list, id, name);
    if (i < 0) throw new BlockError('ENOENT', "Can't find snapshot", { op: 'snapshot_load_tmp' });
    const sn = list[i];
    validateSnapshotL1(s, sn);
    s.l1Table = await qcow2ReadL1(s, sn.l1TableOffset, sn.l1Size);
    s.l1TableOffset = sn.l1TableOffset;
  });
}
