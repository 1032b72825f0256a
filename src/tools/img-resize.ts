// blk-img resize: [+|-]size, grow only for QED (the driver says so), with qemu-img's checks.
import { ERRNO_MESSAGES, isBlockError } from '../block/errors.js';
import { ToolExit, errorExit, errorMessage, parseOptionSize, parseOptions } from './common.js';
import { HelpRequest, LONG_HELP, LONG_IMAGE_OPTS, LONG_OBJECT, closeQuietly, imgOpen, imgSharedOption, type ImgEnv, type SharedImgOptions } from './img-util.js';

const PREALLOC_MODES = ['off', 'metadata', 'falloc', 'full'];

export async function imgResize(env: ImgEnv, argv: string[]): Promise<number> {
  // The size is taken off the end first so that a negative size is not read as an option.
  if (argv.length < 3) errorExit(env.o, 'Not enough arguments');
  let size = argv[argv.length - 1];
  let fmt: string | undefined;
  let quiet = false;
  let shrink = false;
  let prealloc = 'off';
  const shared: SharedImgOptions = { imageOpts: false };
  const rest = parseOptions(
    env.o,
    argv.slice(0, -1),
    ':f:hq',
    [LONG_HELP, LONG_OBJECT, LONG_IMAGE_OPTS, { name: 'preallocation', hasArg: 1, val: 'prealloc' }, { name: 'shrink', hasArg: 0, val: 'shrink' }],
    (opt, arg = '') => {
      switch (opt) {
        case 'h':
          throw new HelpRequest();
        case 'f':
          fmt = arg;
          break;
        case 'q':
          quiet = true;
          break;
        case 'prealloc':
          if (!PREALLOC_MODES.includes(arg)) {
            env.o.error(`Invalid preallocation mode '${arg}'`);
            throw new ToolExit(1);
          }
          prealloc = arg;
          break;
        case 'shrink':
          shrink = true;
          break;
        default:
          imgSharedOption(env, opt, arg, shared);
      }
    },
  );
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
  const bs = await imgOpen(env, filename, { imageOpts: shared.imageOpts, format: fmt });
  try {
    const current = BigInt(await bs.getLength());
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
      await bs.truncate(Number(total), prealloc);
    } catch (e) {
      env.o.error(isBlockError(e) && e.message === '' ? ERRNO_MESSAGES[e.code] : errorMessage(e));
      return 1;
    }
    if (!quiet) env.o.out('Image resized.\n');
    return 0;
  } finally {
    await closeQuietly(bs);
  }
}
