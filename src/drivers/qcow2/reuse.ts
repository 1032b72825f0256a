/**
 * Handing out a cluster that was freed (QEMU's allocator reuses one as soon as its count is
 * 0): what must happen first so that nobody's bytes land where an older reference on disk
 * still points. Callers hold s.lock.
 */
import { type BDRVQcow2State, startOfCluster } from './state.js';

/**
 * Clusters [offset, offset+bytes) are handed out whole: if compressed clusters were being
 * packed into one of them (it was freed since: the last compressed cluster in it was
 * rewritten or discarded), the next compressed cluster must not be packed after them, or
 * its bytes would land on the new owner's data. QEMU keeps packing into a freed cluster as
 * long as nobody took it; so do we.
 */
export function forgetPackingIn(s: BDRVQcow2State, offset: number, bytes: number): void {
  const packing = startOfCluster(s, s.freeByteOffset);
  if (s.freeByteOffset !== 0 && packing >= offset && packing < offset + bytes) s.freeByteOffset = 0;
}

/** Count cluster `index` among those freed since the allocator last flushed the L2 cache. */
export function qcow2NoteFreed(s: BDRVQcow2State, index: number): void {
  const r = s.freedSinceL2Flush;
  s.freedSinceL2Flush = r === null ? { first: index, last: index } : { first: Math.min(r.first, index), last: Math.max(r.last, index) };
}

/**
 * Whether clusters [index, index+n) may have been freed since the L2 cache was last flushed
 * (the range is a hull: a cluster that was free all along may be counted too).
 */
export function qcow2FreedSinceL2Flush(s: BDRVQcow2State, index: number, n: number): boolean {
  const r = s.freedSinceL2Flush;
  return r !== null && index <= r.last && index + n > r.first;
}

/** Write the L2 tables and flush: no entry on disk points at a cluster freed before. */
export async function qcow2FlushL2ForReuse(s: BDRVQcow2State): Promise<void> {
  await s.l2Cache.flush();
  s.freedSinceL2Flush = null;
}

/**
 * Before clusters [index, index+n) take new bytes: if one was freed since the L2 cache was
 * last flushed, the L2 update that dropped it may be cached only, and the disk may still hold
 * the entry pointing at it (a rewritten compressed cluster, a discarded one). Its new owner's
 * data would be written at once and could reach the disk before that update: after a power
 * loss the old entry would read someone else's bytes (and a compressed one no longer
 * decompress). So the dropping update is made durable first. QEMU reuses such clusters
 * without this flush; it costs one flush per batch of frees and keeps QEMU's layout.
 */
export async function qcow2SyncBeforeReuse(s: BDRVQcow2State, index: number, n: number): Promise<void> {
  if (qcow2FreedSinceL2Flush(s, index, n)) await qcow2FlushL2ForReuse(s);
}
