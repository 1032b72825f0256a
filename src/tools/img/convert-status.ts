// convert's block status walk (convert_iteration_sectors): which runs of the sources are data,
// zeros or left to the target's backing file, asked once per run by the counting pass and
// replayed by the copy pass; answered without a wait where the source can.
import { StatusExtents, type BlockDriverState } from '../../index.js';
import { rootOf } from '../shared/open.js';
import { ToolExit, errnoMessage } from '../shared/output.js';
import { BDRV_BLOCK_ALLOCATED, BDRV_BLOCK_DATA, BDRV_BLOCK_ZERO, blockStatusAboveFlags, blockStatusAboveFlagsNow } from './block-status.js';
import type { ConvertState } from './convert-copy.js';
import { SECTOR } from './convert-zero-scan.js';
import type { ImgEnv } from './env.js';

/** BDRV_REQUEST_MAX_SECTORS. */
const REQUEST_MAX_SECTORS = Math.floor(0x7fffffff / SECTOR);

export type Status = 'data' | 'zero' | 'backing';

/** A run of sectors of one status, as the copy loop takes them. */
export interface Run {
  n: number;
  status: Status;
}

/** One block status answer of iterationSectors: asked at `at`, valid up to `next`. */
export interface StatusRun {
  at: number;
  status: Status;
  next: number;
}

/**
 * A batch of one source's extents (its blockStatusExtents hook: the runs of its cached tables),
 * taken by the counting pass one run after another: a run's status through the generic layers
 * cost more than the table entries behind it, and qemu-img walks the whole source before it
 * reads.
 */
export interface StatusBatch {
  ext: StatusExtents;
  /** The source, and where its extent `i` starts. */
  src: number;
  pos: number;
  i: number;
  /** Where the batch was asked to end: an extent ending there may go on past it. */
  end: number;
  /** Batches asked in a row that answered nothing: after two, runs are asked one by one. */
  misses: number;
}

/** Extents asked of a source at once. */
const EXTENTS_BATCH = 1024;

/** A source and the sector where it starts in the concatenation. */
export interface Part {
  readonly cur: number;
  readonly curOffset: number;
}

/** The part of a lone source (the common case): no object per status run or read. */
const ONLY_PART: Part = { cur: 0, curOffset: 0 };

export function selectPart(s: ConvertState, sectorNum: number): Part {
  if (s.src.length === 1) return ONLY_PART;
  let off = 0;
  for (let i = 0; i < s.src.length; i++) {
    if (sectorNum < off + s.srcSectors[i]) return { cur: i, curOffset: off };
    off += s.srcSectors[i];
  }
  return { cur: s.src.length - 1, curOffset: off - s.srcSectors[s.src.length - 1] };
}

/**
 * The block status at sectorNum (at most n sectors, of source `cur` at curOffset): sets the
 * status and where it ends, and records it while the counting pass runs. Answered without a
 * wait where the source can (a host file's lseek, a cached table): a promise only otherwise.
 */
function askStatus(env: ImgEnv, s: ConvertState, sectorNum: number, n: number, cur: number, curOffset: number, postBackingZero: boolean): Promise<void> | undefined {
  const offset = (sectorNum - curOffset) * SECTOR;
  const srcBs = rootOf(s.src[cur]);
  const base = s.targetHasBacking ? srcBs.backing : null;
  const srcLen = s.srcBytes[cur];
  // The sector-rounded tail of a source whose length is not a sector multiple.
  if (offset >= srcLen) return void takeStatus(s, sectorNum, n * SECTOR, BDRV_BLOCK_ZERO, cur, curOffset, postBackingZero);
  const bytes = Math.min(n * SECTOR, srcLen - offset);
  if (takeBatched(s, srcBs, base, cur, offset, bytes)) return void takeStatus(s, sectorNum, s.batchPnum, s.batchFlags, cur, curOffset, postBackingZero);
  let now;
  try {
    now = blockStatusAboveFlagsNow(srcBs, base, offset, bytes);
  } catch (e) {
    statusFailed(env, offset, e);
  }
  if (now !== null) return void takeStatus(s, sectorNum, now.pnum, now.flags, cur, curOffset, postBackingZero);
  return blockStatusAboveFlags(srcBs, base, offset, bytes).then(
    (r) => takeStatus(s, sectorNum, r.pnum, r.flags, cur, curOffset, postBackingZero),
    (e: unknown) => statusFailed(env, offset, e),
  );
}

function statusFailed(env: ImgEnv, offset: number, e: unknown): never {
  env.o.error(`error while reading block status at offset ${offset}: ${errnoMessage(e)}`);
  throw new ToolExit(1);
}

/**
 * The status at `offset` (at most `bytes`) from the source's batch of extents, as
 * blockStatusAboveFlagsNow would answer it, into s.batchPnum and s.batchFlags: false when the
 * batch does not decide it (no batch, an extent cut short by the batch's end, unallocated over
 * a backing file below `base`), and the run is asked alone.
 */
function takeBatched(s: ConvertState, srcBs: BlockDriverState, base: BlockDriverState | null, cur: number, offset: number, bytes: number): boolean {
  const b = (s.statusBatch ??= { ext: new StatusExtents(EXTENTS_BATCH), src: -1, pos: 0, i: 0, end: 0, misses: 0 });
  const ext = b.ext;
  if (b.src === cur) {
    while (b.i < ext.count && b.pos < offset) b.pos += ext.pnum[b.i++];
  } else {
    b.misses = 0;
  }
  if (b.src !== cur || b.i >= ext.count || b.pos !== offset) {
    if (b.misses >= 2) return false;
    b.src = cur;
    b.pos = offset;
    b.i = 0;
    b.end = offset + bytes;
    if (srcBs.blockStatusExtents(offset, bytes, ext) === 0) {
      b.misses++;
      return false;
    }
    b.misses = 0;
  }
  const pnum = ext.pnum[b.i];
  const flags = ext.flags[b.i];
  // Cut by the batch's end, short of this query's: the run may go on.
  if (offset + pnum >= b.end && b.end < offset + bytes) return false;
  // Left to a backing file that is to be asked too (blockStatusAboveFlags walks down).
  if ((flags & BDRV_BLOCK_ALLOCATED) === 0 && srcBs.backing !== null && srcBs.backing !== base) return false;
  b.pos += pnum;
  b.i++;
  s.batchPnum = Math.min(pnum, bytes);
  s.batchFlags = flags;
  return true;
}

/** askStatus's answer: `count` bytes at sectorNum with status `flags`. */
function takeStatus(s: ConvertState, sectorNum: number, count: number, flags: number, cur: number, curOffset: number, postBackingZero: boolean): void {
  let n = Math.ceil(count / SECTOR);
  // Keep the next status query aligned to the source's clusters.
  const tail = (sectorNum - curOffset + n) % s.srcAlignment[cur];
  if (n > tail) n -= tail;
  if (flags & BDRV_BLOCK_ZERO) s.status = postBackingZero ? 'backing' : 'zero';
  else if (flags & BDRV_BLOCK_DATA) s.status = 'data';
  else s.status = s.targetHasBacking ? 'backing' : 'data';
  s.sectorNextStatus = sectorNum + n;
  if (s.statusReplay < 0) s.statusRuns.push({ at: sectorNum, status: s.status, next: s.sectorNextStatus });
}

/**
 * convert_iteration_sectors: how many sectors from sectorNum share one status; a promise only
 * when the status had to be waited for.
 */
export function iterationSectors(env: ImgEnv, s: ConvertState, sectorNum: number): number | Promise<number> {
  const { cur, curOffset } = selectPart(s, sectorNum);
  let n = Math.min(s.totalSectors - sectorNum, REQUEST_MAX_SECTORS);
  let postBackingZero = false;
  if (s.targetBackingSectors >= 0) {
    if (sectorNum >= s.targetBackingSectors) postBackingZero = true;
    else if (sectorNum + n > s.targetBackingSectors) n = s.targetBackingSectors - sectorNum;
  }
  if (s.sectorNextStatus <= sectorNum) {
    // The copy pass asks where the counting pass did, in the same order: the answer is known.
    // (A run recorded up to `next` is no longer than the n asked for here.)
    const known = s.statusReplay >= 0 ? s.statusRuns[s.statusReplay] : undefined;
    if (known?.at === sectorNum) {
      s.statusReplay++;
      s.status = known.status;
      s.sectorNextStatus = known.next;
    } else {
      const asked = askStatus(env, s, sectorNum, n, cur, curOffset, postBackingZero);
      if (asked !== undefined) return asked.then(() => runSectors(s, sectorNum, n));
    }
  }
  return runSectors(s, sectorNum, n);
}

/** The end of iterationSectors, once the status at sectorNum is known (at most n sectors). */
function runSectors(s: ConvertState, sectorNum: number, n: number): number {
  n = Math.min(n, s.sectorNextStatus - sectorNum);
  if (s.status === 'data') n = Math.min(n, s.bufSectors);
  if (s.compressed) {
    // Compressed clusters are written whole: a short run of any status is copied as data
    // with the rest of its cluster.
    if (n < s.clusterSectors) {
      n = Math.min(s.clusterSectors, s.totalSectors - sectorNum);
      s.status = 'data';
    } else {
      n -= n % s.clusterSectors;
    }
  }
  return n;
}
