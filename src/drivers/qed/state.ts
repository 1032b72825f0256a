/**
 * BDRVQEDState: what an open QED image keeps in memory, plus the small helpers every other
 * file shares (geometry arithmetic, header writes, cluster allocation).
 */
import type { Timer } from '../../block/clock.js';
import { type CoalescedRun, CoMutex, type CoQueue } from '../../block/coroutine.js';
import { driverState, type OpenOptions } from '../../block/driver.js';
import { BlockError } from '../../block/errors.js';
import { IOVector } from '../../block/iovec.js';
import type { BlockDriverState } from '../../block/node.js';
import { encodeHeader, QED_HEADER_STRUCT_SIZE, type QEDHeader } from './header.js';
import type { CachedL2Table, L2Cache } from './l2-cache.js';
import type { QEDTable } from './table.js';

export interface BDRVQEDState {
  bs: BlockDriverState;
  header: QEDHeader;
  /** File length rounded down to a cluster: where the next cluster is appended. */
  fileSize: number;
  /** Entries per table. */
  tableNelems: number;
  /** Guest bytes mapped by one L2 table (entries × cluster size). */
  l2Span: number;
  l1Table: QEDTable;
  l2Cache: L2Cache;
  /**
   * Held by the one request allowed to allocate (from its first allocating cluster until it
   * completes) and by the need-check timer while it clears the dirty bit: QEMU's
   * allocating_acb + allocating_write_reqs queue + "plugged" state, as one FIFO mutex.
   */
  allocLock: CoMutex;
  /**
   * Allocating requests that released allocLock early (their data written, their L2 entries
   * set in memory) and still wait for their L2 table write (io.ts, qedAioWriteL2Update).
   */
  allocPending: number;
  /** Woken when allocPending drops to 0 (qedWaitAllocPending). */
  /** Woken when allocPending drops to 0 (qedWaitAllocPending). */
  allocPendingDone: CoQueue;
  /**
   * Clusters allocated by requests that released allocLock early, whose L2 entries are not
   * set in memory yet (their data is still being written). An allocating request whose run
   * overlaps one waits for it and looks its tables up again (io.ts, qedAioWriteAlloc).
   */
  allocReservations: QEDAllocReservation[];
  /** The COW data flush in flight (io.ts, qedFlushWrittenData), and the next one, gathering. */
  dataFlush: CoalescedRun<void>;
  needCheckTimer: Timer | null;
  /** The running timer job, so close can wait for it. */
  timerTask: Promise<void> | null;
  /**
   * Zeros around the data of a new cluster that has no backing data to copy (write.ts,
   * qedAioWriteCow): one cluster's worth, made on first use and only ever read, so an
   * allocating write neither fills nor leaves behind a buffer of its own.
   */
  zeroPad: Uint8Array | null;
  /** A check left unfixable corruption: never mark the image clean (qed-format.md §17.5). */
  corruptionsRemain: boolean;
  openOptions: OpenOptions;
  closed: boolean;
}

/** L2 entries [start, end) of the table at l2Offset, allocated but not yet set in memory. */
export interface QEDAllocReservation {
  l2Offset: number;
  start: number;
  end: number;
  /** Settles when the entries are set (or the allocation failed). */
  done: Promise<void>;
  settle: () => void;
}

/** Per-request table state (QEMU's QEDRequest): the L2 table the request holds a reference to. */
export interface QEDRequest {
  l2Table: CachedL2Table | null;
}

export function qedState(bs: BlockDriverState): BDRVQEDState {
  return driverState<BDRVQEDState>(bs, 'qed', 'QED image is not open');
}

export function qedFile(s: BDRVQEDState): BlockDriverState {
  const file = s.bs.file;
  if (!file) throw new BlockError('EBADF', 'QED node has no file child', { op: 'qed' });
  return file;
}

/**
 * True when someone listens to trace points. Hot call sites test it first, so the argument
 * object literal is not even built per request when nobody listens.
 */
export function qedTracing(s: BDRVQEDState): boolean {
  return s.bs.events.traceListened;
}

/** Emit a trace point, building nothing when nobody listens. */
export function qedTrace(s: BDRVQEDState, name: string, args: Record<string, unknown>): void {
  if (s.bs.events.traceListened) s.bs.trace(name, { s, ...args });
}

export function qedStartOfCluster(s: BDRVQEDState, offset: number): number {
  return offset - (offset % s.header.clusterSize);
}

export function qedOffsetIntoCluster(s: BDRVQEDState, offset: number): number {
  return offset % s.header.clusterSize;
}

/** Clusters needed to hold `bytes` bytes, computed exactly (QEMU divides by cs-1: qed-format.md §17.2). */
export function qedBytesToClusters(s: BDRVQEDState, bytes: number): number {
  return Math.ceil(bytes / s.header.clusterSize);
}

export function qedL1Index(s: BDRVQEDState, pos: number): number {
  return Math.floor(pos / s.l2Span);
}

export function qedL2Index(s: BDRVQEDState, pos: number): number {
  return Math.floor(pos / s.header.clusterSize) % s.tableNelems;
}

/**
 * Reserve `n` clusters at the end of the file. Only moves the in-memory end; the caller
 * writes them. Allocation is append-only.
 */
export function qedAllocClusters(s: BDRVQEDState, n: number): number {
  const offset = s.fileSize;
  s.fileSize += n * s.header.clusterSize;
  return offset;
}

/**
 * Wait until no allocating request that released allocLock early is still writing its L2
 * entries. Callers hold allocLock, so no new one can start meanwhile.
 */
export async function qedWaitAllocPending(s: BDRVQEDState): Promise<void> {
  while (s.allocPending > 0) await s.allocPendingDone.wait();
}

/** Write the 64-byte header struct (create, close, truncate, autoclear reset, check). */
export async function qedWriteHeaderSync(s: BDRVQEDState): Promise<void> {
  await qedFile(s).pwrite(0, encodeHeader(s.header));
}

/**
 * Update the header in place by read-modify-write of the sectors holding it, so bytes after
 * the struct (the backing name, data of unknown compat features) are kept as they are.
 */
export async function qedWriteHeader(s: BDRVQEDState): Promise<void> {
  const file = qedFile(s);
  const len = Math.ceil(QED_HEADER_STRUCT_SIZE / 512) * 512;
  const buf = new Uint8Array(len);
  await file.preadv(0, IOVector.from(buf));
  encodeHeader(s.header, buf.subarray(0, QED_HEADER_STRUCT_SIZE));
  await file.pwritev(0, IOVector.from(buf));
}

