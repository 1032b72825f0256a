/**
 * Compressed clusters on the read path (qcow2_co_preadv_compressed). QEMU reads each cluster's
 * bytes on its own; here the whole clusters of one request whose bytes follow each other in
 * the file (as qemu-img convert -c lays them out) are read with one file read and inflated
 * all at once: a convert of a compressed image pays one read per request, not per cluster.
 */
import type { CompressedExtent } from './entries.js';
import { decodeCompressed } from './entries.js';
import { type BDRVQcow2State, qcow2File } from './state.js';

/** At most this many file bytes per batch (a request of 2 MiB of incompressible clusters). */
const BATCH_MAX_BYTES = 2 * 1024 * 1024;

/**
 * Decompress the cluster an entry describes: into `dst` when given (a whole cluster of the
 * caller's), else into a fresh buffer.
 */
export async function qcow2ReadCompressedCluster(s: BDRVQcow2State, entry: bigint, dst?: Uint8Array): Promise<Uint8Array> {
  const c = decodeCompressed(entry, s.compressed);
  const file = qcow2File(s);
  await file.debugEvent('read_compressed');
  const buf = new Uint8Array(c.length);
  await file.pread(c.offset, buf);
  return inflateInto(s, buf, dst);
}

async function inflateInto(s: BDRVQcow2State, src: Uint8Array, dst?: Uint8Array): Promise<Uint8Array> {
  const out = await s.codec.decompress(s.header.compressionType, src, s.clusterSize, dst);
  // A codec that knows no `dst` answers with a buffer of its own.
  if (dst !== undefined && out !== dst) dst.set(out);
  return out;
}

/** Whole compressed clusters of one request, each bound for a cluster-sized buffer of it. */
export interface CompressedBatch {
  /** File bytes [start, end) hold every cluster's compressed bytes. */
  start: number;
  end: number;
  extents: CompressedExtent[];
  dsts: Uint8Array[];
}

/**
 * Add a cluster to `batch` when its bytes continue the batch's in the file (they may share
 * its last sector); false when it does not fit, and the batch is to be read first.
 */
export function compressedBatchAdd(s: BDRVQcow2State, batch: CompressedBatch, entry: bigint, dst: Uint8Array): boolean {
  const c = decodeCompressed(entry, s.compressed);
  if (batch.extents.length === 0) {
    batch.start = c.offset;
    batch.end = c.offset + c.length;
  } else {
    const last = batch.extents[batch.extents.length - 1];
    const end = Math.max(batch.end, c.offset + c.length);
    if (c.offset < last.offset || c.offset > batch.end || end - batch.start > BATCH_MAX_BYTES) return false;
    batch.end = end;
  }
  batch.extents.push(c);
  batch.dsts.push(dst);
  return true;
}

/** The batch's buffers as one, when they follow each other in memory (a convert's chunk). */
function joinedBuffers(s: BDRVQcow2State, dsts: Uint8Array[]): Uint8Array | null {
  const first = dsts[0];
  for (let i = 1; i < dsts.length; i++) {
    if (dsts[i].buffer !== first.buffer || dsts[i].byteOffset !== first.byteOffset + i * s.clusterSize) return null;
  }
  return new Uint8Array(first.buffer, first.byteOffset, dsts.length * s.clusterSize);
}

/**
 * Jobs a batch of clusters in one buffer is split into: the engine runs a job on one pool
 * thread, and two keep both of a 2-CPU host's busy.
 */
const BATCH_JOBS = 2;

/** Inflate the batch's clusters from `buf` with a few codec calls; false if the codec cannot. */
async function inflateJoined(s: BDRVQcow2State, batch: CompressedBatch, buf: Uint8Array): Promise<boolean> {
  const n = batch.extents.length;
  const dst = n > 1 && s.codec.decompressMany !== undefined ? joinedBuffers(s, batch.dsts) : null;
  if (dst === null) return false;
  const jobs: Promise<void>[] = [];
  const per = Math.ceil(n / BATCH_JOBS);
  for (let first = 0; first < n; first += per) {
    const last = Math.min(n, first + per);
    const bounds = new Uint32Array(2 * (last - first));
    for (let i = first; i < last; i++) {
      bounds[2 * (i - first)] = batch.extents[i].offset - batch.start;
      bounds[2 * (i - first) + 1] = batch.extents[i].length;
    }
    const job = s.codec.decompressMany?.(s.header.compressionType, buf, bounds, dst.subarray(first * s.clusterSize, last * s.clusterSize));
    // The codec cannot (no engine, zstd): before the first job, or never.
    if (job === undefined || job === null) return false;
    jobs.push(job);
  }
  await settleAll(jobs);
  return true;
}

/** Wait for every promise (each fills the caller's buffer), then throw the first failure. */
async function settleAll(jobs: Promise<unknown>[]): Promise<void> {
  const done = await Promise.allSettled(jobs);
  for (const r of done) if (r.status === 'rejected') throw r.reason;
}

/** Read a batch's bytes at once and inflate each cluster into its buffer. */
export async function qcow2ReadCompressedBatch(s: BDRVQcow2State, batch: CompressedBatch): Promise<void> {
  const file = qcow2File(s);
  if (file.debugWatched) for (let i = 0; i < batch.extents.length; i++) await file.debugEvent('read_compressed');
  const buf = new Uint8Array(batch.end - batch.start);
  await file.pread(batch.start, buf);
  if (await inflateJoined(s, batch, buf)) return;
  await settleAll(batch.extents.map((c, i) => inflateInto(s, buf.subarray(c.offset - batch.start, c.offset - batch.start + c.length), batch.dsts[i])));
}
