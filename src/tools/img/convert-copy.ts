// The copy engine of blk-img convert (convert_do_copy): block status decides data / zero /
// backing runs, data runs are scanned for zero sectors (-S) so that zero regions stay
// unallocated in the target, requests run in parallel (-m, an AioTaskPool) and are written in
// order unless -W.
import { AioTaskPool, bufferIsZero, qemuMemalign, type BlockBackend, type WriteFlags } from '../../index.js';
import { rootOf } from '../shared/open.js';
import { ToolExit, errnoMessage } from '../shared/output.js';
import { iterationSectors, selectPart, type Run, type Status, type StatusBatch, type StatusRun } from './convert-status.js';
import { allDataAtStride, isAllocatedSectorsMin, SECTOR } from './convert-zero-scan.js';
import type { ImgEnv } from './env.js';
import type { Progress } from './progress.js';

export { SECTOR };
/** Default copy buffer: 2 MiB (4096 sectors). */
export const BUF_SECTORS = 4096;
export function pow2floor(n: number): number {
  if (n <= 0) return 0;
  return 2 ** Math.floor(Math.log2(n));
}

export interface ConvertState {
  src: BlockBackend[];
  srcSectors: number[];
  /** Each source's length in bytes, taken once at open (the sources are read-only). */
  srcBytes: number[];
  srcAlignment: number[];
  srcNames: string[];
  totalSectors: number;
  target: BlockBackend;
  targetHasBacking: boolean;
  targetBackingSectors: number;
  hasZeroInit: boolean;
  minSparse: number;
  alignment: number;
  bufSectors: number;
  /** -c: data goes down as compressed clusters, one cluster per chunk. */
  compressed: boolean;
  clusterSectors: number;
  status: Status;
  sectorNextStatus: number;
  /**
   * The status runs the counting pass asked for, in order, replayed by the copy pass (the
   * sources do not change in between): each run's block status is asked once, not twice.
   */
  statusRuns: StatusRun[];
  /** The next run to replay; -1 while the counting pass records them. */
  statusReplay: number;
  /** The counting pass's batch of source extents (null until asked), and its last answer. */
  statusBatch: StatusBatch | null;
  batchPnum: number;
  batchFlags: number;
}

/** convert_co_read: the sectors may span several sources (concatenation). */
async function convertRead(s: ConvertState, sectorNum: number, nbSectors: number, buf: Uint8Array): Promise<void> {
  let pos = 0;
  while (nbSectors > 0) {
    const { cur, curOffset } = selectPart(s, sectorNum);
    const n = Math.min(nbSectors, s.srcSectors[cur] - (sectorNum - curOffset));
    const bs = s.src[cur];
    const off = (sectorNum - curOffset) * SECTOR;
    const len = s.srcBytes[cur];
    const want = n * SECTOR;
    const avail = Math.max(0, Math.min(want, len - off));
    if (avail > 0) await bs.pread(off, buf.subarray(pos, pos + avail));
    buf.fill(0, pos + avail, pos + want);
    sectorNum += n;
    nbSectors -= n;
    pos += want;
  }
}

/**
 * The read of a chunk of joined runs failed: the runs are read again one by one, as qemu-img
 * reads its chunks, for the error it reports (the first run that fails, at its own offset);
 * the chunk's own failure when each run reads alone.
 */
async function firstFailingRun(s: ConvertState, start: number, parts: readonly number[], buf: Uint8Array, error: unknown): Promise<{ at: number; error: unknown }> {
  let at = start;
  for (const n of parts) {
    try {
      await convertRead(s, at, n, buf.subarray((at - start) * SECTOR, (at - start + n) * SECTOR));
    } catch (e) {
      return { at, error: e };
    }
    at += n;
  }
  return { at: start, error };
}

/**
 * convert_co_write: the chunk's writes one after the other, each awaited before the next is
 * issued, as qemu-img does. Issued together, a zero write and a data write (or one write
 * mapped piece by piece, one L2 table at a time) would race for the target's clusters and
 * tables, and the layout would depend on which got there first. `parts` are the lengths of
 * the status runs the chunk joins (see convertDoCopy): each is scanned and written as
 * qemu-img writes each of its chunks; `joinData` joins consecutive data writes for a target
 * that lays nothing out (raw), where one write leaves the same bytes as several. A compressed
 * chunk (one cluster) is one write: compressed when `compressed` says so (its caller told).
 * The chunk's last write, when it writes data, carries `last` (its allocation signal).
 */
async function convertWrite(
  s: ConvertState,
  sectorNum: number,
  parts: readonly number[],
  buf: Uint8Array,
  status: Status,
  compressed: boolean,
  joinData: boolean,
  last?: WriteFlags,
): Promise<void> {
  const chunkSector = sectorNum;
  // Data not written yet: sectors [dataFirst, dataFirst + dataLen) of buf.
  let dataFirst = 0;
  let dataLen = 0;
  const writePendingData = async (flags?: WriteFlags): Promise<void> => {
    if (dataLen === 0) return;
    const len = dataLen;
    dataLen = 0;
    await s.target.pwrite((chunkSector + dataFirst) * SECTOR, buf.subarray(dataFirst * SECTOR, (dataFirst + len) * SECTOR), flags);
  };
  let first = 0;
  // Up to the end of the current part: the zero scan and the writes keep its bounds.
  for (let part = 0, partEnd = 0; part < parts.length || first < partEnd; ) {
    if (first === partEnd) partEnd += parts[part++];
    let n = partEnd - first;
    if (status !== 'backing') {
      let writeData = status === 'data' && s.minSparse === 0;
      if (status === 'data' && s.compressed) {
        if (compressed) await s.target.pwriteCompressed(sectorNum * SECTOR, buf.subarray(first * SECTOR, (first + n) * SECTOR));
        else if (!s.hasZeroInit) await s.target.writeZeroes(sectorNum * SECTOR, n * SECTOR, { mayUnmap: true });
      } else {
        if (status === 'data' && s.minSparse !== 0) {
          const r =
            n >= s.minSparse && allDataAtStride(buf, first, n, s.minSparse)
              ? { ret: true, pnum: n }
              : isAllocatedSectorsMin(buf, first, n, s.minSparse, sectorNum, s.alignment);
          n = r.pnum;
          writeData = r.ret;
        }
        if (writeData) {
          // Unjoined, each data write is issued when the next write (or the end) comes, so
          // that the chunk's last write is known to be its last.
          if (!joinData) await writePendingData();
          if (dataLen === 0) dataFirst = first;
          dataLen += n;
        } else {
          await writePendingData();
          if (!s.hasZeroInit) await s.target.writeZeroes(sectorNum * SECTOR, n * SECTOR, { mayUnmap: true });
        }
      }
    }
    sectorNum += n;
    first += n;
  }
  await writePendingData(last);
}

export async function convertDoCopy(env: ImgEnv, s: ConvertState, numCoroutines: number, wrInOrder: boolean, progress: Progress): Promise<void> {
  // First pass: count what will be copied, for the progress meter.
  let allocatedSectors = 0;
  for (let sn = 0; sn < s.totalSectors; ) {
    const asked = iterationSectors(env, s, sn);
    const n = typeof asked === 'number' ? asked : await asked;
    if (s.status === 'data' || (!s.minSparse && s.status === 'zero')) allocatedSectors += n;
    sn += n;
  }
  s.sectorNextStatus = 0;
  s.statusReplay = 0;

  // Writes split or joined leave the same bytes in a raw image; a format that allocates lays
  // its clusters out by the writes it gets, which must be qemu-img's.
  const joinData = rootOf(s.target).driver.formatName === 'raw';
  // For the same reason, chunks written to a raw target need not wait for one another: they
  // cover disjoint bytes, and whichever completes first the image holds the same bytes.
  const ordered = wrInOrder && !joinData;
  let allocatedDone = 0;
  let failed: unknown = null;
  // In-order writes (qemu-img's default, without -W): qemu-img starts a chunk's writes only
  // once the previous chunk's writes have all completed (wr_offs in convert_co_do_copy), so a
  // target that allocates hands out its clusters and tables in image order. What orders the
  // layout is only the allocation: a chunk starts writing once the previous chunk's writes
  // have all allocated what they will (the driver's onAllocated, else their completion),
  // while that chunk's data may still be on its way. Waiting only until the previous writes
  // were issued is not enough: a write mapped in several pieces (one per L2 table) or a zero
  // write that allocates a table lets the next chunk's write take clusters in between. The
  // reads run ahead in parallel. `lastAllocated` resolves once the previous chunk and all
  // before it have allocated.
  let lastAllocated: Promise<void> = Promise.resolve();
  // One exception, with the same layout: a compressed write after a compressed write waits
  // only until that one was issued. The driver packs compressed clusters in the order their
  // writes came (qcow2's compressed turn: each takes s.lock only after the one before it),
  // so the next cluster compresses while this one is written, where qemu-img compresses one
  // at a time. Anything else after a compressed write waits for it to complete.
  let lastTurn: Promise<void> = Promise.resolve();
  // At most numCoroutines chunks in flight; the next chunk's status is asked before it waits
  // for a slot, as convert_co_do_copy asks before it yields.
  const pool = new AioTaskPool(numCoroutines);
  // Chunk buffers are reused (at most one per queue slot is in use): no fresh, zero-filled
  // buffer per chunk. A read fills every byte it is given (zeros past the source's end).
  // They are page-aligned (qemu_blockalign): the kernel copies into and out of them faster.
  const freeBufs: Uint8Array[] = [];
  const EMPTY = new Uint8Array(0);
  // The run at `at`; a promise only when its status had to be waited for.
  const runOf = (n: number): Run => ({ n: !s.minSparse && s.status === 'zero' ? Math.min(n, s.bufSectors) : n, status: s.status });
  const nextRun = (at: number): Run | Promise<Run> => {
    const n = iterationSectors(env, s, at);
    return typeof n === 'number' ? runOf(n) : n.then(runOf);
  };
  const counted = (n: number, status: Status): void => {
    if (status === 'data' || (!s.minSparse && status === 'zero')) {
      allocatedDone += n;
      progress.print((100 * allocatedDone) / allocatedSectors, 0);
    }
  };
  // The run asked for past the end of a chunk of joined data runs, not part of it.
  let ahead: Run | null = null;
  let sectorNum = 0;
  while (sectorNum < s.totalSectors && failed === null) {
    let run = ahead ?? nextRun(sectorNum);
    if (run instanceof Promise) run = await run;
    ahead = null;
    let n = run.n;
    let status = run.status;
    counted(n, status);
    // Consecutive data runs, up to a buffer's worth, are read as one request (a compressed
    // image answers block status one cluster at a time): fewer, larger reads, and the source
    // driver may work on their clusters at once. They are written as qemu-img writes them.
    const parts = [n];
    if (status === 'data' && !s.compressed) {
      while (n < s.bufSectors && sectorNum + n < s.totalSectors) {
        let next = nextRun(sectorNum + n);
        if (next instanceof Promise) next = await next;
        if (next.status !== 'data' || n + next.n > s.bufSectors) {
          ahead = next;
          break;
        }
        counted(next.n, next.status);
        n += next.n;
        parts.push(next.n);
      }
    }
    const start = sectorNum;
    sectorNum += n;
    // A run that writes nothing (backing, or zeros on a target that reads as zeros) needs no
    // task: it allocates nothing, so the chunks before and after keep their order without it.
    if (status === 'backing' || (status === 'zero' && s.hasZeroInit && s.minSparse !== 0)) continue;
    const prevAllocated = lastAllocated;
    let markAllocated!: () => void;
    lastAllocated = new Promise<void>((resolve) => {
      markAllocated = resolve;
    });
    const myAllocated = markAllocated;
    const prevTurn = lastTurn;
    let markTurn!: () => void;
    lastTurn = new Promise<void>((resolve) => {
      markTurn = resolve;
    });
    const myTurn = markTurn;
    await pool.start(async () => {
      // Only data chunks (read, or zeros written as data) need a buffer; they are at most
      // bufSectors long. Zero runs written with writeZeroes and backing runs never touch it.
      const needBuf = status === 'data' || (!s.minSparse && status === 'zero');
      const pooled = needBuf ? (freeBufs.pop() ?? qemuMemalign(s.bufSectors * SECTOR)) : null;
      try {
        const buf = pooled === null ? EMPTY : pooled.subarray(0, n * SECTOR);
        if (status === 'data') {
          try {
            await convertRead(s, start, n, buf);
          } catch (e) {
            const f = parts.length > 1 ? await firstFailingRun(s, start, parts, buf, e) : { at: start, error: e };
            if (failed === null) {
              env.o.error(`error while reading at byte ${f.at * SECTOR}: ${errnoMessage(f.error)}`);
              failed = f.error;
            }
          }
        } else if (!s.minSparse && status === 'zero') {
          // A reused buffer holds the previous chunk's bytes.
          buf.fill(0);
          status = 'data';
        }
        // Only a wholly zero cluster may be skipped (-S 0: not even that).
        const compressed = s.compressed && status === 'data' && (s.minSparse === 0 || !bufferIsZero(buf, 0, buf.length));
        if (ordered) await (compressed ? prevTurn : prevAllocated);
        if (failed === null) {
          try {
            // The chunk's last write started only after all its others completed, and after
            // the chunks before had allocated (awaited just above): its signal is the chunk's.
            const written = convertWrite(s, start, parts, buf, status, compressed, joinData, ordered ? { onAllocated: myAllocated } : undefined);
            // The compressed write is issued (the call reached the driver's queue in order).
            if (compressed) myTurn();
            await written;
          } catch (e) {
            if (failed === null) {
              env.o.error(`error while writing at byte ${start * SECTOR}: ${errnoMessage(e)}`);
              failed = e;
            }
          }
        }
      } finally {
        if (pooled !== null) freeBufs.push(pooled);
        // Also when this chunk wrote nothing (a read error, an earlier failure): qemu-img
        // moves wr_offs on whatever happened. A compressed write may have overtaken the
        // completion of the one before it: done counts once both are.
        if (ordered) await prevAllocated;
        myTurn();
        myAllocated();
      }
    });
  }
  // A chunk reports its own failures (`failed`); the pool's would be a bug, thrown as it is.
  await pool.waitAll();
  if (failed !== null) throw new ToolExit(1);
  if (s.compressed) {
    // End of stream: the driver aligns the file (qcow2 pads it to a whole sector).
    try {
      await s.target.pwriteCompressed(0, EMPTY);
    } catch (e) {
      env.o.error(errnoMessage(e));
      throw new ToolExit(1);
    }
  }
}
