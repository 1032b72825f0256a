/**
 * Image creation (qemu-img create -f qcow2), QEMU 7.2's steps so the bytes come out the same:
 * a minimal header cluster, a one-cluster reftable (cluster 1) pointing at an empty refcount
 * block (cluster 2); then the image is opened, clusters 0-2 counted, the header rewritten in
 * full, the image resized to its size (the L1 table lands in cluster 3, preallocation follows)
 * and the backing file recorded (another full header rewrite).
 */
import type { CreateContext, CreateOptions, CreateOptionSpec } from '../../block/driver.js';
import { BlockError } from '../../block/errors.js';
import { BlockDriverState } from '../../block/node.js';
import {
  encodeHeader,
  QCOW2_AUTOCLEAR_DATA_FILE_RAW,
  QCOW2_COMPAT_LAZY_REFCOUNTS,
  QCOW2_COMPRESSION_TYPE_ZSTD,
  QCOW2_INCOMPAT_COMPRESSION,
  QCOW2_INCOMPAT_DATA_FILE,
  QCOW2_INCOMPAT_EXTL2,
  QCOW2_MAX_BACKING_FILE_NAME,
  QCOW2_V3_HEADER_SIZE,
  QCOW_MAGIC,
  QCOW_MAX_L1_SIZE,
  sizeToL1,
} from './header.js';
import { qcow2UpdateHeader } from './header-update.js';
import { qcow2ChangeBackingFile, qcow2Driver } from './qcow2.js';
import { qcow2AllocClusters } from './refcount.js';
import { qcow2Truncate } from './resize.js';
import { qcow2State } from './state.js';

/** QEMU 7.2's qcow2 create options, in the order its Formatting line prints them. */
export const qcow2CreateOptions: readonly CreateOptionSpec[] = [
  { name: 'cluster_size', key: 'clusterSize', type: 'size', help: 'qcow2 cluster size', default: 65536 },
  { name: 'extended_l2', key: 'extendedL2', type: 'bool', help: 'Extended L2 tables', default: false },
  { name: 'preallocation', key: 'preallocation', type: 'string', help: 'Preallocation mode (allowed values: off, metadata, falloc, full)' },
  { name: 'compression_type', key: 'compressionType', type: 'string', help: 'Compression method used for image cluster compression', default: 'zlib' },
  { name: 'size', key: 'size', type: 'size', help: 'Virtual disk size' },
  { name: 'compat', key: 'compat', type: 'string', help: 'Compatibility level (v2 [0.10] or v3 [1.1])' },
  { name: 'backing_file', key: 'backingFile', type: 'string', help: 'File name of a base image' },
  { name: 'backing_fmt', key: 'backingFmt', type: 'string', help: 'Image format of the base image' },
  { name: 'data_file', key: 'dataFile', type: 'string', help: 'File name of an external data file' },
  { name: 'data_file_raw', key: 'dataFileRaw', type: 'bool', help: 'The external data file must stay valid as a raw image' },
  { name: 'lazy_refcounts', key: 'lazyRefcounts', type: 'bool', help: 'Postpone refcount updates', default: false },
  { name: 'refcount_bits', key: 'refcountBits', type: 'number', help: 'Width of a reference count entry in bits', default: 16 },
];

export interface Qcow2CreateParams {
  size: number;
  version: 2 | 3;
  clusterSize: number;
  clusterBits: number;
  refcountOrder: number;
  lazyRefcounts: boolean;
  extendedL2: boolean;
  compressionType: number;
  preallocation: 'off' | 'metadata' | 'falloc' | 'full';
  backingFile: string | null;
  backingFmt: string | null;
  /** An external data file to create (data_file), and whether it stays a raw image. */
  dataFile: string | null;
  dataFileRaw: boolean;
}

function opt(options: CreateOptions, key: string, name: string): string | number | boolean | undefined {
  return options[key] ?? options[name];
}

function fail(message: string, code: 'EINVAL' | 'ENOTSUP' | 'EFBIG' = 'EINVAL'): never {
  throw new BlockError(code, message, { op: 'create' });
}

/** Read and validate the create options in QEMU's order; nothing is written on failure. */
export function qcow2CreateParams(options: CreateOptions): Qcow2CreateParams {
  const num = (key: string, name: string, def: number): number => {
    const v = opt(options, key, name);
    if (v === undefined) return def;
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) fail(`Parameter '${name}' expects a size`);
    return v;
  };
  const str = (key: string, name: string): string | null => {
    const v = opt(options, key, name);
    if (v === undefined) return null;
    if (typeof v !== 'string') fail(`Parameter '${name}' expects a string`);
    return v;
  };
  const bool = (key: string, name: string): boolean => opt(options, key, name) === true;

  const compat = str('compat', 'compat');
  let version: 2 | 3 = 3;
  if (compat === '0.10' || compat === 'v2') version = 2;
  else if (compat !== null && compat !== '1.1' && compat !== 'v3') fail(`Parameter 'version' does not accept value '${compat}'`);
  const preallocation = str('preallocation', 'preallocation') ?? 'off';
  if (!['off', 'metadata', 'falloc', 'full'].includes(preallocation)) {
    fail(`Parameter 'preallocation' does not accept value '${preallocation}'`);
  }
  const ctype = str('compressionType', 'compression_type') ?? 'zlib';
  if (ctype !== 'zlib' && ctype !== 'zstd') fail(`Parameter 'compression-type' does not accept value '${ctype}'`);

  // The legacy option path rounds the size up to whole sectors.
  const size = Math.ceil(num('size', 'size', 0) / 512) * 512;
  const clusterSize = num('clusterSize', 'cluster_size', 65536);
  const extendedL2 = bool('extendedL2', 'extended_l2');
  if (clusterSize < 512 || clusterSize > 2 * 1024 * 1024 || (clusterSize & (clusterSize - 1)) !== 0) {
    fail('Cluster size must be a power of two between 512 and 2048k');
  }
  if (extendedL2 && clusterSize < 16384) fail('Extended L2 entries are only supported with cluster sizes of at least 16384 bytes');
  const lazyRefcounts = bool('lazyRefcounts', 'lazy_refcounts');
  if (lazyRefcounts && version < 3) {
    fail('Lazy refcounts only supported with compatibility level 1.1 and above (use version=v3 or greater)');
  }
  const refcountBits = num('refcountBits', 'refcount_bits', 16);
  if (refcountBits > 64 || refcountBits === 0 || (refcountBits & (refcountBits - 1)) !== 0) {
    fail('Refcount width must be a power of two and may not exceed 64 bits');
  }
  if (version < 3 && refcountBits !== 16) {
    fail('Different refcount widths than 16 bits require compatibility level 1.1 or above (use version=v3 or greater)');
  }
  const backingFile = str('backingFile', 'backing_file');
  const backingFmt = str('backingFmt', 'backing_fmt');
  const dataFile = str('dataFile', 'data_file');
  const dataFileRaw = bool('dataFileRaw', 'data_file_raw');
  if (dataFile !== null && version < 3) {
    fail('External data files are only supported with compatibility level 1.1 and above (use version=v3 or greater)');
  }
  if (dataFileRaw && dataFile === null) fail('data-file-raw requires data-file');
  if (dataFileRaw && backingFile !== null) fail('Backing file and data-file-raw cannot be used at the same time');
  // A raw data file must read as the disk with or without the metadata: every L2 entry maps
  // the guest offset to the same host offset from the start (metadata preallocation).
  const prealloc = dataFileRaw && preallocation === 'off' ? 'metadata' : preallocation;
  if (backingFile !== null && preallocation !== 'off' && !extendedL2) {
    fail('Backing file and preallocation can only be used at the same time if extended_l2 is on');
  }
  if (ctype !== 'zlib' && version < 3) {
    fail('Non-zlib compression type is only supported with compatibility level 1.1 and above (use version=v3 or greater)');
  }
  if (extendedL2 && version < 3) {
    fail('Extended L2 entries are only supported with compatibility level 1.1 and above (use version=v3 or greater)');
  }
  const clusterBits = Math.log2(clusterSize);
  if (sizeToL1(size, clusterBits, extendedL2) * 8 > QCOW_MAX_L1_SIZE) {
    fail("The image size is too large for file format 'qcow2' (try using a larger cluster size)");
  }
  if (backingFile !== null && new TextEncoder().encode(backingFile).length > QCOW2_MAX_BACKING_FILE_NAME) {
    fail(`Could not assign backing file '${backingFile}' with format '${backingFmt ?? ''}': Invalid argument`);
  }
  return {
    size,
    version,
    clusterSize,
    clusterBits,
    refcountOrder: Math.log2(refcountBits),
    lazyRefcounts,
    extendedL2,
    compressionType: ctype === 'zstd' ? QCOW2_COMPRESSION_TYPE_ZSTD : 0,
    preallocation: prealloc as Qcow2CreateParams['preallocation'],
    backingFile,
    backingFmt,
    dataFile,
    dataFileRaw,
  };
}

/** The first three clusters: minimal header, reftable, empty refcount block. */
export function qcow2InitialClusters(p: Qcow2CreateParams): Uint8Array {
  const cs = p.clusterSize;
  const buf = new Uint8Array(3 * cs);
  const header = encodeHeader({
    magic: QCOW_MAGIC,
    version: p.version,
    backingFileOffset: 0,
    backingFileSize: 0,
    clusterBits: p.clusterBits,
    size: 0,
    cryptMethod: 0,
    l1Size: 0,
    l1TableOffset: 0,
    refcountTableOffset: cs,
    refcountTableClusters: 1,
    nbSnapshots: 0,
    snapshotsOffset: 0,
    incompatibleFeatures:
      (p.extendedL2 ? QCOW2_INCOMPAT_EXTL2 : 0n) | (p.compressionType !== 0 ? QCOW2_INCOMPAT_COMPRESSION : 0n) | (p.dataFile !== null ? QCOW2_INCOMPAT_DATA_FILE : 0n),
    compatibleFeatures: p.lazyRefcounts ? QCOW2_COMPAT_LAZY_REFCOUNTS : 0n,
    autoclearFeatures: p.dataFileRaw ? QCOW2_AUTOCLEAR_DATA_FILE_RAW : 0n,
    refcountOrder: p.refcountOrder,
    headerLength: QCOW2_V3_HEADER_SIZE,
    compressionType: p.compressionType,
  });
  buf.set(header, 0);
  // An end marker right after the header, then reftable[0] = the block in cluster 2.
  new DataView(buf.buffer).setBigUint64(cs, BigInt(2 * cs));
  return buf;
}

/** The create hook. */
export async function qcow2Create(filename: string, options: CreateOptions, ctx: CreateContext): Promise<void> {
  const p = qcow2CreateParams(options);
  // The data file first, at the disk's size (QEMU creates it with the same options; there is
  // no metadata preallocation for a raw file).
  const data = p.dataFile === null ? null : await createDataFile(p.dataFile, options, p, ctx);
  let file: BlockDriverState;
  try {
    file = await ctx.createFile(filename, { ...options, size: 0, preallocation: undefined });
  } catch (e) {
    await data?.close().catch(() => undefined);
    throw e;
  }
  let bs: BlockDriverState | null = null;
  try {
    if ((await file.getLength()) !== 0) await file.truncate(0);
    await file.pwrite(0, qcow2InitialClusters(p));
    bs = new BlockDriverState(qcow2Driver, filename, { registry: ctx.registry });
    bs.file = file;
    // The image opens over the data file just created (QEMU names its node).
    bs.dataFile = data;
    await bs.driverOpen();
    const s = qcow2State(bs);
    await s.lock.run(async () => {
      await qcow2AllocClusters(s, 3 * p.clusterSize);
      // The name as given: QEMU records the data file node's filename.
      s.imageDataFile = p.dataFile;
      await qcow2UpdateHeader(s);
    });
    await qcow2Truncate(s, p.size, p.preallocation);
    if (p.backingFile !== null) {
      try {
        await qcow2ChangeBackingFile(bs, p.backingFile, p.backingFmt);
      } catch (e) {
        const why = e instanceof BlockError ? e.errnoMessage : String(e);
        throw new BlockError(e instanceof BlockError ? e.code : 'EIO', `Could not assign backing file '${p.backingFile}' with format '${p.backingFmt ?? ''}': ${why}`, {
          op: 'create',
          cause: e,
        });
      }
    }
    const done = bs;
    bs = null;
    await done.close();
  } catch (e) {
    if (bs) await bs.close().catch(() => undefined);
    else {
      await file.close().catch(() => undefined);
      await data?.close().catch(() => undefined);
    }
    throw e;
  }
}

/** Create the external data file of a new image: a protocol-level file of the disk's size. */
async function createDataFile(name: string, options: CreateOptions, p: Qcow2CreateParams, ctx: CreateContext): Promise<BlockDriverState> {
  const preallocation = p.preallocation === 'falloc' || p.preallocation === 'full' ? p.preallocation : undefined;
  const node = await ctx.createFile(name, { ...options, size: p.size, preallocation });
  node.setParent('node');
  return node;
}
