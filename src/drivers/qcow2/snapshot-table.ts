/**
 * The qcow2 snapshot table (QEMU's qcow2_read_snapshots / qcow2_write_snapshots layout):
 * entries of a 40-byte header, extra data, id and name, each padded to 8 bytes. Extra data
 * QEMU does not know (past the 24 bytes of vm_state_size_large, disk_size, icount) is kept
 * as it is, so rewriting the table preserves it.
 */
import type { QEMUSnapshotInfo } from '../../block/driver.js';
import { BlockError } from '../../block/errors.js';
import { decodeText, readFields, walkAlignedEntries } from './entry-walk.js';
import type { BlockDriverState } from '../../block/node.js';
import type { BDRVQcow2State } from './state.js';

/** QEMU's QCOW_MAX_SNAPSHOT_EXTRA_DATA and QCOW_MAX_SNAPSHOTS_SIZE. */
export const QCOW_MAX_SNAPSHOT_EXTRA_DATA = 1024;
export const QCOW_MAX_SNAPSHOTS_SIZE = 64 * 1024 * 1024;
const SNAPSHOT_HEADER_SIZE = 40;
const SNAPSHOT_FIELDS = {
  l1TableOffset: ['u64', 0],
  l1Size: ['u32', 8],
  idLen: ['u16', 12],
  nameLen: ['u16', 14],
  dateSec: ['u32', 16],
  dateNsec: ['u32', 20],
  vmClockNsec: ['b64', 24],
  vmStateSize32: ['u32', 32],
  extraSize: ['u32', 36],
} as const;
/** The extra data QEMU 7.2 writes and understands. */
export const SNAPSHOT_EXTRA_DATA_SIZE = 24;

/** One entry of the table, every field as stored (QCowSnapshot). */
export interface QCowSnapshot {
  l1TableOffset: number;
  l1Size: number;
  id: string;
  name: string;
  dateSec: number;
  dateNsec: number;
  vmClockNsec: bigint;
  /** The 64-bit size when the extra data has it, else the 32-bit header field. */
  vmStateSize: number;
  /** Guest size when the snapshot was taken (the image's size when the entry does not say). */
  diskSize: number;
  /** -1n when unrecorded. */
  icount: bigint;
  /** Extra data beyond the 24 known bytes, kept for the rewrite. */
  unknownExtraData: Uint8Array;
}

/**
 * Decode `nb` entries from `buf` (the table read from its offset). `imageSize` fills
 * disk_size for entries too old to record it.
 */
export function decodeSnapshotTable(buf: Uint8Array, nb: number, imageSize: number): { snapshots: QCowSnapshot[]; size: number } {
  const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const need = (pos: number, n: number): void => {
    if (pos + n > buf.length) throw new BlockError('EINVAL', 'Snapshot table is too big', { op: 'open' });
  };
  const snapshots: QCowSnapshot[] = [];
  const size = walkAlignedEntries(nb, (pos, i) => {
    need(pos, SNAPSHOT_HEADER_SIZE);
    const h = readFields(v, pos, SNAPSHOT_FIELDS);
    if (h.extraSize > QCOW_MAX_SNAPSHOT_EXTRA_DATA) {
      throw new BlockError('EFBIG', `Too much extra metadata in snapshot table entry ${i}`, { op: 'open' });
    }
    const e = pos + SNAPSHOT_HEADER_SIZE;
    need(e, h.extraSize + h.idLen + h.nameLen);
    const x = h.extraSize;
    const { l1TableOffset, l1Size, dateSec, dateNsec, vmClockNsec } = h;
    snapshots.push({
      l1TableOffset,
      l1Size,
      dateSec,
      dateNsec,
      vmClockNsec,
      vmStateSize: x >= 8 ? Number(v.getBigUint64(e)) : h.vmStateSize32,
      diskSize: x >= 16 ? Number(v.getBigUint64(e + 8)) : imageSize,
      icount: x >= 24 ? v.getBigInt64(e + 16) : -1n,
      unknownExtraData: Uint8Array.from(buf.subarray(e + Math.min(x, SNAPSHOT_EXTRA_DATA_SIZE), e + x)),
      id: decodeText(buf, e + x, h.idLen),
      name: decodeText(buf, e + x + h.idLen, h.nameLen),
    });
    const end = e + x + h.idLen + h.nameLen;
    if (end > QCOW_MAX_SNAPSHOTS_SIZE) throw new BlockError('EFBIG', 'Snapshot table is too big', { op: 'open' });
    return end;
  });
  return { snapshots, size };
}

/** The table's bytes as QEMU writes it: 24 bytes of known extra data, then the kept rest. */
export function encodeSnapshotTable(snapshots: readonly QCowSnapshot[]): Uint8Array {
  const enc = new TextEncoder();
  const parts = snapshots.map((sn) => ({ sn, id: enc.encode(sn.id), name: enc.encode(sn.name) }));
  let size = 0;
  for (const p of parts) size = Math.ceil(size / 8) * 8 + SNAPSHOT_HEADER_SIZE + SNAPSHOT_EXTRA_DATA_SIZE + p.sn.unknownExtraData.length + p.id.length + p.name.length;
  const buf = new Uint8Array(size);
  const v = new DataView(buf.buffer);
  let pos = 0;
  for (const { sn, id, name } of parts) {
    pos = Math.ceil(pos / 8) * 8;
    const extraSize = SNAPSHOT_EXTRA_DATA_SIZE + sn.unknownExtraData.length;
    v.setBigUint64(pos, BigInt(sn.l1TableOffset));
    v.setUint32(pos + 8, sn.l1Size);
    v.setUint16(pos + 12, id.length);
    v.setUint16(pos + 14, name.length);
    v.setUint32(pos + 16, sn.dateSec);
    v.setUint32(pos + 20, sn.dateNsec);
    v.setBigUint64(pos + 24, sn.vmClockNsec);
    // A VM state of 4 GiB or more: older readers see a disk-only snapshot, not a truncated one.
    v.setUint32(pos + 32, sn.vmStateSize <= 0xffffffff ? sn.vmStateSize : 0);
    v.setUint32(pos + 36, extraSize);
    const e = pos + SNAPSHOT_HEADER_SIZE;
    v.setBigUint64(e, BigInt(sn.vmStateSize));
    v.setBigUint64(e + 8, BigInt(sn.diskSize));
    v.setBigInt64(e + 16, sn.icount);
    buf.set(sn.unknownExtraData, e + SNAPSHOT_EXTRA_DATA_SIZE);
    buf.set(id, e + extraSize);
    buf.set(name, e + extraSize + id.length);
    pos = e + extraSize + id.length + name.length;
  }
  return buf;
}

/** Read the image's snapshot table from its file (bounded by the file and QEMU's limit). */
export async function qcow2ReadSnapshots(s: BDRVQcow2State): Promise<QCowSnapshot[]> {
  const nb = s.header.nbSnapshots;
  if (nb === 0) return [];
  const file = s.bs.file as BlockDriverState;
  const len = Math.max(0, Math.min(QCOW_MAX_SNAPSHOTS_SIZE, (await file.getLength()) - s.header.snapshotsOffset));
  const buf = new Uint8Array(len);
  if (len > 0) await file.pread(s.header.snapshotsOffset, buf);
  return decodeSnapshotTable(buf, nb, s.header.size).snapshots;
}

/** What bdrv_snapshot_list reports of an entry. */
export function snapshotInfo(sn: QCowSnapshot): QEMUSnapshotInfo {
  return {
    id: sn.id,
    name: sn.name,
    vmStateSize: sn.vmStateSize,
    dateSec: sn.dateSec,
    dateNsec: sn.dateNsec,
    vmClockNsec: sn.vmClockNsec,
    icount: sn.icount === -1n ? null : sn.icount,
  };
}
