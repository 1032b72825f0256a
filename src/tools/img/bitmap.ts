// blk-img bitmap: add, remove, clear, enable, disable and merge persistent dirty bitmaps
// (qemu-img's img_bitmap), each action as the QMP command qemu-img runs for it, in the order
// given. The image is opened read-write without its backing chain; the bitmaps reach the image
// when it is closed, also after a failed action (as qemu-img's blk_unref).
import {
  type BlockDriverState,
  bdrvCanStoreNewDirtyBitmap,
  bdrvCreateDirtyBitmap,
  bdrvDefaultBitmapGranularity,
  bdrvDirtyBitmapCheck,
  bdrvLookupDirtyBitmap,
  bdrvRemoveDirtyBitmap,
  BlockError,
  BdrvDirtyBitmap,
  type BlockBackend,
} from '../../index.js';
import { closeQuietly, rootOf } from '../shared/open.js';
import { errorMessage } from '../shared/output.js';
import { cvtnum } from '../shared/size.js';
import type { ImgEnv } from './env.js';
import { imgOpen } from './open.js';
import { FORMAT, HELP, IMAGE_OPTS, OBJECT, parseImgOptions, type ImgOption } from './options.js';

type Action = { act: 'add' | 'remove' | 'clear' | 'enable' | 'disable' } | { act: 'merge'; src: string };

interface BitmapArgs {
  fmt: string | undefined;
  imageOpts: boolean;
  actions: Action[];
  granularity: number;
  srcFilename: string | undefined;
  srcFmt: string | undefined;
}

const action =
  (act: 'add' | 'remove' | 'clear' | 'enable' | 'disable'): ImgOption<BitmapArgs>['set'] =>
  (s) =>
    void s.actions.push({ act });

const BITMAP_OPTIONS: readonly ImgOption<BitmapArgs>[] = [
  HELP,
  OBJECT,
  IMAGE_OPTS,
  FORMAT,
  { long: 'add', set: action('add') },
  { long: 'remove', set: action('remove') },
  { long: 'clear', set: action('clear') },
  { long: 'enable', set: action('enable') },
  { long: 'disable', set: action('disable') },
  { long: 'merge', arg: 1, set: (s, src) => void s.actions.push({ act: 'merge', src }) },
  { short: 'g', long: 'granularity', arg: 1, set: (s, arg, env) => void (s.granularity = cvtnum(env.o, 'granularity', arg)) },
  { short: 'b', long: 'source-file', arg: 1, set: (s, arg) => void (s.srcFilename = arg) },
  { short: 'F', long: 'source-format', arg: 1, set: (s, arg) => void (s.srcFmt = arg) },
];

/** block_dirty_bitmap_add, as qemu-img calls it: persistent; granularity 0 = the default. */
export async function bitmapAdd(bs: BlockDriverState, name: string, granularity: number, disabled = false): Promise<void> {
  if (name === '') throw new BlockError('EINVAL', 'Bitmap name cannot be empty');
  // The QMP argument is a uint32.
  const g = granularity === 0 ? 0 : Number(BigInt(granularity) & 0xffffffffn);
  if (granularity !== 0 && (g < 512 || (g & (g - 1)) !== 0)) throw new BlockError('EINVAL', 'Granularity must be power of 2 and at least 512');
  const gran = granularity !== 0 ? g : await bdrvDefaultBitmapGranularity(bs);
  await bdrvCanStoreNewDirtyBitmap(bs, name, gran);
  const bm = await bdrvCreateDirtyBitmap(bs, gran, name);
  bm.enabled = !disabled;
  bm.persistent = true;
}

/** block_dirty_bitmap_merge with one source: dst is unchanged when anything fails. */
export function bitmapMerge(bs: BlockDriverState, target: string, srcBs: BlockDriverState, srcName: string): void {
  const dst = bdrvLookupDirtyBitmap(bs, target);
  const src = bdrvLookupDirtyBitmap(srcBs, srcName);
  bdrvDirtyBitmapCheck(src, { write: false });
  if (src.size !== dst.size) {
    throw new BlockError('EINVAL', `Bitmaps are of different sizes (destination size is ${dst.size}, source size is ${src.size}) and can't be merged`);
  }
  bdrvDirtyBitmapCheck(dst, { write: true });
  dst.merge(src);
}

async function runAction(a: Action, bs: BlockDriverState, name: string, granularity: number, srcBs: BlockDriverState): Promise<void> {
  switch (a.act) {
    case 'add':
      return bitmapAdd(bs, name, granularity);
    case 'remove':
      return bdrvRemoveDirtyBitmap(bs, name);
    case 'clear': {
      const bm = bdrvLookupDirtyBitmap(bs, name);
      bdrvDirtyBitmapCheck(bm, { write: true });
      bm.clear();
      return;
    }
    case 'enable':
    case 'disable': {
      const bm: BdrvDirtyBitmap = bdrvLookupDirtyBitmap(bs, name);
      bdrvDirtyBitmapCheck(bm, { write: false });
      bm.enabled = a.act === 'enable';
      return;
    }
    case 'merge':
      return bitmapMerge(bs, name, srcBs, a.src);
  }
}

export async function imgBitmap(env: ImgEnv, argv: string[]): Promise<number> {
  const args: BitmapArgs = { fmt: undefined, imageOpts: false, actions: [], granularity: 0, srcFilename: undefined, srcFmt: undefined };
  const rest = parseImgOptions(env, argv, BITMAP_OPTIONS, args);
  // img_bitmap reports these and exits, without the help hint of an option error.
  const refusal =
    args.actions.length === 0
      ? 'Need at least one of --add, --remove, --clear, --enable, --disable, or --merge'
      : args.granularity !== 0 && !args.actions.some((a) => a.act === 'add')
        ? 'granularity only supported with --add'
        : args.srcFmt !== undefined && args.srcFilename === undefined
          ? '-F only supported with -b'
          : args.srcFilename !== undefined && !args.actions.some((a) => a.act === 'merge')
            ? 'Merge bitmap source file only supported with --merge'
            : rest.length !== 2
              ? 'Expecting filename and bitmap name'
              : null;
  if (refusal !== null) {
    env.o.error(refusal);
    return 1;
  }
  const [filename, name] = rest;
  // Bitmaps are manipulated in this image alone: no backing chain.
  const blk = await imgOpen(env, filename, { imageOpts: args.imageOpts, format: args.fmt, noBacking: true });
  let src: BlockBackend | null = null;
  try {
    if (args.srcFilename !== undefined) src = await imgOpen(env, args.srcFilename, { format: args.srcFmt, noBacking: true, readOnly: true });
    const bs = rootOf(blk);
    const srcBs = src ? rootOf(src) : bs;
    for (const a of args.actions) {
      try {
        await runAction(a, bs, name, args.granularity, srcBs);
      } catch (e) {
        const msg = errorMessage(e);
        const nl = msg.indexOf('\n');
        env.o.error(`Operation ${a.act} on bitmap ${name} failed: ${nl < 0 ? msg : msg.slice(0, nl)}`);
        if (nl >= 0) env.o.errRaw(`${msg.slice(nl + 1)}\n`);
        return 1;
      }
    }
    return 0;
  } finally {
    await closeQuietly(src);
    await closeQuietly(blk);
  }
}
