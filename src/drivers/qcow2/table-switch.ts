/**
 * Moving a table the header points at (the L1 table on growth, the refcount table when the
 * refcount area grows): the new table is written and flushed first, then the header fields
 * that locate it are rewritten with one synchronous write, and only then is the old table
 * freed. A crash before the header write leaves the old table in use and the new one leaked;
 * after it, the old one leaked: never a header pointing at a table that is not on disk.
 */
import type { BlkDebugEvent } from '../../block/events.js';
import { qcow2PreWriteOverlapCheck } from './corrupt.js';
import { usedEntries } from './entries.js';
import { qcow2FreeClusters } from './refcount.js';
import { type BDRVQcow2State, qcow2File } from './state.js';

/** A table of 64-bit entries in its on-disk form (big-endian). */
export function encodeTable(entries: BigUint64Array): Uint8Array {
  const buf = new Uint8Array(entries.length * 8);
  const v = new DataView(buf.buffer);
  for (const i of usedEntries(entries)) v.setBigUint64(i * 8, entries[i]);
  return buf;
}

/** The entries of a table in its on-disk form (`raw` starts on a 4-byte boundary), `length` of them (zeros past raw). */
export function decodeTable(raw: Uint8Array, length = raw.length / 8): BigUint64Array {
  const table = new BigUint64Array(length);
  const n = Math.min(length, Math.floor(raw.length / 8));
  const v = new DataView(raw.buffer, raw.byteOffset, n * 8);
  for (const i of usedEntries(raw.subarray(0, n * 8))) table[i] = v.getBigUint64(i * 8);
  return table;
}

type LocatingField = 'l1Size' | 'l1TableOffset' | 'refcountTableOffset' | 'refcountTableClusters';

/** A table the header locates: its debug events and its adjacent header fields (big-endian). */
export interface TableKind {
  writeEvent: BlkDebugEvent;
  switchEvent: BlkDebugEvent;
  /** Byte offset in the header of the first field. */
  headerAt: number;
  fields: readonly (readonly [name: LocatingField, width: 4 | 8])[];
}

export const L1_TABLE: TableKind = {
  writeEvent: 'l1_grow_write_table',
  switchEvent: 'l1_grow_activate_table',
  headerAt: 36,
  fields: [
    ['l1Size', 4],
    ['l1TableOffset', 8],
  ],
};

export const REFCOUNT_TABLE: TableKind = {
  writeEvent: 'refblock_alloc_write_table',
  switchEvent: 'refblock_alloc_switch_table',
  headerAt: 48,
  fields: [
    ['refcountTableOffset', 8],
    ['refcountTableClusters', 4],
  ],
};

/**
 * Write the new table at `offset` and flush it; then point the header at it, `values` for the
 * kind's fields in one write (atomic, being within a sector) and flushed; then `commit` the
 * in-memory state; then free the old table's clusters. The new table's refcounts must be on
 * disk already.
 */
export async function qcow2SwitchTable(
  s: BDRVQcow2State,
  kind: TableKind,
  entries: BigUint64Array,
  offset: number,
  values: readonly number[],
  old: { offset: number; bytes: number },
  commit: () => void,
): Promise<void> {
  const file = qcow2File(s);
  const buf = encodeTable(entries);
  await file.debugEvent(kind.writeEvent);
  // The new table lies in clusters just allocated: nothing may overlap it.
  qcow2PreWriteOverlapCheck(s, 0, offset, buf.length);
  await file.pwrite(offset, buf);
  // The table is durable before anything points at it.
  await file.flush();
  const hdr = new Uint8Array(kind.fields.reduce((n, [, w]) => n + w, 0));
  const v = new DataView(hdr.buffer);
  let pos = 0;
  kind.fields.forEach(([, width], i) => {
    if (width === 8) v.setBigUint64(pos, BigInt(values[i]));
    else v.setUint32(pos, values[i]);
    pos += width;
  });
  await file.debugEvent(kind.switchEvent);
  await file.pwrite(kind.headerAt, hdr);
  await file.flush();
  // Only a durable switch changes what this process uses.
  kind.fields.forEach(([name], i) => (s.header[name] = values[i]));
  commit();
  // Nothing points at the old table any more, on disk or in memory: its clusters can go.
  await qcow2FreeClusters(s, old.offset, old.bytes, 'other');
}
