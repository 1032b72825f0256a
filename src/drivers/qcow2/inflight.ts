/**
 * Guest writes whose data I/O runs without s.lock (QEMU's cluster_allocs list, plus the
 * in-place writes QEMU leaves untracked).
 *
 * A write maps its clusters under s.lock, registers the guest clusters it covers here, drops
 * the lock for the data (and COW) I/O, and retakes it only to link new clusters into L2. While
 * it is registered:
 * - a write whose first cluster is being allocated by another waits for that allocation to be
 *   linked (handle_dependencies), so two allocations never race for one guest cluster;
 * - zero, discard, truncate and compressed writes, which change the L2 entries a write may be
 *   writing through, wait for every overlapping write (qcow2WaitInFlight), so a cluster is
 *   never freed, reused or flagged zero under a data write still on its way to it.
 * Ranges are whole guest clusters.
 */
import { Deferred } from '../../block/coroutine.js';
import type { BDRVQcow2State } from './state.js';

export interface Qcow2InFlight {
  /** Guest byte range, cluster aligned: [start, end). */
  start: number;
  end: number;
  /** New clusters (or zero-flagged ones) wait for their L2 entries: others must not map them. */
  allocating: boolean;
  /**
   * Settled when the write is over; made by the first waiter (most writes have none, and a
   * promise per write was a third of what registering one allocated).
   */
  done: Deferred | null;
}

/** The cluster-aligned range around guest [offset, offset+bytes): its start, then its end. */
function rangeStart(s: BDRVQcow2State, offset: number): number {
  return offset - (offset % s.clusterSize);
}

function rangeEnd(s: BDRVQcow2State, offset: number, bytes: number): number {
  return Math.ceil((offset + bytes) / s.clusterSize) * s.clusterSize;
}

/** Register a write over guest [offset, offset+bytes); s.lock held. */
export function qcow2InFlightBegin(s: BDRVQcow2State, offset: number, bytes: number, allocating: boolean): Qcow2InFlight {
  const r: Qcow2InFlight = { start: rangeStart(s, offset), end: rangeEnd(s, offset, bytes), allocating, done: null };
  s.inFlight.add(r);
  if (allocating) {
    if (s.allocationsInFlight++ === 0) {
      s.allocationsLow = r.start;
      s.allocationsHigh = r.end;
    } else {
      s.allocationsLow = Math.min(s.allocationsLow, r.start);
      s.allocationsHigh = Math.max(s.allocationsHigh, r.end);
    }
  }
  return r;
}

/** The write is over (linked or given up): wake who waits for it. */
export function qcow2InFlightEnd(s: BDRVQcow2State, r: Qcow2InFlight): void {
  if (s.inFlight.delete(r) && r.allocating) s.allocationsInFlight--;
  r.done?.resolve();
}

/**
 * The allocation in flight that overlaps guest [offset, offset+bytes) first, if any
 * (handle_dependencies looks at the same list).
 */
export function qcow2FirstAllocation(s: BDRVQcow2State, offset: number, bytes: number): Qcow2InFlight | null {
  // Asked by every write of the fast paths: two numbers, no array per call, and no walk
  // over the writes in flight when nothing allocates or the range is outside all that do
  // (sequential writes: each starts where the last allocation in flight ends).
  if (s.allocationsInFlight === 0) return null;
  const start = rangeStart(s, offset);
  const end = rangeEnd(s, offset, bytes);
  if (end <= s.allocationsLow || start >= s.allocationsHigh) return null;
  let first: Qcow2InFlight | null = null;
  for (const r of s.inFlight) {
    if (!r.allocating || r.end <= start || r.start >= end) continue;
    if (!first || r.start < first.start) first = r;
  }
  return first;
}

/** Drop s.lock until `r` is over, then take it again. */
export async function qcow2WaitFor(s: BDRVQcow2State, r: Qcow2InFlight): Promise<void> {
  // Made before anything runs: `r` is still in flight (its end settles it).
  const done = (r.done ??= new Deferred());
  s.lock.unlock();
  try {
    await done.promise;
  } finally {
    await s.lock.lock();
  }
}

/**
 * With s.lock held, wait until no write overlapping guest [offset, offset+bytes) is in
 * flight; the lock is dropped while waiting, so callers check their preconditions after.
 */
export async function qcow2WaitInFlight(s: BDRVQcow2State, offset: number, bytes: number): Promise<void> {
  const start = rangeStart(s, offset);
  const end = rangeEnd(s, offset, bytes);
  for (;;) {
    let busy: Qcow2InFlight | null = null;
    for (const r of s.inFlight) {
      if (r.end > start && r.start < end) {
        busy = r;
        break;
      }
    }
    if (!busy) return;
    await qcow2WaitFor(s, busy);
  }
}
