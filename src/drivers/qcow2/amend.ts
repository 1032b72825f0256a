/**
 * qemu-img amend for qcow2 (QEMU's qcow2_amend_options): compat 0.10 <-> 1.1, refcount_bits,
 * lazy_refcounts, size, the data file's name and its raw flag (cleared only), and the backing file
 * options QEMU accepts only when they change nothing.
 *
 * The steps run in QEMU's order, each leaving an image that opens with its data intact:
 * upgrade first (v3 can describe everything v2 can), the refcount width, then the header rewrite and lazy
 * refcounts, the resize, and the downgrade last, after the features v2 cannot describe are
 * gone. The version switch itself is always the last write of its step: a crash before it
 * leaves the old version with valid contents, and at worst leaked clusters.
 */
import type { AmendStatus, CreateOptions, CreateOptionSpec } from '../../block/driver.js';
import { BlockError, type BlockErrorCode, toBlockError } from '../../block/errors.js';
import { getL2Entry, l2Load, l2OffsetOf } from './cluster.js';
import { clusterType, L2E_OFFSET_MASK } from './entries.js';
import { qcow2ExpandZeroClusters } from './expand-zero.js';
import { QCOW2_AUTOCLEAR_DATA_FILE_RAW, QCOW2_COMPAT_LAZY_REFCOUNTS, QCOW2_COMPRESSION_TYPE_ZLIB, QCOW2_INCOMPAT_COMPRESSION, QCOW2_INCOMPAT_DIRTY } from './header.js';
import { qcow2ChangeRefcountOrder } from './refcount-order.js';
import { qcow2WriteSnapshots } from './snapshot.js';
import { qcow2ReadSnapshots } from './snapshot-table.js';
import { type BDRVQcow2State, qcow2File, qcow2IsDirty } from './state.js';
import { qcow2DataFileIsRaw, qcow2HasDataFile } from './data-file.js';

/** QEMU 7.2's amend options for qcow2 (qcow2_amend_opts), in its order. */
export const qcow2AmendOptions: readonly CreateOptionSpec[] = [
  { name: 'encrypt.state', key: 'encrypt.state', type: 'string', help: 'Select new state of affected keyslots (active/inactive)' },
  { name: 'encrypt.keyslot', key: 'encrypt.keyslot', type: 'number', help: 'Select a single keyslot to modify explicitly' },
  { name: 'encrypt.old-secret', key: 'encrypt.old-secret', type: 'string', help: 'Select all keyslots that match this password' },
  { name: 'encrypt.new-secret', key: 'encrypt.new-secret', type: 'string', help: 'New secret to set in the matching keyslots. Empty string to erase' },
  { name: 'encrypt.iter-time', key: 'encrypt.iter-time', type: 'number', help: 'Time to spend in PBKDF in milliseconds' },
  { name: 'size', key: 'size', type: 'size', help: 'Virtual disk size' },
  { name: 'compat', key: 'compat', type: 'string', help: 'Compatibility level (v2 [0.10] or v3 [1.1])' },
  { name: 'backing_file', key: 'backingFile', type: 'string', help: 'File name of a base image' },
  { name: 'backing_fmt', key: 'backingFmt', type: 'string', help: 'Image format of the base image' },
  { name: 'data_file', key: 'dataFile', type: 'string', help: 'File name of an external data file' },
  { name: 'data_file_raw', key: 'dataFileRaw', type: 'bool', help: 'The external data file must stay valid as a raw image' },
  { name: 'lazy_refcounts', key: 'lazyRefcounts', type: 'bool', help: 'Postpone refcount updates' },
  { name: 'refcount_bits', key: 'refcountBits', type: 'number', help: 'Width of a reference count entry in bits' },
];

function fail(message: string, code: BlockErrorCode = 'EINVAL'): never {
  throw new BlockError(code, message, { op: 'amend' });
}

/** What the options ask for; fields absent from `options` keep the image's values. */
interface AmendPlan {
  version: number;
  size: number;
  backingFile: string | null | undefined;
  backingFmt: string | null | undefined;
  lazyRefcounts: boolean;
  refcountBits: number;
  /** The data file name to record ('' drops it: the image then needs the data-file option). */
  dataFile: string | undefined;
  dataFileRaw: boolean;
}

/** The options in qcow2_amend_opts order, with QEMU's checks and messages. */
function amendPlan(s: BDRVQcow2State, options: CreateOptions): AmendPlan {
  const p: AmendPlan = { version: s.header.version, size: 0, backingFile: undefined, backingFmt: undefined, lazyRefcounts: s.useLazyRefcounts, refcountBits: 2 ** s.refcountOrder, dataFile: undefined, dataFileRaw: qcow2DataFileIsRaw(s) };
  for (const spec of qcow2AmendOptions) {
    const v = options[spec.key];
    if (v === undefined) continue;
    if (spec.name.startsWith('encrypt.')) fail("Can't amend encryption options - encryption not present");
    switch (spec.name) {
      case 'compat':
        if (v === '0.10' || v === 'v2') p.version = 2;
        else if (v === '1.1' || v === 'v3') p.version = 3;
        else fail(`Unknown compatibility level ${String(v)}`);
        break;
      case 'size':
        p.size = Number(v);
        break;
      case 'backing_file':
        p.backingFile = String(v);
        break;
      case 'backing_fmt':
        p.backingFmt = String(v);
        break;
      case 'lazy_refcounts':
        p.lazyRefcounts = v === true;
        break;
      case 'refcount_bits': {
        const n = Number(v);
        if (n <= 0 || n > 64 || (n & (n - 1)) !== 0) fail('Refcount width must be a power of two and may not exceed 64 bits');
        p.refcountBits = n;
        break;
      }
      case 'data_file':
        // Only renamed (or its name dropped): moving the data into or out of the image is not amend's.
        if (!qcow2HasDataFile(s)) fail('data-file can only be set for images that use an external data file');
        p.dataFile = String(v);
        break;
      case 'data_file_raw':
        // Clearing is always safe; setting would claim what nobody checked.
        if (v === true && !qcow2DataFileIsRaw(s)) fail('data-file-raw cannot be set on existing images');
        p.dataFileRaw = v === true;
        break;
    }
  }
  return p;
}

/**
 * Progress over several operations, as QEMU's qcow2_amend_helper_cb: each operation reports
 * its own (offset, size); the total is projected from the operations seen so far.
 */
class AmendProgress {
  private completed = 0;
  private offsetCompleted = 0;
  private last: string | null = null;
  private lastWork = 0;
  current = '';
  constructor(
    private readonly status: AmendStatus,
    private readonly total: number,
  ) {}

  report = (offset: number, work: number): void => {
    if (this.current !== this.last) {
      if (this.last !== null) {
        this.offsetCompleted += this.lastWork;
        this.completed++;
      }
      this.last = this.current;
    }
    this.lastWork = work;
    const currentWork = this.offsetCompleted + work;
    const projected = Math.trunc((currentWork * (this.total - this.completed - 1)) / (this.completed + 1));
    this.status(this.offsetCompleted + offset, currentWork + projected);
  };
}

/** Full header rewrite with `change` applied; memory is restored if the write fails. */
async function rewriteHeader(s: BDRVQcow2State, change: () => void): Promise<void> {
  const saved = { ...s.header };
  change();
  try {
    await s.updateHeader();
  } catch (e) {
    s.header = saved;
    throw new BlockError(e instanceof BlockError ? e.code : 'EIO', `Failed to update the image header: ${e instanceof Error ? e.message : String(e)}`, { op: 'amend' });
  }
}

/** Every cached table on disk, and the disk flushed. */
async function flushCaches(s: BDRVQcow2State): Promise<void> {
  await s.l2Cache.flush();
  await s.refcountCache.flush();
}

/**
 * qcow2_mark_clean: the bit goes in memory first so that the refcount cache is written (it
 * is held back while the image is dirty); the header stops saying dirty only once the
 * refcounts are on disk.
 */
async function markClean(s: BDRVQcow2State): Promise<void> {
  if (!qcow2IsDirty(s)) return;
  s.header.incompatibleFeatures &= ~QCOW2_INCOMPAT_DIRTY;
  try {
    await flushCaches(s);
  } catch (e) {
    s.header.incompatibleFeatures |= QCOW2_INCOMPAT_DIRTY;
    throw e;
  }
  await rewriteHeader(s, () => undefined);
}

async function upgrade(s: BDRVQcow2State, progress: AmendProgress): Promise<void> {
  progress.report(0, 2);
  // v3 wants the 64-bit VM state size and the disk size (16 bytes of extra data) in every
  // snapshot entry. The table is rewritten whole in the form QEMU 7.2 writes (24 bytes, icount
  // unrecorded where the entry had none), at a new place: flushed, then the header's pointer
  // switched, then the old table freed. A crash before the version switch below leaves a v2
  // image whose table is merely longer.
  if ((await rawSnapshotExtraSizes(s)).some((n) => n < 16)) {
    try {
      await qcow2WriteSnapshots(s, await qcow2ReadSnapshots(s));
    } catch (e) {
      const be = toBlockError(e);
      fail(`Failed to update the snapshot table: ${be.errnoMessage}`, be.code);
    }
  }
  progress.report(1, 2);
  await rewriteHeader(s, () => void (s.header.version = 3));
  progress.report(2, 2);
}

/** extra_data_size of every snapshot table entry, read as stored. */
async function rawSnapshotExtraSizes(s: BDRVQcow2State): Promise<number[]> {
  const out: number[] = [];
  let pos = s.header.snapshotsOffset;
  const file = qcow2File(s);
  for (let i = 0; i < s.header.nbSnapshots; i++) {
    const h = new Uint8Array(40);
    await file.pread(pos, h);
    const v = new DataView(h.buffer);
    const extra = v.getUint32(36);
    out.push(extra);
    pos += (40 + extra + v.getUint16(12) + v.getUint16(14) + 7) & ~7;
  }
  return out;
}

async function hasCompressedClusters(s: BDRVQcow2State): Promise<boolean> {
  for (let i = 0; i < s.l1Table.length; i++) {
    if ((s.l1Table[i] & L2E_OFFSET_MASK) === 0n) continue;
    const table = await l2Load(s, l2OffsetOf(s, i));
    try {
      for (let j = 0; j < s.l2Size; j++) if (clusterType(getL2Entry(s, table.data, j), true) === 'compressed') return true;
    } finally {
      s.l2Cache.put(table);
    }
  }
  return false;
}

/**
 * qcow2_downgrade. Everything that can refuse is decided before the first change (QEMU
 * refuses zstd clusters and unknown incompatible features half-way, with compatible and autoclear features
 * already dropped in memory: the next header write would lose lazy refcounts and bitmaps on an
 * image that stays v3). A failure after that restores the in-memory features, so that memory
 * never describes an image the disk does not hold.
 */
async function downgrade(s: BDRVQcow2State, progress: AmendProgress): Promise<void> {
  if (s.refcountOrder !== 4) fail('compat=0.10 requires refcount_bits=16', 'ENOTSUP');
  if (qcow2HasDataFile(s)) fail('Cannot downgrade an image with a data file', 'ENOTSUP');
  const snapshots = await qcow2ReadSnapshots(s);
  for (const sn of snapshots) {
    if (sn.vmStateSize > 0xffffffff || sn.diskSize !== s.header.size) fail('Internal snapshots prevent downgrade of image', 'ENOTSUP');
  }
  const incompat = s.header.incompatibleFeatures & ~(QCOW2_INCOMPAT_COMPRESSION | QCOW2_INCOMPAT_DIRTY);
  if (incompat !== 0n) fail(`Cannot downgrade an image with incompatible features 0x${incompat.toString(16)} set`, 'ENOTSUP');
  const zstd = (s.header.incompatibleFeatures & QCOW2_INCOMPAT_COMPRESSION) !== 0n;
  if (zstd && (await hasCompressedClusters(s))) fail('Cannot downgrade an image with zstd compression type and existing compressed clusters', 'ENOTSUP');
  await markClean(s);
  const saved = { compatible: s.header.compatibleFeatures, autoclear: s.header.autoclearFeatures, lazy: s.useLazyRefcounts };
  try {
    // Compatible and autoclear features cannot be stored in v2: dropped with the header write.
    // Lazy refcounts go with them, in memory too: a v2 header cannot say the image is dirty, so
    // refcounts held back after this point could not be repaired after a crash.
    s.header.compatibleFeatures = 0n;
    s.header.autoclearFeatures = 0n;
    s.useLazyRefcounts = false;
    // The zero clusters of the active L1 and of every snapshot's (expand-zero.ts).
    await qcow2ExpandZeroClusters(s, progress.report);
    // The expanded tables and their refcounts reach the disk before the header says v2.
    await flushCaches(s);
    await rewriteHeader(s, () => {
      s.header.version = 2;
      s.header.incompatibleFeatures &= ~QCOW2_INCOMPAT_COMPRESSION;
      s.header.compressionType = QCOW2_COMPRESSION_TYPE_ZLIB;
    });
  } catch (e) {
    s.header.compatibleFeatures = saved.compatible;
    s.header.autoclearFeatures = saved.autoclear;
    s.useLazyRefcounts = saved.lazy;
    throw e;
  }
}

export async function qcow2AmendOptionsHook(s: BDRVQcow2State, options: CreateOptions, status: AmendStatus): Promise<void> {
  const p = amendPlan(s, options);
  const oldVersion = s.header.version;
  const refcountChange = p.refcountBits !== 2 ** s.refcountOrder;
  const progress = new AmendProgress(status, (p.version !== oldVersion ? 1 : 0) + (refcountChange ? 1 : 0));
  if (p.version > oldVersion) {
    progress.current = 'upgrade';
    await upgrade(s, progress);
  }
  if (refcountChange) {
    if (p.version < 3 && p.refcountBits !== 16) {
      fail('Refcount widths other than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)');
    }
    progress.current = 'refcount order';
    await qcow2ChangeRefcountOrder(s, Math.log2(p.refcountBits), progress.report);
  }
  // The data file's name and raw flag go with the header rewrite every amend does.
  const oldDataFile = s.imageDataFile;
  try {
    await rewriteHeader(s, () => {
      if (p.dataFile !== undefined) s.imageDataFile = p.dataFile === '' ? null : p.dataFile;
      if (!p.dataFileRaw) s.header.autoclearFeatures &= ~QCOW2_AUTOCLEAR_DATA_FILE_RAW;
    });
  } catch (e) {
    s.imageDataFile = oldDataFile;
    throw e;
  }
  if (p.backingFile !== undefined || p.backingFmt !== undefined) {
    if ((p.backingFile ?? null) !== s.backingFile || (p.backingFmt ?? null) !== s.backingFormat) {
      fail("Cannot amend the backing file\nYou can use 'qemu-img rebase' instead.");
    }
  }
  if (s.useLazyRefcounts !== p.lazyRefcounts) {
    if (p.lazyRefcounts) {
      if (p.version < 3) fail('Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)');
      await rewriteHeader(s, () => void (s.header.compatibleFeatures |= QCOW2_COMPAT_LAZY_REFCOUNTS));
      s.useLazyRefcounts = true;
    } else {
      // Refcounts must be accurate on disk before the image stops allowing them to lag.
      await markClean(s);
      await rewriteHeader(s, () => void (s.header.compatibleFeatures &= ~QCOW2_COMPAT_LAZY_REFCOUNTS));
      s.useLazyRefcounts = false;
    }
  }
  // Through the node, so that its length follows (blk_truncate, exact size, no preallocation).
  if (p.size !== 0) await s.bs.truncate(p.size, 'off');
  if (p.version < oldVersion) {
    progress.current = 'downgrade';
    await downgrade(s, progress);
  }
}
