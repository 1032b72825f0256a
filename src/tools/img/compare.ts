// blk-img compare: compare guest-visible contents (and with -s the allocation status) of two
// images, with qemu-img compare's exit codes: 0 identical, 1 different, 2 open error,
// 3 block-status error, 4 read error.
import type { BlockBackend } from '../../index.js';
import { closeQuietly, rootOf } from '../shared/open.js';
import { ToolExit, errnoMessage, errorExit } from '../shared/output.js';
import { BDRV_BLOCK_ALLOCATED, BDRV_BLOCK_ZERO, blockStatusAboveFlags } from './block-status.js';
import type { ImgEnv } from './env.js';
import { imgOpen } from './open.js';
import { FORCE_SHARE, FORMAT, HELP, IMAGE_OPTS, OBJECT_EXIT2, PROGRESS, QUIET, SRC_CACHE, checkCacheMode, imgArgs, parseImgOptions, type ImgArgs, type ImgOption } from './options.js';
import { Progress } from './progress.js';

/** Compare/check buffer size (IO_BUF_SIZE). */
const IO_BUF_SIZE = 2 * 1024 * 1024;
const SECTOR = 512;

function sectorDiffers(a: Uint8Array, b: Uint8Array, off: number, len: number): boolean {
  for (let i = off; i < off + len; i++) if (a[i] !== b[i]) return true;
  return false;
}

/** compare_buffers: whether the first sector differs, and how many bytes share that answer. */
export function compareBuffers(a: Uint8Array, b: Uint8Array, bytes: number): { differ: boolean; pnum: number } {
  let i = Math.min(bytes, SECTOR);
  const res = sectorDiffers(a, b, 0, i);
  while (i < bytes) {
    const len = Math.min(bytes - i, SECTOR);
    if (sectorDiffers(a, b, i, len) !== res) break;
    i += len;
  }
  return { differ: res, pnum: i };
}

/** find_nonzero, sector granular. */
function findNonzero(buf: Uint8Array, n: number): number {
  for (let i = 0; i < n; i += SECTOR) {
    const end = Math.min(i + SECTOR, n);
    for (let j = i; j < end; j++) if (buf[j] !== 0) return i;
  }
  return -1;
}

interface CompareArgs extends ImgArgs {
  fmt2: string | undefined;
  strict: boolean;
}

const COMPARE_OPTIONS: readonly ImgOption<CompareArgs>[] = [
  HELP,
  FORMAT,
  { short: 'F', arg: 1, set: (s, arg) => void (s.fmt2 = arg) },
  SRC_CACHE,
  PROGRESS,
  QUIET,
  { short: 's', set: (s) => void (s.strict = true) },
  FORCE_SHARE,
  OBJECT_EXIT2,
  IMAGE_OPTS,
];

export async function imgCompare(env: ImgEnv, argv: string[]): Promise<number> {
  const args: CompareArgs = { ...imgArgs(), fmt2: undefined, strict: false };
  const rest = parseImgOptions(env, argv, COMPARE_OPTIONS, args);
  const { fmt: fmt1, fmt2, quiet, strict, forceShare } = args;
  if (rest.length !== 2) errorExit(env.o, 'Expecting two image file names');
  const [filename1, filename2] = rest;
  const progress = new Progress(env.o, args.progress && !quiet, 2.0);
  const qprint = (s: string): void => {
    if (!quiet) env.o.out(s);
  };
  let bs1: BlockBackend | null = null;
  let bs2: BlockBackend | null = null;
  try {
    try {
      checkCacheMode(env, args.srcCache, 'source cache');
    } catch (e) {
      if (e instanceof ToolExit) return 2;
      throw e;
    }
    bs1 = await imgOpen(env, filename1, { imageOpts: args.imageOpts, format: fmt1, readOnly: true, forceShare }, 2);
    bs2 = await imgOpen(env, filename2, { imageOpts: args.imageOpts, format: fmt2, readOnly: true, forceShare }, 2);
    const total1 = await bs1.getLength();
    const total2 = await bs2.getLength();
    const totalSize = Math.min(total1, total2);
    const progressBase = Math.max(total1, total2);
    progress.print(0, 100);
    // The meter's share of one chunk, in single precision as QEMU's float arithmetic has it.
    const advance = (chunk: number): void => progress.print(Math.fround(Math.fround(Math.fround(chunk) / Math.fround(progressBase)) * 100), 100);
    if (strict && total1 !== total2) {
      qprint('Strict mode: Image size mismatch!\n');
      return 1;
    }

    const read = async (bs: BlockBackend, name: string, offset: number, len: number): Promise<Uint8Array> => {
      const buf = new Uint8Array(len);
      try {
        await bs.pread(offset, buf);
      } catch (e) {
        env.o.error(`Error while reading offset ${offset} of ${name}: ${errnoMessage(e)}`);
        throw new ToolExit(4);
      }
      return buf;
    };
    const checkEmpty = async (bs: BlockBackend, name: string, offset: number, len: number): Promise<number> => {
      const buf = await read(bs, name, offset, len);
      const idx = findNonzero(buf, len);
      if (idx >= 0) {
        qprint(`Content mismatch at offset ${offset + idx}!\n`);
        return 1;
      }
      return 0;
    };
    const status = async (bs: BlockBackend, name: string, offset: number, bytes: number): Promise<{ flags: number; pnum: number }> => {
      try {
        return await blockStatusAboveFlags(rootOf(bs), null, offset, bytes);
      } catch {
        env.o.error(`Sector allocation test failed for ${name}`);
        throw new ToolExit(3);
      }
    };

    let offset = 0;
    while (offset < totalSize) {
      const s1 = await status(bs1, filename1, offset, total1 - offset);
      const s2 = await status(bs2, filename2, offset, total2 - offset);
      const allocated1 = (s1.flags & BDRV_BLOCK_ALLOCATED) !== 0;
      const allocated2 = (s2.flags & BDRV_BLOCK_ALLOCATED) !== 0;
      let chunk = Math.min(s1.pnum, s2.pnum);
      if (strict && s1.flags !== s2.flags) {
        qprint(`Strict mode: Offset ${offset} block status mismatch!\n`);
        return 1;
      }
      if (s1.flags & BDRV_BLOCK_ZERO && s2.flags & BDRV_BLOCK_ZERO) {
        // both read as zeros
      } else if (allocated1 === allocated2) {
        if (allocated1) {
          chunk = Math.min(chunk, IO_BUF_SIZE);
          const b1 = await read(bs1, filename1, offset, chunk);
          const b2 = await read(bs2, filename2, offset, chunk);
          const r = compareBuffers(b1, b2, chunk);
          if (r.differ || r.pnum !== chunk) {
            qprint(`Content mismatch at offset ${offset + (r.differ ? 0 : r.pnum)}!\n`);
            return 1;
          }
        }
      } else {
        chunk = Math.min(chunk, IO_BUF_SIZE);
        const rc = allocated1 ? await checkEmpty(bs1, filename1, offset, chunk) : await checkEmpty(bs2, filename2, offset, chunk);
        if (rc) return rc;
      }
      offset += chunk;
      advance(chunk);
    }

    if (total1 !== total2) {
      qprint('Warning: Image size mismatch!\n');
      const [over, overName] = total1 > total2 ? [bs1, filename1] : [bs2, filename2];
      while (offset < progressBase) {
        const st = await status(over, overName, offset, progressBase - offset);
        let chunk = st.pnum;
        if (st.flags & BDRV_BLOCK_ALLOCATED && !(st.flags & BDRV_BLOCK_ZERO)) {
          chunk = Math.min(chunk, IO_BUF_SIZE);
          const rc = await checkEmpty(over, overName, offset, chunk);
          if (rc) return rc;
        }
        offset += chunk;
        advance(chunk);
      }
    }
    qprint('Images are identical.\n');
    return 0;
  } finally {
    await closeQuietly(bs2);
    await closeQuietly(bs1);
    progress.end();
  }
}
