/**
 * Request checks and tracking (QEMU's block/io.c: bdrv_check_request, tracked requests,
 * serialising requests, in-flight counting).
 *
 * State (one RequestTracker per node, touched only by the generic layer):
 * - `inFlight`: every request between its checks and its end, overlapping or not; drain and
 *   close wait until it is 0 (`drained` wakes them).
 * - the overlap list (oldest first, doubly linked): requests with the range they touch, rounded
 *   out to the request alignment; `serialisingCount` of them are serialising (a read-modify-write,
 *   copy-on-read, truncate) and nothing overlapping may run beside those.
 *
 * Order: a request is counted in flight first, then waits for conflicts and enters the list,
 * runs, leaves the list (waking who waited on it), and is counted out last.
 */
import { CoQueue } from '../coroutine.js';
import { bdrvDebugWatched } from '../debug-event.js';
import { bdrvSetDirty } from '../dirty-bitmap.js';
import { BlockError } from '../errors.js';
import { BDRV_SECTOR_SIZE, type BlockDriver } from '../driver.js';
import type { BlockDriverState } from '../node.js';

/** An in-flight request on the overlap list (QEMU's BdrvTrackedRequest). */
export interface TrackedRequest {
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

export function invalidNumber(n: unknown): boolean {
  return typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0;
}

export function roundDown(n: number, align: number): number {
  return n - (n % align);
}

export function roundUp(n: number, align: number): number {
  const r = n % align;
  return r === 0 ? n : n + (align - r);
}

/** In-flight count and overlap list of one node. */
export class RequestTracker {
  inFlight = 0;
  private readonly drained = new CoQueue();
  private head: TrackedRequest | null = null;
  private tail: TrackedRequest | null = null;
  private serialisingCount = 0;
  /**
   * The end of every range entered since the list was last empty: a request from there on
   * overlaps nothing, and overlaps() answers without walking the list (sequential requests at
   * depth 16 would walk sixteen entries each). Only the upper bound: a lower one too cost the
   * other requests more than it saved.
   */
  private high = 0;

  /** Count a request out; the last one wakes drain and close. */
  leave(): void {
    this.inFlight--;
    if (this.inFlight === 0) this.drained.restartAll();
  }

  /** Wait until nothing is in flight. */
  async idle(): Promise<void> {
    while (this.inFlight > 0) await this.drained.wait();
  }

  /**
   * Wait until no conflicting request overlaps [start, end), then enter the overlap list. A
   * serialising request conflicts with every overlapping one; any request conflicts with an
   * overlapping serialising one. The final scan and the insertion happen without an await
   * between them, and a waiting request holds nothing, so there is no deadlock. No conflict:
   * entered synchronously (no promise, no microtask).
   */
  begin(start: number, end: number, serialising: boolean): TrackedRequest | Promise<TrackedRequest> {
    if (this.findConflict(start, end, serialising) === undefined) return this.insert(start, end, serialising);
    return this.beginWait(start, end, serialising);
  }

  private async beginWait(start: number, end: number, serialising: boolean): Promise<TrackedRequest> {
    for (;;) {
      const conflict = this.findConflict(start, end, serialising);
      if (conflict === undefined) break;
      await (conflict.waiters ??= new CoQueue()).wait();
    }
    return this.insert(start, end, serialising);
  }

  /**
   * The request [start, end) must wait for. Without serialising requests in flight, a
   * non-serialising request conflicts with nothing: the scan is skipped.
   */
  findConflict(start: number, end: number, serialising: boolean): TrackedRequest | undefined {
    if (!serialising && this.serialisingCount === 0) return undefined;
    for (let r = this.head; r !== null; r = r.next) {
      if (r.start < end && start < r.end && (serialising || r.serialising)) return r;
    }
    return undefined;
  }

  /** Does any request in flight overlap [start, end)? */
  overlaps(start: number, end: number): boolean {
    if (start >= this.high) return false;
    for (let r = this.head; r !== null; r = r.next) if (r.start < end && start < r.end) return true;
    return false;
  }

  insert(start: number, end: number, serialising: boolean): TrackedRequest {
    const req: TrackedRequest = { start, end, serialising, waiters: null, prev: this.tail, next: null };
    if (this.tail === null) this.head = req;
    else this.tail.next = req;
    this.tail = req;
    if (serialising) this.serialisingCount++;
    if (end > this.high) this.high = end;
    return req;
  }

  end(req: TrackedRequest): void {
    // Already off the list (ended once): nothing to unlink, nobody left to wake.
    if (req.prev === null && this.head !== req) return;
    if (req.prev === null) this.head = req.next;
    else req.prev.next = req.next;
    if (this.head === null) this.high = 0;
    if (req.next === null) this.tail = req.prev;
    else req.next.prev = req.prev;
    req.prev = null;
    req.next = null;
    if (req.serialising) this.serialisingCount--;
    req.waiters?.restartAll();
  }
}

// -----------------------------------------------------------------------------------------
// Checks (bdrv_check_request and friends)

/**
 * The alignment a node of `driver` pads requests to: the driver's own, else a byte for
 * protocols and filters and a sector for formats (QEMU's refresh_limits defaults).
 */
export function driverRequestAlignment(driver: BlockDriver): number {
  const align = driver.requestAlignment ?? (driver.isProtocol || driver.isFilter ? 1 : BDRV_SECTOR_SIZE);
  if (!Number.isSafeInteger(align) || align < 1) {
    throw new BlockError('EINVAL', `Driver '${driver.formatName}' has an invalid request alignment ${align}`);
  }
  return align;
}

export function checkOpen(bs: BlockDriverState, op: string): void {
  if (!bs.isOpen) {
    throw new BlockError('EBADF', `${op}: node '${bs.filename}' is closed`, { op, path: bs.filename });
  }
}

export function checkArgs(bs: BlockDriverState, op: string, offset: number, bytes: number): void {
  if (invalidNumber(offset) || invalidNumber(bytes) || offset + bytes > Number.MAX_SAFE_INTEGER) {
    throw new BlockError('EINVAL', `${op}: invalid request offset ${offset} length ${bytes}`, {
      op,
      offset: typeof offset === 'number' ? offset : undefined,
      path: bs.filename,
    });
  }
}

export function checkWritable(bs: BlockDriverState, op: string): void {
  if (bs.readOnly) {
    throw new BlockError('EACCES', `${op}: node '${bs.filename}' is read-only`, { op, path: bs.filename });
  }
}

export function notSupported(bs: BlockDriverState, op: string): BlockError {
  return new BlockError('ENOTSUP', `${op}: driver '${bs.driver.formatName}' does not support this operation`, {
    op,
    path: bs.filename,
  });
}

/** The user's bounds: EIO past the end unless the node grows. Returns the length. */
export async function checkBounds(bs: BlockDriverState, op: string, offset: number, bytes: number): Promise<number> {
  const len = await bs.userLength();
  if (offset + bytes > len && !bs.growable) {
    throw new BlockError('EIO', `${op}: request ${offset}+${bytes} is past the end of the image (${len} bytes)`, {
      op,
      offset,
      path: bs.filename,
    });
  }
  return len;
}

/** Count a request as in flight for drain and close; `fn` starts only if the node is open. */
export async function inflight<T>(bs: BlockDriverState, op: string, fn: () => Promise<T>): Promise<T> {
  checkOpen(bs, op);
  const tracker = bs.requests;
  tracker.inFlight++;
  try {
    return await fn();
  } finally {
    tracker.leave();
  }
}

/** Run `fn` as a tracked request over [offset, offset + bytes) rounded to the alignment. */
export async function withTracked<T>(
  bs: BlockDriverState,
  offset: number,
  bytes: number,
  serialising: boolean,
  fn: () => Promise<T>,
): Promise<T> {
  const align = bs.requestAlignment;
  const tracker = bs.requests;
  const begun = tracker.begin(roundDown(offset, align), roundUp(offset + bytes, align), serialising);
  const req = begun instanceof Promise ? await begun : begun;
  try {
    return await fn();
  } finally {
    tracker.end(req);
  }
}

// -----------------------------------------------------------------------------------------
// The fast path: one gate and one piece of bookkeeping for every route (preadv, pwritev, the
// generic AIO path, native AIO).

/**
 * May a checked request take the fast path (the driver hook called directly instead of
 * through the slow path's async helpers)? It has the slow path's semantics when the node is
 * open (the request counts in flight, so close waits for it), the length is known now and
 * holds the request (no bounds error, no zero-fill past the end; a growable node's write may
 * go past it), it is aligned (no padding, no RMW), and no serialising request overlaps it
 * (so begin() would not wait). A read must not be copy-on-read; a write must not have its
 * debug events watched, since the fast path announces no pwritev/pwritev_done.
 */
export function fastPathOk(bs: BlockDriverState, write: boolean, offset: number, bytes: number): boolean {
  if (bytes === 0 || !bs.isOpen) return false;
  if (write ? bdrvDebugWatched(bs) : bs.copyOnReadActive) return false;
  const len = write && bs.growable ? Number.MAX_SAFE_INTEGER : bs.lengthNow();
  const align = bs.requestAlignment;
  return (
    len !== null &&
    offset + bytes <= len &&
    offset % align === 0 &&
    bytes % align === 0 &&
    bs.requests.findConflict(offset, offset + bytes, false) === undefined
  );
}

/** Enter a fast-path request: in flight and on the overlap list (a later RMW waits for it). */
export function fastBegin(bs: BlockDriverState, offset: number, bytes: number): TrackedRequest {
  bs.requests.inFlight++;
  return bs.requests.insert(offset, offset + bytes, false);
}

/** End a fast-path request; a write counts for the next flush whether or not it failed. */
export function fastEnd(bs: BlockDriverState, req: TrackedRequest, write: boolean): void {
  if (write) {
    bs.writeGen++;
    bdrvSetDirty(bs, req.start, req.end - req.start);
  }
  bs.requests.end(req);
  bs.requests.leave();
}

/**
 * Run a fast-path request (fastPathOk said yes) between fastBegin and fastEnd. The hot
 * preadv/pwritev paths inline this pair instead, to save the closure.
 */
export async function fastRun(bs: BlockDriverState, offset: number, bytes: number, write: boolean, io: () => Promise<void>): Promise<void> {
  const req = fastBegin(bs, offset, bytes);
  try {
    await io();
  } finally {
    fastEnd(bs, req, write);
  }
}
