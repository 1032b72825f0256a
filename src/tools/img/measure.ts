// blk-img measure: the file size a new image of the output format needs, for a size or to
// hold an image (qemu-img measure). The numbers are the output format driver's (its measure
// hook, QEMU's bdrv_measure); this file only reads the options and prints.
import type { BlockBackend, BlockMeasureInfo, CreateOptions } from '../../index.js';
import { closeQuietly, rootOf } from '../shared/open.js';
import { ToolExit, errorMessage } from '../shared/output.js';
import { cvtnum } from '../shared/size.js';
import { accumulateOptions, createOptionSpecs, optionsByKey, parseCreateOptions } from './create-options.js';
import type { ImgEnv } from './env.js';
import { jsonObject, toJsonPretty } from './json.js';
import { imgOpen } from './open.js';
import { SNAPSHOT_LOAD, loadSnapshotArg, type SnapshotArgs } from './snapshot-arg.js';
import { FORCE_SHARE, FORMAT, HELP, IMAGE_OPTS, OBJECT, OUTPUT, parseImgOptions, parseOutputFormat, type ImgOption } from './options.js';

interface MeasureArgs extends SnapshotArgs {
  fmt: string | undefined;
  outFmt: string;
  options: string | null;
  forceShare: boolean;
  imageOpts: boolean;
  output: string | null;
  size: number | null;
}

const MEASURE_OPTIONS: readonly ImgOption<MeasureArgs>[] = [
  HELP,
  FORMAT,
  { short: 'O', arg: 1, set: (s, a) => void (s.outFmt = a) },
  { short: 'o', arg: 1, set: (s, a, env) => void (s.options = accumulateOptions(env.o, s.options, a)) },
  SNAPSHOT_LOAD,
  FORCE_SHARE,
  OBJECT,
  IMAGE_OPTS,
  // --output is checked as soon as it is met, as qemu-img does.
  { ...OUTPUT, set: (s, a, env) => void (s.output = parseOutputFormat(env, a)) },
  { long: 'size', arg: 1, set: (s, a, env) => void (s.size = cvtnum(env.o, 'image size', a)) },
];

function fail(env: ImgEnv, message: string): never {
  env.o.error(message);
  throw new ToolExit(1);
}

function printInfo(env: ImgEnv, info: BlockMeasureInfo, json: boolean): void {
  if (!json) {
    env.o.out(`required size: ${info.required}\nfully allocated size: ${info.fullyAllocated}\n`);
    if (info.bitmaps !== undefined) env.o.out(`bitmaps size: ${info.bitmaps}\n`);
    return;
  }
  env.o.out(`${toJsonPretty(jsonObject([['required', info.required], ['fully-allocated', info.fullyAllocated], ['bitmaps', info.bitmaps]]))}\n`);
}

export async function imgMeasure(env: ImgEnv, argv: string[]): Promise<number> {
  const args: MeasureArgs = {
    fmt: undefined,
    outFmt: 'raw',
    options: null,
    snapshotOpts: null,
    snapshotName: null,
    forceShare: false,
    imageOpts: false,
    output: null,
    size: null,
  };
  const rest = parseImgOptions(env, argv, MEASURE_OPTIONS, args);
  if (rest.length > 1) fail(env, 'At most one filename argument is allowed.');
  const filename = rest.length === 1 ? rest[0] : null;
  if (filename === null && (args.imageOpts || args.fmt !== undefined || args.snapshotOpts !== null || args.snapshotName !== null)) {
    fail(env, '--image-opts, -f, and -l require a filename argument.');
  }
  if (filename !== null && args.size !== null) fail(env, '--size N cannot be used together with a filename.');
  if (filename === null && args.size === null) fail(env, 'Either --size N or one filename must be specified.');

  let blk: BlockBackend | null = null;
  try {
    if (filename !== null) {
      blk = await imgOpen(env, filename, { imageOpts: args.imageOpts, format: args.fmt, readOnly: true, forceShare: args.forceShare });
      // The source as it is in that snapshot; its size stays the image's (as in QEMU).
      if (!(await loadSnapshotArg(env, rootOf(blk), args))) return 1;
    }
    const drv = env.registry.find(args.outFmt);
    if (!drv) fail(env, `Unknown file format '${args.outFmt}'`);
    if (!drv.create) fail(env, `Format driver '${args.outFmt}' does not support image creation`);
    // The target's options and the file protocol's, as qemu-img appends them.
    const file = env.registry.find('file') ?? null;
    const specs = createOptionSpecs(drv, file);
    let options: CreateOptions;
    try {
      options = optionsByKey(specs, parseCreateOptions(drv, args.options ?? '', file));
    } catch (e) {
      env.o.error(errorMessage(e));
      fail(env, `Invalid options for file format '${args.outFmt}'`);
    }
    if (args.size !== null) options.size = args.size;
    if (!drv.measure) fail(env, `Block driver '${drv.formatName}' does not support size measurement`);
    let info: BlockMeasureInfo;
    try {
      info = await drv.measure(options, blk !== null ? rootOf(blk) : null);
    } catch (e) {
      fail(env, errorMessage(e));
    }
    printInfo(env, info, args.output === 'json');
    return 0;
  } finally {
    await closeQuietly(blk);
  }
}
