// blk-img check: run the format's consistency check (optionally repairing) and report it like
// qemu-img check, with its exit codes (0 clean, 1 check failed, 2 corruptions, 3 leaks,
// 63 no check support).
import { isBlockError, type BlockDriverState, type CheckFix } from '../index.js';
import { ERRNO_MESSAGES } from '../block/errors.js';
import { errorExit, formatFixed, parseOptions, ToolExit } from './common.js';
import {
  HelpRequest,
  LONG_FORCE_SHARE,
  LONG_FORMAT,
  LONG_HELP,
  LONG_IMAGE_OPTS,
  LONG_OBJECT,
  LONG_OUTPUT,
  OPT_OUTPUT,
  closeQuietly,
  imgOpen,
  jsonObject,
  parseOutputFormat,
  toJsonPretty,
  unsupportedOption,
  type ImgEnv,
} from './img-util.js';

/** QAPI ImageCheck. */
export interface ImageCheck {
  filename: string;
  format: string;
  checkErrors: number;
  imageEndOffset: number;
  corruptions: number;
  leaks: number;
  corruptionsFixed: number;
  leaksFixed: number;
  totalClusters: number;
  allocatedClusters: number;
  fragmentedClusters: number;
  compressedClusters: number;
}

async function collectImageCheck(env: ImgEnv, bs: BlockDriverState, filename: string, fix: CheckFix): Promise<ImageCheck> {
  // The format's findings go to stderr line by line, as QEMU's fprintf(stderr) does.
  const r = await bs.check({ ...fix, report: (line) => env.o.errRaw(`${line}\n`) });
  return {
    filename,
    format: bs.driver.formatName,
    checkErrors: r.checkErrors,
    imageEndOffset: r.imageEndOffset ?? 0,
    corruptions: r.corruptions,
    leaks: r.leaks,
    corruptionsFixed: r.corruptionsFixed,
    leaksFixed: r.leaksFixed,
    totalClusters: r.totalClusters,
    allocatedClusters: r.allocatedClusters,
    fragmentedClusters: r.fragmentedClusters,
    compressedClusters: r.compressedClusters,
  };
}

const nz = (n: number): number | undefined => (n !== 0 ? n : undefined);

export function imageCheckJson(c: ImageCheck): string {
  return toJsonPretty(
    jsonObject([
      ['filename', c.filename],
      ['format', c.format],
      ['check-errors', c.checkErrors],
      ['image-end-offset', nz(c.imageEndOffset)],
      ['corruptions', nz(c.corruptions)],
      ['leaks', nz(c.leaks)],
      ['corruptions-fixed', nz(c.corruptionsFixed)],
      ['leaks-fixed', nz(c.leaksFixed)],
      ['total-clusters', nz(c.totalClusters)],
      ['allocated-clusters', nz(c.allocatedClusters)],
      ['fragmented-clusters', nz(c.fragmentedClusters)],
      ['compressed-clusters', nz(c.compressedClusters)],
    ]),
  );
}

export function imageCheckHuman(c: ImageCheck): string {
  let s = '';
  if (!(c.corruptions || c.leaks || c.checkErrors)) {
    s += 'No errors were found on the image.\n';
  } else {
    if (c.corruptions) {
      s += `\n${c.corruptions} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n`;
    }
    if (c.leaks) {
      s += `\n${c.leaks} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n`;
    }
    if (c.checkErrors) s += `\n${c.checkErrors} internal errors have occurred during the check.\n`;
  }
  if (c.totalClusters !== 0 && c.allocatedClusters !== 0) {
    s +=
      `${c.allocatedClusters}/${c.totalClusters} = ${formatFixed((c.allocatedClusters * 100) / c.totalClusters, 2)}% allocated, ` +
      `${formatFixed((c.fragmentedClusters * 100) / c.allocatedClusters, 2)}% fragmented, ` +
      `${formatFixed((c.compressedClusters * 100) / c.allocatedClusters, 2)}% compressed clusters\n`;
  }
  if (c.imageEndOffset) s += `Image end offset: ${c.imageEndOffset}\n`;
  return s;
}

export async function imgCheck(env: ImgEnv, argv: string[]): Promise<number> {
  let fmt: string | undefined;
  let outputArg: string | null = null;
  let fix: CheckFix = {};
  let repair = false;
  let quiet = false;
  let forceShare = false;
  const rest = parseOptions(
    env.o,
    argv,
    ':hf:r:T:qU',
    [LONG_HELP, LONG_FORMAT, { name: 'repair', hasArg: 1, val: 'r' }, LONG_OUTPUT, LONG_OBJECT, LONG_IMAGE_OPTS, LONG_FORCE_SHARE],
    (opt, arg = '') => {
      switch (opt) {
        case 'h':
          throw new HelpRequest();
        case 'f':
          fmt = arg;
          break;
        case 'r':
          repair = true;
          if (arg === 'leaks') fix = { leaks: true };
          else if (arg === 'all') fix = { leaks: true, errors: true };
          else errorExit(env.o, `Unknown option value for -r (expecting 'leaks' or 'all'): ${arg}`);
          break;
        case OPT_OUTPUT:
          outputArg = arg;
          break;
        case 'T':
          checkCacheMode(env, arg, 'source cache');
          break;
        case 'q':
          quiet = true;
          break;
        case 'U':
          forceShare = true;
          break;
        default:
          unsupportedOption(env, `--${opt}`);
      }
    },
  );
  if (rest.length !== 1) errorExit(env.o, 'Expecting one image file name');
  const filename = rest[0];
  const output = outputArg === null ? 'human' : parseOutputFormat(env, outputArg);

  const bs = await imgOpen(env, filename, { format: fmt, readOnly: !repair, check: true, forceShare });
  try {
    let check: ImageCheck;
    try {
      check = await collectImageCheck(env, bs, filename, fix);
      if (check.corruptionsFixed || check.leaksFixed) {
        if (output === 'human' && !quiet) {
          env.o.out(
            'The following inconsistencies were found and repaired:\n\n' +
              `    ${check.leaksFixed} leaked clusters\n` +
              `    ${check.corruptionsFixed} corruptions\n\n` +
              'Double checking the fixed image now...\n',
          );
        }
        const { leaksFixed, corruptionsFixed } = check;
        check = await collectImageCheck(env, bs, filename, {});
        check.leaksFixed = leaksFixed;
        check.corruptionsFixed = corruptionsFixed;
      }
    } catch (e) {
      if (isBlockError(e, 'ENOTSUP')) {
        env.o.error('This image format does not support checks');
        return 63;
      }
      env.o.error(`Check failed: ${isBlockError(e) ? ERRNO_MESSAGES[e.code] : String(e)}`);
      return 1;
    }
    if (!quiet) env.o.out(output === 'human' ? imageCheckHuman(check) : `${imageCheckJson(check)}\n`);
    if (check.checkErrors) {
      env.o.error('Check failed');
      return 1;
    }
    if (check.corruptions) return 2;
    if (check.leaks) return 3;
    return 0;
  } finally {
    await closeQuietly(bs);
  }
}

const CACHE_MODES = ['none', 'off', 'writeback', 'writethrough', 'directsync', 'unsafe'];

/** bdrv_parse_cache_mode: the page cache is the host's business here; only validate. */
export function checkCacheMode(env: ImgEnv, mode: string, what: string): void {
  if (!CACHE_MODES.includes(mode)) {
    env.o.error(`Invalid ${what} option: ${mode}`);
    throw new ToolExit(1);
  }
}
