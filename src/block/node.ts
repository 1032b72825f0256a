import { BlockAIOCB, genericAioPool, type CompletionFunc } from './aio.js';
import { realClock, type Clock } from './clock.js';
import { CoQueue } from './coroutine.js';
import {
  BDRV_SECTOR_SIZE,
  type BlockDriver,
  type BlockDriverInfo,
  type BlockStatus,
  type CheckFix,
  type CheckResult,
  type OpenOptions,
  type WriteFlags,
  type WriteZeroesFlags,
} from './driver.js';
import { BlockError, isBlockError, toBlockError } from './errors.js';
import { BlockEventEmitter, type BlkDebugEvent } from './events.js';
import { IOVector } from './iovec.js';
import { canonicalImageName, combineBackingPath } from './path.js';
import { BLOCK_PROBE_BUF_SIZE, BlockDriverRegistry, driverIO, getDefaultRegistry } from './registry.js';

/** Longest backing chain we open below a top image (crosvm-style hard limit). */
export const MAX_BACKING_DEPTH = 16;

/** What `reopen` may change; an absent field keeps the node's current mode. */
export interface ReopenOptions {
  readOnly?: boolean;
  /** cache.no-flush (cache=unsafe): flushes are ignored. */
  noFlush?: boolean;
}

/** Largest zero buffer the writeZeroes fallback writes at once. */
const WRITE_ZEROES_CHUNK = 1 << 20;

/** An in-flight request on the overlap list (QEMU's BdrvTrackedRequest). */
interface TrackedRequest {
  /** Range rounded out to the node's request alignment. */
  start: number;
  end: number;
  /** A read-modify-write (or copy-on-read) that nothing overlapping may run beside. */
  serialising: boolean;
  /**
   * Woken when the request ends. Made only when a conflicting request actually waits: nearly
   * every request ends with nobody waiting, and a queue per request is garbage on the hot path.
   */
  waiters: CoQueue | null;
  /** Neighbours on the node's list (oldest first): O(1) insert and removal, no hashing. */
  prev: TrackedRequest | null;
  next: TrackedRequest | null;
}

/** Shared settled promise: `debugEvent` with nothing to run allocates nothing. */
const RESOLVED: Promise<void> = Promise.resolve();

/** Errors from opening a backing file, already prefixed, so outer levels do not prefix again. */
const backingErrors = new WeakSet<BlockError>();

/** Default write flags, shared (never mutated). */
const NO_FLAGS: WriteFlags = Object.freeze({});

function invalidNumber(n: unknown): boolean {
  return typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0;
}

function roundDown(n: number, align: number): number {
  return n - (n % align);
}

function roundUp(n: number, align: number): number {
  const r = n % align;
  return r === 0 ? n : n + (align - r);
}

/**
 * One node of an image graph (QEMU's BlockDriverState): a driver instance plus the generic
 * request machinery. Every request is checked here, once, before a driver hook runs.
 */
export class BlockDriverState {
  readonly driver: BlockDriver;
  /** The name the node was opened with (full filename, filter prefixes included). */
  filename: string;
  /** Driver state. */
  opaque: unknown = null;
  /** Protocol child of a format node (or the image child of a filter). */
  file: BlockDriverState | null = null;
  /** The opened backing node (read-only). */
  backing: BlockDriverState | null = null;
  /** Backing file name as recorded in the image, '' if none. */
  backingFile = '';
  /** Backing format recorded in the image, '' if none. */
  backingFormat = '';
  /** backingFile resolved against the image's directory. */
  fullBackingFilename = '';
  readOnly: boolean;
  readonly openOptions: OpenOptions;
  readonly clock: Clock;
  readonly events = new BlockEventEmitter();
  /**
   * Alignment the generic layer pads requests to. Set from the driver at construction; a
   * protocol driver whose limit comes from the other end may raise it in its open hook (an NBD
   * server's minimum block size), as QEMU's refresh_limits sets bl.request_alignment.
   */
  requestAlignment: number;
  readonly depth: number;
  readonly registry: BlockDriverRegistry;

  private closing: Promise<void> | null = null;
  private opened = false;
  /** Every request in flight, overlapping or not: close() waits for this to drain. */
  private inFlight = 0;
  private readonly drained = new CoQueue();
  /** Requests in flight on the overlap list, oldest first (a doubly linked list). */
  private trackedHead: TrackedRequest | null = null;
  private trackedTail: TrackedRequest | null = null;
  /** Overlapping serialising requests in `tracked` (RMW, copy-on-read, truncate). */
  private serialisingCount = 0;
  /** The driver's hooks, bound once per node (a `.bind` per request is garbage). */
  private readonly io: ReturnType<typeof driverIO>;
  private readonly getLengthHook: ((bs: BlockDriverState) => number | Promise<number>) | null;
  private readonly nativeAioReadv: BlockDriver['aioReadv'] | undefined;
  private readonly nativeAioWritev: BlockDriver['aioWritev'] | undefined;
  /**
   * Writes that ended on this node (QEMU's write_gen) and the count the last successful flush
   * saw (flushed_gen): a flush announces flush_to_disk only if they differ.
   */
  private writeGen = 0;
  private flushedGen = 0;
  /** Flushes of this node now at their flush_to_disk step (see flushToDiskDue). */
  private flushingToDisk = 0;
  /**
   * Used by a parent node (opened with `child`, or put in a parent's `file` slot), not by a
   * user directly: see `growable`.
   */
  private attached: boolean;

  /**
   * A bare node; `open` is the normal way to get one. Drivers that build nodes by hand call
   * `driverOpen` afterwards.
   */
  constructor(driver: BlockDriver, filename: string, options: OpenOptions = {}) {
    this.driver = driver;
    this.filename = filename;
    this.openOptions = options;
    this.readOnly = options.readOnly ?? false;
    this.clock = options.clock ?? realClock;
    this.depth = options.depth ?? 0;
    this.registry = options.registry ?? getDefaultRegistry();
    this.attached = options.child ?? false;
    const align = driver.requestAlignment ?? (driver.isProtocol || driver.isFilter ? 1 : BDRV_SECTOR_SIZE);
    if (!Number.isSafeInteger(align) || align < 1) {
      throw new BlockError('EINVAL', `Driver '${driver.formatName}' has an invalid request alignment ${align}`);
    }
    this.requestAlignment = align;
    this.io = driverIO(driver);
    this.getLengthHook = driver.getLength?.bind(driver) ?? null;
    this.nativeAioReadv = driver.aioReadv?.bind(driver);
    this.nativeAioWritev = driver.aioWritev?.bind(driver);
  }

  /** True from a successful open until close() begins. */
  get isOpen(): boolean {
    return this.opened && this.closing === null;
  }

  // ---------------------------------------------------------------------------------------
  // Opening

  /**
   * Open an image: the protocol (or filter) node for `filename`, then the format node over it
   * (given or probed), then, unless noBacking, its backing chain read-only.
   */
  static async open(filename: string, options: OpenOptions = {}): Promise<BlockDriverState> {
    return BlockDriverState.openChain(filename, options, []);
  }

  private static async openChain(filename: string, options: OpenOptions, chain: string[]): Promise<BlockDriverState> {
    if (typeof filename !== 'string' || filename === '') {
      throw new BlockError('EINVAL', 'An image file name is required', { op: 'open' });
    }
    const registry = options.registry ?? getDefaultRegistry();
    const opts: OpenOptions = { ...options, registry, depth: options.depth ?? 0 };
    const requested = opts.format === undefined ? undefined : registry.require(opts.format);

    // Asking for a protocol or filter as the format opens that node alone (-f file, -f mem).
    if (requested && (requested.isProtocol || requested.isFilter)) {
      return BlockDriverState.openNode(requested, filename, opts);
    }

    const protoDrv = registry.findProtocol(filename);
    // The protocol (or filter) node gets only what concerns storage: format-level options
    // (copy-on-read, check, backing) belong to the format node above it.
    const protoOpts: OpenOptions = {
      // The format node writes through it: a child, which may grow.
      child: true,
      readOnly: opts.readOnly,
      noFlush: opts.noFlush,
      forceShare: opts.forceShare,
      inactive: opts.inactive,
      clock: opts.clock,
      registry,
      depth: opts.depth,
      driverOptions: opts.driverOptions,
    };
    const proto = await BlockDriverState.openNode(protoDrv, filename, protoOpts);
    let bs: BlockDriverState | null = null;
    try {
      let fmtDrv = requested;
      if (!fmtDrv) {
        // QEMU probes a full 2 KiB buffer; a shorter file reads as zeros past its end, so a
        // 40-byte file starting with a magic still probes as that format.
        const len = await proto.getLength();
        const buf = new Uint8Array(BLOCK_PROBE_BUF_SIZE);
        const n = Math.min(BLOCK_PROBE_BUF_SIZE, len);
        if (n > 0) await proto.pread(0, buf.subarray(0, n));
        fmtDrv = registry.probe(buf, filename);
      }
      bs = new BlockDriverState(fmtDrv, filename, opts);
      bs.file = proto;
      await bs.driverOpen();
      // Resolved even with noBacking: `info` shows where the backing file would be.
      if (bs.backingFile !== '') bs.fullBackingFilename = combineBackingPath(bs.storageFilename(), bs.backingFile);
      if (!opts.noBacking && bs.backingFile !== '') {
        await bs.openBacking([...chain, canonicalImageName(filename)]);
      }
      return bs;
    } catch (e) {
      // Nothing half-open survives a failed open.
      if (bs?.opened) await bs.close().catch(() => undefined);
      else await proto.close().catch(() => undefined);
      throw e;
    }
  }

  private static async openNode(drv: BlockDriver, filename: string, opts: OpenOptions): Promise<BlockDriverState> {
    const bs = new BlockDriverState(drv, filename, opts);
    await bs.driverOpen();
    return bs;
  }

  /**
   * Run the driver's open hook and mark the node open. Whatever sits in `file` before or after
   * the hook (a node built by hand, a filter's image) becomes a child that may grow.
   */
  async driverOpen(): Promise<void> {
    if (this.opened) throw new BlockError('EINVAL', `Node '${this.filename}' is already open`, { op: 'open' });
    if (this.file) this.file.attached = true;
    try {
      await this.driver.open?.(this, this.openOptions);
      if (this.file) this.file.attached = true;
    } catch (e) {
      // The driver's open failed: the children it got from us are ours to close.
      await this.closeChildren().catch(() => undefined);
      throw toBlockError(e, { op: 'open', path: this.filename });
    }
    this.opened = true;
  }

  /** The filename the image really lives under: the innermost child's (through filters). */
  private storageFilename(): string {
    let name = this.filename;
    for (let n = this.file; n; n = n.file) name = n.filename;
    return name;
  }

  private async openBacking(chain: string[]): Promise<void> {
    const full = this.fullBackingFilename;
    const depth = this.depth + 1;
    const canon = canonicalImageName(full);
    if (chain.includes(canon)) {
      throw new BlockError(
        'ELOOP',
        `Backing file chain has a cycle: ${[...chain, canon].join(' -> ')}`,
        { op: 'open', path: full },
      );
    }
    if (depth > MAX_BACKING_DEPTH) {
      throw new BlockError(
        'ELOOP',
        `Backing file chain is too deep (more than ${MAX_BACKING_DEPTH} levels): ${[...chain, canon].join(' -> ')}`,
        { op: 'open', path: full },
      );
    }
    const format = this.openOptions.backingFormat ?? (this.backingFormat === '' ? undefined : this.backingFormat);
    try {
      this.backing = await BlockDriverState.openChain(
        full,
        {
          format,
          readOnly: true,
          child: true,
          registry: this.registry,
          clock: this.clock,
          depth,
          noFlush: this.openOptions.noFlush,
          forceShare: this.openOptions.forceShare,
          inactive: this.openOptions.inactive,
        },
        chain,
      );
    } catch (e) {
      const err = toBlockError(e, { op: 'open', path: full });
      if (backingErrors.has(err)) throw err;
      let inner = err.message;
      if (err.code === 'ENOENT' && !inner.startsWith('Could not open')) {
        inner = `Could not open '${full}': ${err.errnoMessage}`;
      }
      const wrapped = new BlockError(err.code, `Could not open backing file: ${inner}`, {
        op: 'open',
        path: full,
        cause: err,
      });
      backingErrors.add(wrapped);
      throw wrapped;
    }
  }

  // ---------------------------------------------------------------------------------------
  // Checks and request tracking (all in one place)

  private checkOpen(op: string): void {
    if (!this.isOpen) {
      throw new BlockError('EBADF', `${op}: node '${this.filename}' is closed`, { op, path: this.filename });
    }
  }

  private checkArgs(op: string, offset: number, bytes: number): void {
    if (invalidNumber(offset) || invalidNumber(bytes) || offset + bytes > Number.MAX_SAFE_INTEGER) {
      throw new BlockError('EINVAL', `${op}: invalid request offset ${offset} length ${bytes}`, {
        op,
        offset: typeof offset === 'number' ? offset : undefined,
        path: this.filename,
      });
    }
  }

  private checkWritable(op: string): void {
    if (this.readOnly) {
      throw new BlockError('EACCES', `${op}: node '${this.filename}' is read-only`, { op, path: this.filename });
    }
  }

  /**
   * Protocol and filter nodes used as children grow: a format driver allocates by writing past
   * the end of its file, and reads there see zeros (QEMU's requests through a BdrvChild). A node
   * the user opened directly (-f file, a filter name as the top image) refuses requests past its
   * end with EIO, as QEMU's BlockBackend does; so do format nodes, whose virtual size is fixed.
   */
  get growable(): boolean {
    return this.attached && this.isStorage();
  }

  private isStorage(): boolean {
    return (this.driver.isProtocol ?? false) || (this.driver.isFilter ?? false);
  }

  /**
   * The length a user's protocol or filter node shows: whole sectors, as QEMU's block layer
   * counts sizes (its BlockBackend bounds requests by bdrv_getlength, which rounds up). The
   * tail of the last sector reads as zeros (the driver zero-fills past its end) and a write
   * there grows the file, as in qemu-io -f file. Children and format nodes keep their length.
   */
  private userLength(len: number): number {
    return this.attached || !this.isStorage() ? len : roundUp(len, BDRV_SECTOR_SIZE);
  }

  /** The length requests are bounded by and padded against (see userLength). */
  private async limitUnchecked(): Promise<number> {
    return this.userLength(await this.lengthUnchecked());
  }

  private async checkBounds(op: string, offset: number, bytes: number): Promise<number> {
    const len = await this.limitUnchecked();
    if (offset + bytes > len && !this.growable) {
      throw new BlockError('EIO', `${op}: request ${offset}+${bytes} is past the end of the image (${len} bytes)`, {
        op,
        offset,
        path: this.filename,
      });
    }
    return len;
  }

  /** The length for a write's padding; a growable node with byte alignment needs none. */
  private async writeBounds(op: string, offset: number, bytes: number): Promise<number> {
    if (this.growable && this.requestAlignment === 1) return Number.MAX_SAFE_INTEGER;
    return this.checkBounds(op, offset, bytes);
  }

  /** Aligned driver read; what lies past the end of a growable node reads as zeros. */
  private async readClamped(offset: number, qiov: IOVector, len: number): Promise<void> {
    const n = Math.max(0, Math.min(qiov.size, len - offset));
    if (n > 0) await this.driverPreadv(offset, n, n === qiov.size ? qiov : qiov.slice(0, n));
    if (n < qiov.size) qiov.memset(n, 0);
  }


  /** Count a request as in flight for close(); `fn` starts only if the node is open. */
  private async inflight<T>(op: string, fn: () => Promise<T>): Promise<T> {
    this.checkOpen(op);
    this.inFlight++;
    try {
      return await fn();
    } finally {
      this.endInFlight();
    }
  }

  private endInFlight(): void {
    this.inFlight--;
    if (this.inFlight === 0) this.drained.restartAll();
  }

  /**
   * Wait until no conflicting request overlaps [start, end), then enter the overlap list. A
   * serialising request conflicts with every overlapping one; any request conflicts with an
   * overlapping serialising one. The final scan and the insertion happen without an await
   * between them, and a waiting request holds nothing, so there is no deadlock.
   */
  private trackBegin(start: number, end: number, serialising: boolean): TrackedRequest | Promise<TrackedRequest> {
    // No conflict: enter synchronously (no promise, no microtask); otherwise wait and rescan.
    if (this.findConflict(start, end, serialising) === undefined) return this.trackInsert(start, end, serialising);
    return this.trackBeginWait(start, end, serialising);
  }

  private async trackBeginWait(start: number, end: number, serialising: boolean): Promise<TrackedRequest> {
    for (;;) {
      const conflict = this.findConflict(start, end, serialising);
      if (conflict === undefined) break;
      await (conflict.waiters ??= new CoQueue()).wait();
    }
    return this.trackInsert(start, end, serialising);
  }

  /**
   * The request [start, end) must wait for. Without serialising requests in flight, a
   * non-serialising request conflicts with nothing: the scan is skipped.
   */
  private findConflict(start: number, end: number, serialising: boolean): TrackedRequest | undefined {
    if (!serialising && this.serialisingCount === 0) return undefined;
    for (let r = this.trackedHead; r !== null; r = r.next) {
      if (r.start < end && start < r.end && (serialising || r.serialising)) return r;
    }
    return undefined;
  }

  private trackInsert(start: number, end: number, serialising: boolean): TrackedRequest {
    const req: TrackedRequest = { start, end, serialising, waiters: null, prev: this.trackedTail, next: null };
    if (this.trackedTail === null) this.trackedHead = req;
    else this.trackedTail.next = req;
    this.trackedTail = req;
    if (serialising) this.serialisingCount++;
    return req;
  }

  private trackEnd(req: TrackedRequest): void {
    // Already off the list (ended once): nothing to unlink, nobody left to wake.
    if (req.prev === null && this.trackedHead !== req) return;
    if (req.prev === null) this.trackedHead = req.next;
    else req.prev.next = req.next;
    if (req.next === null) this.trackedTail = req.prev;
    else req.next.prev = req.prev;
    req.prev = null;
    req.next = null;
    if (req.serialising) this.serialisingCount--;
    req.waiters?.restartAll();
  }

  private async withTracked<T>(
    offset: number,
    bytes: number,
    serialising: boolean,
    fn: () => Promise<T>,
  ): Promise<T> {
    const align = this.requestAlignment;
    const begun = this.trackBegin(roundDown(offset, align), roundUp(offset + bytes, align), serialising);
    const req = begun instanceof Promise ? await begun : begun;
    try {
      return await fn();
    } finally {
      this.trackEnd(req);
    }
  }

  private hasConflict(start: number, end: number): boolean {
    for (let r = this.trackedHead; r !== null; r = r.next) if (r.start < end && start < r.end) return true;
    return false;
  }

  // ---------------------------------------------------------------------------------------
  // Driver dispatch (aligned requests only)

  private async driverPreadv(offset: number, bytes: number, qiov: IOVector): Promise<void> {
    const fn = this.io.coPreadv;
    if (!fn) throw this.notSupported('read');
    await fn(this, offset, bytes, qiov);
  }

  private async driverPwritev(offset: number, bytes: number, qiov: IOVector, flags: WriteFlags): Promise<void> {
    const fn = this.io.coPwritev;
    if (!fn) throw this.notSupported('write');
    if (flags.fua !== true || this.driver.supportsFua === true) {
      await fn(this, offset, bytes, qiov, flags);
      return;
    }
    // FUA emulation (QEMU's bdrv_driver_pwritev): the driver writes without it, then this
    // node is flushed. The flush runs before the write counts in writeGen, so it reaches its
    // flush_to_disk step only for earlier writes, as QEMU's does.
    await fn(this, offset, bytes, qiov, NO_FLAGS);
    await this.flushUnchecked();
  }

  private notSupported(op: string): BlockError {
    return new BlockError('ENOTSUP', `${op}: driver '${this.driver.formatName}' does not support this operation`, {
      op,
      path: this.filename,
    });
  }

  // ---------------------------------------------------------------------------------------
  // Reads

  async pread(offset: number, buf: Uint8Array): Promise<void> {
    await this.preadv(offset, IOVector.from(buf));
  }

  async preadv(offset: number, qiov: IOVector): Promise<void> {
    const bytes = qiov.size;
    this.checkArgs('read', offset, bytes);
    const fn = this.io.coPreadv;
    if (fn !== undefined && this.fastReadOk(offset, bytes)) {
      // Data already at hand (preadvNow's hook, behind the same test): nothing to track.
      if (this.driver.preadvNow?.(this, offset, bytes, qiov) === true) return;
      this.inFlight++;
      const req = this.trackInsert(offset, offset + bytes, false);
      try {
        await fn(this, offset, bytes, qiov);
      } finally {
        this.trackEnd(req);
        this.endInFlight();
      }
      return;
    }
    await this.inflight('read', () => this.doPreadv(offset, qiov));
  }

  /**
   * Read now, synchronously, when the driver can without waiting (its preadvNow hook: the
   * host's page cache): true when `qiov` holds the bytes. False when nothing was done and
   * preadv must be used: only a request preadv's fast path would take qualifies (valid, open,
   * in bounds, aligned, no copy-on-read, no overlapping serialising request), and preadv
   * handles and reports everything else. The read starts and ends within this call, so it
   * needs no place among the tracked or in-flight requests.
   */
  preadvNow(offset: number, qiov: IOVector): boolean {
    const drv = this.driver;
    if (drv.preadvNow === undefined) return false;
    const bytes = qiov.size;
    if (invalidNumber(offset) || offset + bytes > Number.MAX_SAFE_INTEGER || !this.fastReadOk(offset, bytes)) return false;
    return drv.preadvNow(this, offset, bytes, qiov);
  }

  /**
   * Can a checked read take the fast path? It has the same semantics as the slow one when all
   * of these hold: the node is open (the request counts in flight, so close waits for it), the
   * length is known synchronously and the request lies inside it (no bounds error, no
   * zero-fill past the end), it is aligned (no padding, no RMW), not copy-on-read, and no
   * serialising request overlaps it (so trackBegin would not wait). It still enters `tracked`,
   * so a later RMW waits for it. The driver hook is then called directly instead of through
   * the 9 async helpers of the slow path.
   */
  private fastReadOk(offset: number, bytes: number): boolean {
    if (bytes === 0 || !this.isOpen || (this.openOptions.copyOnRead === true && !this.readOnly)) return false;
    return this.fastRangeOk(offset, bytes, this.lengthSync());
  }

  /**
   * Fast path for writes (see fastReadOk): open, aligned, within the length unless the node
   * grows, and no overlapping serialising request; an aligned write is never serialising.
   */
  private fastWriteOk(offset: number, bytes: number): boolean {
    // The fast path announces no pwritev/pwritev_done: anyone watching this node's debug
    // events (blkdebug's hook, a listener) gets the slow path, which does.
    if (bytes === 0 || !this.isOpen || this.debugWatched()) return false;
    return this.fastRangeOk(offset, bytes, this.growable ? Number.MAX_SAFE_INTEGER : this.lengthSync());
  }

  /**
   * The range part of both fast-path tests: a length known now (`len`, null when it is not)
   * that holds the request, aligned ends, and no overlapping serialising request.
   */
  private fastRangeOk(offset: number, bytes: number, len: number | null): boolean {
    const align = this.requestAlignment;
    return (
      len !== null &&
      !invalidNumber(len) &&
      offset + bytes <= len &&
      offset % align === 0 &&
      bytes % align === 0 &&
      this.findConflict(offset, offset + bytes, false) === undefined
    );
  }

  /** Run a fast-path request (fastReadOk/fastWriteOk said yes): tracked and in flight. */
  private async fastRun(offset: number, bytes: number, write: boolean, io: () => Promise<void>): Promise<void> {
    this.inFlight++;
    const req = this.trackInsert(offset, offset + bytes, false);
    try {
      await io();
    } finally {
      if (write) this.writeGen++;
      this.trackEnd(req);
      this.endInFlight();
    }
  }

  /** A read that passed the synchronous checks and is counted in flight. */
  private async doPreadv(offset: number, qiov: IOVector): Promise<void> {
    const bytes = qiov.size;
    const len = await this.checkBounds('read', offset, bytes);
    if (bytes === 0) return;
    const cor = this.openOptions.copyOnRead === true && !this.readOnly;
    await this.withTracked(offset, bytes, cor, async () => {
      if (cor) await this.copyOnReadv(offset, qiov, len);
      else await this.alignedPreadv(offset, qiov, len);
    });
  }

  /**
   * Read through the driver, padding an unaligned request out to the request alignment with
   * bounce buffers. The padded end is clamped to the image length: only the last block of an
   * image whose size is not aligned can be short, and the driver gets exactly that.
   */
  private async alignedPreadv(offset: number, qiov: IOVector, len: number): Promise<void> {
    const bytes = qiov.size;
    const align = this.requestAlignment;
    const start = roundDown(offset, align);
    const end = Math.min(roundUp(offset + bytes, align), Math.max(len, offset + bytes));
    if (start === offset && end === offset + bytes) {
      await this.readClamped(offset, qiov, len);
      return;
    }
    const padded = new IOVector();
    if (offset > start) padded.add(new Uint8Array(offset - start));
    for (const b of qiov.iov) padded.add(b);
    if (end > offset + bytes) padded.add(new Uint8Array(end - offset - bytes));
    await this.readClamped(start, padded, len);
  }

  /**
   * Copy-on-read (qemu-io -C): read the aligned range, then write whatever this layer does not
   * allocate back into it. The request is serialising, so nothing changes the range between
   * the read and the write-back and rewriting a little more than needed is harmless.
   */
  private async copyOnReadv(offset: number, qiov: IOVector, len: number): Promise<void> {
    const align = this.requestAlignment;
    const start = roundDown(offset, align);
    const end = Math.min(roundUp(offset + qiov.size, align), len);
    const bounce = new Uint8Array(end - start);
    await this.driverPreadv(start, end - start, IOVector.from(bounce));

    let pos = start;
    while (pos < end) {
      const st = await this.blockStatusUnchecked(pos, end - pos);
      const pieceEnd = Math.min(end, roundUp(pos + st.pnum, align));
      if (!st.allocated) {
        const piece = bounce.subarray(pos - start, pieceEnd - start);
        await this.copyOnReadWrite(pos, piece);
      }
      pos = pieceEnd;
    }
    qiov.copyFrom(bounce.subarray(offset - start, offset - start + qiov.size));
  }

  private async copyOnReadWrite(offset: number, data: Uint8Array): Promise<void> {
    const zero = this.driver.coWriteZeroes?.bind(this.driver);
    if (zero && IOVector.from(data).isZero()) {
      try {
        await zero(this, offset, data.length, {});
        return;
      } catch (e) {
        if (!isBlockError(e, 'ENOTSUP')) throw e;
      }
    }
    await this.driverPwritev(offset, data.length, IOVector.from(data), {});
  }

  // ---------------------------------------------------------------------------------------
  // Writes

  async pwrite(offset: number, buf: Uint8Array, flags: WriteFlags = {}): Promise<void> {
    await this.pwritev(offset, IOVector.from(buf), flags);
  }

  async pwritev(offset: number, qiov: IOVector, flags: WriteFlags = NO_FLAGS): Promise<void> {
    const bytes = qiov.size;
    this.checkArgs('write', offset, bytes);
    this.checkWritable('write');
    const fn = this.io.coPwritev;
    // An emulated FUA needs the flush of driverPwritev: no fast path for it.
    const fastFlags = flags.fua !== true || this.driver.supportsFua === true;
    if (fn !== undefined && fastFlags && this.fastWriteOk(offset, bytes)) {
      this.inFlight++;
      const req = this.trackInsert(offset, offset + bytes, false);
      try {
        await fn(this, offset, bytes, qiov, flags);
      } finally {
        this.writeGen++;
        this.trackEnd(req);
        this.endInFlight();
      }
      return;
    }
    await this.inflight('write', () => this.doPwritev(offset, qiov, flags));
  }

  /** A write that passed the synchronous checks and is counted in flight. */
  private async doPwritev(offset: number, qiov: IOVector, flags: WriteFlags): Promise<void> {
    const len = await this.writeBounds('write', offset, qiov.size);
    if (qiov.size === 0) return;
    await this.trackedPwritev(offset, qiov, flags, len);
  }

  private isAligned(offset: number, bytes: number, len: number): boolean {
    const align = this.requestAlignment;
    return offset % align === 0 && (bytes % align === 0 || offset + bytes === len);
  }

  private async trackedPwritev(offset: number, qiov: IOVector, flags: WriteFlags, len: number): Promise<void> {
    const bytes = qiov.size;
    const aligned = this.isAligned(offset, bytes, len);
    // Only a read-modify-write must not run beside overlapping requests.
    await this.withTracked(offset, bytes, !aligned, () => this.alignedPwritev(offset, qiov, flags, len));
  }

  /**
   * Write through the driver; an unaligned request reads the partial head and tail blocks and
   * writes whole blocks (QEMU's bdrv_co_pwritev padding). The caller holds a serialising
   * tracked request, so no other write can slip in between our read and our write.
   */
  private async alignedPwritev(offset: number, qiov: IOVector, flags: WriteFlags, len: number): Promise<void> {
    const bytes = qiov.size;
    const align = this.requestAlignment;
    const reqEnd = offset + bytes;
    const start = roundDown(offset, align);
    // A growable node may be written past its end; padding never reaches beyond both ends.
    const end = Math.min(roundUp(reqEnd, align), Math.max(len, reqEnd));
    if (start === offset && end === reqEnd) {
      await this.announcedPwritev(offset, bytes, qiov, flags);
      return;
    }
    const headBlockEnd = Math.min(start + align, end);
    const tailStart = roundDown(reqEnd, align);
    let head: Uint8Array | null = null;
    let tail: Uint8Array | null = null;
    if (offset > start || (reqEnd < end && tailStart === start)) {
      await this.debugEvent('pwritev_rmw_head');
      head = new Uint8Array(headBlockEnd - start);
      await this.readClamped(start, IOVector.from(head), len);
      await this.debugEvent('pwritev_rmw_after_head');
    }
    if (reqEnd < end && tailStart > start) {
      await this.debugEvent('pwritev_rmw_tail');
      tail = new Uint8Array(end - tailStart);
      await this.readClamped(tailStart, IOVector.from(tail), len);
      await this.debugEvent('pwritev_rmw_after_tail');
    }
    const padded = new IOVector();
    if (head && tailStart === start && reqEnd < end) {
      // Head and tail are the same block: patch the request into it.
      qiov.copyTo(head.subarray(offset - start, reqEnd - start), 0, bytes);
      padded.add(head);
    } else {
      if (head) padded.add(head.subarray(0, offset - start));
      for (const b of qiov.iov) padded.add(b);
      if (tail) padded.add(tail.subarray(reqEnd - tailStart));
    }
    await this.announcedPwritev(start, end - start, padded, flags);
  }

  /**
   * The driver write of a request that reached this node (QEMU's bdrv_aligned_pwritev):
   * `pwritev` before it, after any RMW reads; `pwritev_done` after it even when it failed, so
   * a blkdebug rule on it arms for what the format does next. Counts for the next flush.
   */
  private async announcedPwritev(offset: number, bytes: number, qiov: IOVector, flags: WriteFlags): Promise<void> {
    await this.debugEvent('pwritev');
    try {
      await this.driverPwritev(offset, bytes, qiov, flags);
    } finally {
      this.writeGen++;
      await this.debugEvent('pwritev_done');
    }
  }

  async writeZeroes(offset: number, bytes: number, flags: WriteZeroesFlags = {}): Promise<void> {
    this.checkArgs('write_zeroes', offset, bytes);
    this.checkWritable('write_zeroes');
    await this.inflight('write_zeroes', async () => {
      const len = Math.max(await this.writeBounds('write_zeroes', offset, bytes), offset + bytes);
      if (bytes === 0) return;
      const align = this.requestAlignment;
      const reqEnd = offset + bytes;
      // The unaligned head and tail are written as zero buffers through the RMW path; the
      // aligned middle goes to the driver's native zeroing if it has one.
      let midStart = roundUp(offset, align);
      let midEnd = reqEnd === len ? reqEnd : roundDown(reqEnd, align);
      if (midStart >= midEnd) {
        midStart = reqEnd;
        midEnd = reqEnd;
      }
      if ((offset < midStart || midEnd < reqEnd) && flags.noFallback) {
        throw new BlockError('ENOTSUP', 'write_zeroes: unaligned request needs a fallback write', {
          op: 'write_zeroes',
          offset,
          path: this.filename,
        });
      }
      // Head and tail are plain writes and keep the request's FUA (QEMU's zero padding).
      const padFlags: WriteFlags = flags.fua === true ? { fua: true } : NO_FLAGS;
      if (offset < midStart) {
        await this.trackedPwritev(offset, IOVector.alloc(midStart - offset), padFlags, len);
      }
      if (midStart < midEnd) {
        await this.withTracked(midStart, midEnd - midStart, false, () =>
          this.zeroRange(midStart, midEnd - midStart, flags),
        );
      }
      if (midEnd < reqEnd && midEnd >= midStart) {
        const tailFrom = Math.max(midEnd, offset);
        await this.trackedPwritev(tailFrom, IOVector.alloc(reqEnd - tailFrom), padFlags, len);
      }
    });
  }

  /**
   * The aligned middle of a zero write reaching this node: announced once as `pwritev_zero`
   * and closed by `pwritev_done`, as QEMU does, whichever way the zeroing is done below.
   */
  private async zeroRange(offset: number, bytes: number, flags: WriteZeroesFlags): Promise<void> {
    await this.debugEvent('pwritev_zero');
    try {
      await this.zeroRangeDriver(offset, bytes, { mayUnmap: flags.mayUnmap, noFallback: flags.noFallback });
      // No driver zeroes with FUA: one flush after the whole range (not one per fallback
      // chunk), before the range counts in writeGen, as QEMU's bdrv_co_do_pwrite_zeroes.
      if (flags.fua === true) await this.flushUnchecked();
    } finally {
      this.writeGen++;
      await this.debugEvent('pwritev_done');
    }
  }

  /** Aligned zeroing: native hook, else (or on ENOTSUP) a zero buffer written in chunks. */
  private async zeroRangeDriver(offset: number, bytes: number, flags: WriteZeroesFlags): Promise<void> {
    const native = this.driver.coWriteZeroes?.bind(this.driver);
    if (native) {
      try {
        await native(this, offset, bytes, flags);
        return;
      } catch (e) {
        if (!isBlockError(e, 'ENOTSUP')) throw e;
      }
    }
    if (flags.noFallback) throw this.notSupported('write_zeroes');
    const chunkMax = Math.max(this.requestAlignment, roundDown(WRITE_ZEROES_CHUNK, this.requestAlignment));
    const zeros = new Uint8Array(Math.min(chunkMax, bytes));
    for (let pos = offset; pos < offset + bytes; ) {
      const n = Math.min(zeros.length, offset + bytes - pos);
      await this.driverPwritev(pos, n, IOVector.from(zeros.subarray(0, n)), {});
      pos += n;
    }
  }

  /**
   * Discard is advisory, as in QEMU: a driver without the hook ignores it, and only the
   * aligned part of the range is passed down.
   */
  async discard(offset: number, bytes: number): Promise<void> {
    this.checkArgs('discard', offset, bytes);
    this.checkWritable('discard');
    await this.inflight('discard', async () => {
      const len = Math.max(await this.writeBounds('discard', offset, bytes), offset + bytes);
      const hook = this.driver.coDiscard?.bind(this.driver);
      if (bytes === 0 || !hook) return;
      const align = this.requestAlignment;
      const start = roundUp(offset, align);
      const end = offset + bytes === len ? len : roundDown(offset + bytes, align);
      if (start >= end) return;
      try {
        await this.withTracked(start, end - start, false, () => hook(this, start, end - start));
      } finally {
        // Discarded data counts as written for the next flush (QEMU's write_gen).
        this.writeGen++;
      }
    });
  }

  // ---------------------------------------------------------------------------------------
  // Flush, length, truncate

  async flush(): Promise<void> {
    await this.inflight('flush', () => this.flushUnchecked());
  }

  private async flushUnchecked(): Promise<void> {
    // Taken first: writes ending while we flush count for the next flush, not this one.
    const gen = this.writeGen;
    const file = this.file;
    // The disk step is due only when the node may reach the disk and something was written
    // since the last successful flush (QEMU's flushed_gen check).
    const toDisk = !(this.openOptions.noFlush ?? false) && gen !== this.flushedGen;
    // QEMU's bdrv_co_flush announces both steps on the primary child before any driver flush
    // runs (a read-only node returns before them): flush_to_os always, even with cache=unsafe.
    if (file !== null && !this.readOnly) {
      await file.debugEvent('flush_to_os');
      if (toDisk) await file.debugEvent('flush_to_disk');
    }
    if (toDisk) this.flushingToDisk++;
    try {
      await this.flushDriver(toDisk);
    } finally {
      if (toDisk) this.flushingToDisk--;
    }
    this.flushedGen = gen;
  }

  /**
   * Is a flush of this node at its flush_to_disk step (not cache=unsafe, and something was
   * written through the node since its last successful flush)? QEMU runs a driver's disk
   * flush only then. Our coFlush also flushes the children, so it always runs; a driver whose
   * own disk-level work must follow QEMU's rule (blkdebug's flush rule check) asks this.
   */
  get flushToDiskDue(): boolean {
    return this.flushingToDisk > 0;
  }

  private async flushDriver(toDisk: boolean): Promise<void> {
    // A protocol's flush is its flush_to_disk step (fdatasync): skipped with cache=unsafe, and
    // when nothing was written through the node since its last successful flush (QEMU's
    // flushed_gen check: closing a read-mostly image costs no fdatasync). Format drivers
    // still write out what they cache and pass the flush down (flush_to_os).
    if (!toDisk && (this.driver.isProtocol ?? false)) return;
    if (this.driver.coFlush) {
      await this.driver.coFlush(this);
      return;
    }
    if (this.file) await this.file.flush();
  }

  async getLength(): Promise<number> {
    return this.inflight('get_length', () => this.limitUnchecked());
  }

  private async lengthUnchecked(): Promise<number> {
    let len: number;
    if (this.driver.getLength) len = await this.driver.getLength(this);
    else if (this.file) len = await this.file.getLength();
    else throw this.notSupported('get_length');
    if (invalidNumber(len)) {
      throw new BlockError('EIO', `Driver '${this.driver.formatName}' reported an invalid length ${len}`, {
        op: 'get_length',
        path: this.filename,
      });
    }
    return len;
  }

  /**
   * Resize the node. `prealloc` (QEMU's PreallocMode: off, metadata, falloc, full) says how a
   * grown range is allocated; only drivers with truncatePreallocates take one other than off.
   */
  async truncate(size: number, prealloc?: string): Promise<void> {
    this.checkArgs('truncate', size, 0);
    this.checkWritable('truncate');
    const hook = this.driver.truncate?.bind(this.driver);
    if (!hook) throw this.notSupported('truncate');
    const mode = prealloc === 'off' ? undefined : prealloc;
    if (mode !== undefined && this.driver.truncatePreallocates !== true) {
      throw new BlockError('ENOTSUP', `Unsupported preallocation mode '${mode}'`, { op: 'truncate', offset: size, path: this.filename });
    }
    await this.inflight('truncate', async () => {
      const old = await this.lengthUnchecked();
      // Requests touching what is cut off or added must not run beside the size change.
      const from = roundDown(Math.min(old, size), this.requestAlignment);
      try {
        // The mode is passed only when there is one, so hooks written before it see no change.
        await this.withTracked(from, Number.MAX_SAFE_INTEGER - from, true, () => (mode === undefined ? hook(this, size) : hook(this, size, mode)));
      } finally {
        // A size change counts as a write for the next flush (QEMU's write_gen).
        this.writeGen++;
      }
    });
  }

  // ---------------------------------------------------------------------------------------
  // Allocation status

  /**
   * Clamp a status query to the image (QEMU answers past-the-end queries with nothing).
   * Returns the number of bytes to ask about.
   */
  private async statusRange(op: string, offset: number, bytes: number): Promise<number> {
    this.checkArgs(op, offset, bytes);
    // A user's protocol node answers for its sector tail too: the driver says zeros past EOF.
    const len = await this.limitUnchecked();
    if (offset > len) {
      throw new BlockError('EIO', `${op}: offset ${offset} is past the end of the image (${len} bytes)`, {
        op,
        offset,
        path: this.filename,
      });
    }
    return Math.min(bytes, len - offset);
  }

  /** Block status of this layer only. */
  async blockStatus(offset: number, bytes: number): Promise<BlockStatus> {
    this.checkArgs('block_status', offset, bytes);
    return this.inflight('block_status', async () => {
      const n = await this.statusRange('block_status', offset, bytes);
      if (n === 0) return { pnum: 0, allocated: false, data: false, zero: false };
      return this.blockStatusUnchecked(offset, n);
    });
  }

  private async blockStatusUnchecked(offset: number, bytes: number): Promise<BlockStatus> {
    const hook = this.driver.coBlockStatus?.bind(this.driver);
    if (!hook) {
      // QEMU's default for drivers without the hook: everything is allocated data.
      return { pnum: bytes, allocated: true, data: true, zero: false };
    }
    const st = await hook(this, offset, bytes);
    if (!Number.isSafeInteger(st.pnum) || st.pnum <= 0) {
      throw new BlockError('EIO', `Driver '${this.driver.formatName}' returned block status with pnum ${st.pnum}`, {
        op: 'block_status',
        offset,
        path: this.filename,
      });
    }
    return st.pnum > bytes ? { ...st, pnum: bytes } : st;
  }

  async isAllocated(offset: number, bytes: number): Promise<{ allocated: boolean; pnum: number }> {
    this.checkArgs('is_allocated', offset, bytes);
    return this.inflight('is_allocated', async () => {
      const n = await this.statusRange('is_allocated', offset, bytes);
      if (n === 0) return { allocated: false, pnum: 0 };
      return this.isAllocatedUnchecked(offset, n);
    });
  }

  private async isAllocatedUnchecked(offset: number, bytes: number): Promise<{ allocated: boolean; pnum: number }> {
    const hook = this.driver.coIsAllocated?.bind(this.driver);
    if (hook) {
      const r = await hook(this, offset, bytes);
      if (!Number.isSafeInteger(r.pnum) || r.pnum <= 0) {
        throw new BlockError('EIO', `Driver '${this.driver.formatName}' returned is_allocated with pnum ${r.pnum}`, {
          op: 'is_allocated',
          offset,
          path: this.filename,
        });
      }
      return { allocated: r.allocated, pnum: Math.min(r.pnum, bytes) };
    }
    const st = await this.blockStatusUnchecked(offset, bytes);
    return { allocated: st.allocated, pnum: st.pnum };
  }

  /** This node and its backing nodes, top first, stopping before `base`. */
  private chainAbove(base: BlockDriverState | null): BlockDriverState[] {
    const nodes: BlockDriverState[] = base === this ? [] : [this];
    for (let b = this.backing; b && b !== base; b = b.backing) nodes.push(b);
    return nodes;
  }

  /**
   * Is the range allocated anywhere from this node down to (not including) `base`
   * (bdrv_is_allocated_above)? `pnum` is how far the same answer holds.
   */
  async isAllocatedAbove(
    base: BlockDriverState | null,
    offset: number,
    bytes: number,
  ): Promise<{ allocated: boolean; pnum: number }> {
    this.checkArgs('is_allocated_above', offset, bytes);
    return this.inflight('is_allocated_above', async () => {
      const n = await this.statusRange('is_allocated_above', offset, bytes);
      if (n === 0) return { allocated: false, pnum: 0 };
      let pnum = n;
      for (const node of this.chainAbove(base)) {
        const nodeLen = node === this ? Infinity : await node.getLength();
        // A backing file shorter than the top reads as unallocated zeros past its end.
        if (offset >= nodeLen) continue;
        const ask = Math.min(n, nodeLen - offset);
        const r = node === this ? await this.isAllocatedUnchecked(offset, ask) : await node.isAllocated(offset, ask);
        if (r.allocated) return { allocated: true, pnum: r.pnum };
        // The unallocated answer holds only as far as every layer agrees; a layer's answer
        // that stops at its own end does not shorten it.
        if (r.pnum < pnum && (node === this || offset + r.pnum < nodeLen)) pnum = r.pnum;
      }
      return { allocated: false, pnum };
    });
  }

  /**
   * Block status through the backing chain: the first layer that allocates the range answers;
   * `depth` says which (0 = this node). Unallocated everywhere reports the bottom layer's depth.
   */
  async blockStatusAbove(offset: number, bytes: number): Promise<BlockStatus & { depth: number }> {
    this.checkArgs('block_status', offset, bytes);
    return this.inflight('block_status', async () => {
      let n = await this.statusRange('block_status', offset, bytes);
      if (n === 0) return { pnum: 0, allocated: false, data: false, zero: false, depth: 0 };
      const nodes = this.chainAbove(null);
      for (let depth = 0; ; depth++) {
        const node = nodes[depth];
        const nodeLen = node === this ? Infinity : await node.getLength();
        if (offset >= nodeLen) {
          // Past the end of a shorter backing file: reads as zeros.
          return { pnum: n, allocated: false, data: false, zero: true, depth };
        }
        const ask = Math.min(n, nodeLen - offset);
        const st = node === this ? await this.blockStatusUnchecked(offset, ask) : await node.blockStatus(offset, ask);
        if (st.allocated || depth === nodes.length - 1) return { ...st, depth };
        n = st.pnum;
      }
    });
  }

  // ---------------------------------------------------------------------------------------
  // Metadata operations

  async getInfo(): Promise<BlockDriverInfo> {
    const hook = this.driver.getInfo?.bind(this.driver);
    return this.inflight('get_info', async () => {
      if (!hook) throw this.notSupported('get_info');
      return hook(this);
    });
  }

  /** Host bytes used; without a hook, what the children use (QEMU's default). */
  async getAllocatedFileSize(): Promise<number> {
    return this.inflight('get_allocated_file_size', async () => {
      if (this.driver.getAllocatedFileSize) return this.driver.getAllocatedFileSize(this);
      if (this.file) return this.file.getAllocatedFileSize();
      throw this.notSupported('get_allocated_file_size');
    });
  }

  async check(fix: CheckFix = {}): Promise<CheckResult> {
    if (fix.leaks || fix.errors) this.checkWritable('check');
    const hook = this.driver.check?.bind(this.driver);
    return this.inflight('check', async () => {
      if (!hook) throw this.notSupported('check');
      return hook(this, fix);
    });
  }

  async changeBackingFile(name: string | null, fmt: string | null): Promise<void> {
    this.checkWritable('change_backing_file');
    const hook = this.driver.changeBackingFile?.bind(this.driver);
    await this.inflight('change_backing_file', async () => {
      if (!hook) throw this.notSupported('change_backing_file');
      await hook(this, name, fmt);
      // The node's view follows the image (bdrv_change_backing_file); the open backing node
      // is left as it is, as QEMU does.
      this.backingFile = name ?? '';
      this.backingFormat = fmt ?? '';
      this.fullBackingFilename = this.backingFile === '' ? '' : combineBackingPath(this.storageFilename(), name ?? '');
    });
  }

  /** Drop cached metadata and reread it; without a hook, pass it to the file child. */
  async invalidateCache(): Promise<void> {
    await this.inflight('invalidate_cache', async () => {
      if (this.driver.invalidateCache) await this.driver.invalidateCache(this);
      else if (this.file) await this.file.invalidateCache();
    });
  }

  async makeEmpty(): Promise<void> {
    this.checkWritable('make_empty');
    const hook = this.driver.makeEmpty?.bind(this.driver);
    await this.inflight('make_empty', async () => {
      if (!hook) throw this.notSupported('make_empty');
      await hook(this);
    });
  }

  // ---------------------------------------------------------------------------------------
  // AIO (sector based)

  aioReadv(sectorNum: number, qiov: IOVector, nbSectors: number, cb: CompletionFunc): BlockAIOCB {
    return this.aioRw(false, sectorNum, qiov, nbSectors, cb);
  }

  aioWritev(sectorNum: number, qiov: IOVector, nbSectors: number, cb: CompletionFunc): BlockAIOCB {
    return this.aioRw(true, sectorNum, qiov, nbSectors, cb);
  }

  aioFlush(cb: CompletionFunc): BlockAIOCB {
    try {
      this.checkOpen('aio_flush');
    } catch (e) {
      return this.aioFail(e, 'aio_flush', cb);
    }
    return this.aioGeneric(cb, () => this.flushUnchecked());
  }

  /** Report a refused request through the callback, in a later microtask, never by throwing. */
  private aioFail(e: unknown, op: string, cb: CompletionFunc): BlockAIOCB {
    const err = toBlockError(e, { op });
    return genericAioPool.get(this, cb).start(() => Promise.reject(err));
  }

  /**
   * Run `work` under a generic AIOCB. The request counts as in flight from submission to
   * callback, so close() issued right after submitting still waits for it; the count drops in
   * the callback, which runs exactly once even when the request is cancelled before it starts.
   */
  private aioGeneric(cb: CompletionFunc, work: () => Promise<void>): BlockAIOCB {
    this.inFlight++;
    return genericAioPool
      .get(this, (err) => {
        this.endInFlight();
        cb(err);
      })
      .start(work);
  }

  private aioRw(write: boolean, sectorNum: number, qiov: IOVector, nbSectors: number, cb: CompletionFunc): BlockAIOCB {
    const op = write ? 'aio_write' : 'aio_read';
    try {
      this.checkOpen(op);
      if (invalidNumber(sectorNum) || invalidNumber(nbSectors)) {
        throw new BlockError('EINVAL', `${op}: invalid sector ${sectorNum} count ${nbSectors}`, { op });
      }
      this.checkArgs(op, sectorNum * BDRV_SECTOR_SIZE, nbSectors * BDRV_SECTOR_SIZE);
      if (qiov.size !== nbSectors * BDRV_SECTOR_SIZE) {
        throw new BlockError('EINVAL', `${op}: vector of ${qiov.size} bytes for ${nbSectors} sectors`, { op });
      }
      if (write) this.checkWritable(op);
    } catch (e) {
      return this.aioFail(e, op, cb);
    }

    const offset = sectorNum * BDRV_SECTOR_SIZE;
    const bytes = nbSectors * BDRV_SECTOR_SIZE;
    const native = write ? this.nativeAioWritev : this.nativeAioReadv;
    const align = this.requestAlignment;
    const start = roundDown(offset, align);
    const end = roundUp(offset + bytes, align);
    // The driver's own AIO path (its pool, its cancel) when nothing overlapping is in flight
    // and no padding or copy-on-read is needed; otherwise the generic path, which waits.
    const lenNow = native ? this.lengthSync() : null;
    if (
      native &&
      lenNow !== null &&
      offset + bytes <= lenNow &&
      start === offset &&
      end === offset + bytes &&
      !this.hasConflict(start, end) &&
      !(this.openOptions.copyOnRead === true && !this.readOnly && !write) &&
      // A native write announces no pwritev events; the generic path does (see fastWriteOk).
      !(write && this.debugWatched())
    ) {
      return this.aioNative(native, write, offset, bytes, sectorNum, qiov, nbSectors, cb);
    }
    // The generic path still takes the request fast path when it applies (decided when the
    // request runs, not at submission: other requests may have started or ended meanwhile).
    return this.aioGeneric(cb, () => this.aioGenericRw(write, offset, bytes, qiov));
  }

  private aioGenericRw(write: boolean, offset: number, bytes: number, qiov: IOVector): Promise<void> {
    if (write) {
      const fn = this.io.coPwritev;
      if (fn !== undefined && this.fastWriteOk(offset, bytes)) {
        return this.fastRun(offset, bytes, true, () => fn(this, offset, bytes, qiov, NO_FLAGS));
      }
      return this.doPwritev(offset, qiov, NO_FLAGS);
    }
    const fn = this.io.coPreadv;
    if (fn !== undefined && this.fastReadOk(offset, bytes)) {
      if (this.driver.preadvNow?.(this, offset, bytes, qiov) === true) return RESOLVED;
      return this.fastRun(offset, bytes, false, () => fn(this, offset, bytes, qiov));
    }
    return this.doPreadv(offset, qiov);
  }

  /** The length if the driver knows it without waiting (native AIO bounds check), else null. */
  private lengthSync(): number | null {
    const hook = this.getLengthHook;
    if (!hook) return null;
    let r: number | Promise<number>;
    try {
      r = hook(this);
    } catch {
      // The slow path asks again and reports the error where it belongs (callback, rejection).
      return null;
    }
    if (typeof r === 'number') return r;
    // An async length cannot be checked here; the generic path awaits it instead.
    r.catch(() => undefined);
    return null;
  }

  /**
   * The length when it is known without waiting and the node is open, else null (then use
   * getLength()). Lets a pass-through driver (raw) answer its own length synchronously, which
   * keeps the request fast paths open above it.
   */
  knownLength(): number | null {
    if (!this.isOpen) return null;
    const len = this.lengthSync();
    return len === null || invalidNumber(len) ? null : this.userLength(len);
  }

  private aioNative(
    native: NonNullable<BlockDriver['aioReadv']>,
    write: boolean,
    offset: number,
    bytes: number,
    sectorNum: number,
    qiov: IOVector,
    nbSectors: number,
    cb: CompletionFunc,
  ): BlockAIOCB {
    // Tracked like any request: close() waits for it and a later unaligned write waits for it.
    this.inFlight++;
    const req = this.trackInsert(offset, offset + bytes, false);
    let ended = false;
    const finish = (err: BlockError | null): void => {
      if (ended) return;
      ended = true;
      if (write) this.writeGen++;
      this.trackEnd(req);
      this.endInFlight();
      cb(err);
    };
    return native(this, sectorNum, qiov, nbSectors, finish);
  }

  // ---------------------------------------------------------------------------------------
  // Events

  trace(name: string, args: Record<string, unknown> = {}): void {
    if (this.events.listenerCount('trace') > 0) this.events.emit('trace', { name, args });
  }

  /** Announce a blkdebug event on this node and let the driver act on it. */
  debugEvent(event: BlkDebugEvent): Promise<void> {
    // Every data request announces one; with no listener and no driver hook (anything but
    // blkdebug) there is nothing to run: hand back a settled promise, allocate nothing.
    if (!this.debugWatched()) return RESOLVED;
    return this.debugEventSlow(event);
  }

  /** Does anything act on this node's debug events (a driver hook or a listener)? */
  private debugWatched(): boolean {
    return this.driver.debugEvent !== undefined || this.events.listenerCount('debug') > 0;
  }

  private async debugEventSlow(event: BlkDebugEvent): Promise<void> {
    this.events.emit('debug', event);
    await this.driver.debugEvent?.(this, event);
  }

  // ---------------------------------------------------------------------------------------
  // Drain and reopen

  /**
   * Drain (QEMU's bdrv_drained_begin + end): wait for this node's requests in flight, let its
   * driver finish background work now (drainBegin: QED's pending need-check job runs at once),
   * then drain its children the same way. Nothing holds new requests back meanwhile: callers
   * that need a quiet node issue none until it resolves. A closed node has nothing to drain.
   */
  async drain(): Promise<void> {
    if (!this.isOpen) return;
    while (this.inFlight > 0) await this.drained.wait();
    await this.driver.drainBegin?.(this);
    for (const child of [this.file, this.backing]) if (child) await child.drain();
  }

  /**
   * Reopen in place with new flags (QEMU's bdrv_reopen): drain, flush under the old mode, then
   * switch this node and its file chain (filters, protocol) to the new read-only /
   * cache.no-flush mode. Every node stays open with its state (blkdebug rules, caches, QED's
   * tables); the backing chain stays read-only. On failure nothing has changed; a failed
   * flush is thrown with op 'reopen_flush' (qemu-io words it "Error flushing drive").
   */
  async reopen(options: ReopenOptions): Promise<void> {
    this.checkOpen('reopen');
    await this.drain();
    try {
      if (!this.readOnly) await this.flush();
    } catch (e) {
      const err = toBlockError(e, { op: 'flush', path: this.filename });
      throw new BlockError(err.code, err.message, { op: 'reopen_flush', path: this.filename, cause: err });
    }
    const next = { readOnly: options.readOnly ?? this.readOnly, noFlush: options.noFlush ?? this.openOptions.noFlush ?? false };
    const nodes: BlockDriverState[] = [this];
    for (let n = this.file; n; n = n.file) nodes.push(n);
    // Bottom-up: the protocol, the one that may refuse (storage that cannot be opened for
    // writing), goes first, before any node above it changed.
    nodes.reverse();
    const done: { node: BlockDriverState; old: { readOnly: boolean; noFlush: boolean } }[] = [];
    try {
      for (const n of nodes) {
        const old = { readOnly: n.readOnly, noFlush: n.openOptions.noFlush ?? false };
        await n.reopenNode(next);
        done.push({ node: n, old });
      }
    } catch (e) {
      for (const { node, old } of done.reverse()) await node.reopenNode(old).catch(() => undefined);
      throw toBlockError(e, { op: 'reopen', path: this.filename });
    }
  }

  private async reopenNode(next: { readOnly: boolean; noFlush: boolean }): Promise<void> {
    const options: OpenOptions = { ...this.openOptions, ...next };
    if (this.driver.reopen) {
      await this.driver.reopen(this, options);
    } else if (next.readOnly !== this.readOnly && this.driver.isProtocol && this.driver.open) {
      // A protocol's state is its handle on the storage: open that again in the new mode.
      await this.driver.close?.(this);
      try {
        await this.driver.open(this, options);
      } catch (e) {
        // Get the old handle back; if even that fails, the node cannot serve requests anyway.
        await this.driver.open(this, this.openOptions).catch(() => undefined);
        throw e;
      }
    }
    this.readOnly = next.readOnly;
    // The same object the driver got at open (QED keeps it for invalidateCache).
    this.openOptions.readOnly = next.readOnly;
    this.openOptions.noFlush = next.noFlush;
  }

  // ---------------------------------------------------------------------------------------
  // Closing

  /**
   * Close: refuse new requests, wait for those in flight, flush, run the driver's close, close
   * the children. Idempotent; a second call returns the first one's promise.
   */
  close(): Promise<void> {
    if (this.closing) return this.closing;
    if (!this.opened) {
      this.closing = this.closeChildren();
      return this.closing;
    }
    this.closing = this.doClose();
    return this.closing;
  }

  private async doClose(): Promise<void> {
    while (this.inFlight > 0) await this.drained.wait();
    let firstError: unknown = null;
    try {
      if (!this.readOnly) await this.flushUnchecked();
    } catch (e) {
      firstError = e;
    }
    try {
      await this.driver.close?.(this);
    } catch (e) {
      firstError ??= e;
    }
    try {
      await this.closeChildren();
    } catch (e) {
      firstError ??= e;
    }
    this.events.emit('close');
    if (firstError !== null) throw toBlockError(firstError, { op: 'close', path: this.filename });
  }

  private async closeChildren(): Promise<void> {
    let firstError: unknown = null;
    for (const child of [this.backing, this.file]) {
      if (!child) continue;
      try {
        await child.close();
      } catch (e) {
        firstError ??= e;
      }
    }
    if (firstError !== null) throw toBlockError(firstError, { op: 'close', path: this.filename });
  }
}
