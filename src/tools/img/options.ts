// blk-img's option handling: every subcommand declares a table of its options (shared/getopt.ts)
// built from the entries below, and parseImgOptions reads it with qemu-img's messages. Adding
// an option to a subcommand is one line in its table.
import { cacheModeFlags } from '../shared/cache.js';
import { getoptTable, type OptionDef, type OptionTable } from '../shared/getopt.js';
import { ToolExit, errorExit, type ToolOutput } from '../shared/output.js';
import { processObjectArg } from '../shared/image-opts.js';
import { HelpRequest, type ImgEnv } from './env.js';

/** What most subcommands parse; each adds its own fields. Defaults from imgArgs(). */
export interface ImgArgs {
  fmt: string | undefined;
  quiet: boolean;
  progress: boolean;
  forceShare: boolean;
  /** --output's argument, checked once the options are read (parseOutputFormat). */
  output: string | null;
  /** -t: the cache mode for the image written. */
  cache: string;
  /** -T: the cache mode for the images read. */
  srcCache: string;
  /** --image-opts: the image names are option strings. */
  imageOpts: boolean;
}

export function imgArgs(cache = 'writeback'): ImgArgs {
  return { fmt: undefined, quiet: false, progress: false, forceShare: false, output: null, cache, srcCache: 'writeback', imageOpts: false };
}

export type ImgOption<S = ImgArgs> = OptionDef<S, ImgEnv>;

/** Options we accept for compatibility but cannot honour (convert's --salvage...). */
export function unsupportedOption(o: ToolOutput, what: string): never {
  o.error(`${what} is not supported by this implementation`);
  throw new ToolExit(1);
}

export const HELP: ImgOption<unknown> = {
  short: 'h',
  long: 'help',
  set: () => {
    throw new HelpRequest();
  },
};
/** -f, and for the subcommands that also take it so, --format. */
export const FORMAT: ImgOption<{ fmt?: string }> = { short: 'f', arg: 1, set: (s, a) => void (s.fmt = a) };
export const FORMAT_LONG: ImgOption<{ fmt?: string }> = { ...FORMAT, long: 'format' };
export const QUIET: ImgOption<{ quiet: boolean }> = { short: 'q', set: (s) => void (s.quiet = true) };
export const PROGRESS: ImgOption<{ progress: boolean }> = { short: 'p', set: (s) => void (s.progress = true) };
export const FORCE_SHARE: ImgOption<{ forceShare: boolean }> = { short: 'U', long: 'force-share', set: (s) => void (s.forceShare = true) };
export const OUTPUT: ImgOption<{ output: string | null }> = { long: 'output', arg: 1, set: (s, a) => void (s.output = a) };
export const CACHE: ImgOption<{ cache: string }> = { short: 't', arg: 1, set: (s, a) => void (s.cache = a) };
export const SRC_CACHE: ImgOption<{ srcCache: string }> = { short: 'T', arg: 1, set: (s, a) => void (s.srcCache = a) };
/**
 * --object: the object is created at once, as qemu-img does while it parses (help exits 0,
 * an error exits `failStatus`).
 */
export function imgObject(env: ImgEnv, arg: string, failStatus = 1): void {
  const status = processObjectArg(env.o, env.objects, arg);
  if (status !== null) throw new ToolExit(status === 0 ? 0 : failStatus);
}
export const OBJECT: ImgOption<unknown> = { long: 'object', arg: 1, set: (_s, arg, env) => imgObject(env, arg) };
/** compare's --object: its failures exit 2, an object's too. */
export const OBJECT_EXIT2: ImgOption<unknown> = { long: 'object', arg: 1, set: (_s, arg, env) => imgObject(env, arg, 2) };
/** --image-opts: the image name is an option string (img_open_opts). */
export const IMAGE_OPTS: ImgOption<{ imageOpts: boolean }> = { long: 'image-opts', set: (s) => void (s.imageOpts = true) };
/** convert's --target-image-opts: so is the target's (with -n only). */
export const TARGET_IMAGE_OPTS: ImgOption<{ tgtImageOpts: boolean }> = { long: 'target-image-opts', set: (s) => void (s.tgtImageOpts = true) };

/**
 * Read a subcommand's options (argv[0] is its name) into `state`: "missing argument for
 * option 'X'" / "unrecognized option 'X'" (X = argv[optind - 1]) with the help hint, exit 1.
 * Returns the arguments after the options.
 */
export function parseImgOptions<S, C extends { o: ToolOutput }>(
  ctx: C,
  argv: readonly string[],
  table: OptionTable<S, C>,
  state: S,
  prefix = ':',
): string[] {
  const r = getoptTable(argv, table, state, ctx, prefix);
  if (r.kind === 'error') {
    errorExit(ctx.o, `${r.error === 'missing' ? 'missing argument for' : 'unrecognized'} option '${r.g.lastElement}'`);
  }
  return r.g.rest();
}

/** The one image file name most subcommands take. */
export function oneFilename(env: ImgEnv, rest: readonly string[]): string {
  if (rest.length !== 1) errorExit(env.o, 'Expecting one image file name');
  return rest[0];
}

/** --output=human|json (human when not given). */
export function parseOutputFormat(env: ImgEnv, arg: string | null): 'human' | 'json' {
  if (arg === null || arg === 'human') return 'human';
  if (arg === 'json') return 'json';
  env.o.error('--output must be used with human or json as argument.');
  throw new ToolExit(1);
}

/** bdrv_parse_cache_mode: the page cache is the host's business here; only validate. */
export function checkCacheMode(env: ImgEnv, mode: string, what: string): void {
  if (cacheModeFlags(mode) === null) {
    env.o.error(`Invalid ${what} option: ${mode}`);
    throw new ToolExit(1);
  }
}
