// blk-img commit: write what the image (and the layers down to the base) allocate into the
// base image. As in QEMU 7.2, a QED overlay is not emptied afterwards (QED has no make_empty).
import { BlockDriverState } from '../index.js';
import { errorExit, errorMessage, parseOptions, cvtnum } from './common.js';
import { checkCacheMode } from './img-check.js';
import { BDRV_BLOCK_ALLOCATED, BDRV_BLOCK_ZERO, blockStatusAboveFlags } from './img-map.js';
import { HelpRequest, LONG_HELP, LONG_IMAGE_OPTS, LONG_OBJECT, Progress, closeQuietly, errnoMessage, findBackingImage, imgOpen, imgSharedOption, type ImgEnv, type SharedImgOptions } from './img-util.js';

/** Copy chunk of the commit job. */
const COMMIT_BUF_SIZE = 2 * 1024 * 1024;

export async function imgCommit(env: ImgEnv, argv: string[]): Promise<number> {
  let fmt: string | undefined;
  let cache = 'unsafe';
  let base = null as string | null;
  let drop = false;
  let progressOn = false;
  let quiet = false;
  const shared: SharedImgOptions = { imageOpts: false };
  const rest = parseOptions(env.o, argv, ':f:ht:b:dpqr:', [LONG_HELP, LONG_OBJECT, LONG_IMAGE_OPTS], (opt, arg = '') => {
    switch (opt) {
      case 'h':
        throw new HelpRequest();
      case 'f':
        fmt = arg;
        break;
      case 't':
        cache = arg;
        break;
      case 'b':
        base = arg;
        // -b implies -d: the intermediate images are not emptied either.
        drop = true;
        break;
      case 'd':
        drop = true;
        break;
      case 'p':
        progressOn = true;
        break;
      case 'q':
        quiet = true;
        break;
      case 'r':
        // A rate limit only slows the job down.
        cvtnum(env.o, 'rate limit', arg);
        break;
      default:
        imgSharedOption(env, opt, arg, shared);
    }
  });
  if (quiet) progressOn = false;
  if (rest.length !== 1) errorExit(env.o, 'Expecting one image file name');
  const filename = rest[0];
  checkCacheMode(env, cache, 'cache');
  const bs = await imgOpen(env, filename, { imageOpts: shared.imageOpts, format: fmt });
  const progress = new Progress(env.o, progressOn, 1.0);
  progress.print(0, 100);
  let baseRw: BlockDriverState | null = null;
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
        baseRw = await BlockDriverState.open(baseBs.filename, { format: baseBs.driver.formatName, noBacking: true, registry: env.registry });
      } catch (e) {
        err = errorMessage(e);
      }
    }
    if (baseBs && baseRw && err === null) {
      try {
        const len = await bs.getLength();
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
              await bs.pread(off, buf);
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
    await closeQuietly(bs);
  }
  if (err !== null) {
    env.o.error(err);
    return 1;
  }
  if (!quiet) env.o.out('Image committed.\n');
  return 0;
}
