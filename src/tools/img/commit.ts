// blk-img commit: write what the image (and the layers down to the base) allocate into the
// base image. As in QEMU 7.2, a QED overlay is not emptied afterwards (QED has no make_empty).
import { BlockBackend, type BlockDriverState } from '../../index.js';
import { closeQuietly, rootOf } from '../shared/open.js';
import { errnoMessage, errorMessage } from '../shared/output.js';
import { cvtnum } from '../shared/size.js';
import { BDRV_BLOCK_ALLOCATED, BDRV_BLOCK_ZERO, blockStatusAboveFlags } from './block-status.js';
import { findBackingImage } from './chain.js';
import type { ImgEnv } from './env.js';
import { imgOpen } from './open.js';
import { CACHE, FORMAT, HELP, IMAGE_OPTS, OBJECT, PROGRESS, QUIET, checkCacheMode, imgArgs, oneFilename, parseImgOptions, type ImgArgs, type ImgOption } from './options.js';
import { Progress } from './progress.js';

/** Copy chunk of the commit job. */
const COMMIT_BUF_SIZE = 2 * 1024 * 1024;

interface CommitArgs extends ImgArgs {
  base: string | null;
  drop: boolean;
}

const COMMIT_OPTIONS: readonly ImgOption<CommitArgs>[] = [
  HELP,
  FORMAT,
  CACHE,
  {
    short: 'b',
    arg: 1,
    set: (s, arg) => {
      s.base = arg;
      // -b implies -d: the intermediate images are not emptied either.
      s.drop = true;
    },
  },
  { short: 'd', set: (s) => void (s.drop = true) },
  PROGRESS,
  QUIET,
  // A rate limit only slows the job down.
  { short: 'r', arg: 1, set: (_s, arg, env) => void cvtnum(env.o, 'rate limit', arg) },
  OBJECT,
  IMAGE_OPTS,
];

export async function imgCommit(env: ImgEnv, argv: string[]): Promise<number> {
  const args: CommitArgs = { ...imgArgs('unsafe'), base: null, drop: false };
  const filename = oneFilename(env, parseImgOptions(env, argv, COMMIT_OPTIONS, args));
  const { base, drop, quiet } = args;
  checkCacheMode(env, args.cache, 'cache');
  const blk = await imgOpen(env, filename, { imageOpts: args.imageOpts, format: args.fmt });
  const bs = rootOf(blk);
  const progress = new Progress(env.o, args.progress && !quiet, 1.0);
  progress.print(0, 100);
  let baseRw: BlockBackend | null = null;
  let err: string | null = null;
  try {
    let baseBs: BlockDriverState | null = null;
    if (base !== null) {
      baseBs = findBackingImage(bs, base);
      if (!baseBs) err = `Did not find '${base}' in the backing chain of '${filename}'`;
    } else {
      baseBs = bs.backing;
      if (!baseBs) err = 'Image does not have a backing file';
    }
    if (baseBs && err === null) {
      // The chain is open read-only; the base gets a read-write node of its own. Only the
      // layers above the base are read, so the two nodes never see each other's caches.
      try {
        baseRw = await BlockBackend.open(baseBs.filename, { format: baseBs.driver.formatName, noBacking: true, registry: env.registry, objects: env.objects });
      } catch (e) {
        err = errorMessage(e);
      }
    }
    if (baseBs && baseRw && err === null) {
      try {
        const len = await blk.getLength();
        if ((await baseRw.getLength()) < len) await baseRw.truncate(len);
        const total = Math.max(len, 1);
        for (let off = 0; off < len; ) {
          // Allocated above the base, counting the zeros a shorter intermediate layer reads as
          // past its end (QEMU's is_allocated_above does; they are committed as zeros).
          const st = await blockStatusAboveFlags(bs, baseBs, off, Math.min(len - off, COMMIT_BUF_SIZE));
          const n = st.pnum;
          if (st.flags & BDRV_BLOCK_ALLOCATED) {
            const m = n;
            if (st.flags & BDRV_BLOCK_ZERO) {
              await baseRw.writeZeroes(off, m);
            } else {
              const buf = new Uint8Array(m);
              await blk.pread(off, buf);
              await baseRw.pwrite(off, buf);
            }
            progress.print(Math.fround((m / total) * 100), 100);
            off += m;
            continue;
          }
          progress.print(Math.fround((n / total) * 100), 100);
          off += n;
        }
        await baseRw.flush();
        if (!drop && bs.driver.makeEmpty) await bs.makeEmpty();
      } catch (e) {
        err = errnoMessage(e);
      }
    }
  } finally {
    progress.end();
    await closeQuietly(baseRw);
    await closeQuietly(blk);
  }
  if (err !== null) {
    env.o.error(err);
    return 1;
  }
  if (!quiet) env.o.out('Image committed.\n');
  return 0;
}
