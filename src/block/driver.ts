import type { BlockAIOCB, CompletionFunc } from './aio.js';
import { BlockError } from './errors.js';
import type { BlkDebugEvent } from './events.js';
import type { IOVector } from './iovec.js';
import type { BlockDriverState } from './node.js';
import type { RuntimeOptionSpec } from './options.js';
import type { StatusExtents } from './status-extents.js';
import type { FlatQDict } from './qdict.js';
import type {
  AmendStatus,
  BlockDriverInfo,
  BlockMeasureInfo,
  BlockStatus,
  CheckFix,
  CheckResult,
  CreateContext,
  CreateOptions,
  CreateOptionSpec,
  ImageInfoSpecific,
  OpenOptions,
  PersistentBitmapInfo,
  QEMUSnapshotInfo,
  SendfileReply,
  WriteFlags,
  WriteZeroesFlags,
} from './driver-types.js';

export * from './driver-types.js';

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
   * Children the format opens itself besides `file` and `backing` (qcow2's `data-file`): their
   * `NAME.*` options reach the open hook in `OpenOptions.childOptions`, and a reference
   * (`NAME=node`) is refused as for `file`.
   */
  readonly childNames?: readonly string[];
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
  /**
   * The largest read preadvNow may serve (a protocol's limit on reads done on the caller's
   * thread); undefined: no limit. A format whose hook only maps a read onto this child's
   * hook declines a larger read before mapping it, which its coPreadv would map again.
   */
  readonly preadvNowMaxBytes?: number;
  /**
   * A reply to a network read, its `bytes` bytes at `offset` sent from the host's page cache
   * into the socket without a copy (sendfile), now, synchronously: see SendfileReply. Called
   * for requests checked as for preadvNow; declines (nothing sent) whenever preadvNow would.
   */
  sendfileNow?(bs: BlockDriverState, offset: number, bytes: number, reply: SendfileReply): number;
  coPwritev?(bs: BlockDriverState, offset: number, bytes: number, qiov: IOVector, flags: WriteFlags): Promise<void>;
  /**
   * Start the write now and report its end through `done` (null on success), with no promise:
   * true when started, false when the driver cannot take it this way (nothing was done, and
   * the caller uses coPwritev, which writes and reports any error). `done` runs exactly once,
   * never inside this call. Called only for requests the generic layer has checked (open,
   * writable, in bounds, aligned, no FUA). Optional: it saves a plain write's promises.
   */
  pwritevSubmit?(bs: BlockDriverState, offset: number, bytes: number, qiov: IOVector, flags: WriteFlags, done: CompletionFunc): boolean;
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
  /**
   * The same answer now, synchronously, when the driver has the metadata at hand (a cached
   * table); null when it would have to wait or sees anything unusual, and coBlockStatus then
   * answers and reports any error. Called only for checked ranges inside the image. Optional:
   * it saves the promises of a query (map asks once per extent).
   */
  blockStatusNow?(bs: BlockDriverState, offset: number, bytes: number): BlockStatus | null;
  /**
   * blockStatusNow for the extents from `offset` on, one after another, appended to `out`
   * (empty on entry) until `bytes`, out.capacity, or an extent it would answer null for.
   * Optional: it saves an object and a call per extent (map of a fragmented image).
   */
  blockStatusExtents?(bs: BlockDriverState, offset: number, bytes: number, out: StatusExtents): void;
  /** bdrv_co_is_allocated in bytes; derived from coBlockStatus when absent. */
  coIsAllocated?(bs: BlockDriverState, offset: number, bytes: number): Promise<{ allocated: boolean; pnum: number }>;
  /** Native zeroing; reject with ENOTSUP to make the generic layer write a zero buffer instead. */
  coWriteZeroes?(bs: BlockDriverState, offset: number, bytes: number, flags: WriteZeroesFlags): Promise<void>;
  coDiscard?(bs: BlockDriverState, offset: number, bytes: number): Promise<void>;
  /**
   * Zero [zeroOffset, +zeroBytes) natively, as coWriteZeroes with noFallback, then write `qiov`
   * at `offset` (inside that range; `bytes` of it): the data must land after the zeroing. One
   * hook, so that a host file can hand both to the kernel at once (io/zero-write.ts). Rejects
   * with ENOTSUP when the range cannot be zeroed natively: then the bytes outside the data are
   * unchanged, and the data's range holds its old bytes or the data (write it again).
   */
  coZeroThenPwritev?(bs: BlockDriverState, zeroOffset: number, zeroBytes: number, offset: number, bytes: number, qiov: IOVector): Promise<void>;
  /**
   * coZeroThenPwritev started now with its end reported through `done`, as pwritevSubmit is
   * to coPwritev (same contract, ENOTSUP included): true when started, false when nothing was
   * done (the caller uses coZeroThenPwritev). Optional: it saves an allocating write's promises.
   */
  zeroThenPwritevSubmit?(bs: BlockDriverState, zeroOffset: number, zeroBytes: number, offset: number, bytes: number, qiov: IOVector, done: CompletionFunc): boolean;

  /** `prealloc`: QEMU's PreallocMode name for a grown range; absent means 'off'. */
  truncate?(bs: BlockDriverState, size: number, prealloc?: string): Promise<void>;
  getLength?(bs: BlockDriverState): number | Promise<number>;
  /**
   * The length getLength would give, when the driver knows it now (a valid byte count), else
   * null; never throws. Optional: asked by every request's fast-path gate, where getLength's
   * answer must be checked and guarded (io/length.ts driverLengthNow) and this one need not.
   */
  lengthNow?(bs: BlockDriverState): number | null;
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
