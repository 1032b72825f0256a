// blk-io's write and writev, as qemu-io 7.2 has them: options, checks, messages and reports in
// its order.
import { bdrvVmstate } from '../../index.js';
import { rootOf } from '../shared/open.js';
import { BDRV_REQUEST_MAX_BYTES } from './format.js';
import { allocFromFile, errnoText, toolError, writeFua, type IoSession } from './session.js';
import {
  EINVAL,
  EIO,
  FUA,
  PATTERN,
  QUIET,
  STATS,
  checkSectorAligned,
  cmdOptions,
  image,
  offsetAndCount,
  writeFlags,
  type CmdInfo,
  type CmdOption,
  type WriteFlags,
} from './command.js';
import {
  aioWait,
  fillBuffer,
  noFallbackCapable,
  offsetAndVector,
  outOfBounds,
  reportWrite,
  runIo,
  unsafeRequest,
} from './request.js';

interface WriteArgs extends WriteFlags {
  /** -b: VM state; -c: compressed; -C here is the statistics (cflag). */
  bflag: boolean;
  compressed: boolean;
  noFallback: boolean;
  mayUnmap: boolean;
  zflag: boolean;
  /** -s FILE: the data comes from a file. */
  source: string | null;
}

const flag = (short: string, key: 'bflag' | 'compressed' | 'noFallback' | 'mayUnmap' | 'zflag'): CmdOption<WriteArgs> => ({
  short,
  set: (a) => void (a[key] = true),
});

const WRITE_OPTIONS: readonly CmdOption<WriteArgs>[] = [
  flag('b', 'bflag'),
  flag('c', 'compressed'),
  STATS,
  FUA,
  flag('n', 'noFallback'),
  // -p: ignored, for backwards compatibility.
  { short: 'p', set: () => undefined },
  PATTERN,
  QUIET,
  { short: 's', arg: 1, set: (a, arg) => void (a.source = arg) },
  flag('u', 'mayUnmap'),
  flag('z', 'zflag'),
];

/** write's checks of its option combinations, in qemu-io's order; the message or null. */
function writeConflict(a: WriteArgs): string | null {
  if (a.bflag && a.zflag) return '-b and -z cannot be specified at the same time';
  if (a.fua && (a.bflag || a.compressed)) return '-f and -b or -c cannot be specified at the same time';
  if (a.noFallback && !a.zflag) return '-n requires -z to be specified';
  if (a.mayUnmap && !a.zflag) return '-u requires -z to be specified';
  if (Number(a.zflag) + Number(a.pflag) + Number(a.source !== null) > 1) return 'Only one of -z, -P, and -s can be specified at the same time';
  return null;
}

export async function writeF(s: IoSession, argv: string[]): Promise<number> {
  const a: WriteArgs = { ...writeFlags(), bflag: false, compressed: false, noFallback: false, mayUnmap: false, zflag: false, source: null };
  const p = cmdOptions(s, argv, writeCmd, WRITE_OPTIONS, a, 2, 2);
  if (typeof p === 'number') return p;
  const conflict = writeConflict(a);
  if (conflict !== null) {
    s.o.out(`${conflict}\n`);
    return EINVAL;
  }
  const n = offsetAndCount(s, p.args);
  if (typeof n === 'number') return n;
  const { offset, count } = n;
  if (count > BDRV_REQUEST_MAX_BYTES && !a.noFallback) {
    s.o.out(`length cannot exceed ${BDRV_REQUEST_MAX_BYTES} without -n, given ${p.args[1]}\n`);
    return EINVAL;
  }
  if ((a.bflag || a.compressed) && !checkSectorAligned(s, n.offsetBig, n.countBig)) return EINVAL;
  const bs = image(s);
  // The VM state area lies past the guest disk: no guest bounds for -b.
  const oob = unsafeRequest(offset, count) || (!a.bflag && (await outOfBounds(bs, offset, count)));
  let buf: Uint8Array | null = null;
  if (!a.zflag) {
    if (a.source !== null) {
      buf = allocFromFile(s.o, a.source, oob ? Math.min(count, 1 << 20) : count);
      if (buf === null) return EINVAL;
    } else if (!oob) {
      buf = fillBuffer(count, a.pattern);
    }
  }
  const fua = writeFua(s, a.fua);
  const { t, err } = await runIo(s, async () => {
    if (oob) throw toolError('EIO', 'write');
    if (a.bflag) {
      await bdrvVmstate(rootOf(bs), true, offset, buf ?? new Uint8Array(0));
      return;
    }
    if (a.compressed) {
      await bs.pwriteCompressed(offset, buf ?? new Uint8Array(0));
      return;
    }
    if (a.zflag && a.noFallback && !noFallbackCapable(rootOf(bs))) throw toolError('ENOTSUP', 'write');
    // The cache mode's FUA applies to zero writes too (blk_co_pwrite_zeroes goes through the
    // same BlockBackend write path).
    if (a.zflag) await bs.writeZeroes(offset, count, { mayUnmap: a.mayUnmap, noFallback: a.noFallback, fua });
    else await bs.pwrite(offset, buf ?? new Uint8Array(0), { fua });
  });
  if (err !== null) {
    s.o.out(`write failed: ${errnoText(err)}\n`);
    return EIO;
  }
  reportWrite(s, a, t, offset, count);
  return 0;
}

const WRITEV_OPTIONS: readonly CmdOption<WriteFlags>[] = [STATS, FUA, QUIET, PATTERN];

export async function writevF(s: IoSession, argv: string[]): Promise<number> {
  const a = writeFlags();
  const p = cmdOptions(s, argv, writevCmd, WRITEV_OPTIONS, a, 2);
  if (typeof p === 'number') return p;
  const v = offsetAndVector(s, p.args, a.pattern);
  if (typeof v === 'number') return v;
  const { offset } = v;
  const { t, err } = await aioWait(s, image(s), true, offset, v.qiov, writeFua(s, a.fua));
  if (err !== null) {
    s.o.out(`writev failed: ${errnoText(err)}\n`);
    return EIO;
  }
  reportWrite(s, a, t, offset, v.buf.length);
  return 0;
}

export const writeCmd: CmdInfo = { name: 'write', altname: 'w', cfunc: writeF, argmin: 2, argmax: -1, write: true, args: '[-bcCfnquz] [-P pattern | -s source_file] off len', oneline: 'writes a number of bytes at a specified offset' };
export const writevCmd: CmdInfo = { name: 'writev', cfunc: writevF, argmin: 2, argmax: -1, write: true, args: '[-Cfq] [-P pattern] off len [len..]', oneline: 'writes a number of bytes at a specified offset' };
