/**
 * L1/L2 access and lookup planning (QEMU's qcow2-cluster.c, lookup half).
 *
 * qcow2GetHostOffset plans one run: from a guest offset, how many bytes share one kind
 * (normal data at a contiguous host range, zero, unallocated, one compressed cluster),
 * never crossing an L2 table. Reads, block status and map all execute such plans.
 * Callers hold s.lock while planning; the plan is executed afterwards.
 */
import { BlockError } from '../../block/errors.js';
import type { BlockDriverState } from '../../block/node.js';
import type { CacheEntry } from './cache.js';
import { QCOW2_OL_ACTIVE_L1, printfHex, qcow2OverlapIndexChanged, qcow2PreWriteOverlapCheck, qcow2SignalCorruption } from './corrupt.js';
import { qcow2HasDataFile } from './data-file.js';
import { planPlainRun } from './cluster-plain.js';
import {
  L1E_OFFSET_MASK,
  L2E_OFFSET_MASK,
  QCOW_OFLAG_COPIED,
  type Qcow2SubclusterType,
  subclusterRangeType,
  subclusterType,
  tableWords,
} from './entries.js';
import { qcow2AllocClusters, qcow2FreeClusters } from './refcount.js';
import { qcow2GrowL1Table } from './resize.js';
import {
  type BDRVQcow2State,
  offsetIntoCluster,
  offsetToL1Index,
  offsetToL2Index,
  qcow2File,
  qcow2MetadataSettled,
  qcow2Trace,
} from './state.js';

export type Qcow2RunKind = 'normal' | 'zero' | 'unallocated' | 'compressed';

export interface Qcow2Run {
  kind: Qcow2RunKind;
  /** Guest bytes this answer holds for (> 0). */
  bytes: number;
  /** normal (and zero-alloc): host offset of the first byte; compressed: 0. */
  hostOffset: number;
  /** QEMU's subcluster type of the whole run (map and block status tell them apart). */
  type: Qcow2SubclusterType;
  /** A host cluster backs the run (normal, zero-alloc, unallocated-alloc) at hostOffset. */
  allocated: boolean;
  /** compressed: the L2 entry (descriptor). */
  l2Entry: bigint;
}

/**
 * A view of the table last looked at, kept for the next lookup: a lookup reads a few entries
 * of one table, and map and check read thousands, each a DataView less.
 */
let viewData: Uint8Array | null = null;
let viewOfData: DataView<ArrayBufferLike> = new DataView(new ArrayBuffer(0));
export function tableView(data: Uint8Array): DataView<ArrayBufferLike> {
  if (data !== viewData) {
    viewOfData = new DataView(data.buffer, data.byteOffset);
    viewData = data;
  }
  return viewOfData;
}

export function getL2Entry(s: BDRVQcow2State, data: Uint8Array, index: number): bigint {
  return tableView(data).getBigUint64(index * s.l2EntrySize);
}

export function getL2Bitmap(s: BDRVQcow2State, data: Uint8Array, index: number): bigint {
  return s.extendedL2 ? tableView(data).getBigUint64(index * 16 + 8) : 0n;
}

export function setL2Entry(s: BDRVQcow2State, data: Uint8Array, index: number, entry: bigint): void {
  tableView(data).setBigUint64(index * s.l2EntrySize, entry);
}

export function setL2Bitmap(s: BDRVQcow2State, data: Uint8Array, index: number, bitmap: bigint): void {
  tableView(data).setBigUint64(index * 16 + 8, bitmap);
}

/** The L2 table offset of an L1 entry, checked for alignment. */
export function l2OffsetOf(s: BDRVQcow2State, l1Index: number): number {
  const l2Offset = Number(s.l1Table[l1Index] & L1E_OFFSET_MASK);
  if (offsetIntoCluster(s, l2Offset) !== 0) {
    qcow2SignalCorruption(s, true, `L2 table offset ${printfHex(l2Offset)} unaligned (L1 index: ${printfHex(l1Index)})`);
    throw new BlockError('EIO', undefined, { op: 'l2_load' });
  }
  return l2Offset;
}

/** Take a reference to an L2 table through the cache (l2_load). */
export function l2Load(s: BDRVQcow2State, l2Offset: number): Promise<CacheEntry> {
  return s.l2Cache.get(l2Offset, 'l2_load');
}

function typeAt(s: BDRVQcow2State, data: Uint8Array, index: number, sc: number): Qcow2SubclusterType {
  return subclusterType(getL2Entry(s, data, index), getL2Bitmap(s, data, index), sc, s.extendedL2, true, qcow2HasDataFile(s));
}

function kindOf(t: Qcow2SubclusterType): Qcow2RunKind | 'invalid' {
  switch (t) {
    case 'normal':
      return 'normal';
    case 'zero-plain':
    case 'zero-alloc':
      return 'zero';
    case 'unallocated-plain':
    case 'unallocated-alloc':
      return 'unallocated';
    case 'compressed':
      return 'compressed';
    default:
      return 'invalid';
  }
}

const TWO32 = 2 ** 32;

/**
 * The common case of the count above without a BigInt per entry (map and check walk tables of
 * thousands of entries): from `pos`, skip the plain (non-extended) entries that are the entry
 * at `first` itself, or with a host cluster (`hostBase` >= 0) its very flag bits over the next
 * host offset. Such an entry has the first one's type and continues its host range; the first
 * entry that is not so is left to the full check, which decides it.
 */
function countSamePlainEntries(data: Uint8Array, first: number, pos: number, end: number, hostBase: number, cs: number): number {
  const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const hi0 = dv.getUint32(first * 8);
  const lo0 = dv.getUint32(first * 8 + 4);
  if (hostBase < 0) {
    while (pos < end && dv.getUint32(pos * 8) === hi0 && dv.getUint32(pos * 8 + 4) === lo0) pos++;
    return pos;
  }
  // Offset bits are 9-55: the high word's low 24 bits and the low word's bits 9-31.
  const hiFlags = hi0 & 0xff000000;
  const loFlags = lo0 & 0x1ff;
  for (; pos < end; pos++) {
    const host = hostBase + (pos - first) * cs;
    const hi = (hiFlags | Math.floor(host / TWO32)) >>> 0;
    const lo = (loFlags | host % TWO32) >>> 0;
    if (dv.getUint32(pos * 8) !== hi || dv.getUint32(pos * 8 + 4) !== lo) break;
  }
  return pos;
}

/**
 * Plan the run at guest `offset` (at most `bytes`), QEMU's qcow2_get_host_offset: the same
 * kind, and for data a contiguous host range, inside one L2 table.
 */
export async function qcow2GetHostOffset(s: BDRVQcow2State, offset: number, bytes: number): Promise<Qcow2Run> {
  const maxBytes = runLimit(s, offset, bytes);
  const l1Index = offsetToL1Index(s, offset);
  if (l1Index >= s.l1Table.length) return unallocatedRun(maxBytes);
  const l2Offset = l2OffsetOf(s, l1Index);
  if (l2Offset === 0) return unallocatedRun(maxBytes);
  const table = await l2Load(s, l2Offset);
  try {
    return planInTable(s, offset, maxBytes, l2Offset, table.data, false)!;
  } finally {
    s.l2Cache.put(table);
  }
}

/**
 * The same plan, now, for the request fast paths: null when it would need the disk (the L2
 * table is not cached) or anything unusual (an entry that is corrupt: the caller then takes
 * the ordinary path, which reports it). The caller must make sure s.lock is free: this is
 * what a lock/plan/unlock with no wait in between would see.
 */
export function qcow2GetHostOffsetNow(s: BDRVQcow2State, offset: number, bytes: number): Qcow2Run | null {
  const maxBytes = runLimit(s, offset, bytes);
  const l2Offset = qcow2L2OffsetNow(s, offset);
  if (l2Offset === 0) return unallocatedRun(maxBytes);
  if (l2Offset === null) return null;
  const data = s.l2Cache.lookup(l2Offset);
  return data === undefined ? null : planInTable(s, offset, maxBytes, l2Offset, data, true);
}

/**
 * The L1 table last looked at as 32-bit words in host order, kept for the next lookup (as
 * tableView): reading an entry of the BigUint64Array is a BigInt, and masking it another, in
 * every request's lookup. LO is the index of an entry's low word in that order.
 */
let l1Of: BigUint64Array | null = null;
let l1Words: Uint32Array<ArrayBufferLike> = new Uint32Array(0);
const LO = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1 ? 0 : 1;

/** The L2 table's offset for guest `offset` from the L1 table: 0 for none, null if unaligned. */
export function qcow2L2OffsetNow(s: BDRVQcow2State, offset: number): number | null {
  // offsetToL1Index and offsetIntoCluster spelled out: called per read, V8 did not inline them.
  const cs = s.clusterSize;
  const l1Index = Math.floor(offset / (cs * s.l2Size));
  const l1 = s.l1Table;
  if (l1Index >= l1.length) return 0;
  if (l1 !== l1Of) {
    l1Words = tableWords(l1);
    l1Of = l1;
  }
  // L1E_OFFSET_MASK: bits 9-55, the high word's low 24 bits and the low word's bits 9-31.
  const l2Offset = (l1Words[2 * l1Index + 1 - LO] & 0x00ffffff) * 2 ** 32 + ((l1Words[2 * l1Index + LO] & 0xfffffe00) >>> 0);
  return l2Offset % cs !== 0 ? null : l2Offset;
}

/**
 * Plan a run for a caller that does not hold s.lock: at once when no metadata change is under
 * way and the table is cached (what lock/plan/unlock would see, without a wait in between),
 * otherwise under the lock, counted as a planner while it waits for it.
 */
export function qcow2PlanUnlocked(s: BDRVQcow2State, offset: number, bytes: number): Qcow2Run | Promise<Qcow2Run> {
  if (qcow2MetadataSettled(s)) {
    const run = qcow2GetHostOffsetNow(s, offset, bytes);
    if (run !== null) return run;
  }
  return planQueued(s, offset, bytes);
}

async function planQueued(s: BDRVQcow2State, offset: number, bytes: number): Promise<Qcow2Run> {
  s.plannersQueued++;
  try {
    await s.lock.lock();
  } finally {
    // Running now: from here it may load a table (and write back another), not settled.
    s.plannersQueued--;
  }
  try {
    return qcow2GetHostOffsetNow(s, offset, bytes) ?? (await qcow2GetHostOffset(s, offset, bytes));
  } finally {
    s.lock.unlock();
  }
}

/** A run never crosses an L2 table. */
export function runLimit(s: BDRVQcow2State, offset: number, bytes: number): number {
  const l2Span = s.clusterSize * s.l2Size;
  return Math.min(bytes, l2Span - (offset % l2Span));
}

function unallocatedRun(bytes: number): Qcow2Run {
  return { kind: 'unallocated', type: 'unallocated-plain', bytes, hostOffset: 0, allocated: false, l2Entry: 0n };
}

/**
 * Plan from the L2 table `data` (at l2Offset in the file). A corrupt entry is signalled and
 * refused (EIO), or with `quiet` only answered with null, leaving both to the caller's retry.
 */
function planInTable(s: BDRVQcow2State, offset: number, maxBytes: number, l2Offset: number, data: Uint8Array, quiet: boolean): Qcow2Run | null {
  const cs = s.clusterSize;
  const l2Index = offsetToL2Index(s, offset);
  const scSize = s.subclusterSize;
  const sc = Math.floor(offsetIntoCluster(s, offset) / scSize);
  const dataFile = qcow2HasDataFile(s);
  if (!s.extendedL2 && !dataFile) {
    const plain = planPlainRun(s, offset, maxBytes, tableView(data));
    if (plain !== null) return plain;
  }
  const first = typeAt(s, data, l2Index, sc);
  const kind = kindOf(first);
  const entry = getL2Entry(s, data, l2Index);
  const corrupt = (message: string, index = l2Index): null => {
    if (quiet) return null;
    qcow2SignalCorruption(s, true, `${message} (L2 offset: ${printfHex(l2Offset)}, L2 index: ${printfHex(index)})`);
    throw new BlockError('EIO', undefined, { op: 'read', offset });
  };
  if (s.header.version < 3 && (first === 'zero-plain' || first === 'zero-alloc')) return corrupt('Zero cluster entry found in pre-v3 image');
  // Compressed data would have to live in the qcow2 file, which holds no data here.
  if (kind === 'compressed' && dataFile) return corrupt('Compressed cluster entry found in image with external data file');
  const hostBase = Number(entry & L2E_OFFSET_MASK);
  const withHost = first === 'normal' || first === 'zero-alloc' || first === 'unallocated-alloc';
  if (withHost && hostBase % cs !== 0) return corrupt(`Cluster allocation offset ${printfHex(hostBase)} unaligned`);
  // Count subclusters of the same type (and, where a host cluster exists, contiguous on
  // the host), as QEMU's count_contiguous_subclusters does: an invalid entry met on the way
  // is corruption, even one after the range asked for starts.
  const spc = s.extendedL2 ? 32 : 1;
  const nbClusters = Math.ceil((offsetIntoCluster(s, offset) + maxBytes) / cs);
  let count = 0;
  for (let i = 0; i < nbClusters; i++) {
    const from = i === 0 ? sc : 0;
    const e = i === 0 ? entry : getL2Entry(s, data, l2Index + i);
    const r = subclusterRangeType(e, getL2Bitmap(s, data, l2Index + i), from, s.extendedL2, dataFile);
    if (r.type === 'invalid') return corrupt('Invalid cluster entry found ', l2Index + i);
    if (i > 0 && r.type !== first) break;
    if (i > 0 && withHost && Number(e & L2E_OFFSET_MASK) !== hostBase + i * cs) break;
    count += r.count;
    // One compressed cluster per run: each has its own descriptor.
    if (kind === 'compressed' || from + r.count < spc) break;
    if (i === 0 && !s.extendedL2) {
      // Plain entries that repeat the first one (over the next host offsets) without a BigInt
      // each; the first one that does not is left to the full check above.
      const next = countSamePlainEntries(data, l2Index, l2Index + 1, l2Index + nbClusters, withHost ? hostBase : -1, cs);
      count += next - l2Index - 1;
      i = next - l2Index - 1;
    }
  }
  const len = Math.min((count + sc) * scSize, offsetIntoCluster(s, offset) + maxBytes) - offsetIntoCluster(s, offset);
  if (kind === 'compressed') return { kind, type: first, bytes: len, hostOffset: 0, allocated: false, l2Entry: entry };
  const hostOffset = withHost ? hostBase + offsetIntoCluster(s, offset) : 0;
  return { kind: kind as Qcow2RunKind, type: first, bytes: len, hostOffset, allocated: withHost, l2Entry: entry };
}

/** Write one L1 entry synchronously (qcow2_write_l1_entry: 8 bytes with buffered I/O). */
export async function qcow2WriteL1Entry(s: BDRVQcow2State, l1Index: number): Promise<void> {
  const file = qcow2File(s);
  const at = s.l1TableOffset + 8 * l1Index;
  qcow2PreWriteOverlapCheck(s, QCOW2_OL_ACTIVE_L1, at, 8);
  const buf = new Uint8Array(8);
  new DataView(buf.buffer).setBigUint64(0, s.l1Table[l1Index]);
  await file.debugEvent('l1_update');
  await file.pwrite(at, buf);
  await file.flush();
}

/**
 * Allocate a new L2 table for `l1Index`, copying the old (shared) one if there is one, and
 * link it from L1 (l2_allocate).
 */
async function l2Allocate(s: BDRVQcow2State, l1Index: number): Promise<void> {
  const file = qcow2File(s);
  const old = s.l1Table[l1Index];
  qcow2Trace(s, 'qcow2L2Allocate', { l1Index });
  const l2Offset = await qcow2AllocClusters(s, s.clusterSize);
  try {
    if (l2Offset === 0) {
      qcow2SignalCorruption(s, true, 'Preventing invalid allocation of L2 table at offset 0');
      throw new BlockError('EIO', undefined, { op: 'l2_allocate' });
    }
    // Refcount of the new table first: a crash after the L1 update must not leave it free.
    await s.refcountCache.flush();
    const oldOffset = Number(old & L1E_OFFSET_MASK);
    const fresh = await s.l2Cache.getEmpty(l2Offset);
    try {
      if (oldOffset !== 0) {
        await file.debugEvent('l2_alloc_cow_read');
        const src = await l2Load(s, oldOffset);
        fresh.data.set(src.data);
        s.l2Cache.put(src);
      }
      await file.debugEvent('l2_alloc_write');
      s.l2Cache.markDirty(fresh);
    } finally {
      s.l2Cache.put(fresh);
    }
    // The table must be on disk before L1 points at it.
    await s.l2Cache.flush();
    s.l1Table[l1Index] = BigInt(l2Offset) | QCOW_OFLAG_COPIED;
    qcow2OverlapIndexChanged(s);
    await qcow2WriteL1Entry(s, l1Index);
  } catch (e) {
    s.l1Table[l1Index] = old;
    qcow2OverlapIndexChanged(s);
    s.l2Cache.discard(l2Offset);
    if (l2Offset > 0) await qcow2FreeClusters(s, l2Offset, s.clusterSize, 'always');
    throw e;
  }
}

/**
 * The L2 table for guest `offset`, writable in place: allocated or copied first when the L1
 * entry lacks COPIED (get_cluster_table). The caller puts the returned entry.
 */
export async function qcow2GetClusterTable(s: BDRVQcow2State, offset: number): Promise<{ table: CacheEntry; l2Index: number }> {
  const l1Index = offsetToL1Index(s, offset);
  // Past the table: only the VM state area after the guest disk gets here; the L1 grows.
  if (l1Index >= s.l1Table.length) await qcow2GrowL1Table(s, l1Index + 1, false);
  const oldL2 = l2OffsetOf(s, l1Index);
  if ((s.l1Table[l1Index] & QCOW_OFLAG_COPIED) === 0n) {
    await l2Allocate(s, l1Index);
    // The old table (shared with a snapshot) loses this reference.
    if (oldL2 !== 0) await qcow2FreeClusters(s, oldL2, s.clusterSize, 'other');
  }
  const table = await l2Load(s, Number(s.l1Table[l1Index] & L1E_OFFSET_MASK));
  return { table, l2Index: offsetToL2Index(s, offset) };
}

/**
 * Is guest [pos, stop) of a raw backing file over a host file data without asking? Block status
 * that is not asked for zeros (QEMU's want_zero false, as bdrv_co_is_zero_fast asks) answers
 * DATA for all of such a file without looking; only past its end does it read as zeros.
 */
function rawBackingData(backing: BlockDriverState, stop: number): boolean {
  if (backing.driver.formatName !== 'raw' || backing.file?.driver.protocolName !== 'file') return false;
  const len = backing.lengthNow();
  return len !== null && stop <= len;
}

/**
 * Is guest [offset, offset+bytes) known, without a wait, not to read as zeros to
 * qcow2IsZero's fast check (a run planned from a cached table holds data, or reads a raw
 * backing file's data)? False means "ask qcow2IsZero": it may still hold data.
 */
export function qcow2HoldsDataNow(s: BDRVQcow2State, offset: number, bytes: number): boolean {
  const end = Math.min(offset + bytes, s.header.size);
  if (end <= offset || !qcow2MetadataSettled(s)) return false;
  const run = qcow2GetHostOffsetNow(s, offset, end - offset);
  if (run === null) return false;
  if (run.kind === 'normal' || run.kind === 'compressed') return true;
  return run.kind === 'unallocated' && backingHoldsData(s, offset + run.bytes);
}

/**
 * qcow2HoldsDataNow of guest [offset, offset+bytes) whose L2 entries are known to be
 * unallocated (a fresh allocation's COW area, alloc-now.ts): the backing file's answer, with
 * no run planned.
 */
export function qcow2UnallocatedHoldsDataNow(s: BDRVQcow2State, offset: number, bytes: number): boolean {
  const end = Math.min(offset + bytes, s.header.size);
  return end > offset && backingHoldsData(s, end);
}

/** Does the backing file read as data, to the fast check, up to guest `stop`? */
function backingHoldsData(s: BDRVQcow2State, stop: number): boolean {
  const backing = s.bs.backing;
  return backing !== null && rawBackingData(backing, stop);
}

/**
 * Does guest [offset, offset+bytes) read as zeros, backing chain included (QEMU's is_zero:
 * block status above says ZERO)? Clamped to the image. `locked`: the caller holds s.lock;
 * otherwise each planning step takes it and the backing file is asked without it. `fast`:
 * QEMU's bdrv_co_is_zero_fast (the COW check of an allocating write), which does not look
 * for holes in a raw backing file, so its data there is never zero (and costs no lseek).
 */
export async function qcow2IsZero(s: BDRVQcow2State, offset: number, bytes: number, locked = true, fast = false): Promise<boolean> {
  const end = Math.min(offset + bytes, s.header.size);
  for (let pos = offset; pos < end; ) {
    const planned = locked ? qcow2GetHostOffset(s, pos, end - pos) : qcow2PlanUnlocked(s, pos, end - pos);
    const run = planned instanceof Promise ? await planned : planned;
    if (run.kind === 'normal' || run.kind === 'compressed') return false;
    const backing = s.bs.backing;
    if (run.kind === 'unallocated' && backing) {
      if (fast && rawBackingData(backing, pos + run.bytes)) return false;
      const stop = Math.min(pos + run.bytes, await backing.getLength());
      for (let p = pos; p < stop; ) {
        const st = await backing.blockStatusAbove(p, stop - p);
        if (!st.zero) return false;
        p += st.pnum;
      }
    }
    pos += run.bytes;
  }
  return true;
}
