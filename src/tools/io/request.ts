// How blk-io's commands issue requests: bounds the block layer cannot take, buffers and
// vectors, one synchronous request with the main loop running, and AIO requests whose reports
// wait for the main loop.
import { BDRV_SECTOR_SIZE, IOVector, type BlockBackend, type BlockDriverState } from '../../index.js';
import { BDRV_REQUEST_MAX_BYTES, cvtnum, dumpBuffer, nowNs, printCvtnumErr, printReport, type Elapsed } from './format.js';
import { toolError, type IoSession } from './session.js';
import { EINVAL, OptFail, cmdOptions, parseNum, readFlags, type CmdInfo, type CmdOption, type ReadFlags } from './command.js';

/** Bounds as blk_check_byte_request does them, for numbers the block layer cannot take. */
export function unsafeRequest(offset: number, bytes: number): boolean {
  return !Number.isSafeInteger(offset) || !Number.isSafeInteger(bytes) || offset + bytes > Number.MAX_SAFE_INTEGER;
}

export async function outOfBounds(bs: BlockBackend, offset: number, bytes: number): Promise<boolean> {
  try {
    const len = await bs.getLength();
    return offset > len || len - offset < bytes;
  } catch {
    return false;
  }
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

/** `off len [len..]` of readv, writev and aio_*: the offset and the vector, filled with `pattern`. */
export function offsetAndVector(s: IoSession, args: readonly string[], pattern: number): { offset: number; qiov: IOVector; buf: Uint8Array } | number {
  const offset = parseNum(s, args[0]);
  if (offset instanceof OptFail) return offset.ret;
  const v = createIovec(s, args.slice(1), pattern);
  return v === null ? EINVAL : { offset, ...v };
}

/** readv and aio_read: the read flags, then `off len [len..]` as a vector filled with 0xab. */
export function readvArgs(
  s: IoSession,
  argv: string[],
  cmd: CmdInfo,
  table: readonly CmdOption<ReadFlags>[],
): { a: ReadFlags; offset: number; qiov: IOVector; buf: Uint8Array } | number {
  const a = readFlags();
  const p = cmdOptions(s, argv, cmd, table, a, 2);
  if (typeof p === 'number') return p;
  const v = offsetAndVector(s, p.args, 0xab);
  return typeof v === 'number' ? v : { a, ...v };
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
 * Start a vectored read or write: through the sector-based AIO path when sector aligned and
 * without FUA (QEMU's byte-based blk_aio_preadv accepts any range, so the rest goes through the
 * coroutine path in the background). `cb` runs once, when the request is done.
 */
function startRequest(bs: BlockBackend, write: boolean, offset: number, qiov: IOVector, fua: boolean, op: string, cb: (err: unknown) => void): void {
  const bytes = qiov.size;
  if (unsafeRequest(offset, bytes)) {
    queueMicrotask(() => cb(toolError('EIO', op)));
    return;
  }
  if (!fua && offset % BDRV_SECTOR_SIZE === 0 && bytes % BDRV_SECTOR_SIZE === 0 && bytes > 0) {
    const sector = offset / BDRV_SECTOR_SIZE;
    const n = bytes / BDRV_SECTOR_SIZE;
    if (write) bs.aioWritev(sector, qiov, n, (e) => cb(e));
    else bs.aioReadv(sector, qiov, n, (e) => cb(e));
    return;
  }
  (write ? bs.pwritev(offset, qiov, { fua }) : bs.preadv(offset, qiov)).then(
    () => cb(null),
    (e: unknown) => cb(e),
  );
}

/** aio_read / aio_write: submit; `done` reports when the main loop next runs. */
export function submitAio(
  s: IoSession,
  bs: BlockBackend,
  write: boolean,
  offset: number,
  qiov: IOVector,
  done: (err: unknown) => void,
  fua = false,
): void {
  const p = new Promise<void>((resolve) => {
    startRequest(bs, write, offset, qiov, fua, write ? 'aio_write' : 'aio_read', (err) => {
      s.queueReport(() => done(err));
      resolve();
    });
  });
  s.track(p);
}

/** readv / writev: submit, then run the loop until the request is done. */
export async function aioWait(
  s: IoSession,
  bs: BlockBackend,
  write: boolean,
  offset: number,
  qiov: IOVector,
  fua: boolean,
): Promise<{ t: Elapsed; err: unknown }> {
  const t1 = nowNs();
  const r = await new Promise<{ t: Elapsed; err: unknown }>((resolve) => {
    startRequest(bs, write, offset, qiov, fua, write ? 'writev' : 'readv', (err) => resolve({ t: nowNs() - t1, err }));
  });
  s.poll();
  return r;
}

/**
 * What a finished read reports: the pattern check (its failure makes the command fail),
 * then, unless -q, the dump (-v) and the statistics.
 */
export function reportRead(s: IoSession, a: ReadFlags, buf: Uint8Array, t: Elapsed, offset: number, check = { start: 0, len: buf.length }): number {
  let ret = 0;
  if (a.pflag && firstMismatch(buf, check.start, check.len, a.pattern)) {
    s.o.out(`Pattern verification failed at offset ${offset + check.start}, ${check.len} bytes\n`);
    ret = -22;
  }
  if (a.qflag) return ret;
  if (a.vflag) dumpBuffer(s.o, buf, offset);
  printReport(s.o, 'read', t, offset, buf.length, buf.length, 1, a.cflag);
  return ret;
}

/** What a finished write reports: unless -q, the statistics. */
export function reportWrite(s: IoSession, a: { qflag: boolean; cflag: boolean }, t: Elapsed, offset: number, bytes: number): void {
  if (!a.qflag) printReport(s.o, 'wrote', t, offset, bytes, bytes, 1, a.cflag);
}

/**
 * Can the image zero without a fallback write (QEMU's BDRV_REQ_NO_FALLBACK in
 * supported_zero_flags)? Protocols and filters pass the flag on, and a format only when it
 * says so; every other format refuses such a write before trying, aligned or not.
 */
export function noFallbackCapable(bs: BlockDriverState): boolean {
  for (let n: BlockDriverState | null = bs; n; n = n.file) {
    const d = n.driver;
    if (!(d.isProtocol ?? false) && !(d.isFilter ?? false) && d.zeroNoFallback !== true) return false;
  }
  return true;
}
