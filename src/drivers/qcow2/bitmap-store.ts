/**
 * qcow2 persistent dirty bitmaps, the bits (QEMU's qcow2-bitmap.c): loaded into the node's
 * dirty bitmaps at open, marked in use on disk before anything can be written, stored back
 * at close, removed from the image on request, and counted by check.
 *
 * Crash safety rests on two rules. A bitmap is IN_USE on disk for as long as we may write
 * the image without its bits on disk being current: a crash then leaves it in use, and every
 * reader treats it as inconsistent (never as a clean, wrong bitmap). And the directory is
 * switched by one header write, after everything it points to is on disk: a crash before
 * that keeps the old directory, leaking only the new clusters.
 */
import { BdrvDirtyBitmap, bdrvFindDirtyBitmap } from '../../block/dirty-bitmap.js';
import { BlockError } from '../../block/errors.js';
import {
  BME_FLAG_AUTO,
  BME_FLAG_IN_USE,
  BME_MAX_GRANULARITY_BITS,
  BME_MAX_NAME_SIZE,
  BME_MAX_PHYS_SIZE,
  BME_MAX_TABLE_SIZE,
  BME_MIN_GRANULARITY_BITS,
  QCOW2_MAX_BITMAPS,
  QCOW2_MAX_BITMAP_DIRECTORY_SIZE,
  type Qcow2BitmapEntry,
  bitmapDir,
  bitmapGeometry,
  dirEntrySize,
  encodeBitmapDirectory,
  qcow2ReadBitmapList,
  setBitmapDir,
} from './bitmap.js';
import { qcow2PreWriteOverlapCheck } from './corrupt.js';
import { QCOW2_AUTOCLEAR_BITMAPS } from './header.js';
import { qcow2AllocClusters, qcow2FreeClusters } from './refcount.js';
import { type BDRVQcow2State, qcow2File, qcow2NeedAccurateRefcounts } from './state.js';

const BME_TABLE_ENTRY_RESERVED_MASK = 0xff000000000001fen;
const BME_TABLE_ENTRY_OFFSET_MASK = 0x00fffffffffffe00n;
const BME_TABLE_ENTRY_FLAG_ALL_ONES = 1n;

function einval(msg: string): BlockError {
  return new BlockError('EINVAL', msg, { op: 'bitmaps' });
}

/** check_table_entry. */
function tableEntryValid(entry: bigint, cs: number): boolean {
  if ((entry & BME_TABLE_ENTRY_RESERVED_MASK) !== 0n) return false;
  const off = entry & BME_TABLE_ENTRY_OFFSET_MASK;
  return off === 0n || ((entry & BME_TABLE_ENTRY_FLAG_ALL_ONES) === 0n && Number(off) % cs === 0);
}

/** Read a bitmap table; null when an entry breaks the spec (bitmap_table_load). */
async function tableLoad(s: BDRVQcow2State, e: Qcow2BitmapEntry): Promise<BigUint64Array | null> {
  const buf = new Uint8Array(e.tableSize * 8);
  await qcow2File(s).pread(e.tableOffset, buf);
  const v = new DataView(buf.buffer);
  const t = new BigUint64Array(e.tableSize);
  for (let i = 0; i < t.length; i++) {
    t[i] = v.getBigUint64(i * 8);
    if (!tableEntryValid(t[i], s.clusterSize)) return null;
  }
  return t;
}

/** Rewrite the header and wait for it to be on disk (update_header_sync). */
async function updateHeaderSync(s: BDRVQcow2State): Promise<void> {
  await s.updateHeader();
}

/** Write the caches and flush (qcow2_flush_caches). */
async function flushCaches(s: BDRVQcow2State): Promise<void> {
  await s.l2Cache.write();
  if (qcow2NeedAccurateRefcounts(s)) await s.refcountCache.write();
  await qcow2File(s).flush();
}

/** A bitmap's bits from its table (load_bitmap_data). */
async function loadBitmapData(s: BDRVQcow2State, e: Qcow2BitmapEntry, bm: BdrvDirtyBitmap): Promise<void> {
  const cs = s.clusterSize;
  if (Math.ceil(bm.bits.length / cs) !== e.tableSize) throw einval(`Could not read bitmap '${e.name}' from image: Invalid argument`);
  const table = await tableLoad(s, e);
  if (!table) throw einval(`Could not read bitmap_table table from image for bitmap '${e.name}': Invalid argument`);
  const buf = new Uint8Array(cs);
  for (let i = 0; i < table.length; i++) {
    const part = bm.bits.subarray(i * cs, (i + 1) * cs);
    const off = Number(table[i] & BME_TABLE_ENTRY_OFFSET_MASK);
    if (off === 0) {
      if ((table[i] & BME_TABLE_ENTRY_FLAG_ALL_ONES) !== 0n) part.fill(0xff);
      continue;
    }
    await qcow2File(s).pread(off, buf);
    part.set(buf.subarray(0, part.length));
  }
  // Bits past the disk's end are not part of the bitmap.
  bm.truncate(bm.size);
}

/**
 * Switch the directory in place, same size (update_ext_header_and_dir_in_place): used to set
 * IN_USE flags. The autoclear bit is dropped around the rewrite so that a crash halfway
 * leaves bitmaps every reader ignores rather than a torn directory read as valid.
 */
async function updateDirInPlace(s: BDRVQcow2State, list: readonly Qcow2BitmapEntry[]): Promise<void> {
  const dir = bitmapDir(s);
  const bytes = encodeBitmapDirectory(bitmapGeometry(s), list);
  if (bytes.length !== dir.size) throw einval('Bitmap directory changed size');
  s.header.autoclearFeatures &= ~QCOW2_AUTOCLEAR_BITMAPS;
  await updateHeaderSync(s);
  // The extension no longer counts: the directory may be rewritten.
  await qcow2File(s).pwrite(dir.offset, bytes);
  await updateHeaderSync(s);
  s.header.autoclearFeatures |= QCOW2_AUTOCLEAR_BITMAPS;
  await updateHeaderSync(s);
}

/**
 * Load the image's bitmaps into the node (qcow2_load_dirty_bitmaps). On a writable open each
 * consistent bitmap is marked IN_USE on disk here, before any guest write can reach the image:
 * from now on its bits on disk are stale until close stores them. Bitmaps already in use
 * were not stored after their last writer: they are loaded as inconsistent, without bits.
 */
export async function qcow2LoadDirtyBitmaps(s: BDRVQcow2State, writable: boolean): Promise<void> {
  if (bitmapDir(s).nbBitmaps === 0) return;
  const bs = s.bs;
  const list = await qcow2ReadBitmapList(s);
  const created: BdrvDirtyBitmap[] = [];
  let needsUpdate = false;
  for (const e of list) {
    if (bdrvFindDirtyBitmap(bs, e.name)) throw einval(`Bitmap already exists: ${e.name}`);
    const bm = new BdrvDirtyBitmap(e.name, 2 ** e.granularityBits, s.header.size);
    bm.persistent = true;
    if (e.flags & BME_FLAG_IN_USE) {
      bm.inconsistent = true;
    } else {
      await loadBitmapData(s, e, bm);
      e.flags |= BME_FLAG_IN_USE;
      needsUpdate = true;
    }
    bm.enabled = (e.flags & BME_FLAG_AUTO) !== 0;
    bm.readonly = !writable;
    created.push(bm);
  }
  if (needsUpdate && writable) await updateDirInPlace(s, list);
  // Each goes to the head of the node's list, as bdrv_create_dirty_bitmap puts it.
  for (const bm of created) bs.dirtyBitmaps.unshift(bm);
}

/** Write one bitmap's dirty clusters and its table; returns the table (store_bitmap). */
async function storeBitmap(s: BDRVQcow2State, bm: BdrvDirtyBitmap): Promise<{ offset: number; size: number }> {
  const cs = s.clusterSize;
  const tbSize = Math.ceil(bm.bits.length / cs);
  if (tbSize > BME_MAX_TABLE_SIZE || tbSize * cs > BME_MAX_PHYS_SIZE) throw einval(`Bitmap '${bm.name}' is too big`);
  const table = new Uint8Array(tbSize * 8);
  const tv = new DataView(table.buffer);
  const file = qcow2File(s);
  // Only clusters holding a dirty bit get one; a clean one stays 0 (reads as all zeros).
  for (let i = 0; i < tbSize; i++) {
    const part = bm.bits.subarray(i * cs, (i + 1) * cs);
    if (part.every((b) => b === 0)) continue;
    const off = await qcow2AllocClusters(s, cs);
    tv.setBigUint64(i * 8, BigInt(off));
    const buf = new Uint8Array(cs);
    buf.set(part);
    qcow2PreWriteOverlapCheck(s, 0, off, cs);
    await file.pwrite(off, buf);
  }
  const tbOffset = await qcow2AllocClusters(s, table.length);
  qcow2PreWriteOverlapCheck(s, 0, tbOffset, table.length);
  await file.pwrite(tbOffset, table);
  return { offset: tbOffset, size: tbSize };
}

/** Drop a bitmap's data clusters and table (free_bitmap_clusters). */
async function freeBitmapClusters(s: BDRVQcow2State, e: Qcow2BitmapEntry): Promise<void> {
  const table = await tableLoad(s, e);
  if (!table) return;
  for (const entry of table) {
    const off = Number(entry & BME_TABLE_ENTRY_OFFSET_MASK);
    if (off !== 0) await qcow2FreeClusters(s, off, s.clusterSize, 'always');
  }
  await qcow2FreeClusters(s, e.tableOffset, e.tableSize * 8, 'other');
}

/**
 * Point the header at a new directory (update_ext_header_and_dir). The new directory is
 * written and every refcount of it and of what it names is flushed before the header switch;
 * the old directory's clusters are freed only after it.
 */
async function updateDir(s: BDRVQcow2State, list: readonly Qcow2BitmapEntry[]): Promise<void> {
  const old = bitmapDir(s);
  if (list.length > QCOW2_MAX_BITMAPS) throw einval('Too many persistent bitmaps');
  if (list.length > 0) {
    const bytes = encodeBitmapDirectory(bitmapGeometry(s), list);
    const offset = await qcow2AllocClusters(s, bytes.length);
    qcow2PreWriteOverlapCheck(s, 0, offset, bytes.length);
    await qcow2File(s).pwrite(offset, bytes);
    // The directory, the tables and the bits, and their refcounts, before the header names them.
    await flushCaches(s);
    s.header.autoclearFeatures |= QCOW2_AUTOCLEAR_BITMAPS;
    setBitmapDir(s, { nbBitmaps: list.length, size: bytes.length, offset });
  } else {
    s.header.autoclearFeatures &= ~QCOW2_AUTOCLEAR_BITMAPS;
    setBitmapDir(s, { nbBitmaps: 0, size: 0, offset: 0 });
  }
  await updateHeaderSync(s);
  if (old.size > 0) await qcow2FreeClusters(s, old.offset, old.size, 'other');
}

/**
 * Store the node's persistent bitmaps (qcow2_store_persistent_dirty_bitmaps), at close: each
 * writable, consistent one gets new clusters and a new table, the directory is switched
 * (clearing IN_USE: the flags written are AUTO or nothing), then the old tables are freed.
 * Inconsistent bitmaps keep their entries as they are, IN_USE included.
 */
export async function qcow2StoreDirtyBitmaps(s: BDRVQcow2State): Promise<void> {
  const bs = s.bs;
  const dir = bitmapDir(s);
  const list = dir.nbBitmaps === 0 ? [] : await qcow2ReadBitmapList(s);
  const toStore: [Qcow2BitmapEntry, BdrvDirtyBitmap][] = [];
  const dropTables: Qcow2BitmapEntry[] = [];
  let dirSize = dir.size;
  for (const bm of bs.dirtyBitmaps) {
    if (!bm.persistent || bm.inconsistent || bm.readonly) continue;
    checkConstraints(s, bm.name, bm.granularity, bm.size);
    let e = list.find((x) => x.name === bm.name);
    if (!e) {
      dirSize += dirEntrySize(new TextEncoder().encode(bm.name).length);
      if (list.length + 1 > QCOW2_MAX_BITMAPS) throw einval('Too many persistent bitmaps');
      if (dirSize > QCOW2_MAX_BITMAP_DIRECTORY_SIZE) throw einval('Bitmap directory is too large');
      e = { name: bm.name, tableOffset: 0, tableSize: 0, flags: 0, granularityBits: 0 };
      list.push(e);
    } else {
      if ((e.flags & BME_FLAG_IN_USE) === 0) throw einval(`Bitmap '${bm.name}' already exists in the image`);
      dropTables.push({ ...e });
    }
    e.flags = bm.enabled ? BME_FLAG_AUTO : 0;
    e.granularityBits = Math.log2(bm.granularity);
    toStore.push([e, bm]);
  }
  if (toStore.length === 0) return;
  // Stored in directory order (the clusters are allocated in that order, as QEMU does).
  for (const e of list) {
    const bm = toStore.find(([x]) => x === e)?.[1];
    if (!bm) continue;
    const t = await storeBitmap(s, bm);
    e.tableOffset = t.offset;
    e.tableSize = t.size;
  }
  await updateDir(s, list);
  // The new directory is on disk: the old tables are garbage now.
  for (const e of dropTables) await freeBitmapClusters(s, e);
}

/** Remove a bitmap from the image now (qcow2_co_remove_persistent_dirty_bitmap). */
export async function qcow2RemovePersistentDirtyBitmap(s: BDRVQcow2State, name: string): Promise<void> {
  if (bitmapDir(s).nbBitmaps === 0) return;
  await s.lock.run(async () => {
    const list = await qcow2ReadBitmapList(s);
    const i = list.findIndex((e) => e.name === name);
    if (i < 0) return;
    const [gone] = list.splice(i, 1);
    await updateDir(s, list);
    await freeBitmapClusters(s, gone);
  });
}

/** check_constraints_on_bitmap. */
function checkConstraints(s: BDRVQcow2State, name: string, granularity: number, len: number): void {
  const bits = Math.log2(granularity);
  if (bits > BME_MAX_GRANULARITY_BITS) throw einval(`Granularity exceeds maximum (${2 ** BME_MAX_GRANULARITY_BITS} bytes)`);
  if (bits < BME_MIN_GRANULARITY_BITS) throw einval(`Granularity is under minimum (${2 ** BME_MIN_GRANULARITY_BITS} bytes)`);
  const bytes = Math.ceil(Math.ceil(len / granularity) / 8);
  if (bytes > BME_MAX_PHYS_SIZE || bytes > BME_MAX_TABLE_SIZE * s.clusterSize) {
    throw einval('Too much space will be occupied by the bitmap. Use larger granularity');
  }
  if (new TextEncoder().encode(name).length > BME_MAX_NAME_SIZE) throw einval(`Name length exceeds maximum (${BME_MAX_NAME_SIZE} characters)`);
}

/** May a new persistent bitmap be added (qcow2_co_can_store_new_dirty_bitmap)? */
export function qcow2CanStoreNewDirtyBitmap(s: BDRVQcow2State, name: string, granularity: number, nodeName: string): void {
  const bs = s.bs;
  if (bdrvFindDirtyBitmap(bs, name)) throw new BlockError('EEXIST', `Bitmap already exists: ${name}`, { op: 'bitmaps' });
  const prefix = `Can't make bitmap '${name}' persistent in '${nodeName}': `;
  try {
    if (s.header.version < 3) throw einval('Cannot store dirty bitmaps in qcow2 v2 files');
    checkConstraints(s, name, granularity, s.header.size);
    let nb = 1;
    let size = dirEntrySize(new TextEncoder().encode(name).length);
    for (const bm of bs.dirtyBitmaps) {
      if (!bm.persistent) continue;
      nb++;
      size += dirEntrySize(new TextEncoder().encode(bm.name).length);
    }
    if (nb > QCOW2_MAX_BITMAPS) throw einval('Maximum number of persistent bitmaps is already reached');
    if (size > QCOW2_MAX_BITMAP_DIRECTORY_SIZE) throw einval('Not enough space in the bitmap directory');
  } catch (e) {
    throw einval(prefix + (e instanceof Error ? e.message : String(e)));
  }
}

/** Resizing needs every bitmap in memory and consistent (qcow2_truncate_bitmaps_check). */
export async function qcow2TruncateBitmapsCheck(s: BDRVQcow2State): Promise<void> {
  for (const e of await qcow2ReadBitmapList(s)) {
    const bm = bdrvFindDirtyBitmap(s.bs, e.name);
    if (!bm) throw new BlockError('ENOTSUP', 'Cannot resize qcow2 with persistent bitmaps that were not loaded into memory', { op: 'truncate' });
    if (bm.readonly) throw new BlockError('ENOTSUP', `Bitmap '${bm.name}' is readonly and cannot be modified`, { op: 'truncate' });
    if (bm.inconsistent) {
      throw new BlockError('ENOTSUP', `Bitmap '${bm.name}' is inconsistent and cannot be used\nTry block-dirty-bitmap-remove to delete this bitmap from disk`, {
        op: 'truncate',
      });
    }
  }
}

/**
 * The clusters bitmaps hold, for check (qcow2_check_bitmaps_refcounts): the directory, each
 * table and each data cluster. A table that breaks the spec counts as a corruption.
 */
export async function qcow2CheckBitmapsRefcounts(
  s: BDRVQcow2State,
  inc: (offset: number, size: number) => void,
  corruption: () => void,
): Promise<void> {
  const dir = bitmapDir(s);
  if (dir.nbBitmaps === 0) return;
  inc(dir.offset, dir.size);
  let list: Qcow2BitmapEntry[];
  try {
    list = await qcow2ReadBitmapList(s);
  } catch {
    corruption();
    return;
  }
  for (const e of list) {
    inc(e.tableOffset, e.tableSize * 8);
    // One broken entry makes the whole table unreadable, as for QEMU's loader.
    const table = await tableLoad(s, e);
    if (!table) {
      corruption();
      return;
    }
    for (const entry of table) {
      const off = Number(entry & BME_TABLE_ENTRY_OFFSET_MASK);
      if (off !== 0) inc(off, s.clusterSize);
    }
  }
}
