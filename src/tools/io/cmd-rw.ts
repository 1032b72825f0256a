// blk-io's read, write, readv, writev, aio_read, aio_write and aio_flush, as qemu-io 7.2 has
// them: options, checks, messages and reports in its order.
import { BDRV_SECTOR_SIZE } from '../../block/driver.js';
import { IOVector } from '../../block/iovec.js';
import type { BlockDriverState } from '../../block/node.js';
import { BDRV_REQUEST_MAX_BYTES, cvtnum, dumpBuffer, nowNs, parsePattern, printCvtnumErr, printReport, type Elapsed } from './format.js';
import { allocFromFile, errnoText, toolError, writeFua, type IoSession } from './session.js';
import {
  EINVAL,
  EIO,
  OptFail,
  checkSectorAligned,
  fillBuffer,
  firstMismatch,
  getopts,
  image,
  noFallbackCapable,
  outOfBounds,
  parseNum,
  parseNumBig,
  runIo,
  submitAio,
  unsafeRequest,
  usage,
  type CmdInfo,
} from './command.js';

export async function readF(s: IoSession, argv: string[]): Promise<number> {
  let cflag = false;
  let qflag = false;
  let vflag = false;
  let pflag = false;
  let sflag = false;
  let lflag = false;
  let bflag = false;
  let pattern = 0;
  let patternOffset = 0;
  let patternCount = 0;
  let fail: OptFail | null = null;
  const g = getopts(s, argv, 'bCl:pP:qs:v', (c, arg) => {
    switch (c) {
      case 'b':
        bflag = true;
        break;
      case 'C':
        cflag = true;
        break;
      case 'l': {
        lflag = true;
        const v = parseNum(s, arg ?? '');
        if (v instanceof OptFail) {
          fail = v;
          return false;
        }
        patternCount = v;
        break;
      }
      case 'p':
        break;
      case 'P':
        pflag = true;
        pattern = parsePattern(s.o, arg ?? '');
        if (pattern < 0) {
          fail = new OptFail(EINVAL);
          return false;
        }
        break;
      case 'q':
        qflag = true;
        break;
      case 's': {
        sflag = true;
        const v = parseNum(s, arg ?? '');
        if (v instanceof OptFail) {
          fail = v;
          return false;
        }
        patternOffset = v;
        break;
      }
      case 'v':
        vflag = true;
        break;
    }
    return true;
  });
  if (g === null) {
    usage(s, readCmd);
    return EINVAL;
  }
  if (fail !== null) return (fail as OptFail).ret;
  const args = g.rest;
  if (g.optind !== args.length - 2) {
    usage(s, readCmd);
    return EINVAL;
  }
  const offsetR = parseNumBig(s, args[g.optind]);
  if (offsetR instanceof OptFail) return offsetR.ret;
  const countR = parseNumBig(s, args[g.optind + 1]);
  if (countR instanceof OptFail) return countR.ret;
  const [offset, offsetBig, count, countBig] = [offsetR.value, offsetR.big, countR.value, countR.big];
  if (count > BDRV_REQUEST_MAX_BYTES) {
    s.o.out(`length cannot exceed ${BDRV_REQUEST_MAX_BYTES}, given ${args[g.optind + 1]}\n`);
    return EINVAL;
  }
  if (!pflag && (lflag || sflag)) {
    usage(s, readCmd);
    return EINVAL;
  }
  if (!lflag) patternCount = count - patternOffset;
  if (patternCount < 0 || patternCount + patternOffset > count) {
    s.o.out('pattern verification range exceeds end of read data\n');
    return EINVAL;
  }
  if (bflag) {
    if (!checkSectorAligned(s, offsetBig, countBig)) return EINVAL;
  }
  const bs = image(s);
  // Bounds are known before the buffer exists: a read past the end fails without allocating.
  const oob = unsafeRequest(offset, count) || (await outOfBounds(bs, offset, count));
  const buf = oob || bflag ? new Uint8Array(0) : fillBuffer(count, 0xab);
  const { t, err } = await runIo(s, async () => {
    if (oob) throw toolError('EIO', 'read');
    // No format here stores VM state (bdrv_load_vmstate).
    if (bflag) throw toolError('ENOTSUP', 'read');
    await bs.pread(offset, buf);
  });
  if (err !== null) {
    s.o.out(`read failed: ${errnoText(err)}\n`);
    return EIO;
  }
  let ret = 0;
  if (pflag && firstMismatch(buf, patternOffset, patternCount, pattern)) {
    s.o.out(`Pattern verification failed at offset ${offset + patternOffset}, ${patternCount} bytes\n`);
    ret = EINVAL;
  }
  if (qflag) return ret;
  if (vflag) dumpBuffer(s.o, buf, offset);
  printReport(s.o, 'read', t, offset, count, count, 1, cflag);
  return ret;
}


export async function writeF(s: IoSession, argv: string[]): Promise<number> {
  let bflag = false;
  let cflag = false;
  let statsC = false;
  let fua = false;
  let noFallback = false;
  let mayUnmap = false;
  let pflag = false;
  let qflag = false;
  let sflag = false;
  let zflag = false;
  let fileName = '';
  let pattern = 0xcd;
  let fail: OptFail | null = null;
  const g = getopts(s, argv, 'bcCfnpP:qs:uz', (c, arg) => {
    switch (c) {
      case 'b':
        bflag = true;
        break;
      case 'c':
        cflag = true;
        break;
      case 'C':
        statsC = true;
        break;
      case 'f':
        fua = true;
        break;
      case 'n':
        noFallback = true;
        break;
      case 'p':
        break;
      case 'P':
        pflag = true;
        pattern = parsePattern(s.o, arg ?? '');
        if (pattern < 0) {
          fail = new OptFail(EINVAL);
          return false;
        }
        break;
      case 'q':
        qflag = true;
        break;
      case 's':
        sflag = true;
        fileName = arg ?? '';
        break;
      case 'u':
        mayUnmap = true;
        break;
      case 'z':
        zflag = true;
        break;
    }
    return true;
  });
  if (g === null) {
    usage(s, writeCmd);
    return EINVAL;
  }
  if (fail !== null) return (fail as OptFail).ret;
  const args = g.rest;
  if (g.optind !== args.length - 2) {
    usage(s, writeCmd);
    return EINVAL;
  }
  if (bflag && zflag) {
    s.o.out('-b and -z cannot be specified at the same time\n');
    return EINVAL;
  }
  if (fua && (bflag || cflag)) {
    s.o.out('-f and -b or -c cannot be specified at the same time\n');
    return EINVAL;
  }
  if (noFallback && !zflag) {
    s.o.out('-n requires -z to be specified\n');
    return EINVAL;
  }
  if (mayUnmap && !zflag) {
    s.o.out('-u requires -z to be specified\n');
    return EINVAL;
  }
  if (Number(zflag) + Number(pflag) + Number(sflag) > 1) {
    s.o.out('Only one of -z, -P, and -s can be specified at the same time\n');
    return EINVAL;
  }
  const offsetR = parseNumBig(s, args[g.optind]);
  if (offsetR instanceof OptFail) return offsetR.ret;
  const countR = parseNumBig(s, args[g.optind + 1]);
  if (countR instanceof OptFail) return countR.ret;
  const [offset, offsetBig, count, countBig] = [offsetR.value, offsetR.big, countR.value, countR.big];
  if (count > BDRV_REQUEST_MAX_BYTES && !noFallback) {
    s.o.out(`length cannot exceed ${BDRV_REQUEST_MAX_BYTES} without -n, given ${args[g.optind + 1]}\n`);
    return EINVAL;
  }
  if (bflag || cflag) {
    if (!checkSectorAligned(s, offsetBig, countBig)) return EINVAL;
  }
  const bs = image(s);
  const oob = unsafeRequest(offset, count) || (await outOfBounds(bs, offset, count));
  let buf: Uint8Array | null = null;
  if (!zflag) {
    if (sflag) {
      buf = allocFromFile(s.o, fileName, oob ? Math.min(count, 1 << 20) : count);
      if (buf === null) return EINVAL;
    } else if (!oob) {
      buf = fillBuffer(count, pattern);
    }
  }
  const { t, err } = await runIo(s, async () => {
    if (oob) throw toolError('EIO', 'write');
    // Neither VM state (bdrv_save_vmstate) nor compressed writes exist in these formats.
    if (bflag || cflag) throw toolError('ENOTSUP', 'write');
    // Only the raw/file stack can zero without a fallback (QEMU's supported_zero_flags): every
    // other format refuses BDRV_REQ_NO_FALLBACK before trying, aligned or not.
    if (zflag && noFallback && !noFallbackCapable(bs)) throw toolError('ENOTSUP', 'write');
    // The cache mode's FUA applies to zero writes too (blk_co_pwrite_zeroes goes through the
    // same BlockBackend write path).
    if (zflag) await bs.writeZeroes(offset, count, { mayUnmap, noFallback, fua: writeFua(s, fua) });
    else await bs.pwrite(offset, buf ?? new Uint8Array(0), { fua: writeFua(s, fua) });
  });
  if (err !== null) {
    s.o.out(`write failed: ${errnoText(err)}\n`);
    return EIO;
  }
  if (qflag) return 0;
  printReport(s.o, 'wrote', t, offset, count, count, 1, statsC);
  return 0;
}

/** create_iovec: the lengths of readv/writev/aio_*, checked against the request limit. */
function createIovec(s: IoSession, lens: string[], pattern: number): { qiov: IOVector; buf: Uint8Array } | null {
  const sizes: number[] = [];
  let count = 0;
  for (const arg of lens) {
    const r = cvtnum(s.o, arg);
    if (!r.ok) {
      printCvtnumErr(s.o, r.error, arg);
      return null;
    }
    const len = r.value;
    if (len > BDRV_REQUEST_MAX_BYTES) {
      s.o.out(`Argument '${arg}' exceeds maximum size ${BDRV_REQUEST_MAX_BYTES}\n`);
      return null;
    }
    if (count > BDRV_REQUEST_MAX_BYTES - len) {
      s.o.out(`The total number of bytes exceed the maximum size ${BDRV_REQUEST_MAX_BYTES}\n`);
      return null;
    }
    sizes.push(len);
    count += len;
  }
  const buf = fillBuffer(count, pattern);
  const qiov = new IOVector();
  let pos = 0;
  for (const n of sizes) {
    qiov.add(buf.subarray(pos, pos + n));
    pos += n;
  }
  return { qiov, buf };
}

/** Wait for one AIO request as readv/writev do (submit, then run the loop until it is done). */
async function aioWait(
  s: IoSession,
  bs: BlockDriverState,
  write: boolean,
  offset: number,
  qiov: IOVector,
  fua: boolean,
): Promise<{ t: Elapsed; err: unknown }> {
  const t1 = nowNs();
  let err: unknown = null;
  let t: Elapsed = 0n;
  await new Promise<void>((resolve) => {
    const cb = (e: unknown): void => {
      t = nowNs() - t1;
      err = e;
      resolve();
    };
    if (unsafeRequest(offset, qiov.size)) {
      cb(toolError('EIO', write ? 'writev' : 'readv'));
      return;
    }
    if (!fua && offset % BDRV_SECTOR_SIZE === 0 && qiov.size % BDRV_SECTOR_SIZE === 0 && qiov.size > 0) {
      const sector = offset / BDRV_SECTOR_SIZE;
      const n = qiov.size / BDRV_SECTOR_SIZE;
      if (write) bs.aioWritev(sector, qiov, n, cb);
      else bs.aioReadv(sector, qiov, n, cb);
      return;
    }
    (write ? bs.pwritev(offset, qiov, { fua }) : bs.preadv(offset, qiov)).then(
      () => cb(null),
      (e: unknown) => cb(e),
    );
  });
  s.poll();
  return { t, err };
}

export async function readvF(s: IoSession, argv: string[]): Promise<number> {
  let cflag = false;
  let qflag = false;
  let vflag = false;
  let pflag = false;
  let pattern = 0;
  let fail: OptFail | null = null;
  const g = getopts(s, argv, 'CP:qv', (c, arg) => {
    if (c === 'C') cflag = true;
    else if (c === 'q') qflag = true;
    else if (c === 'v') vflag = true;
    else if (c === 'P') {
      pflag = true;
      pattern = parsePattern(s.o, arg ?? '');
      if (pattern < 0) {
        fail = new OptFail(EINVAL);
        return false;
      }
    }
    return true;
  });
  if (g === null) {
    usage(s, readvCmd);
    return EINVAL;
  }
  if (fail !== null) return (fail as OptFail).ret;
  const args = g.rest;
  if (g.optind > args.length - 2) {
    usage(s, readvCmd);
    return EINVAL;
  }
  const offset = parseNum(s, args[g.optind]);
  if (offset instanceof OptFail) return offset.ret;
  const v = createIovec(s, args.slice(g.optind + 1), 0xab);
  if (v === null) return EINVAL;
  const bs = image(s);
  const { t, err } = await aioWait(s, bs, false, offset, v.qiov, false);
  if (err !== null) {
    s.o.out(`readv failed: ${errnoText(err)}\n`);
    return EIO;
  }
  let ret = 0;
  if (pflag && firstMismatch(v.buf, 0, v.buf.length, pattern)) {
    s.o.out(`Pattern verification failed at offset ${offset}, ${v.buf.length} bytes\n`);
    ret = EINVAL;
  }
  if (qflag) return ret;
  if (vflag) dumpBuffer(s.o, v.buf, offset);
  printReport(s.o, 'read', t, offset, v.buf.length, v.buf.length, 1, cflag);
  return ret;
}

export async function writevF(s: IoSession, argv: string[]): Promise<number> {
  let cflag = false;
  let qflag = false;
  let fua = false;
  let pattern = 0xcd;
  let fail: OptFail | null = null;
  const g = getopts(s, argv, 'CfqP:', (c, arg) => {
    if (c === 'C') cflag = true;
    else if (c === 'q') qflag = true;
    else if (c === 'f') fua = true;
    else if (c === 'P') {
      pattern = parsePattern(s.o, arg ?? '');
      if (pattern < 0) {
        fail = new OptFail(EINVAL);
        return false;
      }
    }
    return true;
  });
  if (g === null) {
    usage(s, writevCmd);
    return EINVAL;
  }
  if (fail !== null) return (fail as OptFail).ret;
  const args = g.rest;
  if (g.optind > args.length - 2) {
    usage(s, writevCmd);
    return EINVAL;
  }
  const offset = parseNum(s, args[g.optind]);
  if (offset instanceof OptFail) return offset.ret;
  const v = createIovec(s, args.slice(g.optind + 1), pattern);
  if (v === null) return EINVAL;
  const bs = image(s);
  const { t, err } = await aioWait(s, bs, true, offset, v.qiov, writeFua(s, fua));
  if (err !== null) {
    s.o.out(`writev failed: ${errnoText(err)}\n`);
    return EIO;
  }
  if (qflag) return 0;
  printReport(s.o, 'wrote', t, offset, v.buf.length, v.buf.length, 1, cflag);
  return 0;
}

// ---------------------------------------------------------------------------------------------
// aio_read / aio_write / aio_flush

export async function aioReadF(s: IoSession, argv: string[]): Promise<number> {
  let cflag = false;
  let qflag = false;
  let vflag = false;
  let pflag = false;
  let pattern = 0;
  let fail: OptFail | null = null;
  let invalid = false;
  const g = getopts(s, argv, 'CP:iqv', (c, arg) => {
    if (c === 'C') cflag = true;
    else if (c === 'q') qflag = true;
    else if (c === 'v') vflag = true;
    else if (c === 'i') {
      // Only counts an invalid request in the statistics, which we do not keep.
      s.o.out('injecting invalid read request\n');
      invalid = true;
      return false;
    } else if (c === 'P') {
      pflag = true;
      pattern = parsePattern(s.o, arg ?? '');
      if (pattern < 0) {
        fail = new OptFail(EINVAL);
        return false;
      }
    }
    return true;
  });
  if (g === null) {
    usage(s, aioReadCmd);
    return EINVAL;
  }
  if (invalid) return 0;
  if (fail !== null) return (fail as OptFail).ret;
  const args = g.rest;
  if (g.optind > args.length - 2) {
    usage(s, aioReadCmd);
    return EINVAL;
  }
  const offset = parseNum(s, args[g.optind]);
  if (offset instanceof OptFail) return offset.ret;
  const v = createIovec(s, args.slice(g.optind + 1), 0xab);
  if (v === null) return EINVAL;
  const bs = image(s);
  const t1 = nowNs();
  submitAio(s, bs, false, offset, v.qiov, (err) => {
    const t = nowNs() - t1;
    if (err !== null) {
      s.o.out(`readv failed: ${errnoText(err)}\n`);
      return;
    }
    // Asynchronous: a mismatch is reported but the command already succeeded.
    if (pflag && firstMismatch(v.buf, 0, v.buf.length, pattern)) {
      s.o.out(`Pattern verification failed at offset ${offset}, ${v.buf.length} bytes\n`);
    }
    if (qflag) return;
    if (vflag) dumpBuffer(s.o, v.buf, offset);
    printReport(s.o, 'read', t, offset, v.buf.length, v.buf.length, 1, cflag);
  });
  return 0;
}

export async function aioWriteF(s: IoSession, argv: string[]): Promise<number> {
  let cflag = false;
  let qflag = false;
  let fua = false;
  let mayUnmap = false;
  let zflag = false;
  let pattern = 0xcd;
  let fail: OptFail | null = null;
  let invalid = false;
  const g = getopts(s, argv, 'CfiqP:uz', (c, arg) => {
    if (c === 'C') cflag = true;
    else if (c === 'f') fua = true;
    else if (c === 'q') qflag = true;
    else if (c === 'u') mayUnmap = true;
    else if (c === 'z') zflag = true;
    else if (c === 'i') {
      s.o.out('injecting invalid write request\n');
      invalid = true;
      return false;
    } else if (c === 'P') {
      // qemu-io 7.2 never records -P here, so "-z and -P" is never refused (-z wins).
      pattern = parsePattern(s.o, arg ?? '');
      if (pattern < 0) {
        fail = new OptFail(EINVAL);
        return false;
      }
    }
    return true;
  });
  if (g === null) {
    usage(s, aioWriteCmd);
    return EINVAL;
  }
  if (invalid) return 0;
  if (fail !== null) return (fail as OptFail).ret;
  const args = g.rest;
  if (g.optind > args.length - 2) {
    usage(s, aioWriteCmd);
    return EINVAL;
  }
  if (zflag && g.optind !== args.length - 2) {
    s.o.out('-z supports only a single length parameter\n');
    return EINVAL;
  }
  if (mayUnmap && !zflag) {
    s.o.out('-u requires -z to be specified\n');
    return EINVAL;
  }
  const offset = parseNum(s, args[g.optind]);
  if (offset instanceof OptFail) return offset.ret;
  const bs = image(s);
  const report = (t1: bigint, size: number) => (err: unknown) => {
    const t = nowNs() - t1;
    if (err !== null) {
      s.o.out(`aio_write failed: ${errnoText(err)}\n`);
      return;
    }
    if (qflag) return;
    printReport(s.o, 'wrote', t, offset, size, size, 1, cflag);
  };
  if (zflag) {
    const count = parseNum(s, args[g.optind + 1]);
    if (count instanceof OptFail) return count.ret;
    // qemu-io 7.2 never starts the clock for -z: the time shown is the monotonic clock itself.
    const done = report(0n, count);
    const p = (async () => {
      let err: unknown = null;
      try {
        if (unsafeRequest(offset, count)) throw toolError('EIO', 'aio_write');
        await bs.writeZeroes(offset, count, { mayUnmap, fua: writeFua(s, fua) });
      } catch (e) {
        err = e;
      }
      s.queueReport(() => done(err));
    })();
    s.track(p);
    return 0;
  }
  const v = createIovec(s, args.slice(g.optind + 1), pattern);
  if (v === null) return EINVAL;
  const t1 = nowNs();
  submitAio(s, bs, true, offset, v.qiov, report(t1, v.buf.length), writeFua(s, fua));
  return 0;
}

export async function aioFlushF(s: IoSession): Promise<number> {
  await s.drain();
  return 0;
}

export const readCmd: CmdInfo = {
  name: 'read',
  altname: 'r',
  cfunc: readF,
  argmin: 2,
  argmax: -1,
  args: '[-abCqv] [-P pattern [-s off] [-l len]] off len',
  oneline: 'reads a number of bytes at a specified offset',
};
export const readvCmd: CmdInfo = {
  name: 'readv',
  cfunc: readvF,
  argmin: 2,
  argmax: -1,
  args: '[-Cqv] [-P pattern] off len [len..]',
  oneline: 'reads a number of bytes at a specified offset',
};
export const writeCmd: CmdInfo = {
  name: 'write',
  altname: 'w',
  cfunc: writeF,
  argmin: 2,
  argmax: -1,
  write: true,
  args: '[-bcCfnquz] [-P pattern | -s source_file] off len',
  oneline: 'writes a number of bytes at a specified offset',
};
export const writevCmd: CmdInfo = {
  name: 'writev',
  cfunc: writevF,
  argmin: 2,
  argmax: -1,
  write: true,
  args: '[-Cfq] [-P pattern] off len [len..]',
  oneline: 'writes a number of bytes at a specified offset',
};
export const aioReadCmd: CmdInfo = {
  name: 'aio_read',
  cfunc: aioReadF,
  argmin: 2,
  argmax: -1,
  args: '[-Ciqv] [-P pattern] off len [len..]',
  oneline: 'asynchronously reads a number of bytes',
};
export const aioWriteCmd: CmdInfo = {
  name: 'aio_write',
  cfunc: aioWriteF,
  argmin: 2,
  argmax: -1,
  write: true,
  args: '[-Cfiquz] [-P pattern] off len [len..]',
  oneline: 'asynchronously writes a number of bytes',
};
