// blk-img: the qemu-img 7.2 look-alike. imgMain() parses the global options, dispatches to a
// subcommand and returns the exit status; output goes through ToolOutput so that stdout is
// buffered and stderr is not, as in QEMU. Nothing here needs Node: main.ts adds the process's
// streams and host files; the teaching page runs it in a browser with its own sink.
import { ToolExit, ToolOutput, errorExit, errorMessage, progName, type ToolIO } from '../shared/output.js';
import { imgAmend } from './amend.js';
import { imgBitmap } from './bitmap.js';
import { imgCheck } from './check.js';
import { imgCommit } from './commit.js';
import { imgCompare } from './compare.js';
import { imgConvert } from './convert.js';
import { imgCreate } from './create.js';
import { imgDd } from './dd.js';
import { imgInfo } from './info.js';
import { imgMap } from './map.js';
import { imgMeasure } from './measure.js';
import { imgRebase } from './rebase.js';
import { imgResize } from './resize.js';
import { imgSnapshot } from './snapshot.js';
import { HelpRequest, makeEnv, type ImgCommand, type ImgEnv } from './env.js';
import { HELP, parseImgOptions, type ImgOption } from './options.js';
import { imgBench } from './bench.js';

export const BLK_IMG_VERSION = '0.1.0';

async function benchCommand(env: ImgEnv, argv: string[]): Promise<number> {
  return imgBench(argv.slice(1), { stdout: (s) => env.o.out(s), stderr: (s) => env.o.errRaw(s) }, env.o.prog);
}

/** Subcommands in qemu-img's order (the help text lists them so). */
const COMMANDS: Array<[string, ImgCommand, string]> = [
  ['amend', imgAmend, 'amend [--object objectdef] [--image-opts] [-p] [-q] [-f fmt] [-t cache] [--force] -o options filename'],
  ['bench', benchCommand, 'bench [-c count] [-d depth] [-f fmt] [--flush-interval=flush_interval] [-i aio] [-n] [--no-drain] [-o offset] [--pattern=pattern] [-q] [-s buffer_size] [-S step_size] [-t cache] [-w] [-U] filename'],
  ['bitmap', imgBitmap, 'bitmap (--merge SOURCE | --add | --remove | --clear | --enable | --disable)... [-b source_file [-F source_fmt]] [-g granularity] [--object objectdef] [--image-opts | -f fmt] filename bitmap'],
  ['check', imgCheck, 'check [-q] [-f fmt] [--output=ofmt] [-r [leaks | all]] [-T src_cache] [-U] filename'],
  ['commit', imgCommit, 'commit [-q] [-f fmt] [-t cache] [-b base] [-d] [-p] filename'],
  ['compare', imgCompare, 'compare [-f fmt] [-F fmt] [-T src_cache] [-p] [-q] [-s] [-U] filename1 filename2'],
  ['convert', imgConvert, 'convert [-U] [-p] [-q] [-n] [-f fmt] [-t cache] [-T src_cache] [-O output_fmt] [-B backing_file [-F backing_fmt]] [-o options] [-S sparse_size] [-m num_coroutines] [-W] filename [filename2 [...]] output_filename'],
  ['create', imgCreate, 'create [-q] [-f fmt] [-b backing_file [-F backing_fmt]] [-u] [-o options] filename [size]'],
  ['dd', imgDd, 'dd [-U] [-f fmt] [-O output_fmt] [bs=block_size] [count=blocks] [skip=blocks] if=input of=output'],
  ['info', imgInfo, 'info [-f fmt] [--output=ofmt] [--backing-chain] [-U] filename'],
  ['map', imgMap, 'map [-f fmt] [--start-offset=offset] [--max-length=len] [--output=ofmt] [-U] filename'],
  ['measure', imgMeasure, 'measure [--output=ofmt] [-O output_fmt] [-o options] [--size N | [--object objectdef] [--image-opts] [-f fmt] [-l snapshot_param] filename]'],
  ['snapshot', imgSnapshot, 'snapshot [--object objectdef] [--image-opts] [-U] [-q] [-l | -a snapshot | -c snapshot | -d snapshot] filename'],
  ['rebase', imgRebase, 'rebase [-U] [-q] [-f fmt] [-t cache] [-T src_cache] [-p] [-u] -b backing_file [-F backing_fmt] filename'],
  ['resize', imgResize, 'resize [-f fmt] [--preallocation=prealloc] [-q] [--shrink] filename [+ | -]size'],
];

/** Like qemu-img's, the version and usage lines name the tool itself, not argv[1]. */
function versionText(): string {
  return `blk-img version ${BLK_IMG_VERSION} (blocklayer)\nMirrors qemu-img 7.2: same subcommands, options, messages and exit codes.\n`;
}

export function helpText(env: ImgEnv): string {
  const formats = env.registry
    .list()
    .map((d) => d.formatName)
    .sort()
    .join(' ');
  return (
    versionText() +
    'usage: blk-img [standard options] command [command options]\n' +
    'Disk image utility (blocklayer)\n\n' +
    "    '-h', '--help'       display this help and exit\n" +
    "    '-V', '--version'    output version information and exit\n\n" +
    'Command syntax:\n' +
    COMMANDS.map(([, , syn]) => `  ${syn}\n`).join('') +
    '\nCommand parameters:\n' +
    "  'filename' is a disk image filename\n" +
    "  'fmt' is the disk image format. It is guessed automatically in most cases\n" +
    "  'cache' is the cache mode used to write the output disk image, the valid\n" +
    "    options are: 'none', 'writeback' (default, except for convert), 'writethrough',\n" +
    "    'directsync' and 'unsafe' (default for convert)\n" +
    "  'src_cache' is the cache mode used to read input disk images, the valid\n" +
    "    options are the same as for the 'cache' option\n" +
    "  'size' is the disk image size in bytes. Optional suffixes\n" +
    "    'k' or 'K' (kilobyte, 1024), 'M' (megabyte, 1024k), 'G' (gigabyte, 1024M),\n" +
    "    'T' (terabyte, 1024G), 'P' (petabyte, 1024T) and 'E' (exabyte, 1024P)  are\n" +
    "    supported. 'b' is ignored.\n" +
    "  'output_filename' is the destination disk image filename\n" +
    "  'output_fmt' is the destination format\n" +
    "  'options' is a comma separated list of format specific options in a\n" +
    '    name=value format. Use -o help for an overview of the options supported by\n' +
    '    the used format\n' +
    "  '-u' allows unsafe backing chains. For rebasing, it is assumed that old and\n" +
    '       new backing file match exactly. The image doesn\'t need a working\n' +
    '       backing file before rebasing in this case (useful for renaming the\n' +
    '       backing file). For image creation, allow creating without attempting\n' +
    '       to open the backing file.\n' +
    "  '-h' with or without a command shows this help and lists the supported formats\n" +
    "  '-p' show progress of command (only certain commands)\n" +
    "  '-q' use Quiet mode - do not print any output (except errors)\n" +
    "  '-S' indicates the consecutive number of bytes (defaults to 4k) that must\n" +
    '       contain only zeros for the target to stay sparse during conversion.\n' +
    '       If the number of bytes is 0, the source will not be scanned for\n' +
    '       unallocated or zero sectors, and the destination image will always be\n' +
    '       fully allocated\n' +
    "  '--output' takes the format in which the output must be done (human or json)\n" +
    "  '-n' skips the target volume creation (useful if the volume is created\n" +
    '       prior to running the command)\n\n' +
    'Parameters to bitmap subcommand:\n' +
    "  'bitmap' is the name of the bitmap to manipulate, through one or more\n" +
    "       actions from '--add', '--remove', '--clear', '--enable', '--disable',\n" +
    "       or '--merge source'\n" +
    "  '-g granularity' sets the granularity for '--add' actions\n" +
    "  '-b source' and '-F src_fmt' tell '--merge' actions to find the source\n" +
    '       bitmaps from an alternative file\n\n' +
    'Parameters to check subcommand:\n' +
    "  '-r' tries to repair any inconsistencies that are found during the check.\n" +
    "       '-r leaks' repairs only cluster leaks, whereas '-r all' fixes all\n" +
    '       kinds of errors, with a higher risk of choosing the wrong fix or\n' +
    '       hiding corruption that has already occurred.\n\n' +
    'Parameters to convert subcommand:\n' +
    "  '-m' specifies how many requests work in parallel during the convert\n" +
    '       process (defaults to 8)\n' +
    "  '-W' allow to write to the target out of order rather than sequential\n\n" +
    'Parameters to compare subcommand:\n' +
    "  '-f' first image format\n" +
    "  '-F' second image format\n" +
    "  '-s' run in Strict mode - fail on different image size or sector allocation\n\n" +
    'Parameters to dd subcommand:\n' +
    "  'bs=BYTES' read and write up to BYTES bytes at a time (default: 512)\n" +
    "  'count=N' copy only N input blocks\n" +
    "  'if=FILE' read from FILE\n" +
    "  'of=FILE' write to FILE\n" +
    "  'skip=N' skip N bs-sized blocks at the start of input\n\n" +
    `Supported formats: ${formats}\n`
  );
}

/**
 * blk-img's entry point. argv is process.argv-shaped: argv[0] = node, argv[1] = the script (its
 * basename is the program name in messages), then the arguments. Returns the exit status.
 */
export async function imgMain(argv: string[], io: ToolIO): Promise<number> {
  const o = new ToolOutput(io, progName(argv));
  const env = makeEnv(o);
  try {
    return await run(env, [o.prog, ...argv.slice(2)]);
  } catch (e) {
    if (e instanceof ToolExit) return e.status;
    if (e instanceof HelpRequest) {
      o.out(helpText(env));
      return 0;
    }
    o.error(errorMessage(e));
    return 1;
  } finally {
    o.flush();
  }
}

/** qemu-img's own options, before the subcommand ('+': the first non-option ends them). */
const GLOBAL_OPTIONS: readonly ImgOption<unknown>[] = [
  HELP,
  {
    short: 'V',
    long: 'version',
    set: (_s, _a, env) => {
      env.o.out(versionText());
      throw new ToolExit(0);
    },
  },
  // -T: trace events are emitted on each node's `trace` emitter; the tool has no sink for them.
  { short: 'T', long: 'trace', arg: 1, set: () => undefined },
];

async function run(env: ImgEnv, argv: string[]): Promise<number> {
  const o = env.o;
  if (argv.length < 2) errorExit(o, 'Not enough arguments');
  const rest = parseImgOptions(env, argv, GLOBAL_OPTIONS, null, '+:');
  if (rest.length === 0) errorExit(o, 'Not enough arguments');
  const cmdName = rest[0];
  const cmd = COMMANDS.find(([name]) => name === cmdName);
  if (!cmd) errorExit(o, `Command not found: ${cmdName}`);
  return cmd[1](env, rest);
}
