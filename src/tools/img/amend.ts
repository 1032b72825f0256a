// blk-img amend: change a format's options in place (qemu-img amend). The format driver does
// the work (its amend hook, QEMU's bdrv_amend_options) and says what it can change
// (amendOptions); this file reads the command line, opens the image and reports progress.
import { bdrvAmendOptions, type BlockBackend, type BlockDriverState } from '../../index.js';
import { closeQuietly, rootOf } from '../shared/open.js';
import { ToolExit, errorExit, errorMessage } from '../shared/output.js';
import { accumulateOptions, hasHelpOption, optionsByKey, parseOptionList, printOptionSpecs } from './create-options.js';
import { reportWithPrefix } from './create.js';
import type { ImgEnv } from './env.js';
import { imgOpen } from './open.js';
import { CACHE, FORMAT, HELP, IMAGE_OPTS, OBJECT, PROGRESS, QUIET, checkCacheMode, parseImgOptions, type ImgOption } from './options.js';
import { Progress } from './progress.js';

interface AmendArgs {
  fmt: string | undefined;
  options: string | null;
  cache: string;
  progress: boolean;
  quiet: boolean;
  imageOpts: boolean;
  force: boolean;
}

const AMEND_OPTIONS: readonly ImgOption<AmendArgs>[] = [
  HELP,
  { short: 'o', arg: 1, set: (s, a, env) => void (s.options = accumulateOptions(env.o, s.options, a)) },
  FORMAT,
  CACHE,
  PROGRESS,
  QUIET,
  OBJECT,
  IMAGE_OPTS,
  { long: 'force', set: (s) => void (s.force = true) },
];

/** print_amend_option_help. */
function printAmendHelp(env: ImgEnv, fmt: string): number {
  const drv = env.registry.find(fmt);
  if (!drv) {
    env.o.error(`Unknown file format '${fmt}'`);
    return 1;
  }
  if (!drv.amend || !drv.amendOptions) {
    env.o.error(`Format driver '${fmt}' does not support option amendment`);
    return 1;
  }
  env.o.out(`Amend options for '${fmt}':\n`);
  printOptionSpecs(env.o, drv.amendOptions);
  return 0;
}

/** Open, parse the options against the format's amend options, amend. Returns the status. */
async function amendImage(env: ImgEnv, filename: string, args: AmendArgs, options: string, progress: Progress): Promise<number> {
  checkCacheMode(env, args.cache, 'cache');
  let blk: BlockBackend | null = null;
  try {
    blk = await imgOpen(env, filename, { imageOpts: args.imageOpts, format: args.fmt, noFlush: args.cache === 'unsafe' });
    const bs: BlockDriverState = rootOf(blk);
    const drv = bs.driver;
    if (hasHelpOption(options)) return printAmendHelp(env, drv.formatName);
    if (!drv.amend || !drv.amendOptions) {
      env.o.error(`Format driver '${drv.formatName}' does not support option amendment`);
      return 1;
    }
    let values: Map<string, string | number | boolean>;
    try {
      values = parseOptionList(drv.amendOptions, options);
    } catch (e) {
      // An option create takes but amend does not gets a hint saying so.
      let createOnly = false;
      try {
        parseOptionList([...drv.amendOptions, ...(drv.createOptions ?? [])], options);
        createOnly = true;
      } catch {
        createOnly = false;
      }
      env.o.error(errorMessage(e));
      if (createOnly) env.o.errRaw('This option is only supported for image creation\n');
      return 1;
    }
    progress.print(0, 0);
    let failure: unknown = null;
    try {
      await bdrvAmendOptions(bs, optionsByKey(drv.amendOptions, values), (offset, total) => progress.print((100 * offset) / total, 0), args.force);
    } catch (e) {
      failure = e;
    }
    progress.print(100, 0);
    if (failure !== null) {
      reportWithPrefix(env, '', failure);
      return 1;
    }
    return 0;
  } catch (e) {
    if (e instanceof ToolExit) return e.status;
    throw e;
  } finally {
    await closeQuietly(blk);
  }
}

export async function imgAmend(env: ImgEnv, argv: string[]): Promise<number> {
  const args: AmendArgs = { fmt: undefined, options: null, cache: 'writeback', progress: false, quiet: false, imageOpts: false, force: false };
  const rest = parseImgOptions(env, argv, AMEND_OPTIONS, args);
  const options = args.options;
  if (options === null) errorExit(env.o, 'Must specify options (-o)');
  const progress = new Progress(env.o, args.progress && !args.quiet, 1.0);
  try {
    if (args.fmt !== undefined && hasHelpOption(options)) return printAmendHelp(env, args.fmt);
    if (rest.length !== 1) {
      env.o.error('Expecting one image file name');
      return 1;
    }
    return await amendImage(env, rest[0], args, options, progress);
  } finally {
    progress.end();
  }
}
