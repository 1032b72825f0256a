/**
 * The request path: reads (plan a run with qcow2GetHostOffset, then execute it), writes
 * (allocate with qcow2AllocHostOffset, write data and COW, link the L2 entries) and
 * compressed writes.
 *
 * Locking: planning and every metadata change happen under s.lock; data I/O runs without it
 * (qcow2_co_pwritev_task). A write maps one host-contiguous piece under the lock (allocating
 * what it needs), registers it in flight (inflight.ts), writes data and COW unlocked, and
 * takes the lock again only to link new clusters into L2. Rewrites of clusters we own
 * (COPIED) change no metadata at all.
 */
import { BlockError } from '../../block/errors.js';
import { AioTaskPool } from '../../block/aio-task.js';
import { IOVector } from '../../block/iovec.js';
import { type Qcow2L2Meta, qcow2AllocHostOffset, qcow2LinkL2 } from './alloc.js';
import { qcow2AllocNow, qcow2LinkL2Now } from './alloc-now.js';
import { type Qcow2InFlight, qcow2InFlightBegin, qcow2InFlightEnd, qcow2WaitInFlight } from './inflight.js';
import { qcow2GetClusterTable, qcow2GetHostOffset, qcow2IsZero, qcow2PlanUnlocked, type Qcow2Run, getL2Entry, setL2Bitmap, setL2Entry } from './cluster.js';
import { qcow2CheckNotCorrupt, qcow2PreWriteOverlapCheck } from './corrupt.js';
import { qcow2DataNode, qcow2HasDataFile, qcow2PreWriteDataCheck } from './data-file.js';
import { qcow2RewriteNow } from './fast.js';
import { L2E_OFFSET_MASK, decodeCompressed, encodeCompressed } from './entries.js';
import { qcow2AllocBytes, qcow2FreeClusters } from './refcount.js';
import { type BDRVQcow2State, offsetIntoCluster, qcow2File } from './state.js';

/** Tasks of one request in flight at once (QCOW2_MAX_WORKERS). */
const QCOW2_MAX_WORKERS = 8;

/** Read guest bytes from the backing file; past its end (or without one) they are zeros. */
async function readBacking(s: BDRVQcow2State, offset: number, qiov: IOVector): Promise<void> {
  const backing = s.bs.backing;
  const len = backing ? await backing.getLength() : 0;
  if (!backing || offset >= len) {
    qiov.memset(0, 0);
    return;
  }
  const n = Math.min(len - offset, qiov.size);
  if (n < qiov.size) qiov.memset(n, 0);
  const file = qcow2File(s);
  if (file.debugWatched) await file.debugEvent('read_backing_aio');
  await backing.preadv(offset, n === qiov.size ? qiov : qiov.slice(0, n));
}

/** Decompress the cluster an entry describes (qcow2_co_preadv_compressed). */
export async function qcow2ReadCompressedCluster(s: BDRVQcow2State, entry: bigint): Promise<Uint8Array> {
  const c = decodeCompressed(entry, s.compressed);
  const file = qcow2File(s);
  await file.debugEvent('read_compressed');
  const buf = new Uint8Array(c.length);
  await file.pread(c.offset, buf);
  return s.codec.decompress(s.header.compressionType, buf, s.clusterSize);
}

/** Execute one planned run of a read. */
async function readRun(s: BDRVQcow2State, offset: number, run: Qcow2Run, cur: IOVector): Promise<void> {
  switch (run.kind) {
    case 'zero':
      cur.memset(0, 0);
      return;
    case 'unallocated':
      await readBacking(s, offset, cur);
      return;
    case 'compressed': {
      const data = await qcow2ReadCompressedCluster(s, run.l2Entry);
      const at = offsetIntoCluster(s, offset);
      cur.copyFrom(data.subarray(at, at + run.bytes));
      return;
    }
    case 'normal': {
      const file = qcow2DataNode(s);
      // An unwatched event would only cost an await (a microtask) per request.
      if (file.debugWatched) await file.debugEvent('read_aio');
      await file.preadv(run.hostOffset, cur);
      return;
    }
  }
}

/**
 * Read guest [offset, offset+bytes) into qiov at qiovOffset. `locked`: the caller holds
 * s.lock (a COW read inside a write); otherwise each step plans from a settled cached table
 * or under s.lock (qcow2PlanUnlocked).
 */
export async function qcow2ReadRange(
  s: BDRVQcow2State,
  offset: number,
  bytes: number,
  qiov: IOVector,
  qiovOffset: number,
  locked: boolean,
): Promise<void> {
  let pos = offset;
  let done = 0;
  // Compressed clusters are read and inflated several at once, as qcow2_co_preadv_part's
  // tasks are: one at a time, a convert of a compressed image waits on each in turn.
  let pool: AioTaskPool | null = null;
  try {
    while (done < bytes && (pool === null || pool.ok)) {
      const planned = locked ? qcow2GetHostOffset(s, pos, bytes - done) : qcow2PlanUnlocked(s, pos, bytes - done);
      const run = planned instanceof Promise ? await planned : planned;
      const at = pos;
      const cur = qiov.slice(qiovOffset + done, run.bytes);
      if (run.kind === 'compressed' && run.bytes < bytes - done) {
        pool ??= new AioTaskPool(QCOW2_MAX_WORKERS);
        await pool.start(() => readRun(s, at, run, cur));
      } else {
        await readRun(s, at, run, cur);
      }
      pos += run.bytes;
      done += run.bytes;
    }
  } catch (e) {
    // The tasks fill the caller's buffer: none may outlive the request.
    await pool?.waitAll().catch(() => undefined);
    throw e;
  }
  await pool?.waitAll();
}

export async function qcow2CoPreadv(s: BDRVQcow2State, offset: number, bytes: number, qiov: IOVector): Promise<void> {
  qcow2CheckNotCorrupt(s, 'read');
  try {
    await qcow2ReadRange(s, offset, bytes, qiov, 0, false);
  } finally {
    if (s.corruptWrite) await s.corruptWrite;
  }
}

/**
 * Where the COW areas of an allocation read as zeros, zero its whole clusters in the file at
 * once and skip the copy (handle_alloc_space). Only when the file can zero without writing a
 * buffer; otherwise the ordinary copy runs. Not where a kept cluster holds guest data between
 * the areas: if the data write then failed, that data would be lost rather than left old.
 * Runs without s.lock: the clusters are this write's, in flight.
 */
async function handleAllocSpace(s: BDRVQcow2State, metas: readonly Qcow2L2Meta[]): Promise<void> {
  const file = qcow2DataNode(s);
  for (const m of metas) {
    if ((m.cowStart.nbBytes === 0 && m.cowEnd.nbBytes === 0) || m.overwritesData) continue;
    // QEMU's is_zero_cow: block status not asked for zeros (bdrv_co_is_zero_fast).
    if (!(await qcow2IsZero(s, m.offset + m.cowStart.offset, m.cowStart.nbBytes, false, true))) continue;
    if (!(await qcow2IsZero(s, m.offset + m.cowEnd.offset, m.cowEnd.nbBytes, false, true))) continue;
    const start = m.allocOffset + m.cowStart.offset;
    const bytes = m.cowEnd.offset + m.cowEnd.nbBytes - m.cowStart.offset;
    qcow2PreWriteDataCheck(s, start, bytes);
    if (file.debugWatched) await file.debugEvent('cluster_alloc_space');
    try {
      await file.writeZeroes(start, bytes, { noFallback: true });
    } catch (e) {
      if (e instanceof BlockError && e.code === 'ENOTSUP') continue;
      throw e;
    }
    m.skipCow = true;
  }
}

/** The allocation whose COW areas frame the data exactly, to write all three at once (merge_cow). */
function mergeCow(s: BDRVQcow2State, offset: number, bytes: number, metas: readonly Qcow2L2Meta[]): Qcow2L2Meta | null {
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
  const file = qcow2DataNode(s);
  const head = new Uint8Array(m.cowStart.nbBytes);
  const tail = new Uint8Array(m.cowEnd.nbBytes);
  // QEMU reads both areas in one request when the data between them is small (one cow_read
  // event), otherwise each area on its own.
  const between = m.cowEnd.offset - (m.cowStart.offset + m.cowStart.nbBytes);
  const mergeReads = head.length > 0 && tail.length > 0 && between <= 16384;
  // Unwatched events are not awaited: each would only cost a microtask.
  const watched = file.debugWatched;
  if (watched && mergeReads) await file.debugEvent('cow_read');
  if (head.length > 0) {
    if (watched && !mergeReads) await file.debugEvent('cow_read');
    await qcow2ReadRange(s, m.offset + m.cowStart.offset, head.length, IOVector.from(head), 0, locked);
  }
  if (tail.length > 0) {
    if (watched && !mergeReads) await file.debugEvent('cow_read');
    await qcow2ReadRange(s, m.offset + m.cowEnd.offset, tail.length, IOVector.from(tail), 0, locked);
  }
  if (data) {
    const whole = new IOVector([head, ...data.iov, tail]);
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

type Mapped = Awaited<ReturnType<typeof qcow2AllocHostOffset>>;

/** Does this allocation copy a head or tail (perform_cow would have work)? */
function needsCow(m: Qcow2L2Meta): boolean {
  return (m.cowStart.nbBytes !== 0 || m.cowEnd.nbBytes !== 0) && !m.skipCow;
}

/**
 * A mapped piece goes in flight: from here until its end, writes that would allocate the same
 * clusters wait for it, zero and discard there wait for it. Called with s.lock held, or in
 * the same synchronous step as the mapping. A refused overlap check throws: clusters
 * allocated for a piece that never got in flight are linked nowhere, a leak at worst, as
 * QEMU's; the request fails.
 */
function inFlight(s: BDRVQcow2State, offset: number, a: Mapped): { a: Mapped; flight: Qcow2InFlight } {
  if (a.bytes === 0) throw new BlockError('EIO', 'qcow2: no progress allocating clusters', { op: 'write', offset });
  qcow2PreWriteDataCheck(s, a.hostOffset, a.bytes);
  return { a, flight: qcow2InFlightBegin(s, offset, a.bytes, a.metas.length > 0) };
}

/** Map one piece under s.lock, allocating what it needs (the ordinary path). */
async function mapLocked(s: BDRVQcow2State, offset: number, bytes: number): Promise<{ a: Mapped; flight: Qcow2InFlight }> {
  await s.lock.lock();
  try {
    qcow2CheckNotCorrupt(s, 'write');
    return inFlight(s, offset, await qcow2AllocHostOffset(s, offset, bytes));
  } finally {
    s.lock.unlock();
  }
}

/**
 * Write one host-contiguous piece of a guest write at `offset` (at most `bytes`, data from
 * qiov at qiovOffset); returns how many bytes it covered (qcow2_co_pwritev_task).
 */
async function writePiece(s: BDRVQcow2State, offset: number, bytes: number, qiov: IOVector, qiovOffset: number): Promise<number> {
  const file = qcow2DataNode(s);
  // Unallocated clusters of a cached table are mapped at once (alloc-now.ts), as under the
  // lock below when nothing needs loading.
  const now = qcow2AllocNow(s, offset, bytes);
  const { a, flight } = now !== null ? inFlight(s, offset, now) : await mapLocked(s, offset, bytes);

  const data = qiov.slice(qiovOffset, a.bytes);
  let failure: { error: unknown } | null = null;
  try {
    // Zeroing whole new clusters beats copying zeros; then the data, alone or framed by its
    // COW; then the other COW areas. All of it before any L2 entry points at the clusters.
    const cow = a.metas.some(needsCow);
    if (cow) await handleAllocSpace(s, a.metas);
    const merged = cow ? mergeCow(s, offset, a.bytes, a.metas) : null;
    if (!merged) {
      if (file.debugWatched) await file.debugEvent('write_aio');
      await file.pwritev(a.hostOffset, data);
    }
    for (const m of a.metas) if (needsCow(m)) await qcow2PerformCow(s, m, m === merged ? data : null, false);
  } catch (e) {
    failure = { error: e };
  }
  if (a.metas.length === 0) {
    qcow2InFlightEnd(s, flight);
    if (failure) throw failure.error;
    return a.bytes;
  }
  // Data and COW are written: the entries now, when that needs no wait (the same entries and
  // cache dependencies as qcow2LinkL2 below).
  if (failure === null && qcow2LinkL2Now(s, a.metas)) {
    qcow2InFlightEnd(s, flight);
    return a.bytes;
  }

  await s.lock.lock();
  let linked = 0;
  try {
    if (failure) throw failure.error;
    // Per allocation, its L2 entries now that data and COW are written
    // (qcow2_alloc_cluster_link_l2; the cache orders them after a file flush).
    for (const m of a.metas) {
      await qcow2LinkL2(s, m);
      linked++;
    }
  } catch (e) {
    // Nothing points at the clusters of the allocations not linked: give them back
    // (qcow2_alloc_cluster_abort). Clusters of a data file were never counted: nothing to give.
    const counted = !qcow2HasDataFile(s);
    for (const m of a.metas.slice(linked)) {
      if (counted && !m.keepOld) await qcow2FreeClusters(s, m.allocOffset, m.nbClusters * s.clusterSize, 'never');
    }
    throw e;
  } finally {
    qcow2InFlightEnd(s, flight);
    s.lock.unlock();
  }
  return a.bytes;
}

/**
 * A guest write: the one place every guest write to a qcow2 image passes (data and the zero
 * buffers of the write-zeroes fallback alike).
 */
export async function qcow2CoPwritev(s: BDRVQcow2State, offset: number, bytes: number, qiov: IOVector): Promise<void> {
  try {
    const now = qcow2RewriteNow(s, offset, bytes);
    if (now !== null) {
      // Mapped and in flight already: only the data write is left (debug events unwatched).
      try {
        await qcow2File(s).pwritev(now.hostOffset, qiov.size === bytes ? qiov : qiov.slice(0, bytes));
      } finally {
        qcow2InFlightEnd(s, now.flight);
      }
      return;
    }
    for (let done = 0; done < bytes; ) done += await writePiece(s, offset + done, bytes - done, qiov, done);
  } finally {
    if (s.corruptWrite) await s.corruptWrite;
  }
}

/**
 * Write one compressed cluster (qcow2_co_pwritev_compressed_task): whole clusters only (the
 * last may be short at the image end), into an unallocated or zero-plain entry.
 */
export async function qcow2CoPwritevCompressed(s: BDRVQcow2State, offset: number, bytes: number, qiov: IOVector): Promise<void> {
  const cs = s.clusterSize;
  const size = s.header.size;
  if (offset % cs !== 0 || (bytes !== cs && offset + bytes !== size) || bytes > cs) {
    throw new BlockError('EINVAL', undefined, { op: 'write_compressed', offset });
  }
  // Clusters may compress at once (a codec off the main thread), but they take their host
  // bytes in the order they came: a convert -c writes in guest order and qemu-img's image
  // packs the clusters in that order. The turn passes on once this one holds s.lock (the
  // next then queues behind it), or, written uncompressed, once it is done.
  const prevTurn = s.compressedTurn;
  let passTurn!: () => void;
  s.compressedTurn = new Promise<void>((resolve) => {
    passTurn = resolve;
  });
  try {
    const src = new Uint8Array(cs);
    qiov.copyTo(src, 0, bytes);
    const out = await s.codec.compress(s.header.compressionType, src, cs - 1);
    await prevTurn;
    if (!out) {
      // Incompressible: an ordinary allocating write of the cluster.
      await qcow2CoPwritev(s, offset, bytes, qiov);
      return;
    }
    await s.lock.lock();
    passTurn();
    await writeCompressedLocked(s, offset, bytes, out);
  } finally {
    passTurn();
  }
}

/** The locked half of a compressed write: place `out` in the file, then link it into L2. */
async function writeCompressedLocked(s: BDRVQcow2State, offset: number, bytes: number, out: Uint8Array): Promise<void> {
  try {
    // The entry must not be changing under a write in flight (inflight.ts).
    await qcow2WaitInFlight(s, offset, bytes);
    qcow2CheckNotCorrupt(s, 'write');
    const { table, l2Index } = await qcow2GetClusterTable(s, offset);
    try {
      // Compression never overwrites: only a cluster without a host offset (unallocated or
      // plain zero; with extended L2, whatever its subclusters read as) takes one.
      if ((getL2Entry(s, table.data, l2Index) & L2E_OFFSET_MASK) !== 0n) throw new BlockError('EIO', undefined, { op: 'write_compressed', offset });
      const host = await qcow2AllocBytes(s, out.length);
      qcow2PreWriteOverlapCheck(s, 0, host, out.length);
      const file = qcow2File(s);
      await file.debugEvent('write_compressed');
      await file.pwrite(host, out);
      await file.debugEvent('l2_update_compressed');
      // The refcount increase is ordered before this entry by qcow2AllocBytes' dependency;
      // the compressed bytes must be durable first as well.
      s.l2Cache.dependOnFlush();
      s.l2Cache.markDirty(table);
      setL2Entry(s, table.data, l2Index, encodeCompressed(host, out.length, s.compressed));
      // A compressed cluster has no subclusters: its bitmap is 0.
      if (s.extendedL2) setL2Bitmap(s, table.data, l2Index, 0n);
    } finally {
      s.l2Cache.put(table);
    }
  } finally {
    s.lock.unlock();
    if (s.corruptWrite) await s.corruptWrite;
  }
}
