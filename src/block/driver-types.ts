/**
 * What the driver hooks take and return (driver.ts declares the hooks themselves): request
 * flags, block status, the info, check, snapshot, measure and amend records, and the open and
 * create options.
 */
import type { Clock } from './clock.js';
import type { ObjectTable } from './objects.js';
import type { BlockDriverState } from './node.js';
import type { FlatQDict } from './qdict.js';
import type { BlockDriverRegistry } from './registry.js';

export const BDRV_SECTOR_SIZE = 512;

/** Largest zero buffer written at once where zeroing falls back to plain writes. */
export const BDRV_ZERO_CHUNK = 1 << 20;
export const BDRV_SECTOR_BITS = 9;

export interface WriteFlags {
  /** Force Unit Access: the write is durable when it completes. */
  fua?: boolean;
  /**
   * Called (at most once, maybe before the write completes) when the driver has decided where
   * every byte of the write goes and will allocate nothing more for it: clusters and tables
   * handed out in the order the writes came. A driver that never calls it leaves the caller
   * to wait for the write's completion. Lets an in-order writer (convert) start its next
   * write early with the same layout.
   */
  onAllocated?: () => void;
}

/**
 * A reply sent straight from a host file into a socket (BlockDriver.sendfileNow): `head`,
 * then the data. `spill` receives what the socket did not take, head.length + bytes or more.
 * A non-zero `sendBuffer` first asks for a socket send buffer that large (SO_SNDBUF).
 */
export interface SendfileReply {
  sock: number;
  head: Uint8Array;
  spill: Uint8Array;
  sendBuffer: number;
}

/**
 * sendfileNow's answer: SENDFILE_DECLINED (nothing sent: use the usual path, which reports
 * errors), SENDFILE_BROKEN (part sent, the rest unreadable: the connection must close), or
 * n >= 0: all sent but the last n bytes of the reply, which are in spill[0, n).
 */
export const SENDFILE_DECLINED = -1;
export const SENDFILE_BROKEN = -3;

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
  /**
   * No guest I/O will be done (BDRV_O_NO_IO: qemu-img info): a format need not open what only
   * guest I/O reads (qcow2's external data file). Not inherited by children.
   */
  noIO?: boolean;
  /**
   * Options for a format's extra children by child name (`data-file` for qcow2), from
   * `NAME.*` keys of the options the node was opened with; the driver opens the child with
   * bdrvOpenChild. The generic layer sets it for drivers that declare `childNames`.
   */
  childOptions?: Record<string, FlatQDict>;
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
