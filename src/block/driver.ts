import type { BlockAIOCB, CompletionFunc } from './aio.js';
import type { Clock } from './clock.js';
import { BlockError } from './errors.js';
import type { BlkDebugEvent } from './events.js';
import type { IOVector } from './iovec.js';
import type { ObjectTable } from './objects.js';
import type { BlockDriverState } from './node.js';
import type { RuntimeOptionSpec } from './options.js';
import type { FlatQDict } from './qdict.js';
import type { BlockDriverRegistry } from './registry.js';

export const BDRV_SECTOR_SIZE = 512;

/** Largest zero buffer written at once where zeroing falls back to plain writes. */
export const BDRV_ZERO_CHUNK = 1 << 20;
export const BDRV_SECTOR_BITS = 9;

export interface WriteFlags {
  /** Force Unit Access: the write is durable when it completes. */
  fua?: boolean;
}

export interface WriteZeroesFlags {
  /** The range may be deallocated instead of written (BDRV_REQ_MAY_UNMAP). */
  mayUnmap?: boolean;
  /** Fail with ENOTSUP rather than fall back to writing a zero buffer (BDRV_REQ_NO_FALLBACK). */
  noFallback?: boolean;
  /**
   * Force Unit Access (a writethrough cache): no driver zeroes with FUA, so the generic layer
   * flushes the node once after the whole zeroed range, as QEMU does.
   */
  fua?: boolean;
}

/**
 * Block status of a byte range (QEMU's bdrv_co_block_status): what `isAllocated`, `map` and
 * convert's zero detection are built on.
 */
export interface BlockStatus {
  /** Bytes from the queried offset for which this answer holds; > 0 whenever bytes > 0. */
  pnum: number;
  /** This layer determines the content (data or a zero marker): BDRV_BLOCK_ALLOCATED. */
  allocated: boolean;
  /** The range has data stored somewhere (BDRV_BLOCK_DATA). */
  data: boolean;
  /** The range reads as zeros (BDRV_BLOCK_ZERO). */
  zero: boolean;
  /** Host byte offset of the data in `file` (BDRV_BLOCK_OFFSET_VALID). */
  offset?: number;
  /** The node that holds the data at `offset`. */
  file?: BlockDriverState;
}

/** bdrv_get_info. */
export interface BlockDriverInfo {
  clusterSize: number;
  isDirty: boolean;
}

/**
 * Format-specific image information (QEMU's ImageInfoSpecific): `kind` names the format,
 * `data` holds QEMU's fields under their QAPI names ('compat', 'refcount-bits', ...) in
 * QEMU's order, ready for `info --output=json` and the human-readable block.
 */
export interface ImageInfoSpecific {
  kind: string;
  data: Record<string, ImageInfoValue>;
}

/** A value in ImageInfoSpecific: scalars, or lists and dicts of them (qcow2's bitmaps list). */
export type ImageInfoValue = string | number | boolean | ImageInfoValue[] | { [key: string]: ImageInfoValue };

/** BdrvCheckResult. */
export interface CheckResult {
  corruptions: number;
  leaks: number;
  checkErrors: number;
  corruptionsFixed: number;
  leaksFixed: number;
  totalClusters: number;
  allocatedClusters: number;
  fragmentedClusters: number;
  compressedClusters: number;
  imageEndOffset?: number;
}

/** What check may repair (BDRV_FIX_LEAKS | BDRV_FIX_ERRORS). */
export interface CheckFix {
  leaks?: boolean;
  errors?: boolean;
  /**
   * Receives each line of the check's findings and repairs, as QEMU prints them on stderr
   * ("Leaked cluster 6 refcount=1 reference=0"), without the newline. Default: none printed.
   */
  report?: (line: string) => void;
}

export function emptyCheckResult(): CheckResult {
  return {
    corruptions: 0,
    leaks: 0,
    checkErrors: 0,
    corruptionsFixed: 0,
    leaksFixed: 0,
    totalClusters: 0,
    allocatedClusters: 0,
    fragmentedClusters: 0,
    compressedClusters: 0,
  };
}

/** One internal snapshot as the tools see it (QEMUSnapshotInfo). */
export interface QEMUSnapshotInfo {
  id: string;
  name: string;
  /** Bytes of saved VM state. */
  vmStateSize: number;
  dateSec: number;
  dateNsec: number;
  /** Guest clock at the snapshot, nanoseconds. */
  vmClockNsec: bigint;
  /** Instructions executed (record/replay); null when the image records none (-1). */
  icount: bigint | null;
}

/** bdrv_measure's answer (BlockMeasureInfo): file sizes, in bytes, a new image needs. */
export interface BlockMeasureInfo {
  /** For the measured source (or an empty image of the size): metadata plus the data it needs. */
  required: bigint;
  /** With every cluster allocated. */
  fullyAllocated: bigint;
  /** What the source's persistent bitmaps take; absent when either side cannot keep them. */
  bitmaps?: bigint;
}

/** A persistent dirty bitmap of an image, as measure counts it. */
export interface PersistentBitmapInfo {
  name: string;
  /** Bytes of guest data per bit. */
  granularity: number;
}

/** Progress of an amend (BlockDriverAmendStatusCB): `offset` of `total` units done. */
export type AmendStatus = (offset: number, total: number) => void;

/** Options of `open` (QEMU's BDRV_O_* flags and friends). */
export interface OpenOptions {
  /** Format driver name; probed from the first bytes when absent. */
  format?: string;
  /** Open read-only (default: read-write). */
  readOnly?: boolean;
  /** Do not open the backing file (BDRV_O_NO_BACKING). */
  noBacking?: boolean;
  /** Opened for `check`: the format skips its open-time repair (BDRV_O_CHECK). */
  check?: boolean;
  /** Inactive / incoming migration: no metadata writes at open (BDRV_O_INACTIVE). */
  inactive?: boolean;
  /** Force the backing file's format instead of what the image records or probing. */
  backingFormat?: string;
  /** Ignore flushes (cache=unsafe). */
  noFlush?: boolean;
  /** Copy-on-read: reads from the backing file are written into the image (qemu-io -C). */
  copyOnRead?: boolean;
  /** Open even if another process has the image locked (-U); accepted for compatibility. */
  forceShare?: boolean;
  /** Time source for timers (the QED need-check timer). Defaults to the real clock. */
  clock?: Clock;
  /** Driver registry; defaults to the global one with every built-in driver. */
  registry?: BlockDriverRegistry;
  /** Driver-specific options (blkdebug's config, for example). */
  driverOptions?: Record<string, string>;
  /**
   * The user-created objects (`--object`: secrets, TLS credentials) that options name by id
   * (nbd's tls-creds, http's password-secret). Children and backing files see the same table.
   * Absent: no object can be named.
   */
  objects?: ObjectTable;
  /**
   * Where a deprecation warning met while opening goes (QEMU's warn_report: the tools print
   * "prog: warning: ..."). Ignored when absent.
   */
  onWarning?: (message: string) => void;
  /** Where text a driver prints as is goes (QEMU's error_printf: no prefix, no newline added). */
  onErrorPrintf?: (text: string) => void;
  /**
   * Where the lines of a check run while opening go, as they are (QEMU prints them on stderr
   * without a prefix): qcow2 repairs a dirty image on a writable open. Ignored when absent.
   */
  onReport?: (line: string) => void;
  /** How deep in a backing chain this node is opened; the generic layer sets it. */
  depth?: number;
  /**
   * The node is opened for a parent node (QEMU's BdrvChild: a format's `file`, a filter's
   * image, a backing file, a format's create hook) rather than for a user. Only then (or under
   * a BlockBackend, which bounds its user itself) does a protocol or filter node grow on
   * writes past its end and read zeros there; a node the user opened directly refuses such
   * requests with EIO, as qemu-io does. The generic layer and the built-in drivers set it for
   * the children they open. Default false.
   */
  child?: boolean;
}

/** Options of `create` (the -o options of qemu-img create). */
export interface CreateOptions {
  /** Virtual size in bytes. */
  size?: number;
  backingFile?: string;
  backingFmt?: string;
  clusterSize?: number;
  tableSize?: number;
  [name: string]: string | number | boolean | undefined;
}

/** One entry of a driver's create options (what `-o help` lists). */
export interface CreateOptionSpec {
  /** QEMU's option name: `size`, `backing_file`, `backing_fmt`, `cluster_size`, `table_size`. */
  name: string;
  /** Key in CreateOptions (camelCase). */
  key: string;
  type: 'size' | 'string' | 'number' | 'bool';
  help: string;
  default?: number | string | boolean;
}

/** What a driver's create hook gets besides the file name and options. */
export interface CreateContext {
  registry: BlockDriverRegistry;
  /**
   * Create (or truncate to 0) the protocol-level file `filename` and open it read-write.
   * The caller closes it. `options`, when given, are the protocol's create options (size,
   * preallocation...) passed on as QEMU's formats pass theirs to bdrv_create_file; without
   * them the file is created empty.
   */
  createFile(filename: string, options?: CreateOptions): Promise<BlockDriverState>;
}

/**
 * A block driver: a plain object of optional hooks, registered once. A missing hook means
 * "not supported" (ENOTSUP) and is never stubbed. The generic layer has already checked bounds,
 * alignment to `requestAlignment`, read-only and closed nodes before any hook runs.
 *
 * Offsets and lengths of co* hooks are bytes; aio* hooks take 512-byte sectors, as QEMU's did.
 * A driver gives either style of read/write; the registry fills in the other.
 */
export interface BlockDriver {
  /** Format name (`qed`, `raw`) or protocol name (`file`, `mem`). */
  readonly formatName: string;
  /** A protocol driver claims filenames with this prefix (`mem:disk0`); `file` is the default. */
  readonly protocolName?: string;
  /** Further prefixes the protocol claims (`nbd+tcp`, `nbd+unix` for `nbd`), QEMU's sibling drivers. */
  readonly protocolAliases?: readonly string[];
  /** Protocol drivers open host storage; format drivers open over a protocol child (`bs.file`). */
  readonly isProtocol?: boolean;
  /** Filters (blkdebug, blkverify) sit in place of a protocol and wrap another node. */
  readonly isFilter?: boolean;
  /**
   * QEMU's bdrv_needs_filename, which protocol and filter nodes have unless this is false: a
   * node opened from options without a filename is refused ("requires a file name"). A driver
   * whose options say everything (nbd's server.*, http's url) sets false; its parseFilename
   * turns a name into those options, and the name itself is not kept.
   */
  readonly needsFilename?: boolean;
  /**
   * The driver makes a write with `flags.fua` durable by itself (QEMU's BDRV_REQ_FUA in
   * supported_write_flags). Otherwise the generic layer passes no FUA down and flushes the
   * node after the write instead (QEMU's FUA emulation: qed, raw and file in 7.2).
   */
  readonly supportsFua?: boolean;
  /** Alignment of requests the driver accepts, bytes; default 512 for formats, 1 for protocols. */
  readonly requestAlignment?: number;
  /**
   * A format that honours `noFallback` zeroing by handing it to its file (QEMU's
   * BDRV_REQ_NO_FALLBACK in supported_zero_flags: raw). Protocols and filters pass the flag on;
   * another format refuses a no-fallback zero write with ENOTSUP before trying.
   */
  readonly zeroNoFallback?: boolean;
  /** The format can have a backing file (create accepts backing_file). */
  readonly supportsBacking?: boolean;
  /**
   * truncate honours a preallocation mode other than 'off' (file, and raw/blkdebug passing it
   * to their child). Without it the generic layer refuses one, as QEMU's drivers without
   * preallocation do ("Unsupported preallocation mode 'full'").
   */
  readonly truncatePreallocates?: boolean;
  readonly createOptions?: readonly CreateOptionSpec[];
  /** The options `amend` can change (QEMU's amend_opts); absent: the format cannot amend. */
  readonly amendOptions?: readonly CreateOptionSpec[];
  /**
   * The options this driver takes at open besides the generic ones (QEMU's runtime_opts):
   * from `-o`, `--image-opts` or `json:` they reach the open hook in
   * `OpenOptions.driverOptions`; any other key is refused with QEMU's "Block format 'x' does
   * not support the option 'y'". Absent means none.
   */
  readonly runtimeOptions?: readonly RuntimeOptionSpec[];
  /**
   * Turn a filename into this driver's options (bdrv_parse_filename), for a filename that
   * names the driver by its prefix or by default: sets `filename` and whatever else the name
   * encodes. Pure.
   */
  parseFilename?(filename: string, options: FlatQDict): void;
  /**
   * Warnings about create options that are valid but unwise (QED: a table_size QEMU cannot
   * open). qemu-img's create prints them with warn_report before creating; the library never
   * prints.
   */
  createWarnings?(options: CreateOptions): string[];
  /**
   * What the driver warns the user about the node it just opened, as stderr text (QEMU's raw
   * driver prints, for a writable image whose format was guessed by probing, that writes to
   * its first bytes are restricted). The tools print it; the library never prints.
   */
  openWarning?(bs: BlockDriverState): string | undefined;

  /** Score 0..100 for the first bytes (up to 2 KiB): raw 1, magic match 100. Pure. */
  probe?(buf: Uint8Array, filename: string): number;
  /**
   * Open `bs`. Protocols use `bs.filename`; formats read through `bs.file`. A format with a
   * backing file sets `bs.backingFile` (and `bs.backingFormat` when the image records one);
   * the generic layer opens the backing node after open returns.
   */
  open?(bs: BlockDriverState, options: OpenOptions): Promise<void>;
  close?(bs: BlockDriverState): Promise<void>;
  create?(filename: string, options: CreateOptions, ctx: CreateContext): Promise<void>;

  coPreadv?(bs: BlockDriverState, offset: number, bytes: number, qiov: IOVector): Promise<void>;
  /**
   * Read now, synchronously, if the data is at hand without waiting (the host's page cache):
   * true when `qiov` holds the `bytes` bytes at `offset`; false when the driver cannot (not
   * cached, an error, anything unusual), and the caller then uses coPreadv, which does the
   * read properly and reports any error. Called only for requests the generic layer has
   * checked (open, in bounds, aligned). Optional: it saves the promises and the turns of the
   * event loop of a request whose data is already in memory.
   */
  preadvNow?(bs: BlockDriverState, offset: number, bytes: number, qiov: IOVector): boolean;
  coPwritev?(bs: BlockDriverState, offset: number, bytes: number, qiov: IOVector, flags: WriteFlags): Promise<void>;
  aioReadv?(bs: BlockDriverState, sectorNum: number, qiov: IOVector, nbSectors: number, cb: CompletionFunc): BlockAIOCB;
  aioWritev?(bs: BlockDriverState, sectorNum: number, qiov: IOVector, nbSectors: number, cb: CompletionFunc): BlockAIOCB;
  coFlush?(bs: BlockDriverState): Promise<void>;
  /**
   * Write whole clusters compressed (QEMU's bdrv_co_pwritev_compressed_part; qemu-io write -c,
   * qemu-img convert -c): `offset` cluster-aligned, `bytes` a whole cluster or the image's tail.
   * `bytes` 0 asks the driver to align its file. Called by the generic layer (io/compressed.ts)
   * after its checks.
   */
  coPwritevCompressed?(bs: BlockDriverState, offset: number, bytes: number, qiov: IOVector): Promise<void>;

  /** Block status of [offset, offset+bytes); `pnum` may be shorter than `bytes`. */
  coBlockStatus?(bs: BlockDriverState, offset: number, bytes: number): Promise<BlockStatus>;
  /** bdrv_co_is_allocated in bytes; derived from coBlockStatus when absent. */
  coIsAllocated?(bs: BlockDriverState, offset: number, bytes: number): Promise<{ allocated: boolean; pnum: number }>;
  /** Native zeroing; reject with ENOTSUP to make the generic layer write a zero buffer instead. */
  coWriteZeroes?(bs: BlockDriverState, offset: number, bytes: number, flags: WriteZeroesFlags): Promise<void>;
  coDiscard?(bs: BlockDriverState, offset: number, bytes: number): Promise<void>;

  /** `prealloc`: QEMU's PreallocMode name for a grown range; absent means 'off'. */
  truncate?(bs: BlockDriverState, size: number, prealloc?: string): Promise<void>;
  getLength?(bs: BlockDriverState): number | Promise<number>;
  /** Bytes the image occupies on the host (qemu-img info's disk size). */
  getAllocatedFileSize?(bs: BlockDriverState): Promise<number>;
  getInfo?(bs: BlockDriverState): Promise<BlockDriverInfo>;
  /** bdrv_get_specific_info: the "Format specific information" of `qemu-img info`. */
  getSpecificInfo?(bs: BlockDriverState): Promise<ImageInfoSpecific>;
  /**
   * The file size an image of this format would need (bdrv_measure): from `options` (the
   * create options, `size` among them) alone, or to hold `inBs`'s guest data (its whole
   * backing chain). Pure apart from reading `inBs`; refuses bad options with their message.
   */
  measure?(options: CreateOptions, inBs: BlockDriverState | null): Promise<BlockMeasureInfo>;
  /**
   * Change the open image's options in place (bdrv_amend_options): only those present in
   * `options` (keyed as `amendOptions` says), each refused with QEMU's message when it cannot
   * be done. `status` hears the progress. Every step leaves an image that opens with its data.
   */
  amend?(bs: BlockDriverState, options: CreateOptions, status: AmendStatus, force: boolean): Promise<void>;
  /**
   * The persistent dirty bitmaps of the image (its top node only), or null when the image
   * cannot keep any (bdrv_supports_persistent_dirty_bitmap false: a qcow2 v2 image).
   */
  persistentDirtyBitmaps?(bs: BlockDriverState): Promise<PersistentBitmapInfo[] | null>;
  /** The image's internal snapshots (bdrv_snapshot_list); absent: the format has none. */
  snapshotList?(bs: BlockDriverState): Promise<QEMUSnapshotInfo[]>;
  /** Take an internal snapshot; `sn.id` empty means the driver picks one (bdrv_snapshot_create). */
  snapshotCreate?(bs: BlockDriverState, sn: QEMUSnapshotInfo): Promise<void>;
  /** Make the snapshot with this id, else this name, the active state (bdrv_snapshot_goto). */
  snapshotGoto?(bs: BlockDriverState, idOrName: string): Promise<void>;
  /** Remove the snapshot matching id and name (bdrv_snapshot_delete). */
  snapshotDelete?(bs: BlockDriverState, id: string, name: string): Promise<void>;
  /** Show the snapshot matching id and/or name on a read-only node until close (bdrv_snapshot_load_tmp). */
  snapshotLoadTmp?(bs: BlockDriverState, id: string | undefined, name: string | undefined): Promise<void>;
  /** Write VM state at `pos` of the image's VM state area (bdrv_save_vmstate). */
  saveVmstate?(bs: BlockDriverState, qiov: IOVector, pos: number): Promise<void>;
  /** Read VM state at `pos` of the image's VM state area (bdrv_load_vmstate). */
  loadVmstate?(bs: BlockDriverState, qiov: IOVector, pos: number): Promise<void>;
  changeBackingFile?(bs: BlockDriverState, backingFile: string | null, backingFmt: string | null): Promise<void>;
  invalidateCache?(bs: BlockDriverState): Promise<void>;
  /**
   * Persistent dirty bitmaps (qcow2): may a new bitmap `name` be stored in the image
   * (bdrv_co_can_store_new_dirty_bitmap)? Throws a BlockError saying why not.
   */
  canStoreNewDirtyBitmap?(bs: BlockDriverState, name: string, granularity: number): Promise<void>;
  /** Does this image keep persistent dirty bitmaps at all (qcow2 v3)? */
  supportsPersistentDirtyBitmap?(bs: BlockDriverState): boolean;
  /** Drop a persistent bitmap from the image now (bdrv_co_remove_persistent_dirty_bitmap). */
  removePersistentDirtyBitmap?(bs: BlockDriverState, name: string): Promise<void>;
  check?(bs: BlockDriverState, fix: CheckFix): Promise<CheckResult>;
  makeEmpty?(bs: BlockDriverState): Promise<void>;
  /** A debug event announced on this node (blkdebug acts on it; may wait at a breakpoint). */
  debugEvent?(bs: BlockDriverState, event: BlkDebugEvent): Promise<void>;
  /**
   * Breakpoints (QEMU's bdrv_debug_breakpoint family, src/block/debug.ts): the next request
   * announcing `event` parks, tagged `tag`, until debugResume or debugRemoveBreakpoint.
   * Throw a BlockError (ENOENT: unknown event, or no breakpoint / parked request with the tag).
   */
  debugBreakpoint?(bs: BlockDriverState, event: string, tag: string): void;
  debugRemoveBreakpoint?(bs: BlockDriverState, tag: string): void;
  debugResume?(bs: BlockDriverState, tag: string): void;
  debugIsSuspended?(bs: BlockDriverState, tag: string): boolean;
  /**
   * The node is being drained (QEMU's bdrv_co_drain_begin), its own requests already done:
   * finish background work now instead of later (QED runs its pending need-check job at
   * once). Resolves when that work is done. Children the generic layer does not know of
   * (blkverify's test image) are drained here.
   */
  drainBegin?(bs: BlockDriverState): Promise<void>;
  /**
   * Switch the open node to `options` (read-only, cache.no-flush) in place, keeping its state
   * (QEMU's bdrv_reopen_prepare + commit). The node is drained and flushed; on failure nothing
   * may have changed. Without the hook, the generic layer just changes the flags, except for a
   * protocol whose read-only mode changes: its driver is closed and opened again on the same
   * node (its state is only its handle on the storage).
   */
  reopen?(bs: BlockDriverState, options: OpenOptions): Promise<void>;
}

/**
 * One hook's function type, for a driver that defines its hooks apart from its table: the
 * signature then lives only in BlockDriver.
 */
export type BlockDriverHook<K extends keyof BlockDriver> = NonNullable<BlockDriver[K]>;

/**
 * A driver's state on an open node (`bs.opaque`), typed for the driver; EBADF when the node
 * has none (never opened, or closed), rather than a TypeError deep inside the driver.
 */
export function driverState<T>(bs: BlockDriverState, op: string, message = `'${bs.filename}' is not open`): T {
  const s = bs.opaque as T | null | undefined;
  if (s === null || s === undefined) throw new BlockError('EBADF', message, { op, path: bs.filename });
  return s;
}
