/**
 * The qcow2 block driver: open/close and the metadata hooks, assembled into `qcow2Driver`.
 * Reads live in read.ts, writes in io.ts (copy-on-write in cow.ts), zeroing and discard in
 * zero.ts, creation in create.ts, resizing in resize.ts.
 */
import type { BlockDriver, BlockDriverInfo, ImageInfoSpecific, OpenOptions, WriteZeroesFlags } from '../../block/driver.js';
import { bdrvNodeName } from '../../block/dirty-bitmap.js';
import { BlockError } from '../../block/errors.js';
import type { IOVector } from '../../block/iovec.js';
import type { BlockDriverState } from '../../block/node.js';
import { bitmapInfoList, qcow2ReadBitmapList } from './bitmap.js';
import { qcow2CanStoreNewDirtyBitmap, qcow2LoadDirtyBitmaps, qcow2RemovePersistentDirtyBitmap, qcow2StoreDirtyBitmaps, qcow2TruncateBitmapsCheck } from './bitmap-store.js';
import { qcow2Check } from './check.js';
import { qcow2DataFileIsRaw, qcow2HasDataFile } from './data-file.js';
import { qcow2Create, qcow2CreateOptions } from './create.js';
import {
  QCOW2_COMPAT_LAZY_REFCOUNTS,
  QCOW2_INCOMPAT_CORRUPT,
  QCOW2_INCOMPAT_DIRTY,
  QCOW_MAGIC,
} from './header.js';
import { qcow2CoPwritevCompressedPart } from './compress-write.js';
import { qcow2PreadvNow } from './fast.js';
import { qcow2WritevSubmit } from './alloc-submit.js';
import { qcow2BlockStatus, qcow2BlockStatusExtents, qcow2BlockStatusNow } from './status.js';
import { qcow2CoPwritev } from './io.js';
import { qcow2CoPreadv } from './read.js';
import { qcow2MakeEmpty } from './make-empty.js';
import { qcow2Measure } from './measure.js';
import { qcow2AmendOptions, qcow2AmendOptionsHook } from './amend.js';
import { qcow2UpdateHeader } from './header-update.js';
import { qcow2DoOpen } from './open.js';
import { QCOW2_RUNTIME_OPTS } from './options.js';
import { qcow2ReadSnapshots, snapshotInfo } from './snapshot-table.js';
import { qcow2LoadVmstate, qcow2SaveVmstate } from './vmstate.js';
import { qcow2SnapshotCreate, qcow2SnapshotDelete, qcow2SnapshotGoto, qcow2SnapshotLoadTmp } from './snapshot.js';
import { qcow2RepairDirty } from './repair.js';
import { qcow2Truncate } from './resize.js';
import { type BDRVQcow2State, qcow2File, qcow2IsDirty, qcow2State, qcow2WriteCaches } from './state.js';
import { qcow2CoDiscard, qcow2CoWriteZeroes } from './zero.js';

/** Probe: the magic and a version QEMU knows (qcow2_probe). */
export function qcow2Probe(buf: Uint8Array): number {
  if (buf.length < 8) return 0;
  const v = new DataView(buf.buffer, buf.byteOffset);
  return v.getUint32(0) === QCOW_MAGIC && v.getUint32(4) >= 2 ? 100 : 0;
}

async function qcow2Open(bs: BlockDriverState, options: OpenOptions): Promise<void> {
  const s = await qcow2DoOpen(bs, options);
  const writable = !bs.readOnly && !options.inactive;
  // A dirty image's refcounts may be stale: repair them (check -r all, as QEMU's
  // qcow2_do_open) before anything allocates. Check opens look at the image as it is;
  // read-only opens never allocate.
  // Bitmaps before the repair (QEMU's order): a writable open marks them in use first.
  if (!options.check) await qcow2LoadDirtyBitmaps(s, writable);
  if (qcow2IsDirty(s) && writable && !options.check) {
    await qcow2RepairDirty(s, options.onReport);
  }
  bs.backingFile = s.backingFile ?? '';
  bs.backingFormat = s.backingFormat ?? '';
  bs.opaque = s;
}

export { qcow2WriteCaches };

async function qcow2Flush(bs: BlockDriverState): Promise<void> {
  const s = qcow2State(bs);
  await s.lock.run(async () => {
    if (!bs.readOnly && !s.corrupt) await qcow2WriteCaches(s);
  });
  // Both children, as QEMU's bdrv_co_flush flushes every child: a data file holds guest data.
  if (bs.dataFile) await bs.dataFile.flush();
  await qcow2File(s).flush();
}

/** A write with FUA: the write, then a flush of everything under it. */
async function qcow2CoPwritevFua(bs: BlockDriverState, offset: number, bytes: number, qiov: IOVector): Promise<void> {
  await qcow2CoPwritev(qcow2State(bs), offset, bytes, qiov);
  await qcow2Flush(bs);
}

/** Close: write the caches, then mark a lazy-refcounts image clean (qcow2_inactivate). */
async function qcow2Close(bs: BlockDriverState): Promise<void> {
  const s = bs.opaque as BDRVQcow2State | null;
  if (!s || s.closed) return;
  s.closed = true;
  if (s.corruptWrite) await s.corruptWrite;
  await s.lock.lock();
  try {
    if (!bs.readOnly && !s.openOptions.inactive && !s.corrupt) {
      // Bitmaps first: storing them allocates, and the caches flushed next carry that too.
      await qcow2StoreDirtyBitmaps(s);
      await s.l2Cache.flush();
      await s.refcountCache.flush();
      if (qcow2IsDirty(s) && s.useLazyRefcounts) {
        // Refcounts are all on disk now: the image may say so.
        s.header.incompatibleFeatures &= ~QCOW2_INCOMPAT_DIRTY;
        await qcow2UpdateHeader(s);
      }
    }
  } finally {
    // Persistent bitmaps belong to the image: they go with it (and come back at a reopen).
    bs.dirtyBitmaps = bs.dirtyBitmaps.filter((b) => !b.persistent);
    s.lock.unlock();
    s.l2Cache.reset();
    s.refcountCache.reset();
  }
}

async function qcow2GetInfo(bs: BlockDriverState): Promise<BlockDriverInfo> {
  const s = qcow2State(bs);
  return { clusterSize: s.clusterSize, isDirty: qcow2IsDirty(s) };
}

/**
 * QEMU's ImageInfoSpecificQCow2, fields in QAPI order (compat, data-file, data-file-raw, extended-l2, lazy-refcounts,
 * corrupt, refcount-bits, bitmaps, compression-type): tools print them in QDict order from that.
 * bitmaps is present only when the image has some.
 */
async function qcow2GetSpecificInfo(bs: BlockDriverState): Promise<ImageInfoSpecific> {
  const s = qcow2State(bs);
  const h = s.header;
  const compressionType = h.compressionType === 1 ? 'zstd' : 'zlib';
  if (h.version < 3) {
    return { kind: 'qcow2', data: { compat: '0.10', 'refcount-bits': 2 ** s.refcountOrder, 'compression-type': compressionType } };
  }
  const bitmaps = bitmapInfoList(await qcow2ReadBitmapList(s));
  return {
    kind: 'qcow2',
    data: {
      compat: '1.1',
      ...(s.imageDataFile !== null ? { 'data-file': s.imageDataFile } : {}),
      ...(qcow2HasDataFile(s) ? { 'data-file-raw': qcow2DataFileIsRaw(s) } : {}),
      'extended-l2': s.extendedL2,
      'lazy-refcounts': (h.compatibleFeatures & QCOW2_COMPAT_LAZY_REFCOUNTS) !== 0n,
      corrupt: (h.incompatibleFeatures & QCOW2_INCOMPAT_CORRUPT) !== 0n,
      'refcount-bits': 2 ** s.refcountOrder,
      ...(bitmaps.length > 0 ? { bitmaps } : {}),
      'compression-type': compressionType,
    },
  };
}

/** Change (or drop) the backing file: a full header rewrite (qcow2_change_backing_file). */
export async function qcow2ChangeBackingFile(bs: BlockDriverState, name: string | null, fmt: string | null): Promise<void> {
  const s = qcow2State(bs);
  const backing = name === null || name === '' ? null : name;
  if (backing !== null && new TextEncoder().encode(backing).length > 1023) {
    throw new BlockError('EINVAL', undefined, { op: 'change_backing_file' });
  }
  await s.lock.run(async () => {
    const old = { file: s.backingFile, fmt: s.backingFormat };
    s.backingFile = backing;
    s.backingFormat = backing === null ? null : fmt;
    try {
      await qcow2UpdateHeader(s);
    } catch (e) {
      s.backingFile = old.file;
      s.backingFormat = old.fmt;
      throw e;
    }
  });
  bs.backingFile = backing ?? '';
  bs.backingFormat = backing === null ? '' : (fmt ?? '');
}

async function qcow2InvalidateCache(bs: BlockDriverState): Promise<void> {
  const s = qcow2State(bs);
  await qcow2Close(bs);
  bs.opaque = null;
  try {
    await qcow2Open(bs, s.openOptions);
  } catch (e) {
    bs.opaque = s;
    throw e;
  }
}

export const qcow2Driver: BlockDriver = {
  formatName: 'qcow2',
  requestAlignment: 1,
  supportsBacking: true,
  childNames: ['data-file'],
  createOptions: qcow2CreateOptions,
  runtimeOptions: QCOW2_RUNTIME_OPTS,
  probe: qcow2Probe,
  open: qcow2Open,
  close: qcow2Close,
  create: qcow2Create,
  coPreadv: (bs, offset, bytes, qiov: IOVector) => qcow2CoPreadv(qcow2State(bs), offset, bytes, qiov),
  preadvNow: qcow2PreadvNow,
  // Without FUA the write's own promise is the request's: no frame around it per request.
  coPwritev: (bs, offset, bytes, qiov: IOVector, flags) =>
    flags.fua === true ? qcow2CoPwritevFua(bs, offset, bytes, qiov) : qcow2CoPwritev(qcow2State(bs), offset, bytes, qiov, flags.onAllocated),
  pwritevSubmit: qcow2WritevSubmit,
  coFlush: qcow2Flush,
  coPwritevCompressed: (bs, offset, bytes, qiov: IOVector) => qcow2CoPwritevCompressedPart(qcow2State(bs), offset, bytes, qiov),
  coBlockStatus: qcow2BlockStatus,
  blockStatusNow: qcow2BlockStatusNow,
  blockStatusExtents: qcow2BlockStatusExtents,
  coWriteZeroes: (bs, offset, bytes, flags: WriteZeroesFlags) => qcow2CoWriteZeroes(qcow2State(bs), offset, bytes, flags),
  coDiscard: (bs, offset, bytes) => qcow2CoDiscard(qcow2State(bs), offset, bytes),
  truncate: async (bs, size, prealloc) => {
    const s = qcow2State(bs);
    await qcow2TruncateBitmapsCheck(s);
    await qcow2Truncate(s, size, prealloc ?? 'off');
  },
  truncatePreallocates: true,
  getLength: (bs) => qcow2State(bs).header.size,
  lengthNow: (bs) => (bs.opaque as BDRVQcow2State | null)?.header.size ?? null,
  getInfo: qcow2GetInfo,
  getSpecificInfo: qcow2GetSpecificInfo,
  measure: qcow2Measure,
  amendOptions: qcow2AmendOptions,
  amend: (bs, options, status) => qcow2AmendOptionsHook(qcow2State(bs), options, status),
  // v2 images have no autoclear bits, so they cannot keep bitmaps (qcow2_supports_persistent_dirty_bitmap).
  persistentDirtyBitmaps: async (bs) => {
    const s = qcow2State(bs);
    if (s.header.version < 3) return null;
    return (await qcow2ReadBitmapList(s)).map((e) => ({ name: e.name, granularity: 2 ** e.granularityBits }));
  },
  snapshotList: async (bs) => (await qcow2ReadSnapshots(qcow2State(bs))).map(snapshotInfo),
  snapshotCreate: qcow2SnapshotCreate,
  snapshotGoto: qcow2SnapshotGoto,
  snapshotDelete: qcow2SnapshotDelete,
  snapshotLoadTmp: qcow2SnapshotLoadTmp,
  saveVmstate: qcow2SaveVmstate,
  loadVmstate: qcow2LoadVmstate,
  changeBackingFile: qcow2ChangeBackingFile,
  invalidateCache: qcow2InvalidateCache,
  check: (bs, fix) => qcow2Check(qcow2State(bs), fix),
  makeEmpty: (bs) => qcow2MakeEmpty(qcow2State(bs)),
  canStoreNewDirtyBitmap: (bs, name, granularity) => Promise.resolve(qcow2CanStoreNewDirtyBitmap(qcow2State(bs), name, granularity, bdrvNodeName(bs))),
  supportsPersistentDirtyBitmap: (bs) => qcow2State(bs).header.version >= 3,
  removePersistentDirtyBitmap: (bs, name) => qcow2RemovePersistentDirtyBitmap(qcow2State(bs), name),
};
