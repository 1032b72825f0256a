// blk-io's aio_read, aio_write and aio_flush (qemu-io 7.2): the command returns once the request
// is submitted; its report waits for the main loop (a command that waits for I/O, aio_flush,
// exit).
import { nowNs } from './format.js';
import { errnoText, toolError, writeFua, type IoSession } from './session.js';
import {
  EINVAL,
  FUA,
  PATTERN,
  QUIET,
  STATS,
  VERBOSE,
  cmdOptions,
  image,
  offsetAndCount,
  writeFlags,
  type CmdInfo,
  type CmdOption,
  type ReadFlags,
  type WriteFlags,
} from './command.js';
import { offsetAndVector, readvArgs, reportRead, reportWrite, submitAio, unsafeRequest } from './request.js';

/** -i: only counts an invalid request in the statistics, which we do not keep. */
const invalidRequest = (what: string): CmdOption<unknown> => ({
  short: 'i',
  set: (_a, _arg, s) => {
    s.o.out(`injecting invalid ${what} request\n`);
    return 0;
  },
});

const AIO_READ_OPTIONS: readonly CmdOption<ReadFlags>[] = [STATS, PATTERN, invalidRequest('read'), QUIET, VERBOSE];

export async function aioReadF(s: IoSession, argv: string[]): Promise<number> {
  const v = readvArgs(s, argv, aioReadCmd, AIO_READ_OPTIONS);
  if (typeof v === 'number') return v;
  const { a, offset } = v;
  const t1 = nowNs();
  submitAio(s, image(s), false, offset, v.qiov, (err) => {
    const t = nowNs() - t1;
    if (err !== null) s.o.out(`readv failed: ${errnoText(err)}\n`);
    // Asynchronous: a mismatch is reported but the command already succeeded.
    else reportRead(s, a, v.buf, t, offset);
  });
  return 0;
}

interface AioWriteArgs extends WriteFlags {
  mayUnmap: boolean;
  zflag: boolean;
}

const AIO_WRITE_OPTIONS: readonly CmdOption<AioWriteArgs>[] = [
  STATS,
  FUA,
  invalidRequest('write'),
  QUIET,
  // qemu-io 7.2 never records -P here, so "-z and -P" is never refused (-z wins).
  PATTERN,
  { short: 'u', set: (a) => void (a.mayUnmap = true) },
  { short: 'z', set: (a) => void (a.zflag = true) },
];

export async function aioWriteF(s: IoSession, argv: string[]): Promise<number> {
  const a: AioWriteArgs = { ...writeFlags(), mayUnmap: false, zflag: false };
  const p = cmdOptions(s, argv, aioWriteCmd, AIO_WRITE_OPTIONS, a, 2);
  if (typeof p === 'number') return p;
  if (a.zflag && p.args.length !== 2) {
    s.o.out('-z supports only a single length parameter\n');
    return EINVAL;
  }
  if (a.mayUnmap && !a.zflag) {
    s.o.out('-u requires -z to be specified\n');
    return EINVAL;
  }
  const bs = image(s);
  const report = (t1: bigint, offset: number, size: number) => (err: unknown) => {
    const t = nowNs() - t1;
    if (err !== null) s.o.out(`aio_write failed: ${errnoText(err)}\n`);
    else reportWrite(s, a, t, offset, size);
  };
  if (a.zflag) {
    const n = offsetAndCount(s, p.args);
    if (typeof n === 'number') return n;
    const { offset, count } = n;
    // qemu-io 7.2 never starts the clock for -z: the time shown is the monotonic clock itself.
    const done = report(0n, offset, count);
    const req = (async () => {
      let err: unknown = null;
      try {
        if (unsafeRequest(offset, count)) throw toolError('EIO', 'aio_write');
        await bs.writeZeroes(offset, count, { mayUnmap: a.mayUnmap, fua: writeFua(s, a.fua) });
      } catch (e) {
        err = e;
      }
      s.queueReport(() => done(err));
    })();
    s.track(req);
    return 0;
  }
  const v = offsetAndVector(s, p.args, a.pattern);
  if (typeof v === 'number') return v;
  submitAio(s, bs, true, v.offset, v.qiov, report(nowNs(), v.offset, v.buf.length), writeFua(s, a.fua));
  return 0;
}

export async function aioFlushF(s: IoSession): Promise<number> {
  await s.drain();
  return 0;
}

export const aioReadCmd: CmdInfo = { name: 'aio_read', cfunc: aioReadF, argmin: 2, argmax: -1, args: '[-Ciqv] [-P pattern] off len [len..]', oneline: 'asynchronously reads a number of bytes' };
export const aioWriteCmd: CmdInfo = { name: 'aio_write', cfunc: aioWriteF, argmin: 2, argmax: -1, write: true, args: '[-Cfiquz] [-P pattern] off len [len..]', oneline: 'asynchronously writes a number of bytes' };
