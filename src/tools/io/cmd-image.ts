// blk-io's flush, discard, truncate, length, info, map and alloc (qemu-io 7.2 semantics).
import { BDRV_SECTOR_SIZE, isBlockError, type BlockBackend } from '../../index.js';
import { cvtstr } from '../shared/printf.js';
import { BDRV_REQUEST_MAX_BYTES, cvtnum, printCvtnumErr, printReport } from './format.js';
import { errText, errnoText, toolError, type IoSession } from './session.js';
import {
  EINVAL,
  EIO,
  ENOTSUP,
  OptFail,
  QUIET,
  STATS,
  cmdOptions,
  image,
  imageNode,
  offsetAndCount,
  parseNum,
  type CmdInfo,
  type CmdOption,
} from './command.js';
import { outOfBounds, runIo, unsafeRequest } from './request.js';

export async function flushF(s: IoSession): Promise<number> {
  const { err } = await runIo(s, () => image(s).flush());
  return err === null ? 0 : EIO;
}

const DISCARD_OPTIONS: readonly CmdOption<{ cflag: boolean; qflag: boolean }>[] = [STATS, QUIET];

export async function discardF(s: IoSession, argv: string[]): Promise<number> {
  const a = { cflag: false, qflag: false };
  const p = cmdOptions(s, argv, discardCmd, DISCARD_OPTIONS, a, 2, 2);
  if (typeof p === 'number') return p;
  const n = offsetAndCount(s, p.args);
  if (typeof n === 'number') return n;
  const { offset, count: bytes } = n;
  if (bytes > BDRV_REQUEST_MAX_BYTES) {
    s.o.out(`length cannot exceed ${BDRV_REQUEST_MAX_BYTES}, given ${p.args[1]}\n`);
    return EINVAL;
  }
  const bs = image(s);
  const { t, err } = await runIo(s, async () => {
    if (unsafeRequest(offset, bytes)) throw toolError('EIO', 'discard');
    await bs.discard(offset, bytes);
  });
  if (err !== null) {
    s.o.out(`discard failed: ${errnoText(err)}\n`);
    return EIO;
  }
  if (!a.qflag) printReport(s.o, 'discard', t, offset, bytes, bytes, 1, a.cflag);
  return 0;
}

const PREALLOC_MODES = ['off', 'metadata', 'falloc', 'full'];

const TRUNCATE_OPTIONS: readonly CmdOption<{ prealloc: string }>[] = [
  {
    short: 'm',
    arg: 1,
    set: (a, arg, s) => {
      if (!PREALLOC_MODES.includes(arg)) {
        s.o.error(`Invalid preallocation mode '${arg}'`);
        return EINVAL;
      }
      a.prealloc = arg;
    },
  },
];

export async function truncateF(s: IoSession, argv: string[]): Promise<number> {
  const a = { prealloc: 'off' };
  // qemu-io crashes on "truncate -m MODE" without a size; say how to use it instead.
  const p = cmdOptions(s, argv, truncateCmd, TRUNCATE_OPTIONS, a, 1);
  if (typeof p === 'number') return p;
  const r = cvtnum(s.o, p.args[0]);
  if (!r.ok) {
    // qemu-io quotes argv[1] here, whatever it is.
    printCvtnumErr(s.o, r.error, p.argv[1]);
    return EINVAL;
  }
  const bs = image(s);
  const { err } = await runIo(s, async () => {
    if (!Number.isSafeInteger(r.value)) throw toolError('EFBIG', 'truncate');
    // The mode goes down the stack: a driver that cannot preallocate (QED) refuses it with
    // QEMU's message, as the file driver refuses the modes it lacks.
    await bs.truncate(r.value, a.prealloc);
  });
  if (err !== null) {
    s.o.error(errText(err));
    return EIO;
  }
  return 0;
}

export async function lengthF(s: IoSession): Promise<number> {
  try {
    const size = await image(s).getLength();
    s.o.out(`${cvtstr(size)}\n`);
    return 0;
  } catch (e) {
    s.o.out(`getlength: ${errnoText(e)}\n`);
    return EIO;
  }
}

export async function infoF(s: IoSession): Promise<number> {
  const bs = imageNode(s);
  s.o.out(`format name: ${bs.driver.formatName}\n`);
  // qemu-io prints the driver's protocol name as well, under the same label (file, blkdebug).
  const proto = bs.driver.protocolName;
  if (proto !== undefined) s.o.out(`format name: ${proto}\n`);
  let clusterSize = 0;
  try {
    clusterSize = (await bs.getInfo()).clusterSize;
  } catch (e) {
    // A protocol node (file-posix answers with an empty info) and a filter (asks its child,
    // down to the file) have no format information: QEMU reports a cluster size of 0.
    if (!isBlockError(e, 'ENOTSUP') || proto === undefined) return ENOTSUP;
  }
  s.o.out(`cluster size: ${cvtstr(clusterSize)}\n`);
  s.o.out(`vm state offset: ${cvtstr(0)}\n`);
  return 0;
}

/** map_is_allocated: merge consecutive ranges with the same allocation state. */
async function mapIsAllocated(
  bs: BlockBackend,
  offset: number,
  bytes: number,
): Promise<{ allocated: boolean; pnum: number }> {
  const first = await bs.isAllocated(offset, bytes);
  let pnum = first.pnum;
  let num = first.pnum;
  let off = offset;
  let left = bytes;
  while (left > 0) {
    off += num;
    left -= num;
    if (left <= 0) break;
    const r = await bs.isAllocated(off, left);
    if (r.allocated === first.allocated && r.pnum > 0) {
      pnum += r.pnum;
      num = r.pnum;
    } else {
      break;
    }
  }
  return { allocated: first.allocated, pnum };
}

export async function mapF(s: IoSession): Promise<number> {
  const bs = image(s);
  let bytes: number;
  try {
    bytes = await bs.getLength();
  } catch (e) {
    s.o.error(`Failed to query image length: ${errnoText(e)}`);
    return EIO;
  }
  let offset = 0;
  while (bytes > 0) {
    let r: { allocated: boolean; pnum: number };
    try {
      r = await mapIsAllocated(bs, offset, bytes);
    } catch (e) {
      s.poll();
      s.o.error(`Failed to get allocation status: ${errnoText(e)}`);
      return EIO;
    }
    s.poll();
    if (r.pnum === 0) {
      s.o.error('Unexpected end of image');
      return EIO;
    }
    const what = r.allocated ? '    allocated' : 'not allocated';
    s.o.out(
      `${cvtstr(r.pnum)} (0x${r.pnum.toString(16)}) bytes ${what} at offset ${cvtstr(offset)} (0x${offset.toString(16)})\n`,
    );
    offset += r.pnum;
    bytes -= r.pnum;
  }
  return 0;
}

export async function allocF(s: IoSession, argv: string[]): Promise<number> {
  const start = parseNum(s, argv[1]);
  if (start instanceof OptFail) return start.ret;
  let count = BDRV_SECTOR_SIZE;
  if (argv.length === 3) {
    const c = parseNum(s, argv[2]);
    if (c instanceof OptFail) return c.ret;
    count = c;
  }
  const bs = image(s);
  let offset = start;
  let remaining = count;
  let sumAlloc = 0;
  while (remaining > 0) {
    let r: { allocated: boolean; pnum: number };
    try {
      if (unsafeRequest(offset, 0)) r = { allocated: false, pnum: 0 };
      else r = await bs.isAllocated(offset, Math.min(remaining, Number.MAX_SAFE_INTEGER - offset));
    } catch (e) {
      s.poll();
      // Past the end there is nothing to report (QEMU answers with 0 bytes).
      if (isBlockError(e, 'EIO') && (await outOfBounds(bs, offset, 0))) {
        r = { allocated: false, pnum: 0 };
      } else {
        s.o.out(`is_allocated failed: ${errnoText(e)}\n`);
        return EIO;
      }
    }
    offset += r.pnum;
    remaining -= r.pnum;
    if (r.allocated) sumAlloc += r.pnum;
    if (r.pnum === 0) {
      count -= remaining;
      remaining = 0;
    }
  }
  s.poll();
  s.o.out(`${sumAlloc}/${count} bytes allocated at offset ${cvtstr(start)}\n`);
  return 0;
}

export const discardCmd: CmdInfo = { name: 'discard', cfunc: discardF, argmin: 2, argmax: -1, write: true, args: '[-Cq] off len', oneline: 'discards a number of bytes at a specified offset' };
export const truncateCmd: CmdInfo = { name: 'truncate', cfunc: truncateF, argmin: 1, argmax: 3, write: true, args: '[-m prealloc_mode] off', oneline: 'truncates the current file at the given offset' };
