// blk-img convert: copy one or more images (concatenated) into a new or existing target,
// following qemu-img convert's iteration: block status decides data / zero / backing runs,
// data runs are scanned for zero sectors (-S) so that zero regions stay unallocated in the
// target, requests run in parallel (-m, through p-queue) and are written in order unless -W.
import PQueue from 'p-queue';
import type { BlockDriverState } from '../index.js';
import { ToolExit, cvtnum, parseOptions } from './common.js';
import { checkCacheMode } from './img-check.js';
import {
  accumulateOptions,
  createErrorMessage,
  createImageFile,
  findCreateDriver,
  printBlockOptionHelp,
  protocolOf,
  reportWithPrefix,
} from './img-create.js';
import { BDRV_BLOCK_DATA, BDRV_BLOCK_ZERO, blockStatusAboveFlags } from './img-map.js';
import {
  HelpRequest,
  LONG_FORCE_SHARE,
  LONG_HELP,
  LONG_IMAGE_OPTS,
  LONG_OBJECT,
  LONG_TARGET_IMAGE_OPTS,
  Progress,
  closeQuietly,
  createOptionSpecs,
  errnoMessage,
  hasHelpOption,
  imgOpen,
  imgSharedOption,
  parseCreateOptions,
  type ImgEnv,
  type SharedImgOptions,
} from './img-util.js';

const SECTOR = 512;
/** Default copy buffer: 2 MiB (4096 sectors). */
const BUF_SECTORS = 4096;
const MAX_BUF_SECTORS = 32768;
const MAX_COROUTINES = 16;
/** BDRV_REQUEST_MAX_SECTORS. */
const REQUEST_MAX_SECTORS = Math.floor(0x7fffffff / SECTOR);

type Status = 'data' | 'zero' | 'backing';

function isZeroSector(buf: Uint8Array, sector: number, words: Uint32Array): boolean {
  const start = sector * SECTOR;
  const end = Math.min(start + SECTOR, buf.length);
  const abs = buf.byteOffset + start;
  if (end - start === SECTOR && abs % 8 === 0) {
    // A whole, 8-byte aligned sector (pooled buffers always are): 8 bytes per step, through
    // a 32-bit view of the underlying buffer (looked up once per scan by the caller).
    for (let i = abs / 4, e = i + SECTOR / 4; i < e; i += 2) if ((words[i] | words[i + 1]) !== 0) return false;
    return true;
  }
  for (let i = start; i < end; i++) if (buf[i] !== 0) return false;
  return true;
}

const wordViews = new WeakMap<ArrayBufferLike, Uint32Array>();

function wordView(ab: ArrayBufferLike): Uint32Array {
  let v = wordViews.get(ab);
  if (v === undefined) {
    v = new Uint32Array(ab, 0, Math.floor(ab.byteLength / 4));
    wordViews.set(ab, v);
  }
  return v;
}

/**
 * is_allocated_sectors: length of the first run of same-kind (zero / non-zero) sectors, with the
 * end of the run aligned to `alignment` sectors (a short zero tail is treated as data).
 */
function isAllocatedSectors(buf: Uint8Array, first: number, n: number, sectorNum: number, alignment: number): { ret: boolean; pnum: number } {
  if (n <= 0) return { ret: false, pnum: 0 };
  // One view lookup per scan, not per sector: the scan runs once per 512 bytes converted.
  const words = wordView(buf.buffer);
  let isZero = isZeroSector(buf, first, words);
  let i = 1;
  for (; i < n; i++) if (isZero !== isZeroSector(buf, first + i, words)) break;
  if (i === n) return { ret: !isZero, pnum: i };
  const tail = (sectorNum + i) & (alignment - 1);
  if (tail) {
    if (isZero && i <= tail) isZero = false;
    if (!isZero) i = Math.min(i + alignment - tail, n);
    else i -= tail;
  }
  return { ret: !isZero, pnum: i };
}

/**
 * is_allocated_sectors_min: like isAllocatedSectors, but a zero run shorter than `min` sectors
 * between data is copied as data (fewer, larger writes).
 */
function isAllocatedSectorsMin(buf: Uint8Array, first: number, n: number, min: number, sectorNum: number, alignment: number): { ret: boolean; pnum: number } {
  if (n < min) min = n;
  let r = isAllocatedSectors(buf, first, n, sectorNum, alignment);
  if (!r.ret) return r;
  let numUsed = r.pnum;
  let pos = first + r.pnum;
  let sn = sectorNum + r.pnum;
  let numChecked = numUsed;
  let left = n;
  while (left > 0) {
    left -= r.pnum;
    r = isAllocatedSectors(buf, pos, left, sn, alignment);
    pos += r.pnum;
    sn += r.pnum;
    numChecked += r.pnum;
    if (r.ret) numUsed = numChecked;
    else if (r.pnum >= min) break;
  }
  return { ret: true, pnum: numUsed };
}

function pow2floor(n: number): number {
  if (n <= 0) return 0;
  return 2 ** Math.floor(Math.log2(n));
}

interface ConvertState {
  src: BlockDriverState[];
  srcSectors: number[];
  srcAlignment: number[];
  srcNames: string[];
  totalSectors: number;
  target: BlockDriverState;
  targetHasBacking: boolean;
  targetBackingSectors: number;
  hasZeroInit: boolean;
  minSparse: number;
  alignment: number;
  bufSectors: number;
  status: Status;
  sectorNextStatus: number;
}

function selectPart(s: ConvertState, sectorNum: number): { cur: number; curOffset: number } {
  let off = 0;
  for (let i = 0; i < s.src.length; i++) {
    if (sectorNum < off + s.srcSectors[i]) return { cur: i, curOffset: off };
    off += s.srcSectors[i];
  }
  return { cur: s.src.length - 1, curOffset: off - s.srcSectors[s.src.length - 1] };
}

/** convert_iteration_sectors: how many sectors from sectorNum share one status. */
async function iterationSectors(env: ImgEnv, s: ConvertState, sectorNum: number): Promise<number> {
  const { cur, curOffset } = selectPart(s, sectorNum);
  let n = Math.min(s.totalSectors - sectorNum, REQUEST_MAX_SECTORS);
  let postBackingZero = false;
  if (s.targetBackingSectors >= 0) {
    if (sectorNum >= s.targetBackingSectors) postBackingZero = true;
    else if (sectorNum + n > s.targetBackingSectors) n = s.targetBackingSectors - sectorNum;
  }
  if (s.sectorNextStatus <= sectorNum) {
    const offset = (sectorNum - curOffset) * SECTOR;
    const srcBs = s.src[cur];
    const base = s.targetHasBacking ? srcBs.backing : null;
    const srcLen = await srcBs.getLength();
    let flags: number;
    let count: number;
    if (offset >= srcLen) {
      // The sector-rounded tail of a source whose length is not a sector multiple.
      flags = BDRV_BLOCK_ZERO;
      count = n * SECTOR;
    } else {
      try {
        const r = await blockStatusAboveFlags(srcBs, base, offset, Math.min(n * SECTOR, srcLen - offset));
        flags = r.flags;
        count = r.pnum;
      } catch (e) {
        env.o.error(`error while reading block status at offset ${offset}: ${errnoMessage(e)}`);
        throw new ToolExit(1);
      }
    }
    n = Math.ceil(count / SECTOR);
    // Keep the next status query aligned to the source's clusters.
    const tail = (sectorNum - curOffset + n) % s.srcAlignment[cur];
    if (n > tail) n -= tail;
    if (flags & BDRV_BLOCK_ZERO) s.status = postBackingZero ? 'backing' : 'zero';
    else if (flags & BDRV_BLOCK_DATA) s.status = 'data';
    else s.status = s.targetHasBacking ? 'backing' : 'data';
    s.sectorNextStatus = sectorNum + n;
  }
  n = Math.min(n, s.sectorNextStatus - sectorNum);
  if (s.status === 'data') n = Math.min(n, s.bufSectors);
  return n;
}

/** convert_co_read: the sectors may span several sources (concatenation). */
async function convertRead(s: ConvertState, sectorNum: number, nbSectors: number, buf: Uint8Array): Promise<void> {
  let pos = 0;
  while (nbSectors > 0) {
    const { cur, curOffset } = selectPart(s, sectorNum);
    const n = Math.min(nbSectors, s.srcSectors[cur] - (sectorNum - curOffset));
    const bs = s.src[cur];
    const off = (sectorNum - curOffset) * SECTOR;
    const len = await bs.getLength();
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
 * convert_co_write. Every write of the chunk is issued before any is awaited, and `issued`
 * runs once all of them are: the next chunk may then issue its own (see convertDoCopy).
 */
async function convertWrite(
  s: ConvertState,
  sectorNum: number,
  nbSectors: number,
  buf: Uint8Array,
  status: Status,
  issued: () => void,
): Promise<void> {
  const writes: Promise<void>[] = [];
  let first = 0;
  try {
    while (nbSectors > 0) {
      let n = nbSectors;
      if (status !== 'backing') {
        let writeData = status === 'data' && s.minSparse === 0;
        if (status === 'data' && s.minSparse !== 0) {
          const r = isAllocatedSectorsMin(buf, first, n, s.minSparse, sectorNum, s.alignment);
          n = r.pnum;
          writeData = r.ret;
        }
        if (writeData) {
          writes.push(s.target.pwrite(sectorNum * SECTOR, buf.subarray(first * SECTOR, (first + n) * SECTOR)));
        } else if (!s.hasZeroInit) {
          writes.push(s.target.writeZeroes(sectorNum * SECTOR, n * SECTOR, { mayUnmap: true }));
        }
      }
      sectorNum += n;
      nbSectors -= n;
      first += n;
    }
  } finally {
    issued();
  }
  // Every write is waited for, failed or not (the buffer goes back to the pool after this),
  // then the first failure is reported.
  for (const r of await Promise.allSettled(writes)) if (r.status === 'rejected') throw r.reason;
}

async function convertDoCopy(env: ImgEnv, s: ConvertState, numCoroutines: number, wrInOrder: boolean, progress: Progress): Promise<void> {
  // First pass: count what will be copied, for the progress meter.
  let allocatedSectors = 0;
  for (let sn = 0; sn < s.totalSectors; ) {
    const n = await iterationSectors(env, s, sn);
    if (s.status === 'data' || (!s.minSparse && s.status === 'zero')) allocatedSectors += n;
    sn += n;
  }
  s.sectorNextStatus = 0;

  let allocatedDone = 0;
  let failed: unknown = null;
  // In-order writes (qemu-img's default, without -W): each chunk issues its writes only after
  // the previous chunk has issued its own, so the target sees them in image order and a
  // format that allocates (QED) lays the clusters out in that order, as qemu-img does. Unlike
  // qemu-img, a chunk does not wait for the previous write to complete: the target's own
  // ordering (QED's allocation lock, taken in issue order) keeps the layout, and the next
  // chunk's data goes down while the previous one's L2 update is still being written.
  let lastIssued: Promise<void> = Promise.resolve();
  const queue = new PQueue({ concurrency: numCoroutines });
  // Chunk buffers are reused (at most one per queue slot is in use): no fresh, zero-filled
  // buffer per chunk. A read fills every byte it is given (zeros past the source's end).
  const freeBufs: Uint8Array[] = [];
  const EMPTY = new Uint8Array(0);
  let sectorNum = 0;
  while (sectorNum < s.totalSectors && failed === null) {
    let n = await iterationSectors(env, s, sectorNum);
    let status = s.status;
    if (!s.minSparse && status === 'zero') n = Math.min(n, s.bufSectors);
    const start = sectorNum;
    sectorNum += n;
    if (status === 'data' || (!s.minSparse && status === 'zero')) {
      allocatedDone += n;
      progress.print((100 * allocatedDone) / allocatedSectors, 0);
    }
    const prevIssued = lastIssued;
    let markIssued!: () => void;
    lastIssued = new Promise<void>((resolve) => {
      markIssued = resolve;
    });
    const myIssued = markIssued;
    void queue.add(async () => {
      // Only data chunks (read, or zeros written as data) need a buffer; they are at most
      // bufSectors long. Zero runs written with writeZeroes and backing runs never touch it.
      const needBuf = status === 'data' || (!s.minSparse && status === 'zero');
      const pooled = needBuf ? (freeBufs.pop() ?? new Uint8Array(s.bufSectors * SECTOR)) : null;
      try {
        const buf = pooled === null ? EMPTY : pooled.subarray(0, n * SECTOR);
        if (status === 'data') {
          try {
            await convertRead(s, start, n, buf);
          } catch (e) {
            if (failed === null) {
              env.o.error(`error while reading at byte ${start * SECTOR}: ${errnoMessage(e)}`);
              failed = e;
            }
          }
        } else if (!s.minSparse && status === 'zero') {
          // A reused buffer holds the previous chunk's bytes.
          buf.fill(0);
          status = 'data';
        }
        if (wrInOrder) await prevIssued;
        if (failed === null) {
          try {
            await convertWrite(s, start, n, buf, status, myIssued);
          } catch (e) {
            if (failed === null) {
              env.o.error(`error while writing at byte ${start * SECTOR}: ${errnoMessage(e)}`);
              failed = e;
            }
          }
        }
      } finally {
        if (pooled !== null) freeBufs.push(pooled);
        // Also when this chunk wrote nothing (a read error, an earlier failure).
        myIssued();
      }
    });
    // Back-pressure: no more requests in flight than coroutines.
    await queue.onSizeLessThan(1);
  }
  await queue.onIdle();
  if (failed !== null) throw new ToolExit(1);
}

export async function imgConvert(env: ImgEnv, argv: string[]): Promise<number> {
  let fmt: string | undefined;
  let outFmt: string | null = null;
  let outBaseimg: string | null = null;
  let backingFmt: string | null = null;
  let options: string | null = null;
  let cache = 'unsafe';
  let srcCache = 'writeback';
  let quiet = false;
  let progressOn = false;
  let skipCreate = false;
  let minSparse = 8;
  let numCoroutines = 8;
  let wrInOrder = true;
  let forceShare = false;
  let targetIsZero = false;
  let copyRange = false;
  let compressed = false;
  let explicitMinSparse = false;
  let snapshot = false;
  let bitmaps = false;
  const shared: SharedImgOptions = { imageOpts: false };
  let tgtImageOpts = false;
  const rest = parseOptions(
    env.o,
    argv,
    ':hf:O:B:CcF:o:l:S:pt:T:qnm:WUr:',
    [
      LONG_HELP,
      LONG_OBJECT,
      LONG_IMAGE_OPTS,
      LONG_TARGET_IMAGE_OPTS,
      { name: 'salvage', hasArg: 0, val: 'salvage' },
      { name: 'target-is-zero', hasArg: 0, val: 'target-is-zero' },
      { name: 'bitmaps', hasArg: 0, val: 'bitmaps' },
      { name: 'skip-broken-bitmaps', hasArg: 0, val: 'skip-broken-bitmaps' },
      LONG_FORCE_SHARE,
    ],
    (opt, arg = '') => {
      switch (opt) {
        case 'h':
          throw new HelpRequest();
        case 'f':
          fmt = arg;
          break;
        case 'O':
          outFmt = arg;
          break;
        case 'B':
          outBaseimg = arg;
          break;
        case 'F':
          backingFmt = arg;
          break;
        case 'C':
          // Copy offloading is the host's business; the copy loop is the same.
          copyRange = true;
          break;
        case 'c':
          compressed = true;
          break;
        case 'o':
          options = accumulateOptions(env, options, arg);
          break;
        case 'l':
          snapshot = true;
          break;
        case 'S': {
          const sval = cvtnum(env.o, 'buffer size for sparse output', arg);
          if (sval % SECTOR !== 0 || sval / SECTOR > MAX_BUF_SECTORS) {
            env.o.error(
              `Invalid buffer size for sparse output specified. Valid sizes are multiples of ${SECTOR} up to ${MAX_BUF_SECTORS * SECTOR}. Select 0 to disable sparse detection (fully allocates output).`,
            );
            throw new ToolExit(1);
          }
          minSparse = sval / SECTOR;
          explicitMinSparse = true;
          break;
        }
        case 'p':
          progressOn = true;
          break;
        case 't':
          cache = arg;
          break;
        case 'T':
          srcCache = arg;
          break;
        case 'q':
          quiet = true;
          break;
        case 'n':
          skipCreate = true;
          break;
        case 'm': {
          const m = /^\s*[+-]?\d+/.exec(arg);
          numCoroutines = m === null ? 0 : parseInt(m[0], 10);
          if (numCoroutines < 1 || numCoroutines > MAX_COROUTINES) {
            env.o.error(`Invalid number of coroutines. Allowed number of coroutines is between 1 and ${MAX_COROUTINES}`);
            throw new ToolExit(1);
          }
          break;
        }
        case 'W':
          wrInOrder = false;
          break;
        case 'U':
          forceShare = true;
          break;
        case 'r':
          // Rate limiting only slows the copy down; the result is the same.
          cvtnum(env.o, 'rate limit', arg);
          break;
        case 'target-is-zero':
          targetIsZero = true;
          break;
        case 'bitmaps':
          bitmaps = true;
          break;
        case 'target-image-opts':
          tgtImageOpts = true;
          break;
        default:
          // --salvage, --skip-broken-bitmaps: accepted by name, refused as not honoured.
          imgSharedOption(env, opt, arg, shared);
      }
    },
  );
  const targetFmt: string = outFmt ?? 'raw';
  if (compressed && copyRange) {
    env.o.error('Cannot enable copy offloading when -c is used');
    return 1;
  }
  if (explicitMinSparse && copyRange) {
    env.o.error('Cannot enable copy offloading when -S is used');
    return 1;
  }
  if (tgtImageOpts && !skipCreate) {
    env.o.error('--target-image-opts requires use of -n flag');
    return 1;
  }
  if (targetIsZero && !skipCreate) {
    env.o.error('--target-is-zero requires use of -n flag');
    return 1;
  }
  const srcNum = rest.length - 1;
  const outFilename = srcNum >= 1 ? rest[rest.length - 1] : null;
  if (options !== null && hasHelpOption(options)) return printBlockOptionHelp(env, outFilename, targetFmt);
  if (srcNum < 1) {
    env.o.error('Must specify image file name');
    return 1;
  }
  checkCacheMode(env, srcCache, 'source cache');

  if (quiet) progressOn = false;
  const progress = new Progress(env.o, progressOn, 1.0);
  progress.print(0, 100);
  const src: BlockDriverState[] = [];
  let target: BlockDriverState | null = null;
  let ret = 1;
  try {
    const s: ConvertState = {
      src,
      srcSectors: [],
      srcAlignment: [],
      srcNames: rest.slice(0, srcNum),
      totalSectors: 0,
      target: null as unknown as BlockDriverState,
      targetHasBacking: false,
      targetBackingSectors: -1,
      hasZeroInit: targetIsZero,
      minSparse,
      alignment: 1,
      bufSectors: BUF_SECTORS,
      status: 'data',
      sectorNextStatus: 0,
    };
    for (const name of s.srcNames) {
      const bs = await imgOpen(env, name, { imageOpts: shared.imageOpts, format: fmt, readOnly: true, forceShare });
      src.push(bs);
      const sectors = Math.ceil((await bs.getLength()) / SECTOR);
      s.srcSectors.push(sectors);
      let align = Math.ceil(bs.requestAlignment / SECTOR);
      try {
        align = Math.max(align, (await bs.getInfo()).clusterSize / SECTOR);
      } catch {
        // no cluster size: request alignment only
      }
      s.srcAlignment.push(Math.max(1, align));
      s.totalSectors += sectors;
    }
    if (snapshot) {
      // No format here has internal snapshots.
      env.o.error(`Failed to load snapshot: Block format '${src[0].driver.formatName}' used by device '' does not support temporarily loading internal snapshots`);
      return 1;
    }
    if (bitmaps) {
      // Persistent dirty bitmaps are a qcow2 feature; neither qed nor raw has them.
      env.o.error('Source lacks bitmap support');
      return 1;
    }
    const outFile = outFilename as string;

    let drvOpts = new Map<string, string | number | boolean>();
    if (!skipCreate) {
      const drv = findCreateDriver(env, targetFmt);
      if (typeof drv === 'string') {
        env.o.error(drv);
        return 1;
      }
      try {
        // The target's protocol options (preallocation...) are taken too, as by create.
        drvOpts = parseCreateOptions(drv, options ?? '', protocolOf(env, outFilename as string));
      } catch (e) {
        reportWithPrefix(env, '', e);
        return 1;
      }
      drvOpts.set('size', s.totalSectors * SECTOR);
      const names = new Set((drv.createOptions ?? []).map((o) => o.name));
      // add_old_style_options
      if (outBaseimg !== null) {
        if (!names.has('backing_file')) {
          env.o.error(`Backing file not supported for file format '${targetFmt}'`);
          return 1;
        }
        drvOpts.set('backing_file', outBaseimg);
      }
      if (backingFmt !== null) {
        if (!names.has('backing_fmt')) {
          env.o.error(`Backing file format not supported for file format '${targetFmt}'`);
          return 1;
        }
        drvOpts.set('backing_fmt', backingFmt);
      }
    }
    const baseParam = drvOpts.get('backing_file');
    if (typeof baseParam === 'string') outBaseimg = baseParam;
    s.targetHasBacking = outBaseimg !== null;
    if (targetIsZero && s.targetHasBacking) {
      env.o.error('Cannot use --target-is-zero when the destination image has a backing file');
      return 1;
    }
    if (srcNum > 1 && outBaseimg !== null) {
      env.o.error('Having a backing file for the target makes no sense when concatenating multiple input images');
      return 1;
    }
    if (typeof baseParam === 'string' && !drvOpts.has('backing_fmt')) {
      env.o.error('Use of backing file requires explicit backing format');
      return 1;
    }
    if (compressed) {
      // Neither qed nor raw can write compressed clusters.
      env.o.error('Compression not supported for this file format');
      return 1;
    }
    if (!skipCreate) {
      const drv = env.registry.require(targetFmt);
      const specs = createOptionSpecs(drv, protocolOf(env, outFile));
      const createOpts: Record<string, string | number | boolean> = {};
      for (const [name, v] of drvOpts) createOpts[specs.find((o) => o.name === name)?.key ?? name] = v;
      try {
        await createImageFile(env, outFile, targetFmt, createOpts);
      } catch (e) {
        reportWithPrefix(env, `${outFile}: error while converting ${targetFmt}: `, new Error(createErrorMessage(e)));
        return 1;
      }
    }
    checkCacheMode(env, cache, 'cache');
    // -t unsafe (convert's default, as in qemu-img): no host flush, not even at close.
    // With --target-image-opts the format is the options' own (-O and it exclude each other).
    const tgtFormat = tgtImageOpts ? (outFmt ?? undefined) : targetFmt;
    target = await imgOpen(env, outFile, { imageOpts: tgtImageOpts, format: tgtFormat, noFlush: cache === 'unsafe' });
    s.target = target;
    s.alignment = Math.max(pow2floor(s.minSparse), Math.ceil(target.requestAlignment / SECTOR));
    if (skipCreate) {
      const outSectors = Math.ceil((await target.getLength()) / SECTOR);
      if (outSectors < s.totalSectors) {
        env.o.error('output file is smaller than input file');
        return 1;
      }
    }
    if (s.targetHasBacking && !skipCreate && target.backing) {
      s.targetBackingSectors = Math.ceil((await target.backing.getLength()) / SECTOR);
    }
    // bdrv_has_zero_init: a new image without a backing file reads as zeros.
    if (!s.hasZeroInit && !skipCreate && s.minSparse && !s.targetHasBacking) s.hasZeroInit = true;
    await convertDoCopy(env, s, numCoroutines, wrInOrder, progress);
    ret = 0;
    return 0;
  } finally {
    await closeQuietly(target);
    for (const bs of src) await closeQuietly(bs);
    if (ret === 0) progress.print(100, 0);
    progress.end();
  }
}
