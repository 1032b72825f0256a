// Shared pieces of blk-io's commands: the command descriptor, getopt with qemu-io's messages,
// number arguments, and the synchronous / asynchronous request helpers.
import { BDRV_SECTOR_SIZE } from '../../block/driver.js';
import { IOVector } from '../../block/iovec.js';
import type { BlockDriverState } from '../../block/node.js';
import { Getopt } from '../shared/getopt.js';
import { cvtnum, nowNs, printCvtnumErr, type Elapsed } from './format.js';
import { toolError, type IoSession } from './session.js';

/** Negative errno-like return values of the commands (only the sign matters for the exit code). */
export const EINVAL = -22;
export const EIO = -5;
export const ENOTSUP = -95;

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

export function usage(s: IoSession, ct: CmdInfo): void {
  s.o.out(`${ct.name} ${ct.args ?? '(null)'} -- ${ct.oneline}\n`);
}

/** The image; commands run only once `command()` checked it is open. */
export function image(s: IoSession): BlockDriverState {
  if (s.bs === null) throw toolError('ENOMEDIUM', 'command');
  return s.bs;
}

/**
 * getopt(3) for a command: glibc's permuting parser, printing its two messages on stderr with
 * the command word as program name. Returns the options or null after a message.
 */
export function getopts(
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
export class OptFail {
  constructor(readonly ret: number) {}
}

export function parseNum(s: IoSession, arg: string): number | OptFail {
  const r = parseNumBig(s, arg);
  return r instanceof OptFail ? r : r.value;
}

/** cvtnum keeping the exact value too (messages print int64 values exactly). */
export function parseNumBig(s: IoSession, arg: string): { value: number; big: bigint } | OptFail {
  const r = cvtnum(s.o, arg);
  if (!r.ok) {
    printCvtnumErr(s.o, r.error, arg);
    return new OptFail(r.error === 'EINVAL' ? EINVAL : -34);
  }
  return r;
}

/** The alignment messages of read -b / write -b / write -c. */
export function checkSectorAligned(s: IoSession, offset: bigint, count: bigint): boolean {
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
export function unsafeRequest(offset: number, bytes: number): boolean {
  return !Number.isSafeInteger(offset) || !Number.isSafeInteger(bytes) || offset + bytes > Number.MAX_SAFE_INTEGER;
}

export function fillBuffer(len: number, pattern: number): Uint8Array {
  const b = new Uint8Array(len);
  b.fill(pattern);
  return b;
}

export function firstMismatch(buf: Uint8Array, start: number, len: number, pattern: number): boolean {
  for (let i = start; i < start + len; i++) if (buf[i] !== pattern) return true;
  return false;
}

/** Run one synchronous request and let completed AIO report meanwhile (the main loop runs). */
export async function runIo(s: IoSession, fn: () => Promise<void>): Promise<{ t: Elapsed; err: unknown }> {
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
export function submitAio(
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

export function noFallbackCapable(bs: BlockDriverState): boolean {
  for (let n: BlockDriverState | null = bs; n; n = n.file) {
    const d = n.driver;
    if (!(d.isProtocol ?? false) && !(d.isFilter ?? false) && d.formatName !== 'raw') return false;
  }
  return true;
}

export async function outOfBounds(bs: BlockDriverState, offset: number, bytes: number): Promise<boolean> {
  try {
    const len = await bs.getLength();
    return offset > len || len - offset < bytes;
  } catch {
    return false;
  }
}
