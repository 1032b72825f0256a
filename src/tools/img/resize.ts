// blk-img resize: [+|-]size, grow only for QED (the driver says so), with qemu-img's checks.
import { ERRNO_MESSAGES, isBlockError } from '../../index.js';
import { closeQuietly } from '../shared/open.js';
import { ToolExit, errorExit, errorMessage } from '../shared/output.js';
import { parseOptionSize } from '../shared/size.js';
import type { ImgEnv } from './env.js';
import { imgOpen } from './open.js';
import { FORMAT, HELP, IMAGE_OPTS, OBJECT, QUIET, parseImgOptions, type ImgOption } from './options.js';

const PREALLOC_MODES = ['off', 'metadata', 'falloc', 'full'];

interface ResizeArgs {
  fmt: string | undefined;
  quiet: boolean;
  shrink: boolean;
  prealloc: string;
  imageOpts: boolean;
}

const RESIZE_OPTIONS: readonly ImgOption<ResizeArgs>[] = [
  FORMAT,
  HELP,
  QUIET,
  OBJECT,
  IMAGE_OPTS,
  {
    long: 'preallocation',
    arg: 1,
    set: (s, arg, env) => {
      if (!PREALLOC_MODES.includes(arg)) {
        env.o.error(`Invalid preallocation mode '${arg}'`);
        throw new ToolExit(1);
      }
      s.prealloc = arg;
    },
  },
  { long: 'shrink', set: (s) => void (s.shrink = true) },
];

export async function imgResize(env: ImgEnv, argv: string[]): Promise<number> {
  // The size is taken off the end first so that a negative size is not read as an option.
  if (argv.length < 3) errorExit(env.o, 'Not enough arguments');
  let size = argv[argv.length - 1];
  const args: ResizeArgs = { fmt: undefined, quiet: false, shrink: false, prealloc: 'off', imageOpts: false };
  const rest = parseImgOptions(env, argv.slice(0, -1), RESIZE_OPTIONS, args);
  const { fmt, quiet, shrink, prealloc } = args;
  if (rest.length !== 1) errorExit(env.o, 'Expecting image file name and size');
  const filename = rest[0];
  let relative = 0;
  if (size.startsWith('+')) {
    relative = 1;
    size = size.slice(1);
  } else if (size.startsWith('-')) {
    relative = -1;
    size = size.slice(1);
  }
  let n: bigint;
  try {
    n = parseOptionSize('size', size);
  } catch (e) {
    const msg = errorMessage(e);
    const nl = msg.indexOf('\n');
    env.o.error(msg.slice(0, nl));
    env.o.errRaw(`${msg.slice(nl + 1)}\n`);
    return 1;
  }
  const blk = await imgOpen(env, filename, { imageOpts: args.imageOpts, format: fmt });
  try {
    const current = BigInt(await blk.getLength());
    const total = relative !== 0 ? current + n * BigInt(relative) : n;
    if (total <= 0n) {
      env.o.error('New image size must be positive');
      return 1;
    }
    if (total <= current && prealloc !== 'off') {
      env.o.error('Preallocation can only be used for growing images');
      return 1;
    }
    if (total < current && !shrink) {
      env.o.error('Use the --shrink option to perform a shrink operation.');
      env.o.warn(
        "Shrinking an image will delete all data beyond the shrunken image's end. Before performing such an operation, make sure there is no important data there.",
      );
      return 1;
    }
    if (total > BigInt(Number.MAX_SAFE_INTEGER)) {
      env.o.error('Invalid image size specified');
      return 1;
    }
    try {
      // The mode goes down the chain (raw passes it to its file); formats that cannot
      // preallocate (qed) refuse it, as in QEMU, with "Unsupported preallocation mode 'full'".
      await blk.truncate(Number(total), prealloc);
    } catch (e) {
      env.o.error(isBlockError(e) && e.message === '' ? ERRNO_MESSAGES[e.code] : errorMessage(e));
      return 1;
    }
    if (!quiet) env.o.out('Image resized.\n');
    return 0;
  } finally {
    await closeQuietly(blk);
  }
}
