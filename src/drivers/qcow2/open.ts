/**
 * Opening a qcow2 image (QEMU's qcow2_do_open): header checks in QEMU 7.2's order, then the
 * tables, the caches and the writable-open duties (clearing unknown autoclear bits, repairing
 * a dirty image).
 */
import { BufferPool } from '../../block/buffer-pool.js';
import type { OpenOptions } from '../../block/driver.js';
import { BlockError } from '../../block/errors.js';
import { CoMutex } from '../../block/coroutine.js';
import type { BlockDriverState } from '../../block/node.js';
import { warnStaleBitmaps } from './bitmap.js';
import { Qcow2Cache } from './cache.js';
import { qcow2Codec } from './compress.js';
import { qcow2PreWriteOverlapCheck, QCOW2_OL_ACTIVE_L2, QCOW2_OL_REFCOUNT_BLOCK, type Qcow2MetadataExtents } from './corrupt.js';
import { qcow2OpenDataFile } from './data-file.js';
import { qcow2UpdateHeader } from './header-update.js';
import { compressedGeometry } from './entries.js';
import {
  decodeExtensions,
  decodeHeader,
  QCOW2_AUTOCLEAR_BITMAPS,
  QCOW2_AUTOCLEAR_MASK,
  QCOW2_COMPAT_LAZY_REFCOUNTS,
  QCOW2_INCOMPAT_EXTL2,
  QCOW2_MAX_BACKING_FILE_NAME,
  QCOW2_V3_HEADER_SIZE,
  type Qcow2Extensions,
  validateFeatures,
  validateHeaderBasics,
  validateTables,
} from './header.js';
import { qcow2RuntimeSettings } from './options.js';
import { qcow2LoadRefcountTable } from './refcount.js';
import { refcountBlockEntries, refcountGetter, refcountMax, refcountSetter } from './refcount-codec.js';
import { qcow2File, type BDRVQcow2State } from './state.js';
import { decodeTable } from './table-switch.js';

/** Autoclear bits whose data this driver keeps consistent: the bitmaps, raw external data. */
const QCOW2_AUTOCLEAR_SUPPORTED = QCOW2_AUTOCLEAR_MASK;
const MAX_SNAPSHOT_TABLE_BYTES = 64 * 1024 * 1024;
/** Idle COW buffers kept per image, in bytes (at least two buffers). */
const COW_POOL_BYTES = 2 * 1024 * 1024;

/** Snapshot table extents for the overlap check (read with hard limits). */
async function readSnapshotExtents(file: BlockDriverState, nb: number, offset: number, fileLength: number): Promise<Qcow2MetadataExtents['inactiveL1'] & { tableSize?: number }> {
  const out: { offset: number; size: number }[] = [];
  let pos = offset;
  for (let i = 0; i < nb; i++) {
    const fixed = new Uint8Array(40);
    if (pos + 40 > fileLength) break;
    await file.pread(pos, fixed);
    const v = new DataView(fixed.buffer);
    const l1Offset = Number(v.getBigUint64(0));
    const l1Size = v.getUint32(8);
    const idLen = v.getUint16(12);
    const nameLen = v.getUint16(14);
    const extra = v.getUint32(36);
    if (extra > 1024) throw new BlockError('EFBIG', `Too much extra metadata in snapshot table entry ${i}`, { op: 'open' });
    out.push({ offset: l1Offset, size: l1Size * 8 });
    pos += 40 + extra + idLen + nameLen;
    pos = Math.ceil(pos / 8) * 8;
    if (pos - offset > MAX_SNAPSHOT_TABLE_BYTES) throw new BlockError('EFBIG', 'Snapshot table is too big', { op: 'open' });
  }
  return Object.assign(out, { tableSize: pos - offset });
}

/** Build the in-memory state of the image under `bs` (qcow2_do_open). */
export async function qcow2DoOpen(bs: BlockDriverState, options: OpenOptions): Promise<BDRVQcow2State> {
  const file = bs.file;
  if (!file) throw new BlockError('EINVAL', 'qcow2 needs a file to open', { op: 'open', path: bs.filename });
  const fileLength = await file.getLength();
  const first = new Uint8Array(QCOW2_V3_HEADER_SIZE);
  if (fileLength > 0) await file.pread(0, first.subarray(0, Math.min(fileLength, first.length)));
  const header = fileLength >= 72 ? decodeHeader(first) : decodeHeader(new Uint8Array(72));
  validateHeaderBasics(header);
  const cs = 2 ** header.clusterBits;
  const cluster0 = new Uint8Array(cs);
  await file.pread(0, cluster0.subarray(0, Math.min(cs, fileLength)));

  let ext: Qcow2Extensions | null = null;
  let extError: unknown = null;
  try {
    ext = decodeExtensions(header, cluster0);
  } catch (e) {
    extError = e;
  }
  const writable = !bs.readOnly && !options.inactive;
  const check = options.check === true;
  validateFeatures(header, ext?.featureTable ?? [], writable, check);
  validateTables(header, check);
  if (extError !== null || !ext) throw extError instanceof Error ? extError : new BlockError('EINVAL', 'Header extension too large', { op: 'open' });
  warnStaleBitmaps(header, ext.bitmaps, options);

  let backingFile: string | null = null;
  if (header.backingFileOffset !== 0) {
    const max = Math.min(QCOW2_MAX_BACKING_FILE_NAME, cs - header.backingFileOffset);
    if (header.backingFileSize > max) throw new BlockError('EINVAL', 'Backing file name too long', { op: 'open' });
    backingFile = new TextDecoder().decode(cluster0.subarray(header.backingFileOffset, header.backingFileOffset + header.backingFileSize));
  }
  await qcow2OpenDataFile(bs, header, ext.dataFile, options);

  const extendedL2 = (header.incompatibleFeatures & QCOW2_INCOMPAT_EXTL2) !== 0n;
  const l2EntrySize = extendedL2 ? 16 : 8;
  const l2Size = cs / l2EntrySize;
  const inactiveL1 = header.nbSnapshots > 0 ? await readSnapshotExtents(file, header.nbSnapshots, header.snapshotsOffset, fileLength) : [];
  // A bitmaps extension without its autoclear bit is stale (warned about above): it names
  // nothing, and the next header rewrite drops it.
  if ((header.autoclearFeatures & QCOW2_AUTOCLEAR_BITMAPS) === 0n) ext.bitmaps = null;
  let bitmapDirectory: Qcow2MetadataExtents['bitmapDirectory'] = null;
  if (ext.bitmaps) {
    const v = new DataView(ext.bitmaps.buffer, ext.bitmaps.byteOffset);
    bitmapDirectory = { offset: Number(v.getBigUint64(16)), size: Number(v.getBigUint64(8)) };
  }

  const settings = qcow2RuntimeSettings(options, {
    clusterSize: cs,
    l2EntrySize,
    size: header.size,
    version: header.version,
    lazyRefcountsBit: (header.compatibleFeatures & QCOW2_COMPAT_LAZY_REFCOUNTS) !== 0n,
  });
  // Data written to a data file must be durable before an L2 entry points at it.
  const dataFile = bs.dataFile;
  const hooks = { file: () => file, ...(dataFile ? { flushData: () => dataFile.flush() } : {}) };
  // One object literal (the closures below use `s` only once it is made): assigned onto an
  // empty object one property at a time, the state turned into a dictionary past its
  // sixteenth property, and every `s.x` of the request paths and walks, optimised or not,
  // became a hash lookup (a LoadIC call).
  const s: BDRVQcow2State = {
    bs,
    header,
    clusterBits: header.clusterBits,
    clusterSize: cs,
    l2Size,
    extendedL2,
    l2EntrySize,
    subclusterSize: extendedL2 ? cs / 32 : cs,
    l1Table: new BigUint64Array(0),
    l1TableOffset: header.l1TableOffset,
    refcountTable: new BigUint64Array(0),
    refcountTableOffset: header.refcountTableOffset,
    refcountOrder: header.refcountOrder,
    refcountBlockEntries: refcountBlockEntries(header.clusterBits, header.refcountOrder),
    refcountMax: refcountMax(header.refcountOrder),
    getRefcount: refcountGetter(header.refcountOrder),
    setRefcount: refcountSetter(header.refcountOrder),
    l2Cache: new Qcow2Cache('l2', cs, settings.l2CacheTables, { ...hooks, checkWrite: (o, n) => qcow2PreWriteOverlapCheck(s, QCOW2_OL_ACTIVE_L2, o, n) }, 'l2_update'),
    refcountCache: new Qcow2Cache(
      'refcount',
      cs,
      settings.refcountCacheTables,
      { ...hooks, checkWrite: (o, n) => qcow2PreWriteOverlapCheck(s, QCOW2_OL_REFCOUNT_BLOCK, o, n) },
      'refblock_update_part',
    ),
    freeClusterIndex: 0,
    freeByteOffset: 0,
    freedSinceL2Flush: null,
    compressedTurn: Promise.resolve(),
    compressed: compressedGeometry(header.clusterBits),
    codec: qcow2Codec(),
    unknownHeaderFields:
      header.version >= 3 && header.headerLength > QCOW2_V3_HEADER_SIZE ? cluster0.slice(QCOW2_V3_HEADER_SIZE, header.headerLength) : new Uint8Array(0),
    unknownExtensions: ext.unknown,
    backingFile,
    backingFormat: ext.backingFormat,
    imageDataFile: ext.dataFile,
    bitmapsExtension: ext.bitmaps,
    headerCluster: cluster0,
    useLazyRefcounts: settings.useLazyRefcounts,
    discardPassthrough: settings.discardRequest,
    metadataPreallocation: null,
    corrupt: false,
    corruptionReported: false,
    corruptWrite: null,
    extents: { snapshotsOffset: header.snapshotsOffset, snapshotsSize: header.nbSnapshots > 0 ? ((inactiveL1 as { tableSize?: number }).tableSize ?? 0) : 0, inactiveL1, bitmapDirectory },
    overlapIndex: null,
    updateHeader: () => qcow2UpdateHeader(s),
    lock: new CoMutex(),
    inFlight: new Set(),
    allocationsInFlight: 0,
    allocationsLow: 0,
    allocationsHigh: 0,
    // Enough for a full queue of COW requests (two areas each) at 64 KiB clusters.
    cowBuffers: new BufferPool(cs, Math.max(2, Math.floor(COW_POOL_BYTES / cs))),
    plannersQueued: 0,
    openOptions: options,
    closed: false,
  };

  await loadL1Table(s, fileLength);
  await qcow2LoadRefcountTable(s);

  // Autoclear bits tell a later reader that extension data was kept up to date by every
  // writer. Those we do not know are cleared on a writable open, as QEMU does; bitmaps we
  // keep (bitmap-store.ts).
  if (writable && (header.autoclearFeatures & ~QCOW2_AUTOCLEAR_SUPPORTED) !== 0n) {
    header.autoclearFeatures &= QCOW2_AUTOCLEAR_SUPPORTED;
    await qcow2UpdateHeader(s);
  }
  return s;
}

async function loadL1Table(s: BDRVQcow2State, fileLength: number): Promise<void> {
  const n = s.header.l1Size;
  const buf = new Uint8Array(n * 8);
  const off = s.l1TableOffset;
  // An L1 table past the end of the file reads as zeros, as in QEMU.
  if (n > 0 && off < fileLength) await qcow2File(s).pread(off, buf.subarray(0, Math.min(buf.length, fileLength - off)));
  s.l1Table = decodeTable(buf);
}
