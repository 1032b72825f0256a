// blk-img rebase: change an image's backing file. Safe mode first copies into the image every
// range it does not allocate itself where the old and the new backing file differ, so that the
// guest-visible content is unchanged; -u only rewrites the header.
import { BlockDriverState, combineBackingPath, isBlockError, type BlockBackend } from '../../index.js';
import { closeQuietly, rootOf } from '../shared/open.js';
import { ToolExit, errnoMessage, errorExit, errorMessage } from '../shared/output.js';
import { findBackingImage } from './chain.js';
import { compareBuffers } from './compare.js';
import type { ImgEnv } from './env.js';
import { imgOpen } from './open.js';
import { CACHE, FORCE_SHARE, FORMAT, HELP, IMAGE_OPTS, OBJECT, PROGRESS, QUIET, SRC_CACHE, checkCacheMode, imgArgs, parseImgOptions, type ImgArgs, type ImgOption } from './options.js';
import { Progress } from './progress.js';

const IO_BUF_SIZE = 2 * 1024 * 1024;

/**
 * Bytes [offset, offset + n) of a backing file, cut at its end; past its end, or without one,
 * zeros that are not read (`zero`). Null when the read failed (reported as qemu-img does).
 */
async function readBacking(
  env: ImgEnv,
  backing: BlockDriverState | null,
  backingSize: number,
  which: 'old' | 'new',
  offset: number,
  n: number,
): Promise<{ buf: Uint8Array; zero: boolean } | null> {
  if (offset >= backingSize || !backing) return { buf: new Uint8Array(n), zero: true };
  const buf = new Uint8Array(Math.min(n, backingSize - offset));
  try {
    await backing.pread(offset, buf);
  } catch {
    env.o.error(`error while reading from ${which} backing file`);
    return null;
  }
  return { buf, zero: false };
}

interface RebaseArgs extends ImgArgs {
  outBasefmt: string | null;
  outBaseimg: string | null;
  unsafe: boolean;
}

const REBASE_OPTIONS: readonly ImgOption<RebaseArgs>[] = [
  HELP,
  FORMAT,
  { short: 'F', arg: 1, set: (s, arg) => void (s.outBasefmt = arg) },
  { short: 'b', arg: 1, set: (s, arg) => void (s.outBaseimg = arg) },
  { short: 'u', set: (s) => void (s.unsafe = true) },
  PROGRESS,
  CACHE,
  SRC_CACHE,
  QUIET,
  FORCE_SHARE,
  OBJECT,
  IMAGE_OPTS,
];

export async function imgRebase(env: ImgEnv, argv: string[]): Promise<number> {
  const args: RebaseArgs = { ...imgArgs(), outBasefmt: null, outBaseimg: null, unsafe: false };
  const rest = parseImgOptions(env, argv, REBASE_OPTIONS, args);
  const { fmt, outBasefmt, outBaseimg, cache, srcCache, unsafe, forceShare } = args;
  if (rest.length !== 1) errorExit(env.o, 'Expecting one image file name');
  if (!unsafe && outBaseimg === null) errorExit(env.o, 'Must specify backing file (-b) or use unsafe mode (-u)');
  const filename = rest[0];
  const base: string = outBaseimg ?? '';
  const basefmt: string | null = outBasefmt;
  const progress = new Progress(env.o, args.progress && !args.quiet, 2.0);
  progress.print(0, 100);

  let blk: BlockBackend | null = null;
  let newBacking: BlockDriverState | null = null;
  let ownsNewBacking = false;
  try {
    checkCacheMode(env, cache, 'cache');
    checkCacheMode(env, srcCache, 'source cache');
    // Unsafe mode ignores the old backing file (it may have been renamed or moved).
    blk = await imgOpen(env, filename, { imageOpts: args.imageOpts, format: fmt, noBacking: unsafe });
    const bs = rootOf(blk);
    if (basefmt !== null && !env.registry.find(basefmt)) {
      env.o.error(`Invalid format name: '${basefmt}'`);
      return 1;
    }
    let prefixChain: BlockDriverState | null = null;
    if (!unsafe) {
      const oldBacking = bs.backing;
      if (base !== '') {
        const realPath = combineBackingPath(filename, base);
        prefixChain = findBackingImage(bs, realPath);
        if (prefixChain) {
          newBacking = prefixChain;
        } else {
          try {
            newBacking = await BlockDriverState.open(realPath, {
              format: basefmt ?? undefined,
              readOnly: true,
              forceShare,
              registry: env.registry,
              objects: env.objects,
            });
            ownsNewBacking = true;
          } catch (e) {
            env.o.error(`Could not open new backing file '${base}': ${errorMessage(e)}`);
            return 1;
          }
        }
      }
      const size = await blk.getLength();
      const oldSize = oldBacking ? await oldBacking.getLength() : 0;
      const newSize = newBacking ? await newBacking.getLength() : 0;
      const localProgress = size !== 0 ? Math.fround(100 / Math.trunc(size / Math.min(size, IO_BUF_SIZE))) : 0;
      let n = 0;
      for (let offset = 0; offset < size; offset += n) {
        n = Math.min(IO_BUF_SIZE, size - offset);
        try {
          const a = await blk.isAllocated(offset, n);
          n = a.pnum;
          if (a.allocated) continue;
          if (prefixChain && bs.backing) {
            const b = await bs.backing.isAllocatedAbove(prefixChain, offset, n);
            n = b.pnum;
            if (!b.allocated) continue;
          }
        } catch (e) {
          env.o.error(`error while reading image metadata: ${errnoMessage(e)}`);
          return 1;
        }
        const old = await readBacking(env, oldBacking, oldSize, 'old', offset, n);
        if (!old) return 1;
        n = old.buf.length;
        const cur = await readBacking(env, newBacking, newSize, 'new', offset, n);
        if (!cur) return 1;
        n = cur.buf.length;
        const bufOld = old.buf;
        const bufNew = cur.buf;
        const oldIsZero = old.zero;
        // Where the old and new backing differ, the old content goes into the image.
        let written = 0;
        while (written < n) {
          const r = compareBuffers(bufOld.subarray(written, n), bufNew.subarray(written, n), n - written);
          if (r.differ) {
            try {
              if (oldIsZero) await blk.writeZeroes(offset + written, r.pnum);
              else await blk.pwrite(offset + written, bufOld.subarray(written, written + r.pnum));
            } catch (e) {
              env.o.error(`Error while writing to COW image: ${errnoMessage(e)}`);
              return 1;
            }
          }
          written += r.pnum;
        }
        progress.print(localProgress, 100);
      }
    }
    // A new backing file needs its format (bdrv_change_backing_file's "require"). What was
    // copied above keeps the guest view unchanged, so stopping here is harmless.
    let status = 0;
    if (base !== '' && basefmt === null) {
      env.o.error(`Could not change the backing file to '${base}': backing format must be specified`);
      status = 1;
    } else {
      try {
        if (base !== '') await bs.changeBackingFile(base, basefmt);
        else await bs.changeBackingFile(null, null);
      } catch (e) {
        if (isBlockError(e, 'ENOSPC')) env.o.error(`Could not change the backing file to '${base}': No space left in the file header`);
        else env.o.error(`Could not change the backing file to '${base}': ${errnoMessage(e)}`);
        status = 1;
      }
    }
    progress.print(100, 0);
    return status;
  } catch (e) {
    if (e instanceof ToolExit) throw e;
    env.o.error(errorMessage(e));
    return 1;
  } finally {
    if (ownsNewBacking) await closeQuietly(newBacking);
    await closeQuietly(blk);
    progress.end();
  }
}
