/**
 * Copy-on-write of an allocating write (QEMU's handle_alloc_space, merge_cow, perform_cow):
 * the parts of its new clusters around the data are zeroed at once or copied from what the
 * guest sees there, all before any L2 entry points at the clusters. Runs without s.lock (the
 * clusters are the write's, in flight) unless the caller says it holds it.
 */
import { BlockError } from '../../block/errors.js';
import type { BufferPool } from '../../block/buffer-pool.js';
import { IOVector } from '../../block/iovec.js';
import type { Qcow2L2Meta } from './alloc.js';
import { qcow2HoldsDataNow, qcow2IsZero, qcow2UnallocatedHoldsDataNow } from './cluster.js';
import { qcow2DataNode, qcow2PreWriteDataCheck } from './data-file.js';
import { qcow2CowReadNow, qcow2FreshCowReadNow } from './fast.js';
import { qcow2ReadRange } from './read.js';
import type { BDRVQcow2State } from './state.js';

/**
 * Where the COW areas of an allocation read as zeros, zero its whole clusters in the file at
 * once and skip the copy (handle_alloc_space). Only when the file can zero without writing a
 * buffer; otherwise the ordinary copy runs. Not where a kept cluster holds guest data between
 * the areas: if the data write then failed, that data would be lost rather than left old.
 * With `data` (the piece's guest data, at hostOffset): where one allocation's zeroed range
 * holds all of it, the zeroing and the data go to the file as one request (the file orders
 * them), and true says the data is written. Runs without s.lock: the clusters are this
 * write's, in flight.
 */
export async function handleAllocSpace(s: BDRVQcow2State, metas: readonly Qcow2L2Meta[], hostOffset: number, data: IOVector): Promise<boolean> {
  const file = qcow2DataNode(s);
  let dataWritten = false;
  for (const m of metas) {
    if ((m.cowStart.nbBytes === 0 && m.cowEnd.nbBytes === 0) || m.overwritesData) continue;
    // QEMU's is_zero_cow: block status not asked for zeros (bdrv_co_is_zero_fast).
    if (!(await qcow2IsZero(s, m.offset + m.cowStart.offset, m.cowStart.nbBytes, false, true))) continue;
    if (!(await qcow2IsZero(s, m.offset + m.cowEnd.offset, m.cowEnd.nbBytes, false, true))) continue;
    const start = m.allocOffset + m.cowStart.offset;
    const bytes = m.cowEnd.offset + m.cowEnd.nbBytes - m.cowStart.offset;
    qcow2PreWriteDataCheck(s, start, bytes);
    // Watched, the events come one by one, as QEMU's: cluster_alloc_space here, write_aio
    // before the data write (by the caller).
    const withData: boolean = !dataWritten && !file.debugWatched && hostOffset >= start && hostOffset + data.size <= start + bytes;
    if (file.debugWatched) await file.debugEvent('cluster_alloc_space');
    try {
      // The zeroing before the data (the file keeps that order), both before any L2 entry
      // points at the clusters (the caller links them only after this returns).
      if (withData) await file.zeroThenPwritev(start, bytes, hostOffset, data);
      else await file.writeZeroes(start, bytes, { noFallback: true });
    } catch (e) {
      // ENOTSUP: not zeroed (the data may be in place, nothing else changed); the ordinary
      // copy and data write run, the data written again.
      if (e instanceof BlockError && e.code === 'ENOTSUP') continue;
      throw e;
    }
    dataWritten ||= withData;
    m.skipCow = true;
  }
  return dataWritten;
}

/**
 * Could handleAllocSpace zero this allocation's clusters? Not when one of its COW areas is
 * seen at once to hold data (a COW over a raw backing file, mostly): the check would answer
 * the same after a wait per area.
 */
export function mayZeroCow(s: BDRVQcow2State, m: Qcow2L2Meta): boolean {
  if (!needsCow(m) || m.overwritesData) return false;
  return !qcow2HoldsDataNow(s, m.offset + m.cowStart.offset, m.cowStart.nbBytes) && !qcow2HoldsDataNow(s, m.offset + m.cowEnd.offset, m.cowEnd.nbBytes);
}

/**
 * mayZeroCow of a fresh allocation (alloc-now.ts: every entry of its clusters unallocated, so
 * it needs COW and overwrites no data), with no run planned: its areas are the backing file's.
 */
export function mayZeroFreshCow(s: BDRVQcow2State, m: Qcow2L2Meta): boolean {
  return (
    !qcow2UnallocatedHoldsDataNow(s, m.offset + m.cowStart.offset, m.cowStart.nbBytes) &&
    !qcow2UnallocatedHoldsDataNow(s, m.offset + m.cowEnd.offset, m.cowEnd.nbBytes)
  );
}

/** The allocation whose COW areas frame the data exactly, to write all three at once (merge_cow). */
export function mergeCow(s: BDRVQcow2State, offset: number, bytes: number, metas: readonly Qcow2L2Meta[]): Qcow2L2Meta | null {
  for (const m of metas) {
    if (m.cowStart.nbBytes === 0 && m.cowEnd.nbBytes === 0) continue;
    if (m.skipCow) continue;
    if (m.offset + m.cowStart.offset + m.cowStart.nbBytes !== offset) continue;
    if (m.offset + m.cowEnd.offset !== offset + bytes) continue;
    return m;
  }
  return null;
}

/**
 * Copy-on-write of one allocation's head and tail into its new clusters (perform_cow): read
 * from what the guest sees now (old cluster, backing file, zeros), then written; with `data`
 * (merged), head, data and tail go out in one write. `locked`: the caller holds s.lock.
 */
export async function qcow2PerformCow(s: BDRVQcow2State, m: Qcow2L2Meta, data: IOVector | null = null, locked = true): Promise<void> {
  if ((m.cowStart.nbBytes === 0 && m.cowEnd.nbBytes === 0) || m.skipCow) return;
  // Pooled buffers (each area is shorter than a cluster), given back once the writes settled.
  const bufs = takeCowBuffers(s, m);
  try {
    await performCow(s, m, bufs.head?.subarray(0, m.cowStart.nbBytes) ?? EMPTY, bufs.tail?.subarray(0, m.cowEnd.nbBytes) ?? EMPTY, data, locked);
  } finally {
    qcow2GiveCowBuffers(s, bufs);
  }
}

/** The pooled buffers of one allocation's COW head and tail (null: that area is empty). */
export interface Qcow2CowBuffers {
  head: Uint8Array | null;
  tail: Uint8Array | null;
}

function takeCowBuffers(s: BDRVQcow2State, m: Qcow2L2Meta): Qcow2CowBuffers {
  return { head: cowBuffer(s.cowBuffers, m.cowStart.nbBytes), tail: cowBuffer(s.cowBuffers, m.cowEnd.nbBytes) };
}

/** Give COW buffers back, once no write refers to them any more. */
export function qcow2GiveCowBuffers(s: BDRVQcow2State, bufs: Qcow2CowBuffers): void {
  if (bufs.head) s.cowBuffers.give(bufs.head);
  if (bufs.tail) s.cowBuffers.give(bufs.tail);
}

/**
 * perform_cow of a fresh merged allocation (alloc-now.ts, mergeCow) without a wait: head and
 * tail read now from what the guest sees there (qcow2FreshCowReadNow: the entries are
 * unallocated, so the backing file's page cache, or zeros), framed around
 * `data` as the one vector to write at m.allocOffset + m.cowStart.offset; null, with nothing
 * taken, when an area cannot be read at once (qcow2PerformCow then reads it the ordinary way).
 * Never throws. The caller writes the vector and then gives `bufs` back.
 */
export function qcow2MergedCowNow(s: BDRVQcow2State, m: Qcow2L2Meta, data: IOVector): { whole: IOVector; bufs: Qcow2CowBuffers } | null {
  const bufs = takeCowBuffers(s, m);
  const head = bufs.head?.subarray(0, m.cowStart.nbBytes) ?? EMPTY;
  const tail = bufs.tail?.subarray(0, m.cowEnd.nbBytes) ?? EMPTY;
  let read = false;
  try {
    read =
      (head.length === 0 || qcow2FreshCowReadNow(s, m.offset + m.cowStart.offset, IOVector.from(head))) &&
      (tail.length === 0 || qcow2FreshCowReadNow(s, m.offset + m.cowEnd.offset, IOVector.from(tail)));
  } catch {
    // The caller's write is mapped and in flight: it must not throw. The ordinary read
    // (qcow2PerformCow) tries again and reports the error.
  }
  if (read) return { whole: mergedVector(head, data, tail), bufs };
  qcow2GiveCowBuffers(s, bufs);
  return null;
}

/** Head, data and tail as one vector (the data's buffers shared, not copied). */
function mergedVector(head: Uint8Array, data: IOVector, tail: Uint8Array): IOVector {
  return new IOVector([head, ...data.iov, tail]);
}

const EMPTY = new Uint8Array(0);

/** What the guest sees at [offset, +buf.length): at once when nothing waits, else planned. */
async function readCowArea(s: BDRVQcow2State, offset: number, buf: Uint8Array, locked: boolean): Promise<void> {
  const qiov = IOVector.from(buf);
  if (!locked && qcow2CowReadNow(s, offset, qiov)) return;
  await qcow2ReadRange(s, offset, buf.length, qiov, 0, locked);
}

function cowBuffer(pool: BufferPool, bytes: number): Uint8Array | null {
  if (bytes === 0) return null;
  return bytes <= pool.size ? pool.take() : new Uint8Array(bytes);
}

async function performCow(s: BDRVQcow2State, m: Qcow2L2Meta, head: Uint8Array, tail: Uint8Array, data: IOVector | null, locked: boolean): Promise<void> {
  const file = qcow2DataNode(s);
  // QEMU reads both areas in one request when the data between them is small (one cow_read
  // event), otherwise each area on its own.
  const between = m.cowEnd.offset - (m.cowStart.offset + m.cowStart.nbBytes);
  const mergeReads = head.length > 0 && tail.length > 0 && between <= 16384;
  // Unwatched events are not awaited: each would only cost a microtask.
  const watched = file.debugWatched;
  if (watched && mergeReads) await file.debugEvent('cow_read');
  if (head.length > 0) {
    if (watched && !mergeReads) await file.debugEvent('cow_read');
    await readCowArea(s, m.offset + m.cowStart.offset, head, locked);
  }
  if (tail.length > 0) {
    if (watched && !mergeReads) await file.debugEvent('cow_read');
    await readCowArea(s, m.offset + m.cowEnd.offset, tail, locked);
  }
  if (data) {
    const whole = mergedVector(head, data, tail);
    qcow2PreWriteDataCheck(s, m.allocOffset + m.cowStart.offset, whole.size);
    // One write, two events, as in QEMU: write_aio for the data, cow_write for the whole.
    if (watched) {
      await file.debugEvent('write_aio');
      await file.debugEvent('cow_write');
    }
    await file.pwritev(m.allocOffset + m.cowStart.offset, whole);
    return;
  }
  for (const [buf, at] of [
    [head, m.cowStart.offset],
    [tail, m.cowEnd.offset],
  ] as const) {
    if (buf.length === 0) continue;
    qcow2PreWriteDataCheck(s, m.allocOffset + at, buf.length);
    await file.debugEvent('cow_write');
    await file.pwrite(m.allocOffset + at, buf);
  }
}

/** Does this allocation copy a head or tail (perform_cow would have work)? */
export function needsCow(m: Qcow2L2Meta): boolean {
  return (m.cowStart.nbBytes !== 0 || m.cowEnd.nbBytes !== 0) && !m.skipCow;
}
