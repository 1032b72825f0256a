// blk-io's commands (qemu-io 7.2's command table): argument checks, option letters, messages,
// exit values and output formats follow qemu-io; the I/O goes through the BlockDriverState API.
import { resolve } from 'node:path';
import { BDRV_SECTOR_SIZE } from '../block/driver.js';
import { isBlockError } from '../block/errors.js';
import { IOVector } from '../block/iovec.js';
import { BlockDriverState } from '../block/node.js';
import { bdrvCreate } from '../block/create.js';
import { protocolPrefix } from '../block/path.js';
import {
  blkdebugBreak,
  blkdebugIsSuspended,
  blkdebugRemoveBreak,
  blkdebugResume,
} from '../drivers/blkdebug/index.js';
import { Getopt, cvtstr, type ToolOutput } from './common.js';
import { COMMAND_HELP } from './io-help.js';
import { attachTrace } from './io-trace.js';
import {
  BDRV_REQUEST_MAX_BYTES,
  cvtnum,
  dumpBuffer,
  nowNs,
  parsePattern,
  printCvtnumErr,
  printReport,
  strtolFull,
  type Elapsed,
} from './io-format.js';
import { allocFromFile, errText, errnoText, toolError, type IoSession, type OpenFlags } from './io-session.js';

/** Negative errno-like return values of the commands (only the sign matters for the exit code). */
const EINVAL = -22;
const EIO = -5;
const ENOTSUP = -95;

export interface CmdInfo {
  name: string;
  altname?: string;
  cfunc: (s: IoSession, argv: string[]) => Promise<number>;
  argmin: number;
  /** -1: no maximum. */
  argmax: number;
  /** Runs without an open image (CMD_NOFILE_OK). */
  nofile?: boolean;
  /** Needs write permission on the image (BLK_PERM_WRITE). */
  write?: boolean;
  /** Argument synopsis; null prints none, '' prints an empty one ("map  --"). */
  args: string | null;
  oneline: string;
}

function usage(s: IoSession, ct: CmdInfo): void {
  s.o.out(`${ct.name} ${ct.args ?? '(null)'} -- ${ct.oneline}\n`);
}

/** The image; commands run only once `command()` checked it is open. */
function image(s: IoSession): BlockDriverState {
  if (s.bs === null) throw toolError('ENOMEDIUM', 'command');
  return s.bs;
}

/**
 * getopt(3) for a command: glibc's permuting parser, printing its two messages on stderr with
 * the command word as program name. Returns the options or null after a message.
 */
function getopts(
  s: IoSession,
  argv: string[],
  optstring: string,
  handle: (opt: string, arg: string | undefined) => boolean,
): { rest: string[]; optind: number } | null {
  const g = new Getopt(argv, `:${optstring}`);
  for (;;) {
    const r = g.next();
    if (r.kind === 'end') break;
    if (r.kind === 'unknown') {
      s.o.errRaw(`${argv[0]}: invalid option -- '${r.opt}'\n`);
      return null;
    }
    if (r.kind === 'missing') {
      s.o.errRaw(`${argv[0]}: option requires an argument -- '${r.opt}'\n`);
      return null;
    }
    if (!handle(r.opt, r.arg)) return { rest: [], optind: -1 };
  }
  return { rest: g.argv, optind: g.optind };
}

/** A C-style "bail out with this value" from inside a getopt handler. */
class OptFail {
  constructor(readonly ret: number) {}
}

function parseNum(s: IoSession, arg: string): number | OptFail {
  const r = parseNumBig(s, arg);
  return r instanceof OptFail ? r : r.value;
}

/** cvtnum keeping the exact value too (messages print int64 values exactly). */
function parseNumBig(s: IoSession, arg: string): { value: number; big: bigint } | OptFail {
  const r = cvtnum(s.o, arg);
  if (!r.ok) {
    printCvtnumErr(s.o, r.error, arg);
    return new OptFail(r.error === 'EINVAL' ? EINVAL : -34);
  }
  return r;
}

/** The alignment messages of read -b / write -b / write -c. */
function checkSectorAligned(s: IoSession, offset: bigint, count: bigint): boolean {
  if (offset % 512n !== 0n) {
    s.o.out(`${offset} is not a sector-aligned value for 'offset'\n`);
    return false;
  }
  if (count % 512n !== 0n) {
    s.o.out(`${count} is not a sector-aligned value for 'count'\n`);
    return false;
  }
  return true;
}

/** Bounds as blk_check_byte_request does them, for numbers the block layer cannot take. */
function unsafeRequest(offset: number, bytes: number): boolean {
  return !Number.isSafeInteger(offset) || !Number.isSafeInteger(bytes) || offset + bytes > Number.MAX_SAFE_INTEGER;
}

function fillBuffer(len: number, pattern: number): Uint8Array {
  const b = new Uint8Array(len);
  b.fill(pattern);
  return b;
}

function firstMismatch(buf: Uint8Array, start: number, len: number, pattern: number): boolean {
  for (let i = start; i < start + len; i++) if (buf[i] !== pattern) return true;
  return false;
}

/** Run one synchronous request and let completed AIO report meanwhile (the main loop runs). */
async function runIo(s: IoSession, fn: () => Promise<void>): Promise<{ t: Elapsed; err: unknown }> {
  const t1 = nowNs();
  let err: unknown = null;
  try {
    await fn();
  } catch (e) {
    err = e;
  }
  const t = nowNs() - t1;
  s.poll();
  return { t, err };
}

/**
 * Submit an AIO read or write: through the sector-based AIO path when sector aligned (QEMU's
 * byte-based blk_aio_preadv accepts any range, so the rest goes through the coroutine path in
 * the background). `done` runs when the callback fires; its report waits for the main loop.
 */
function submitAio(
  s: IoSession,
  bs: BlockDriverState,
  write: boolean,
  offset: number,
  qiov: IOVector,
  done: (err: unknown) => void,
  fua = false,
): void {
  const bytes = qiov.size;
  const p = new Promise<void>((resolve) => {
    const cb = (err: unknown): void => {
      s.queueReport(() => done(err));
      resolve();
    };
    if (unsafeRequest(offset, bytes)) {
      queueMicrotask(() => cb(toolError('EIO', write ? 'aio_write' : 'aio_read')));
      return;
    }
    if (!fua && offset % BDRV_SECTOR_SIZE === 0 && bytes % BDRV_SECTOR_SIZE === 0 && bytes > 0) {
      const sector = offset / BDRV_SECTOR_SIZE;
      const n = bytes / BDRV_SECTOR_SIZE;
      if (write) bs.aioWritev(sector, qiov, n, (e) => cb(e));
      else bs.aioReadv(sector, qiov, n, (e) => cb(e));
      return;
    }
    const io = write ? bs.pwritev(offset, qiov, { fua }) : bs.preadv(offset, qiov);
    io.then(
      () => cb(null),
      (e: unknown) => cb(e),
    );
  });
  s.track(p);
}

// ---------------------------------------------------------------------------------------------
// read / write

async function readF(s: IoSession, argv: string[]): Promise<number> {
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

function noFallbackCapable(bs: BlockDriverState): boolean {
  for (let n: BlockDriverState | null = bs; n; n = n.file) {
    const d = n.driver;
    if (!(d.isProtocol ?? false) && !(d.isFilter ?? false) && d.formatName !== 'raw') return false;
  }
  return true;
}

async function outOfBounds(bs: BlockDriverState, offset: number, bytes: number): Promise<boolean> {
  try {
    const len = await bs.getLength();
    return offset > len || len - offset < bytes;
  } catch {
    return false;
  }
}

async function writeF(s: IoSession, argv: string[]): Promise<number> {
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
    if (zflag) await bs.writeZeroes(offset, count, { mayUnmap, noFallback });
    else await bs.pwrite(offset, buf ?? new Uint8Array(0), { fua });
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

async function readvF(s: IoSession, argv: string[]): Promise<number> {
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

async function writevF(s: IoSession, argv: string[]): Promise<number> {
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
  const { t, err } = await aioWait(s, bs, true, offset, v.qiov, fua);
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

async function aioReadF(s: IoSession, argv: string[]): Promise<number> {
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

async function aioWriteF(s: IoSession, argv: string[]): Promise<number> {
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
        await bs.writeZeroes(offset, count, { mayUnmap });
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
  submitAio(s, bs, true, offset, v.qiov, report(t1, v.buf.length), fua);
  return 0;
}

async function aioFlushF(s: IoSession): Promise<number> {
  await s.drain();
  return 0;
}

// ---------------------------------------------------------------------------------------------
// flush, discard, truncate, length, info, map, alloc

async function flushF(s: IoSession): Promise<number> {
  const { err } = await runIo(s, () => image(s).flush());
  return err === null ? 0 : EIO;
}

async function discardF(s: IoSession, argv: string[]): Promise<number> {
  let cflag = false;
  let qflag = false;
  const g = getopts(s, argv, 'Cq', (c) => {
    if (c === 'C') cflag = true;
    else if (c === 'q') qflag = true;
    return true;
  });
  if (g === null) {
    usage(s, discardCmd);
    return EINVAL;
  }
  const args = g.rest;
  if (g.optind !== args.length - 2) {
    usage(s, discardCmd);
    return EINVAL;
  }
  const offset = parseNum(s, args[g.optind]);
  if (offset instanceof OptFail) return offset.ret;
  const bytes = parseNum(s, args[g.optind + 1]);
  if (bytes instanceof OptFail) return bytes.ret;
  if (bytes > BDRV_REQUEST_MAX_BYTES) {
    s.o.out(`length cannot exceed ${BDRV_REQUEST_MAX_BYTES}, given ${args[g.optind + 1]}\n`);
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
  if (!qflag) printReport(s.o, 'discard', t, offset, bytes, bytes, 1, cflag);
  return 0;
}

const PREALLOC_MODES = ['off', 'metadata', 'falloc', 'full'];

async function truncateF(s: IoSession, argv: string[]): Promise<number> {
  let prealloc = 'off';
  let fail: OptFail | null = null;
  const g = getopts(s, argv, 'm:', (_c, arg) => {
    if (!PREALLOC_MODES.includes(arg ?? '')) {
      s.o.error(`Invalid preallocation mode '${arg ?? ''}'`);
      fail = new OptFail(EINVAL);
      return false;
    }
    prealloc = arg ?? 'off';
    return true;
  });
  if (g === null) {
    usage(s, truncateCmd);
    return EINVAL;
  }
  if (fail !== null) return (fail as OptFail).ret;
  const args = g.rest;
  // qemu-io crashes on "truncate -m MODE" without a size; say how to use it instead.
  if (g.optind >= args.length) {
    usage(s, truncateCmd);
    return EINVAL;
  }
  const r = cvtnum(s.o, args[g.optind]);
  if (!r.ok) {
    // qemu-io quotes argv[1] here, whatever it is.
    printCvtnumErr(s.o, r.error, args[1]);
    return EINVAL;
  }
  const bs = image(s);
  const fmt = bs.driver.formatName;
  if (prealloc !== 'off' && (fmt !== 'raw' || prealloc === 'metadata')) {
    // Only a raw file can preallocate; QED refuses every mode but off.
    s.o.error(fmt === 'raw' ? `Unsupported preallocation mode: ${prealloc}` : `Unsupported preallocation mode '${prealloc}'`);
    return ENOTSUP;
  }
  const { err } = await runIo(s, async () => {
    if (!Number.isSafeInteger(r.value)) throw toolError('EFBIG', 'truncate');
    await bs.truncate(r.value);
  });
  if (err !== null) {
    s.o.error(errText(err));
    return EIO;
  }
  return 0;
}

async function lengthF(s: IoSession): Promise<number> {
  try {
    const size = await image(s).getLength();
    s.o.out(`${cvtstr(size)}\n`);
    return 0;
  } catch (e) {
    s.o.out(`getlength: ${errnoText(e)}\n`);
    return EIO;
  }
}

async function infoF(s: IoSession): Promise<number> {
  const bs = image(s);
  s.o.out(`format name: ${bs.driver.formatName}\n`);
  let clusterSize = 0;
  try {
    clusterSize = (await bs.getInfo()).clusterSize;
  } catch (e) {
    // A raw image has no format information: QEMU reports a cluster size of 0.
    if (!isBlockError(e, 'ENOTSUP') || bs.driver.formatName !== 'raw') return ENOTSUP;
  }
  s.o.out(`cluster size: ${cvtstr(clusterSize)}\n`);
  s.o.out(`vm state offset: ${cvtstr(0)}\n`);
  return 0;
}

/** map_is_allocated: merge consecutive ranges with the same allocation state. */
async function mapIsAllocated(
  bs: BlockDriverState,
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

async function mapF(s: IoSession): Promise<number> {
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

async function allocF(s: IoSession, argv: string[]): Promise<number> {
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

// ---------------------------------------------------------------------------------------------
// open / close / reopen

/** bdrv_parse_cache_mode. */
export function parseCacheMode(mode: string, f: OpenFlags): boolean {
  switch (mode) {
    case 'off':
    case 'none':
      f.nocache = true;
      f.noFlush = false;
      f.writethrough = false;
      return true;
    case 'directsync':
      f.nocache = true;
      f.noFlush = false;
      f.writethrough = true;
      return true;
    case 'writeback':
      f.nocache = false;
      f.noFlush = false;
      f.writethrough = false;
      return true;
    case 'unsafe':
      f.nocache = false;
      f.noFlush = true;
      f.writethrough = false;
      return true;
    case 'writethrough':
      f.nocache = false;
      f.noFlush = false;
      f.writethrough = true;
      return true;
    default:
      return false;
  }
}

export function validDiscardMode(mode: string): boolean {
  return ['off', 'ignore', 'on', 'unmap'].includes(mode);
}

/** bdrv_parse_aio; returns whether it is the native (O_DIRECT-only) mode, or null if invalid. */
export function parseAioMode(mode: string): boolean | null {
  if (mode === 'threads' || mode === 'io_uring') return false;
  if (mode === 'native') return true;
  return null;
}

/**
 * QemuOpts "key=value,key2=value2" (",," is a literal comma). A bare word is the deprecated
 * short form of a boolean ("foo" = foo=on, "nofoo" = foo=off), with QEMU's warning.
 */
export function parseKeyValues(o: ToolOutput, text: string): Map<string, string> {
  const out = new Map<string, string>();
  let i = 0;
  while (i < text.length) {
    let key = '';
    while (i < text.length && text[i] !== '=' && text[i] !== ',') key += text[i++];
    if (text[i] !== '=') {
      i++;
      const off = key.startsWith('no');
      const name = off ? key.slice(2) : key;
      const value = off ? 'off' : 'on';
      o.warn(`short-form boolean option '${key}' deprecated`);
      o.errRaw(`Please use ${name}=${value} instead\n`);
      out.set(name, value);
      continue;
    }
    i++;
    let val = '';
    while (i < text.length) {
      if (text[i] === ',') {
        if (text[i + 1] === ',') {
          val += ',';
          i += 2;
          continue;
        }
        i++;
        break;
      }
      val += text[i++];
    }
    out.set(key, val);
  }
  return out;
}

let snapshotCounter = 0;

/**
 * openfile(): open `name` with `flags` and the -o options; messages as qemu-io prints them.
 * Returns false after reporting a failure.
 */
export async function openfile(
  s: IoSession,
  name: string | null,
  flags: OpenFlags,
  opts: Map<string, string> = new Map(),
): Promise<boolean> {
  if (s.bs !== null) {
    s.o.error("file open already, try 'help close'");
    return false;
  }
  const where = name === null ? "can't open: " : `can't open device ${name}: `;
  const fail = (msg: string): false => {
    s.o.error(where + msg);
    return false;
  };
  const f: OpenFlags = { ...flags };
  const extra = new Map(opts);
  const driver = extra.get('driver');
  if (driver !== undefined) f.format = driver;
  extra.delete('driver');
  const plainName = extra.get('filename');
  const childName = extra.get('file.filename');
  extra.delete('file.filename');
  extra.delete('filename');
  if (extra.get('file.driver') === 'file') extra.delete('file.driver');
  const ro = extra.get('read-only');
  if (ro !== undefined) {
    f.readOnly = ro === 'on' || ro === 'true';
    extra.delete('read-only');
  }
  // Without a path, "filename" names the image, or a driver plus its "file.filename" child.
  if (name === null && plainName === undefined && driver === undefined) return fail('Must specify either driver or file');
  const target = name ?? plainName ?? childName ?? null;
  if (target === null) return fail('A block device must be specified for "file"');
  if (target === '') return fail("The 'file' block driver requires a file name");
  for (const key of ['cache.direct', 'cache.no-flush']) {
    const v = extra.get(key);
    if (v === undefined) continue;
    if (key === 'cache.direct') f.nocache = v === 'on';
    else f.noFlush = v === 'on';
    extra.delete(key);
  }
  if (f.forceShare && !f.readOnly) return fail('force-share=on can only be used with read-only images');
  if (f.nativeAio && !f.nocache) {
    return fail('aio=native was specified, but it requires cache.direct=on, which was not specified.');
  }
  let bs: BlockDriverState;
  try {
    bs = await BlockDriverState.open(target, {
      format: f.format,
      readOnly: f.readOnly || f.snapshot,
      noFlush: f.noFlush,
      forceShare: f.forceShare,
      copyOnRead: f.copyOnRead && !f.readOnly,
    });
  } catch (e) {
    return fail(errText(e));
  }
  const fmt = bs.driver.formatName;
  for (const key of extra.keys()) {
    await bs.close().catch(() => undefined);
    return fail(`Block format '${fmt}' does not support the option '${key}'`);
  }
  if (f.format === undefined && fmt === 'raw') {
    s.o.errRaw(
      `WARNING: Image format was not specified for '${target}' and probing guessed raw.\n` +
        '         Automatically detecting the format is dangerous for raw images, write operations on block 0 will be restricted.\n' +
        "         Specify the 'raw' format explicitly to remove the restrictions.\n",
    );
  }
  if (f.copyOnRead && f.readOnly) {
    await bs.close().catch(() => undefined);
    return fail("Can't use copy-on-read on read-only device");
  }
  if (f.snapshot) {
    // -s: writes go to a temporary overlay (in memory here) over the read-only image.
    try {
      bs = await snapshotOverlay(bs, target, f);
    } catch (e) {
      return fail(errText(e));
    }
  }
  attachTrace(s.o, s.trace, bs);
  s.bs = bs;
  s.filename = target;
  s.flags = f;
  return true;
}

async function snapshotOverlay(base: BlockDriverState, target: string, f: OpenFlags): Promise<BlockDriverState> {
  const size = await base.getLength();
  const fmt = base.driver.formatName;
  await base.close();
  const overlay = `mem:blk-io-snapshot-${process.pid}-${++snapshotCounter}`;
  await bdrvCreate(overlay, {
    format: 'qed',
    // A host path is made absolute (the overlay lives elsewhere); mem: and filter names stay.
    options: { size, backingFile: protocolPrefix(target) === null ? resolve(target) : target, backingFmt: fmt },
  });
  return BlockDriverState.open(overlay, {
    format: 'qed',
    backingFormat: fmt,
    noFlush: f.noFlush,
    copyOnRead: f.copyOnRead,
  });
}

async function closeImage(s: IoSession): Promise<void> {
  await s.drain();
  const bs = s.bs;
  s.bs = null;
  if (bs !== null) {
    // bdrv_close reports nothing: a failing flush at close is as silent as in qemu-io.
    await bs.close().catch(() => undefined);
  }
}

async function openF(s: IoSession, argv: string[]): Promise<number> {
  const f: OpenFlags = { ...s.flags, readOnly: false, copyOnRead: false, snapshot: false, forceShare: false };
  f.nocache = false;
  f.noFlush = false;
  f.writethrough = true;
  f.nativeAio = false;
  f.format = undefined;
  let opts = new Map<string, string>();
  let fail: OptFail | null = null;
  const g = getopts(s, argv, 'snCro:ki:t:d:U', (c, arg) => {
    const a = arg ?? '';
    switch (c) {
      case 's':
        f.snapshot = true;
        break;
      case 'n':
        f.nocache = true;
        f.writethrough = false;
        break;
      case 'C':
        f.copyOnRead = true;
        break;
      case 'r':
        f.readOnly = true;
        break;
      case 'k':
        f.nativeAio = true;
        break;
      case 't':
        if (!parseCacheMode(a, f)) {
          s.o.error(`Invalid cache option: ${a}`);
          fail = new OptFail(EINVAL);
          return false;
        }
        break;
      case 'd':
        if (!validDiscardMode(a)) {
          s.o.error(`Invalid discard option: ${a}`);
          fail = new OptFail(EINVAL);
          return false;
        }
        break;
      case 'i': {
        const native = parseAioMode(a);
        if (native === null) {
          s.o.error(`Invalid aio option: ${a}`);
          fail = new OptFail(EINVAL);
          return false;
        }
        f.nativeAio = native;
        break;
      }
      case 'o': {
        if (s.imageOpts) {
          s.o.out("--image-opts and 'open -o' are mutually exclusive\n");
          fail = new OptFail(EINVAL);
          return false;
        }
        opts = new Map([...opts, ...parseKeyValues(s.o, a)]);
        break;
      }
      case 'U':
        f.forceShare = true;
        break;
    }
    return true;
  });
  if (g === null) {
    usage(s, openCmd);
    return EINVAL;
  }
  if (fail !== null) return (fail as OptFail).ret;
  const args = g.rest;
  let ok: boolean;
  if (s.imageOpts && g.optind === args.length - 1) {
    // With --image-opts the argument is itself the option string.
    ok = await openfile(s, null, f, parseKeyValues(s.o, args[g.optind]));
  } else if (g.optind === args.length - 1) ok = await openfile(s, args[g.optind], f, opts);
  else if (g.optind === args.length) ok = await openfile(s, null, f, opts);
  else {
    usage(s, openCmd);
    return EINVAL;
  }
  s.poll();
  return ok ? 0 : EINVAL;
}

async function closeF(s: IoSession): Promise<number> {
  await closeImage(s);
  return 0;
}

async function reopenF(s: IoSession, argv: string[]): Promise<number> {
  const f: OpenFlags = { ...s.flags };
  let hasRw = false;
  let hasCache = false;
  let opts = new Map<string, string>();
  let fail: OptFail | null = null;
  const g = getopts(s, argv, 'c:o:rw', (c, arg) => {
    const a = arg ?? '';
    if (c === 'c') {
      if (!parseCacheMode(a, f)) {
        s.o.error(`Invalid cache option: ${a}`);
        fail = new OptFail(EINVAL);
        return false;
      }
      hasCache = true;
    } else if (c === 'o') {
      opts = new Map([...opts, ...parseKeyValues(s.o, a)]);
    } else if (c === 'r' || c === 'w') {
      if (hasRw) {
        s.o.error('Only one -r/-w option may be given');
        fail = new OptFail(EINVAL);
        return false;
      }
      f.readOnly = c === 'r';
      hasRw = true;
    }
    return true;
  });
  if (g === null) {
    usage(s, reopenCmd);
    return EINVAL;
  }
  if (fail !== null) return (fail as OptFail).ret;
  if (g.optind !== g.rest.length) {
    usage(s, reopenCmd);
    return EINVAL;
  }
  const ro = opts.get('read-only');
  if (ro !== undefined) {
    if (hasRw) {
      s.o.error("Cannot set both -r/-w and 'read-only'");
      return EINVAL;
    }
    f.readOnly = ro === 'on' || ro === 'true';
    opts.delete('read-only');
  }
  for (const key of ['cache.direct', 'cache.no-flush']) {
    const v = opts.get(key);
    if (v === undefined) continue;
    if (hasCache) {
      s.o.error('Cannot set both -c and the cache options');
      return EINVAL;
    }
    if (key === 'cache.direct') f.nocache = v === 'on';
    else f.noFlush = v === 'on';
    opts.delete(key);
  }
  for (const key of opts.keys()) {
    s.o.error(`Cannot change the option '${key}'`);
    return EINVAL;
  }
  const bs = image(s);
  if (s.flags.snapshot) {
    // The temporary overlay lives in memory: closing it would lose it, and reopening the
    // image itself would let writes reach it. Only the mode of the overlay changes.
    await s.drain();
    bs.readOnly = f.readOnly;
    s.flags = { ...f, snapshot: true };
    return 0;
  }
  // Reopening is close + open with the new flags; the image keeps its format.
  const old = s.flags;
  const name = s.filename;
  await closeImage(s);
  const format = bs.driver.formatName;
  if (await openfile(s, name, { ...f, format, snapshot: false }, new Map())) {
    s.flags = { ...f, format: old.format };
    return 0;
  }
  // Could not reopen that way: get the image back as it was.
  await openfile(s, name, { ...old, format, snapshot: false }, new Map());
  return EINVAL;
}

// ---------------------------------------------------------------------------------------------
// help, quit, sleep, abort, sigraise, blkdebug breakpoints

function helpOneline(name: string, ct: CmdInfo): string {
  // The name as asked for ("help r" prints "r ..."); altnames are not listed in "help".
  let line = `${name} `;
  if (ct.args !== null) line += `${ct.args} `;
  return `${line}-- ${ct.oneline}\n`;
}

async function helpF(s: IoSession, argv: string[]): Promise<number> {
  if (argv.length === 1) {
    for (const ct of COMMANDS) s.o.out(helpOneline(ct.name, ct));
    s.o.out("\nUse 'help commandname' for extended help.\n");
    return 0;
  }
  const ct = findCommand(argv[1]);
  if (ct === undefined) {
    s.o.out(`command ${argv[1]} not found\n`);
    return EINVAL;
  }
  s.o.out(helpOneline(argv[1], ct));
  const h = COMMAND_HELP[ct.name];
  if (h !== undefined) s.o.out(h);
  return 0;
}

async function quitF(s: IoSession): Promise<number> {
  s.quit = true;
  return 0;
}

async function sleepF(s: IoSession, argv: string[]): Promise<number> {
  const ms = strtolFull(argv[1]);
  if (ms === null || ms < 0) {
    s.o.out(`${argv[1]} is not a valid number\n`);
    return EINVAL;
  }
  await new Promise<void>((resolve) => setTimeout(resolve, Math.min(ms, 2 ** 31 - 1)));
  s.poll();
  return 0;
}

async function abortF(s: IoSession): Promise<number> {
  s.hooks.abort();
  return 0;
}

/** NSIG on Linux. */
const NSIG = 65;

async function sigraiseF(s: IoSession, argv: string[]): Promise<number> {
  const sig = parseNum(s, argv[1]);
  if (sig instanceof OptFail) return sig.ret;
  if (sig > NSIG) {
    s.o.out(`signal argument '${argv[1]}' is too large to be a valid signal\n`);
    return EINVAL;
  }
  // raise() does not flush stdio: qemu-io flushes both streams first.
  s.o.flush();
  s.hooks.raise(sig);
  return 0;
}

async function breakF(s: IoSession, argv: string[]): Promise<number> {
  try {
    blkdebugBreak(image(s), argv[1], argv[2]);
    return 0;
  } catch (e) {
    s.o.out(`Could not set breakpoint: ${errnoText(e)}\n`);
    return EINVAL;
  }
}

async function removeBreakF(s: IoSession, argv: string[]): Promise<number> {
  try {
    blkdebugRemoveBreak(image(s), argv[1]);
    return 0;
  } catch (e) {
    s.o.out(`Could not remove breakpoint ${argv[1]}: ${errnoText(e)}\n`);
    return EINVAL;
  }
}

async function resumeF(s: IoSession, argv: string[]): Promise<number> {
  try {
    blkdebugResume(image(s), argv[1]);
    // The resumed request runs on until it waits for I/O (QEMU enters its coroutine directly).
    await new Promise<void>((resolve) => setImmediate(resolve));
    return 0;
  } catch (e) {
    s.o.out(`Could not resume request: ${errnoText(e)}\n`);
    return EINVAL;
  }
}

async function waitBreakF(s: IoSession, argv: string[]): Promise<number> {
  const bs = image(s);
  try {
    // qemu-io polls forever; without a blkdebug node nothing can ever stop, so say so.
    while (!blkdebugIsSuspended(bs, argv[1])) {
      await new Promise<void>((resolve) => setTimeout(resolve, 1));
    }
  } catch (e) {
    s.o.out(`Could not wait for breakpoint: ${errnoText(e)}\n`);
    return EINVAL;
  }
  s.poll();
  return 0;
}

// ---------------------------------------------------------------------------------------------
// The table (sorted by name, as qemu-io keeps it)

const readCmd: CmdInfo = {
  name: 'read',
  altname: 'r',
  cfunc: readF,
  argmin: 2,
  argmax: -1,
  args: '[-abCqv] [-P pattern [-s off] [-l len]] off len',
  oneline: 'reads a number of bytes at a specified offset',
};
const readvCmd: CmdInfo = {
  name: 'readv',
  cfunc: readvF,
  argmin: 2,
  argmax: -1,
  args: '[-Cqv] [-P pattern] off len [len..]',
  oneline: 'reads a number of bytes at a specified offset',
};
const writeCmd: CmdInfo = {
  name: 'write',
  altname: 'w',
  cfunc: writeF,
  argmin: 2,
  argmax: -1,
  write: true,
  args: '[-bcCfnquz] [-P pattern | -s source_file] off len',
  oneline: 'writes a number of bytes at a specified offset',
};
const writevCmd: CmdInfo = {
  name: 'writev',
  cfunc: writevF,
  argmin: 2,
  argmax: -1,
  write: true,
  args: '[-Cfq] [-P pattern] off len [len..]',
  oneline: 'writes a number of bytes at a specified offset',
};
const aioReadCmd: CmdInfo = {
  name: 'aio_read',
  cfunc: aioReadF,
  argmin: 2,
  argmax: -1,
  args: '[-Ciqv] [-P pattern] off len [len..]',
  oneline: 'asynchronously reads a number of bytes',
};
const aioWriteCmd: CmdInfo = {
  name: 'aio_write',
  cfunc: aioWriteF,
  argmin: 2,
  argmax: -1,
  write: true,
  args: '[-Cfiquz] [-P pattern] off len [len..]',
  oneline: 'asynchronously writes a number of bytes',
};
const discardCmd: CmdInfo = {
  name: 'discard',
  cfunc: discardF,
  argmin: 2,
  argmax: -1,
  write: true,
  args: '[-Cq] off len',
  oneline: 'discards a number of bytes at a specified offset',
};
const truncateCmd: CmdInfo = {
  name: 'truncate',
  cfunc: truncateF,
  argmin: 1,
  argmax: 3,
  write: true,
  args: '[-m prealloc_mode] off',
  oneline: 'truncates the current file at the given offset',
};
const openCmd: CmdInfo = {
  name: 'open',
  cfunc: openF,
  argmin: 1,
  argmax: -1,
  nofile: true,
  args: '[-rsCnkU] [-t cache] [-d discard] [-o options] [path]',
  oneline: 'open the file specified by path',
};
const reopenCmd: CmdInfo = {
  name: 'reopen',
  cfunc: reopenF,
  argmin: 0,
  argmax: -1,
  args: '[(-r|-w)] [-c cache] [-o options]',
  oneline: 'reopens an image with new options',
};

export const COMMANDS: readonly CmdInfo[] = [
  { name: 'abort', cfunc: abortF, argmin: 0, argmax: 0, nofile: true, args: null, oneline: 'simulate a program crash using abort(3)' },
  { name: 'aio_flush', cfunc: aioFlushF, argmin: 0, argmax: 0, args: null, oneline: 'completes all outstanding aio requests' },
  aioReadCmd,
  aioWriteCmd,
  { name: 'alloc', cfunc: allocF, argmin: 1, argmax: 2, args: 'offset [count]', oneline: 'checks if offset is allocated in the file' },
  {
    name: 'break',
    cfunc: breakF,
    argmin: 2,
    argmax: 2,
    args: 'event tag',
    oneline: 'sets a breakpoint on event and tags the stopped request as tag',
  },
  { name: 'close', cfunc: closeF, argmin: 0, argmax: 0, args: null, oneline: 'close the current open file' },
  discardCmd,
  { name: 'flush', cfunc: flushF, argmin: 0, argmax: 0, args: null, oneline: 'flush all in-core file state to disk' },
  {
    name: 'help',
    altname: '?',
    cfunc: helpF,
    argmin: 0,
    argmax: 1,
    nofile: true,
    args: '[command]',
    oneline: 'help for one or all commands',
  },
  { name: 'info', cfunc: infoF, argmin: 0, argmax: 0, args: null, oneline: 'prints information about the current file' },
  { name: 'length', cfunc: lengthF, argmin: 0, argmax: 0, args: null, oneline: 'gets the length of the current file' },
  { name: 'map', cfunc: mapF, argmin: 0, argmax: 0, args: '', oneline: 'prints the allocated areas of a file' },
  openCmd,
  { name: 'quit', altname: 'q', cfunc: quitF, argmin: 0, argmax: -1, nofile: true, args: null, oneline: 'exit the program' },
  readCmd,
  readvCmd,
  { name: 'remove_break', cfunc: removeBreakF, argmin: 1, argmax: 1, args: 'tag', oneline: 'remove a breakpoint by tag' },
  reopenCmd,
  { name: 'resume', cfunc: resumeF, argmin: 1, argmax: 1, args: 'tag', oneline: 'resumes the request tagged as tag' },
  { name: 'sigraise', cfunc: sigraiseF, argmin: 1, argmax: 1, nofile: true, args: 'signal', oneline: 'raises a signal' },
  {
    name: 'sleep',
    cfunc: sleepF,
    argmin: 1,
    argmax: 1,
    nofile: true,
    args: null,
    oneline: 'waits for the given value in milliseconds',
  },
  truncateCmd,
  { name: 'wait_break', cfunc: waitBreakF, argmin: 1, argmax: 1, args: 'tag', oneline: 'waits for the suspension of a request' },
  writeCmd,
  writevCmd,
];

export function findCommand(name: string): CmdInfo | undefined {
  return COMMANDS.find((c) => c.name === name || c.altname === name);
}

/** breakline: words separated by single spaces; empty words are dropped (tabs are not spaces). */
export function breakline(input: string): string[] {
  return input.split(' ').filter((w) => w !== '');
}

/** qemuio_command: run one command line; the return value is < 0 on failure. */
export async function qemuioCommand(s: IoSession, line: string): Promise<number> {
  const argv = breakline(line);
  if (argv.length === 0) return 0;
  const ct = findCommand(argv[0]);
  if (ct === undefined) {
    s.o.errRaw(`command "${argv[0]}" not found\n`);
    return EINVAL;
  }
  if (!ct.nofile && s.bs === null) {
    s.o.errRaw("no file open, try 'help open'\n");
    return EINVAL;
  }
  const n = argv.length - 1;
  if (n < ct.argmin || (ct.argmax !== -1 && n > ct.argmax)) {
    let msg: string;
    if (ct.argmax === -1) msg = `bad argument count ${n} to ${argv[0]}, expected at least ${ct.argmin} arguments`;
    else if (ct.argmin === ct.argmax) msg = `bad argument count ${n} to ${argv[0]}, expected ${ct.argmin} arguments`;
    else msg = `bad argument count ${n} to ${argv[0]}, expected between ${ct.argmin} and ${ct.argmax} arguments`;
    s.o.errRaw(`${msg}\n`);
    return EINVAL;
  }
  // Write permission is taken before the command runs (blk_set_perm), so a read-only image
  // refuses a write command before any of its own checks.
  if (ct.write && s.bs?.readOnly === true) {
    s.o.error('Block node is read-only');
    return -13;
  }
  return ct.cfunc(s, argv);
}
