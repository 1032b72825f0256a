// blk-img check: run the format's consistency check (optionally repairing) and report it like
// qemu-img check, with its exit codes (0 clean, 1 check failed, 2 corruptions, 3 leaks,
// 63 no check support).
import { ERRNO_MESSAGES, isBlockError, type BlockDriverState, type CheckFix, type CheckResult } from '../../index.js';
import { closeQuietly, rootOf } from '../shared/open.js';
import { errorExit } from '../shared/output.js';
import { formatFixed } from '../shared/printf.js';
import { jsonObject, toJsonPretty } from './json.js';
import type { ImgEnv } from './env.js';
import { imgOpen } from './open.js';
import { FORCE_SHARE, FORMAT_LONG, HELP, IMAGE_OPTS, OBJECT, OUTPUT, QUIET, checkCacheMode, imgArgs, oneFilename, parseImgOptions, parseOutputFormat, type ImgArgs, type ImgOption } from './options.js';

/** QAPI ImageCheck: the format's check result, named after the image. */
export interface ImageCheck extends CheckResult {
  filename: string;
  format: string;
  imageEndOffset: number;
}

async function collectImageCheck(bs: BlockDriverState, filename: string, fix: CheckFix): Promise<ImageCheck> {
  const r = await bs.check(fix);
  return { ...r, filename, format: bs.driver.formatName, imageEndOffset: r.imageEndOffset ?? 0 };
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

interface CheckArgs extends ImgArgs {
  fix: CheckFix;
  repair: boolean;
}

const CHECK_OPTIONS: readonly ImgOption<CheckArgs>[] = [
  HELP,
  FORMAT_LONG,
  {
    short: 'r',
    long: 'repair',
    arg: 1,
    set: (s, arg, env) => {
      s.repair = true;
      if (arg === 'leaks') s.fix = { leaks: true };
      else if (arg === 'all') s.fix = { leaks: true, errors: true };
      else errorExit(env.o, `Unknown option value for -r (expecting 'leaks' or 'all'): ${arg}`);
    },
  },
  OUTPUT,
  { short: 'T', arg: 1, set: (_s, arg, env) => checkCacheMode(env, arg, 'source cache') },
  QUIET,
  OBJECT,
  IMAGE_OPTS,
  FORCE_SHARE,
];

export async function imgCheck(env: ImgEnv, argv: string[]): Promise<number> {
  const args: CheckArgs = { ...imgArgs(), fix: {}, repair: false };
  const filename = oneFilename(env, parseImgOptions(env, argv, CHECK_OPTIONS, args));
  const output = parseOutputFormat(env, args.output);
  const { fix, quiet } = args;

  const blk = await imgOpen(env, filename, { imageOpts: args.imageOpts, format: args.fmt, readOnly: !args.repair, check: true, forceShare: args.forceShare });
  const bs = rootOf(blk);
  try {
    let check: ImageCheck;
    try {
      check = await collectImageCheck(bs, filename, fix);
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
        check = await collectImageCheck(bs, filename, {});
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
    await closeQuietly(blk);
  }
}
