/**
 * One node of an image graph (QEMU's BlockDriverState): a driver instance, its children, and
 * the public facade of the generic block layer. Every request is checked, once, before a
 * driver hook runs; the work itself lives in the files named after QEMU's:
 *
 *   open.ts          probe, protocol + format stacks, backing chains
 *   io/requests.ts   checks, in-flight count, tracked requests, the fast-path gate
 *   io/read.ts       reads, padding, copy-on-read
 *   io/write.ts      writes, RMW padding, FUA, zero writes, discard
 *   io/compressed.ts compressed writes
 *   io/flush.ts      write generations, flush, length, truncate
 *   io/length.ts     the user's view of the length, who grows
 *   io/aio.ts        the sector-based AIO routes
 *   status.ts        block status, isAllocated(Above)
 *   lifecycle.ts     drain, reopen, close
 *   debug-event.ts   announcing blkdebug events
 *   info.ts          info, check, backing file change, cache invalidation, make empty
 *
 * The node's fields, who uses it and its length are NodeState's (node-state.ts), which this
 * class extends: what a node is there, what it does here.
 */
import { BlockAIOCB, type CompletionFunc } from './aio.js';
import { bdrvDebugEvent, bdrvDebugWatched } from './debug-event.js';
import { bdrvDebugBreakpoint, bdrvDebugIsSuspended, bdrvDebugRemoveBreakpoint, bdrvDebugResume } from './debug.js';
import {
  type BlockDriverInfo,
  type BlockStatus,
  type CheckFix,
  type CheckResult,
  type OpenOptions,
  type SendfileReply,
  type WriteFlags,
  type WriteZeroesFlags,
} from './driver.js';
import { BlockError } from './errors.js';
import type { BlkDebugEvent } from './events.js';
import { aioFlush, aioRw } from './io/aio.js';
import { bdrvFlush, bdrvTruncate, driverLength } from './io/flush.js';
import { bdrvPreadv, preadvNow, sendfileNow } from './io/read.js';
import { driverLengthNow, userLengthOf } from './io/length.js';
import { inflight } from './io/requests.js';
import { NO_FLAGS, bdrvDiscard, bdrvPwritev, bdrvWriteZeroes } from './io/write.js';
import { bdrvPwritevSubmit } from './io/write-submit.js';
import { bdrvPwritevCompressed, bdrvSupportsCompressedWrites } from './io/compressed.js';
import { bdrvZeroThenPwritev, bdrvZeroThenPwritevSubmit } from './io/zero-write.js';
import { IOVector } from './iovec.js';
import { bdrvClose, bdrvDrain, bdrvReopen, closeChildren, type ReopenOptions } from './lifecycle.js';
import { bdrvOpenChain, driverOpen } from './open.js';
import { bdrvOpenOptions } from './open-options.js';
import type { QDictInput } from './qdict.js';
import { bdrvChangeBackingFile, bdrvCheck, bdrvGetAllocatedFileSize, bdrvGetInfo, bdrvInvalidateCache, bdrvMakeEmpty, nodeSummary } from './info.js';
import { NodeState } from './node-state.js';
import { bdrvBlockStatusExtents, type StatusExtents } from './status-extents.js';
import { bdrvBlockStatus, bdrvBlockStatusAbove, bdrvBlockStatusNow, bdrvIsAllocated, bdrvIsAllocatedAbove, type Allocation } from './status.js';

export { MAX_BACKING_DEPTH } from './open.js';
export type { ReopenOptions } from './lifecycle.js';
export type { NodeParent } from './io/length.js';

export class BlockDriverState extends NodeState {
  /**
   * Open an image: the protocol (or filter) node for `filename`, then the format node over it
   * (given or probed), then, unless noBacking, its backing chain read-only (open.ts).
   */
  static async open(filename: string | QDictInput, options: OpenOptions = {}): Promise<BlockDriverState> {
    // QEMU's option model: an options object (or a json: name, see open.ts) opens node by node.
    if (typeof filename !== 'string') return bdrvOpenOptions(filename, options);
    return bdrvOpenChain(filename, options, []);
  }

  /** Run the driver's open hook and mark the node open (see open.ts's driverOpen). */
  async driverOpen(): Promise<void> {
    if (this.opened) throw new BlockError('EINVAL', `Node '${this.filename}' is already open`, { op: 'open' });
    await driverOpen(this);
    this.opened = true;
    this.isOpen = this.closing === null;
  }


  // ---------------------------------------------------------------------------------------
  // Its length (io/length.ts: who uses the node decides)

  /** The length requests are bounded by and padded against (no open check, not in flight). */
  async userLength(): Promise<number> {
    return userLengthOf(this.userSectors, await driverLength(this));
  }

  /** The user's length, counted as a request (a closed node refuses). */
  async getLength(): Promise<number> {
    return inflight(this, 'get_length', () => this.userLength());
  }

  /**
   * The user's length when it is known without waiting and the node is open, else null (then
   * use getLength()). Lets a pass-through driver (raw) answer its own length synchronously,
   * which keeps the request fast paths open above it.
   */
  knownLength(): number | null {
    if (!this.isOpen) return null;
    const len = this.lengthNow();
    return len === null ? null : userLengthOf(this.userSectors, len);
  }

  /** The driver's length if it knows it without waiting (the fast-path gate), else null. */
  lengthNow(): number | null {
    const drv = this.driver;
    return drv.lengthNow !== undefined ? drv.lengthNow(this) : driverLengthNow(this, this.getLengthHook);
  }

  // ---------------------------------------------------------------------------------------
  // Requests (io/)

  pread(offset: number, buf: Uint8Array): Promise<void> {
    return bdrvPreadv(this, offset, IOVector.from(buf));
  }

  preadv(offset: number, qiov: IOVector): Promise<void> {
    return bdrvPreadv(this, offset, qiov);
  }

  /**
   * Read now, synchronously, when the driver can without waiting (its preadvNow hook): true
   * when `qiov` holds the bytes, false when nothing was done and preadv must be used.
   */
  preadvNow(offset: number, qiov: IOVector): boolean {
    return preadvNow(this, offset, qiov);
  }

  /** A read of `bytes` that preadvNow declines whatever is cached (its driver's limit). */
  preadvNowTooLarge(bytes: number): boolean {
    const max = this.driver.preadvNowMaxBytes;
    return max !== undefined && bytes > max;
  }

  /** A read's reply sent into a socket from the host file now (its sendfileNow hook). */
  sendfileNow(offset: number, bytes: number, reply: SendfileReply): number {
    return sendfileNow(this, offset, bytes, reply);
  }

  pwrite(offset: number, buf: Uint8Array, flags: WriteFlags = NO_FLAGS): Promise<void> {
    return bdrvPwritev(this, offset, IOVector.from(buf), flags);
  }

  pwritev(offset: number, qiov: IOVector, flags: WriteFlags = NO_FLAGS): Promise<void> {
    return bdrvPwritev(this, offset, qiov, flags);
  }

  /**
   * Start a write now with a completion callback instead of a promise, when the driver can
   * (its pwritevSubmit hook) and the request takes the fast path: true when started (`done`
   * runs later, exactly once), false when nothing was done and pwritev must be used.
   */
  pwritevSubmit(offset: number, qiov: IOVector, done: CompletionFunc, flags: WriteFlags = NO_FLAGS): boolean {
    return bdrvPwritevSubmit(this, offset, qiov, flags, done);
  }

  writeZeroes(offset: number, bytes: number, flags: WriteZeroesFlags = {}): Promise<void> {
    return bdrvWriteZeroes(this, offset, bytes, flags);
  }

  /**
   * Zero [zeroOffset, +zeroBytes) natively (ENOTSUP, nothing written, where the node cannot),
   * then write `qiov` at `offset` inside it (io/zero-write.ts).
   */
  zeroThenPwritev(zeroOffset: number, zeroBytes: number, offset: number, qiov: IOVector): Promise<void> {
    return bdrvZeroThenPwritev(this, zeroOffset, zeroBytes, offset, qiov);
  }

  /**
   * zeroThenPwritev started now with a completion callback, when the driver can and the
   * request takes the fast path: true when started (`done` runs later, exactly once), false
   * when nothing was done and zeroThenPwritev must be used.
   */
  zeroThenPwritevSubmit(zeroOffset: number, zeroBytes: number, offset: number, qiov: IOVector, done: CompletionFunc): boolean {
    return bdrvZeroThenPwritevSubmit(this, zeroOffset, zeroBytes, offset, qiov, done);
  }

  /** Whole clusters, compressed; ENOTSUP where the driver cannot (see io/compressed.ts). */
  pwritevCompressed(offset: number, qiov: IOVector): Promise<void> {
    return bdrvPwritevCompressed(this, offset, qiov);
  }

  get supportsCompressedWrites(): boolean {
    return bdrvSupportsCompressedWrites(this);
  }

  /** Advisory: a driver without the hook ignores it; only the aligned part is passed down. */
  discard(offset: number, bytes: number): Promise<void> {
    return bdrvDiscard(this, offset, bytes);
  }

  async flush(): Promise<void> {
    await inflight(this, 'flush', () => bdrvFlush(this));
  }

  /**
   * Is a flush of this node at its flush_to_disk step (not cache=unsafe, and something was
   * written since its last successful flush)? QEMU runs a driver's disk flush only then; a
   * driver whose disk-level work follows that rule (blkdebug's flush rule) asks this.
   */
  get flushToDiskDue(): boolean {
    return this.flushingToDisk > 0;
  }

  /** Resize; `prealloc` is QEMU's PreallocMode (off, metadata, falloc, full). */
  truncate(size: number, prealloc?: string): Promise<void> {
    return bdrvTruncate(this, size, prealloc);
  }

  /** Block status of this layer only. */
  blockStatus(offset: number, bytes: number): Promise<BlockStatus> {
    return bdrvBlockStatus(this, offset, bytes);
  }

  /**
   * Block status of this layer now, when the driver answers without waiting (a cached table),
   * else null: then use blockStatus(), which also reports errors.
   */
  blockStatusNow(offset: number, bytes: number): BlockStatus | null {
    return bdrvBlockStatusNow(this, offset, bytes);
  }

  /** Block status of this layer's extents from `offset` on, as far as it answers now, into `out`. */
  blockStatusExtents(offset: number, bytes: number, out: StatusExtents): number {
    return bdrvBlockStatusExtents(this, offset, bytes, out);
  }

  isAllocated(offset: number, bytes: number): Promise<Allocation> {
    return bdrvIsAllocated(this, offset, bytes);
  }

  /** Allocated anywhere from this node down to (not including) `base`? */
  isAllocatedAbove(base: BlockDriverState | null, offset: number, bytes: number): Promise<Allocation> {
    return bdrvIsAllocatedAbove(this, base, offset, bytes);
  }

  /** Block status through the backing chain; `depth` says which layer answered. */
  blockStatusAbove(offset: number, bytes: number): Promise<BlockStatus & { depth: number }> {
    return bdrvBlockStatusAbove(this, offset, bytes);
  }

  // ---------------------------------------------------------------------------------------
  // AIO (sector based; io/aio.ts)

  aioReadv(sectorNum: number, qiov: IOVector, nbSectors: number, cb: CompletionFunc): BlockAIOCB {
    return aioRw(this, false, sectorNum, qiov, nbSectors, cb);
  }

  aioWritev(sectorNum: number, qiov: IOVector, nbSectors: number, cb: CompletionFunc): BlockAIOCB {
    return aioRw(this, true, sectorNum, qiov, nbSectors, cb);
  }

  aioFlush(cb: CompletionFunc): BlockAIOCB {
    return aioFlush(this, cb);
  }

  // ---------------------------------------------------------------------------------------
  // Metadata operations

  getInfo(): Promise<BlockDriverInfo> {
    return bdrvGetInfo(this);
  }

  /** Host bytes used; without a hook, what the children use (QEMU's default). */
  getAllocatedFileSize(): Promise<number> {
    return bdrvGetAllocatedFileSize(this);
  }

  check(fix: CheckFix = {}): Promise<CheckResult> {
    return bdrvCheck(this, fix);
  }

  /** Record a new backing file in the image; the open backing node stays as it is. */
  changeBackingFile(name: string | null, fmt: string | null): Promise<void> {
    return bdrvChangeBackingFile(this, name, fmt);
  }

  /** Drop cached metadata and reread it; without a hook, pass it to the file child. */
  invalidateCache(): Promise<void> {
    return bdrvInvalidateCache(this);
  }

  makeEmpty(): Promise<void> {
    return bdrvMakeEmpty(this);
  }

  // ---------------------------------------------------------------------------------------
  // Events

  trace(name: string, args: Record<string, unknown> = {}): void {
    if (this.events.traceListened) this.events.emit('trace', { name, args });
  }

  /** Does anything act on this node's debug events? Paths that would announce none ask. */
  get debugWatched(): boolean {
    return bdrvDebugWatched(this);
  }

  /** Announce a blkdebug event on this node and let the driver act on it (debug-event.ts). */
  debugEvent(event: BlkDebugEvent): Promise<void> {
    return bdrvDebugEvent(this, event);
  }

  // Breakpoints on this image's stack (QEMU's bdrv_debug_*; see debug.ts).
  debugBreakpoint(event: string, tag: string): void {
    bdrvDebugBreakpoint(this, event, tag);
  }
  debugRemoveBreakpoint(tag: string): void {
    bdrvDebugRemoveBreakpoint(this, tag);
  }
  debugResume(tag: string): void {
    bdrvDebugResume(this, tag);
  }
  debugIsSuspended(tag: string): boolean {
    return bdrvDebugIsSuspended(this, tag);
  }

  // ---------------------------------------------------------------------------------------
  // Drain, reopen, close (lifecycle.ts)

  /** Wait for requests in flight here and below, and let drivers finish background work. */
  drain(): Promise<void> {
    return bdrvDrain(this);
  }

  /** Reopen in place with new flags; on failure nothing has changed. */
  reopen(options: ReopenOptions): Promise<void> {
    return bdrvReopen(this, options);
  }

  /**
   * Close: refuse new requests, wait for those in flight, flush, run the driver's close, close
   * the children. Idempotent; a second call returns the first one's promise.
   */
  close(): Promise<void> {
    // Set before anything awaits: from here on isOpen is false and new requests are refused.
    this.isOpen = false;
    this.closing ??= this.opened ? bdrvClose(this) : closeChildren(this);
    return this.closing;
  }

  /** console.log shows a summary (driver, filename, size, children), not the internals. */
  [Symbol.for('nodejs.util.inspect.custom')](): string {
    return nodeSummary(this);
  }
}
