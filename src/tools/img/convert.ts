// blk-img convert: copy one or more images (concatenated) into a new or existing target, with
// qemu-img convert's options and checks in its order; the copy itself is convert-copy.ts.
import type { BlockBackend } from '../../index.js';
import { closeQuietly, rootOf } from '../shared/open.js';
import { ToolExit } from '../shared/output.js';
import { cvtnum } from '../shared/size.js';
import { BUF_SECTORS, SECTOR, convertDoCopy, pow2floor, type ConvertState } from './convert-copy.js';
import { accumulateOptions, createOptionSpecs, hasHelpOption, parseCreateOptions } from './create-options.js';
import { createErrorMessage, createImageFile, findCreateDriver, printBlockOptionHelp, protocolOf, reportWithPrefix } from './create.js';
import type { ImgEnv } from './env.js';
import { convertCheckBitmaps, convertCheckTargetBitmaps, convertCopyBitmaps } from './convert-bitmaps.js';
import { imgOpen } from './open.js';
import {
  CACHE,
  FORCE_SHARE,
  FORMAT,
  HELP,
  IMAGE_OPTS,
  OBJECT,
  PROGRESS,
  QUIET,
  SRC_CACHE,
  TARGET_IMAGE_OPTS,
  checkCacheMode,
  imgArgs,
  parseImgOptions,
  unsupportedOption,
  type ImgArgs,
  type ImgOption,
} from './options.js';
import { Progress } from './progress.js';
import { SNAPSHOT_LOAD, loadSnapshotArg, type SnapshotArgs } from './snapshot-arg.js';

const MAX_BUF_SECTORS = 32768;
const MAX_COROUTINES = 16;

interface ConvertArgs extends ImgArgs, SnapshotArgs {
  /** -O; raw when not given (and the options' own with --target-image-opts). */
  outFmt: string | null;
  tgtImageOpts: boolean;
  outBaseimg: string | null;
  backingFmt: string | null;
  options: string | null;
  skipCreate: boolean;
  minSparse: number;
  explicitMinSparse: boolean;
  numCoroutines: number;
  wrInOrder: boolean;
  targetIsZero: boolean;
  copyRange: boolean;
  compressed: boolean;
  bitmaps: boolean;
  skipBroken: boolean;
}

const flag = (short: string | undefined, long: string | undefined, key: 'skipCreate' | 'targetIsZero' | 'copyRange' | 'compressed' | 'bitmaps' | 'skipBroken'): ImgOption<ConvertArgs> => ({
  short,
  long,
  set: (s) => void (s[key] = true),
});

const CONVERT_OPTIONS: readonly ImgOption<ConvertArgs>[] = [
  HELP,
  FORMAT,
  { short: 'O', arg: 1, set: (s, arg) => void (s.outFmt = arg) },
  { short: 'B', arg: 1, set: (s, arg) => void (s.outBaseimg = arg) },
  // Copy offloading is the host's business; the copy loop is the same.
  flag('C', undefined, 'copyRange'),
  flag('c', undefined, 'compressed'),
  { short: 'F', arg: 1, set: (s, arg) => void (s.backingFmt = arg) },
  { short: 'o', arg: 1, set: (s, arg, env) => void (s.options = accumulateOptions(env.o, s.options, arg)) },
  SNAPSHOT_LOAD,
  {
    short: 'S',
    arg: 1,
    set: (s, arg, env) => {
      const sval = cvtnum(env.o, 'buffer size for sparse output', arg);
      if (sval % SECTOR !== 0 || sval / SECTOR > MAX_BUF_SECTORS) {
        env.o.error(
          `Invalid buffer size for sparse output specified. Valid sizes are multiples of ${SECTOR} up to ${MAX_BUF_SECTORS * SECTOR}. Select 0 to disable sparse detection (fully allocates output).`,
        );
        throw new ToolExit(1);
      }
      s.minSparse = sval / SECTOR;
      s.explicitMinSparse = true;
    },
  },
  PROGRESS,
  CACHE,
  SRC_CACHE,
  QUIET,
  flag('n', undefined, 'skipCreate'),
  {
    short: 'm',
    arg: 1,
    set: (s, arg, env) => {
      const m = /^\s*[+-]?\d+/.exec(arg);
      s.numCoroutines = m === null ? 0 : parseInt(m[0], 10);
      if (s.numCoroutines < 1 || s.numCoroutines > MAX_COROUTINES) {
        env.o.error(`Invalid number of coroutines. Allowed number of coroutines is between 1 and ${MAX_COROUTINES}`);
        throw new ToolExit(1);
      }
    },
  },
  { short: 'W', set: (s) => void (s.wrInOrder = false) },
  FORCE_SHARE,
  // Rate limiting only slows the copy down; the result is the same.
  { short: 'r', arg: 1, set: (_s, arg, env) => void cvtnum(env.o, 'rate limit', arg) },
  OBJECT,
  IMAGE_OPTS,
  TARGET_IMAGE_OPTS,
  { long: 'salvage', set: (_s, _a, env) => unsupportedOption(env.o, '--salvage') },
  flag(undefined, 'target-is-zero', 'targetIsZero'),
  flag(undefined, 'bitmaps', 'bitmaps'),
  flag(undefined, 'skip-broken-bitmaps', 'skipBroken'),
];

export async function imgConvert(env: ImgEnv, argv: string[]): Promise<number> {
  const args: ConvertArgs = {
    ...imgArgs('unsafe'),
    outFmt: null,
    tgtImageOpts: false,
    outBaseimg: null,
    backingFmt: null,
    options: null,
    skipCreate: false,
    minSparse: 8,
    explicitMinSparse: false,
    numCoroutines: 8,
    wrInOrder: true,
    targetIsZero: false,
    copyRange: false,
    compressed: false,
    snapshotOpts: null,
    snapshotName: null,
    bitmaps: false,
    skipBroken: false,
  };
  const rest = parseImgOptions(env, argv, CONVERT_OPTIONS, args);
  const { fmt, cache, srcCache, skipCreate, minSparse, numCoroutines, wrInOrder, forceShare, targetIsZero, options, backingFmt } = args;
  const { copyRange, compressed, explicitMinSparse, snapshotOpts, snapshotName, bitmaps, skipBroken } = args;
  let outBaseimg = args.outBaseimg;
  const targetFmt = args.outFmt ?? 'raw';
  if (compressed && copyRange) {
    env.o.error('Cannot enable copy offloading when -c is used');
    return 1;
  }
  if (explicitMinSparse && copyRange) {
    env.o.error('Cannot enable copy offloading when -S is used');
    return 1;
  }
  if (args.tgtImageOpts && !skipCreate) {
    env.o.error('--target-image-opts requires use of -n flag');
    return 1;
  }
  if (targetIsZero && !skipCreate) {
    env.o.error('--target-is-zero requires use of -n flag');
    return 1;
  }
  if (skipBroken && !bitmaps) {
    env.o.error('Use of --skip-broken-bitmaps requires --bitmaps');
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

  const progress = new Progress(env.o, args.progress && !args.quiet, 1.0);
  progress.print(0, 100);
  const src: BlockBackend[] = [];
  let target: BlockBackend | null = null;
  let ret = 1;
  try {
    const s: ConvertState = {
      src,
      srcSectors: [],
      srcBytes: [],
      srcAlignment: [],
      srcNames: rest.slice(0, srcNum),
      totalSectors: 0,
      target: null as unknown as BlockBackend,
      targetHasBacking: false,
      targetBackingSectors: -1,
      hasZeroInit: targetIsZero,
      minSparse,
      alignment: 1,
      bufSectors: BUF_SECTORS,
      compressed,
      clusterSectors: 0,
      status: 'data',
      sectorNextStatus: 0,
      statusRuns: [],
      statusReplay: -1,
      statusBatch: null,
      batchPnum: 0,
      batchFlags: 0,
    };
    for (const name of s.srcNames) {
      const blk = await imgOpen(env, name, { imageOpts: args.imageOpts, format: fmt, readOnly: true, forceShare });
      src.push(blk);
      const bs = rootOf(blk);
      const bytes = await blk.getLength();
      const sectors = Math.ceil(bytes / SECTOR);
      s.srcBytes.push(bytes);
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
    if (snapshotOpts === null && snapshotName !== null && srcNum > 1) {
      env.o.error('No support for concatenating multiple snapshot');
      return 1;
    }
    // The first source shows the snapshot instead of its active state (read-only).
    if (!(await loadSnapshotArg(env, rootOf(src[0]), args))) return 1;
    // The copy reads the snapshot's bytes, up to its own length.
    s.srcBytes[0] = await src[0].getLength();
    if (bitmaps) {
      if (srcNum > 1) {
        env.o.error('Copying bitmaps only possible with single source');
        return 1;
      }
      if (!convertCheckBitmaps(env, rootOf(src[0]), skipBroken)) return 1;
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
    if (compressed && env.registry.require(targetFmt).coPwritevCompressed === undefined) {
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
    const tgtFormat = args.tgtImageOpts ? (args.outFmt ?? undefined) : targetFmt;
    target = await imgOpen(env, outFile, { imageOpts: args.tgtImageOpts, format: tgtFormat, noFlush: cache === 'unsafe' });
    s.target = target;
    const targetBs = rootOf(target);
    if (bitmaps && !convertCheckTargetBitmaps(env, targetBs)) return 1;
    s.alignment = Math.max(pow2floor(s.minSparse), Math.ceil(targetBs.requestAlignment / SECTOR));
    if (skipCreate) {
      const outSectors = Math.ceil((await target.getLength()) / SECTOR);
      if (outSectors < s.totalSectors) {
        env.o.error('output file is smaller than input file');
        return 1;
      }
    }
    if (s.targetHasBacking && !skipCreate && targetBs.backing) {
      s.targetBackingSectors = Math.ceil((await targetBs.backing.getLength()) / SECTOR);
    }
    // bdrv_has_zero_init: a new image without a backing file reads as zeros.
    if (!s.hasZeroInit && !skipCreate && s.minSparse && !s.targetHasBacking) s.hasZeroInit = true;
    if (compressed) {
      // Only one cluster per chunk: each becomes one compressed cluster.
      s.clusterSectors = (await targetBs.getInfo()).clusterSize / SECTOR;
      if (!(s.clusterSectors > 0 && s.clusterSectors <= s.bufSectors && Number.isInteger(s.clusterSectors))) {
        env.o.error('invalid cluster size');
        return 1;
      }
      s.bufSectors = s.clusterSectors;
    }
    await convertDoCopy(env, s, numCoroutines, wrInOrder, progress);
    if (bitmaps && !(await convertCopyBitmaps(env, rootOf(src[0]), targetBs, skipBroken))) return 1;
    ret = 0;
    return 0;
  } finally {
    await closeQuietly(target);
    for (const blk of src) await closeQuietly(blk);
    if (ret === 0) progress.print(100, 0);
    progress.end();
  }
}
