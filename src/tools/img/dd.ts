// blk-img dd: copy bs-sized blocks from an image into a newly created one (dd(1) operands),
// including qemu-img 7.2's quirks: count limits the copy to count*bs bytes measured from the
// start of the input (not from skip), and a skip past the end only warns (exit status 0).
import type { BlockBackend } from '../../index.js';
import { closeQuietly } from '../shared/open.js';
import { ToolExit, errnoMessage, errorMessage } from '../shared/output.js';
import { cvtnum, cvtnumFull } from '../shared/size.js';
import { createErrorMessage, createImageFile, findCreateDriver, reportWithPrefix } from './create.js';
import type { ImgEnv } from './env.js';
import { imgOpen } from './open.js';
import { FORCE_SHARE, FORMAT, HELP, IMAGE_OPTS, OBJECT, parseImgOptions, type ImgOption } from './options.js';

const INT_MAX = 2147483647n;

interface DdArgs {
  fmt: string | undefined;
  outFmt: string;
  forceShare: boolean;
  imageOpts: boolean;
}

const DD_OPTIONS: readonly ImgOption<DdArgs>[] = [
  HELP,
  FORMAT,
  { short: 'O', arg: 1, set: (s, arg) => void (s.outFmt = arg) },
  FORCE_SHARE,
  OBJECT,
  IMAGE_OPTS,
];

export async function imgDd(env: ImgEnv, argv: string[]): Promise<number> {
  const args: DdArgs = { fmt: undefined, outFmt: 'raw', forceShare: false, imageOpts: false };
  const rest = parseImgOptions(env, argv, DD_OPTIONS, args);
  const { fmt, outFmt, forceShare } = args;
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
  const blk1 = await imgOpen(env, inFile, { imageOpts: args.imageOpts, format: fmt, readOnly: true, forceShare });
  let blk2: BlockBackend | null = null;
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
    const out = await imgOpen(env, outFile, { format: outFmt });
    blk2 = out;
    let inOffset: number;
    if (skipTooFar) {
      // Like dd(1): an empty output, and (as qemu-img 7.2 does) a message but exit status 0.
      env.o.error(`${inFile}: cannot skip to specified offset`);
      inOffset = 0;
      const outLen = await out.getLength();
      if (outLen < size) return 0;
    } else {
      inOffset = (skip ?? 0) * bsz;
    }
    const buf = new Uint8Array(bsz);
    // A failed request ends the copy: "error while reading from input image file: ...".
    const step = async (what: string, request: () => Promise<void>): Promise<boolean> => {
      try {
        await request();
        return true;
      } catch (e) {
        env.o.error(`error while ${what} image file: ${errnoMessage(e)}`);
        return false;
      }
    };
    for (let outPos = 0; inOffset < size; ) {
      const bytes = inOffset + bsz > size ? size - inOffset : bsz;
      const chunk = buf.subarray(0, bytes);
      if (!(await step('reading from input', () => blk1.pread(inOffset, chunk)))) return 1;
      inOffset += bytes;
      if (!(await step('writing to output', () => out.pwrite(outPos, chunk)))) return 1;
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
