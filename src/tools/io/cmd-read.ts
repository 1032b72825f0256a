// blk-io's read and readv, as qemu-io 7.2 has them: options, checks, messages and reports in
// its order.
import { bdrvVmstate } from '../../index.js';
import { rootOf } from '../shared/open.js';
import { BDRV_REQUEST_MAX_BYTES } from './format.js';
import { errnoText, toolError, type IoSession } from './session.js';
import {
  EINVAL,
  EIO,
  PATTERN,
  QUIET,
  STATS,
  VERBOSE,
  checkSectorAligned,
  cmdOptions,
  image,
  OptFail,
  offsetAndCount,
  parseNum,
  readFlags,
  usage,
  type CmdInfo,
  type CmdOption,
  type ReadFlags,
} from './command.js';
import { aioWait, fillBuffer, outOfBounds, readvArgs, reportRead, runIo, unsafeRequest } from './request.js';

interface ReadArgs extends ReadFlags {
  bflag: boolean;
  /** -s: where the pattern check starts; -l: how long it is (null: to the end). */
  patternOffset: number | null;
  patternCount: number | null;
}

/** -s / -l: a number, or the command fails with the parser's value. */
const num = (short: string, key: 'patternOffset' | 'patternCount'): CmdOption<ReadArgs> => ({
  short,
  arg: 1,
  set: (a, arg, s) => {
    const v = parseNum(s, arg);
    if (v instanceof OptFail) return v.ret;
    a[key] = v;
  },
});

const READ_OPTIONS: readonly CmdOption<ReadArgs>[] = [
  { short: 'b', set: (a) => void (a.bflag = true) },
  STATS,
  num('l', 'patternCount'),
  // -p: ignored, for backwards compatibility.
  { short: 'p', set: () => undefined },
  PATTERN,
  QUIET,
  num('s', 'patternOffset'),
  VERBOSE,
];

export async function readF(s: IoSession, argv: string[]): Promise<number> {
  const a: ReadArgs = { ...readFlags(), bflag: false, patternOffset: null, patternCount: null };
  const p = cmdOptions(s, argv, readCmd, READ_OPTIONS, a, 2, 2);
  if (typeof p === 'number') return p;
  const n = offsetAndCount(s, p.args);
  if (typeof n === 'number') return n;
  const { offset, count } = n;
  if (count > BDRV_REQUEST_MAX_BYTES) {
    s.o.out(`length cannot exceed ${BDRV_REQUEST_MAX_BYTES}, given ${p.args[1]}\n`);
    return EINVAL;
  }
  if (!a.pflag && (a.patternCount !== null || a.patternOffset !== null)) {
    usage(s, readCmd);
    return EINVAL;
  }
  const patternOffset = a.patternOffset ?? 0;
  const patternCount = a.patternCount ?? count - patternOffset;
  if (patternCount < 0 || patternCount + patternOffset > count) {
    s.o.out('pattern verification range exceeds end of read data\n');
    return EINVAL;
  }
  if (a.bflag && !checkSectorAligned(s, n.offsetBig, n.countBig)) return EINVAL;
  const bs = image(s);
  // Bounds are known before the buffer exists: a read past the end fails without allocating.
  // The VM state area lies past the guest disk: no guest bounds for -b.
  const oob = unsafeRequest(offset, count) || (!a.bflag && (await outOfBounds(bs, offset, count)));
  const buf = oob ? new Uint8Array(0) : fillBuffer(count, 0xab);
  const { t, err } = await runIo(s, async () => {
    if (oob) throw toolError('EIO', 'read');
    if (a.bflag) await bdrvVmstate(rootOf(bs), false, offset, buf);
    else await bs.pread(offset, buf);
  });
  if (err !== null) {
    s.o.out(`read failed: ${errnoText(err)}\n`);
    return EIO;
  }
  return reportRead(s, a, buf, t, offset, { start: patternOffset, len: patternCount });
}

const READV_OPTIONS: readonly CmdOption<ReadFlags>[] = [STATS, PATTERN, QUIET, VERBOSE];

export async function readvF(s: IoSession, argv: string[]): Promise<number> {
  const v = readvArgs(s, argv, readvCmd, READV_OPTIONS);
  if (typeof v === 'number') return v;
  const { a, offset } = v;
  const { t, err } = await aioWait(s, image(s), false, offset, v.qiov, false);
  if (err !== null) {
    s.o.out(`readv failed: ${errnoText(err)}\n`);
    return EIO;
  }
  return reportRead(s, a, v.buf, t, offset);
}

export const readCmd: CmdInfo = { name: 'read', altname: 'r', cfunc: readF, argmin: 2, argmax: -1, args: '[-abCqv] [-P pattern [-s off] [-l len]] off len', oneline: 'reads a number of bytes at a specified offset' };
export const readvCmd: CmdInfo = { name: 'readv', cfunc: readvF, argmin: 2, argmax: -1, args: '[-Cqv] [-P pattern] off len [len..]', oneline: 'reads a number of bytes at a specified offset' };
