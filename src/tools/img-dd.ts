// blk-img dd: copy bs-sized blocks from an image into a newly created one (dd(1) operands),
// including qemu-img 7.2's quirks: count limits the copy to count*bs bytes measured from the
// start of the input (not from skip), and a skip past the end only warns (exit status 0).
import type { BlockDriverState } from '../index.js';
import { ToolExit, cvtnum, cvtnumFull, errorMessage, parseOptions } from './common.js';
import { createErrorMessage, createImageFile, findCreateDriver, reportWithPrefix } from './img-create.js';
import { HelpRequest, LONG_FORCE_SHARE, LONG_HELP, LONG_IMAGE_OPTS, LONG_OBJECT, closeQuietly, errnoMessage, imgOpen, imgSharedOption, type ImgEnv, type SharedImgOptions } from './img-util.js';

const INT_MAX = 2147483647n;

export async function imgDd(env: ImgEnv, argv: string[]): Promise<number> {
  let fmt: string | undefined;
  let outFmt = 'raw';
  let forceShare = false;
  const shared: SharedImgOptions = { imageOpts: false };
  const rest = parseOptions(
    env.o,
    argv,
    ':hf:O:U',
    [LONG_HELP, LONG_OBJECT, LONG_IMAGE_OPTS, LONG_FORCE_SHARE],
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
        case 'U':
          forceShare = true;
          break;
        default:
          imgSharedOption(env, opt, arg, shared);
      }
    },
  );
  let bsz = 512;
  let count: number | null = null;
  let skip: number | null = null;
  let inFile: string | null = null;
  let outFile: string | null = null;
  for (const a of rest) {
    const eq = a.indexOf('=');
    const name = eq < 0 ? a : a.slice(0, eq);
    const val = eq < 0 ? '' : a.slice(eq + 1);
    if (eq < 0 || !['bs', 'count', 'if', 'of', 'skip'].includes(name)) {
      env.o.error(`unrecognized operand ${eq < 0 ? a : name}`);
      return 1;
    }
    switch (name) {
      case 'bs':
        bsz = cvtnumFull(env.o, 'bs', val, 1n, INT_MAX);
        break;
      case 'count':
        count = cvtnum(env.o, 'count', val);
        break;
      case 'skip':
        skip = cvtnum(env.o, 'skip', val);
        break;
      case 'if':
        inFile = val;
        break;
      default:
        outFile = val;
    }
  }
  if (inFile === null || outFile === null) {
    env.o.error('Must specify both input and output files');
    return 1;
  }
  const blk1 = await imgOpen(env, inFile, { imageOpts: shared.imageOpts, format: fmt, readOnly: true, forceShare });
  let blk2: BlockDriverState | null = null;
  try {
    const drv = findCreateDriver(env, outFmt, 'Unknown file format');
    if (typeof drv === 'string') {
      env.o.error(drv);
      return 1;
    }
    let size = await blk1.getLength();
    if (count !== null && count * bsz < size) size = count * bsz;
    const skipTooFar = skip !== null && skip * bsz > size;
    const outSize = skip !== null && !skipTooFar ? size - bsz * skip : skip !== null ? 0 : size;
    try {
      await createImageFile(env, outFile, outFmt, { size: outSize });
    } catch (e) {
      reportWithPrefix(env, `${outFile}: error while creating output image: `, new Error(createErrorMessage(e)));
      return 1;
    }
    blk2 = await imgOpen(env, outFile, { format: outFmt });
    let inOffset: number;
    if (skipTooFar) {
      // Like dd(1): an empty output, and (as qemu-img 7.2 does) a message but exit status 0.
      env.o.error(`${inFile}: cannot skip to specified offset`);
      inOffset = 0;
      const outLen = await blk2.getLength();
      if (outLen < size) return 0;
    } else {
      inOffset = (skip ?? 0) * bsz;
    }
    const buf = new Uint8Array(bsz);
    for (let outPos = 0; inOffset < size; ) {
      const bytes = inOffset + bsz > size ? size - inOffset : bsz;
      const chunk = buf.subarray(0, bytes);
      try {
        await blk1.pread(inOffset, chunk);
      } catch (e) {
        env.o.error(`error while reading from input image file: ${errnoMessage(e)}`);
        return 1;
      }
      inOffset += bytes;
      try {
        await blk2.pwrite(outPos, chunk);
      } catch (e) {
        env.o.error(`error while writing to output image file: ${errnoMessage(e)}`);
        return 1;
      }
      outPos += bytes;
    }
    return 0;
  } catch (e) {
    if (e instanceof ToolExit) throw e;
    env.o.error(errorMessage(e));
    return 1;
  } finally {
    await closeQuietly(blk2);
    await closeQuietly(blk1);
  }
}
