/**
 * The read half of the request path: plan a run with qcow2GetHostOffset (or from a settled
 * cached table without the lock, qcow2PlanUnlocked), then execute it: data from the file,
 * zeros, the backing file, or a compressed cluster inflated.
 */
import { AioTaskPool } from '../../block/aio-task.js';
import type { IOVector } from '../../block/iovec.js';
import { qcow2GetHostOffset, qcow2PlanUnlocked, type Qcow2Run } from './cluster.js';
import { qcow2CheckNotCorrupt } from './corrupt.js';
import { qcow2DataNode } from './data-file.js';
import { qcow2PlainRead } from './fast.js';
import { type CompressedBatch, compressedBatchAdd, qcow2ReadCompressedBatch, qcow2ReadCompressedCluster } from './read-compressed.js';
import { type BDRVQcow2State, offsetIntoCluster, qcow2File } from './state.js';

/** Tasks of one request in flight at once (QCOW2_MAX_WORKERS). */
const QCOW2_MAX_WORKERS = 8;

/** Read guest bytes from the backing file; past its end (or without one) they are zeros. */
async function readBacking(s: BDRVQcow2State, offset: number, qiov: IOVector): Promise<void> {
  const backing = s.bs.backing;
  // A length known without asking (a raw file) spares the request a tracked length query.
  const len = backing ? (backing.knownLength() ?? (await backing.getLength())) : 0;
  if (!backing || offset >= len) {
    qiov.memset(0, 0);
    return;
  }
  const n = Math.min(len - offset, qiov.size);
  if (n < qiov.size) qiov.memset(n, 0);
  const file = qcow2File(s);
  const cur = n === qiov.size ? qiov : qiov.slice(0, n);
  if (file.debugWatched) await file.debugEvent('read_backing_aio');
  // Bytes the host's page cache holds are copied at once (the read's own fast path, which
  // admits only what its ordinary path would serve the same way).
  else if (backing.preadvNow(offset, cur)) return;
  await backing.preadv(offset, cur);
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
      // Part of a cluster (or one split across buffers): inflated apart, then copied.
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
  // Whole compressed clusters next to each other in the file, not read yet.
  let batch: CompressedBatch = { start: 0, end: 0, extents: [], dsts: [] };
  const flush = async (last: boolean): Promise<void> => {
    if (batch.extents.length === 0) return;
    const b = batch;
    batch = { start: 0, end: 0, extents: [], dsts: [] };
    // The whole request in one batch needs no task of its own.
    if (last && pool === null) return qcow2ReadCompressedBatch(s, b);
    pool ??= new AioTaskPool(QCOW2_MAX_WORKERS);
    await pool.start(() => qcow2ReadCompressedBatch(s, b));
  };
  try {
    while (done < bytes && (pool === null || pool.ok)) {
      const planned = locked ? qcow2GetHostOffset(s, pos, bytes - done) : qcow2PlanUnlocked(s, pos, bytes - done);
      const run = planned instanceof Promise ? await planned : planned;
      const at = pos;
      const cur = qiov.slice(qiovOffset + done, run.bytes);
      if (run.kind === 'compressed' && run.bytes === s.clusterSize && cur.niov === 1) {
        // A whole cluster into one buffer of the request is inflated in place: no bounce
        // buffer to allocate, zero and copy out of (a convert reads every cluster this way).
        const dst = cur.iov[0];
        if (!compressedBatchAdd(s, batch, run.l2Entry, dst)) {
          await flush(false);
          compressedBatchAdd(s, batch, run.l2Entry, dst);
        }
      } else {
        await flush(false);
        if (run.kind === 'compressed' && run.bytes < bytes - done) {
          pool ??= new AioTaskPool(QCOW2_MAX_WORKERS);
          await pool.start(() => readRun(s, at, run, cur));
        } else {
          await readRun(s, at, run, cur);
        }
      }
      pos += run.bytes;
      done += run.bytes;
    }
    if (pool === null || pool.ok) await flush(true);
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
    // Contiguous plain data (every read of a convert out of a qcow2 image): the file read
    // alone, without a run planned and executed through two more async frames.
    const plain = bytes > 0 ? qcow2PlainRead(s, offset, bytes) : null;
    if (plain !== null) await plain.file.preadv(plain.host, qiov.size === bytes ? qiov : qiov.slice(0, bytes));
    else await qcow2ReadRange(s, offset, bytes, qiov, 0, false);
  } finally {
    if (s.corruptWrite) await s.corruptWrite;
  }
}
