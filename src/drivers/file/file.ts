/**
 * The `file` protocol driver: a host file (QEMU's raw-posix / file-posix). A node:fs/promises
 * FileHandle owns the descriptor (open, close, stat, truncate, datasync); reads and writes, the
 * hot path under every on-disk image, use the callback API on its fd: measured here, 4 KiB
 * requests run about twice as fast as through FileHandle.read/write, and nothing but the
 * promise and its callback is allocated per request.
 *
 * Reads first ask the page cache directly (the preadvNow hook: preadv2 with RWF_NOWAIT, through
 * the native addon): what is cached is copied right here, with no thread-pool round trip and
 * no promise, and a read that would wait for the disk goes to the thread pool (coPreadv).
 * io_uring does the same inline attempt; libuv's thread pool costs two thread hand-offs per
 * request, more than copying 64 KiB.
 */
import { read as fsRead, readv as fsReadv, write as fsWrite, writev as fsWritev, type Stats } from 'node:fs';
import { open as fsOpen, type FileHandle } from 'node:fs/promises';
import {
  BDRV_SECTOR_SIZE,
  type BlockDriver,
  type BlockStatus,
  type CreateOptions,
  type OpenOptions,
  type WriteFlags,
  type WriteZeroesFlags,
} from '../../block/driver.js';
import { CoQueue } from '../../block/coroutine.js';
import { BlockError, ERRNO_MESSAGES, type BlockErrorCode, toBlockError } from '../../block/errors.js';
import type { IOVector } from '../../block/iovec.js';
import { stripProtocolPrefix } from '../../block/options.js';
import type { BlockDriverState } from '../../block/node.js';
import { type SeekAddon, seekAddon } from './seek.js';

interface FileState {
  fh: FileHandle;
  path: string;
  /**
   * File length, cached: the generic layer asks for it on every request and an fstat per
   * request would be a thread-pool round trip on the hot path. Kept up to date by our writes
   * and truncates; like QEMU, a change made behind our back by another process is not seen.
   */
  length: number;
  /** Reads and writes in flight on the raw fd: close waits for them before the fd goes away. */
  pending: number;
  /** Woken when `pending` drops to 0 (close waits for it). */
  drained: CoQueue;
  /*
   * What the host file system answered ENOTSUP to, so it is not asked again (QEMU's
   * has_write_zeroes / has_discard / has_fallocate): FALLOC_FL_ZERO_RANGE, PUNCH_HOLE, mode 0.
   */
  hasWriteZeroes: boolean;
  hasDiscard: boolean;
  hasFallocate: boolean;
  /** The addon's page-cache read, while this host supports RWF_NOWAIT reads; else null. */
  readNowait: SeekAddon['preadNowait'] | null;
}

/** 'file:/x/y' and '/x/y' name the same host file. */
export function fileStripPrefix(filename: string): string {
  return filename.startsWith('file:') ? filename.slice('file:'.length) : filename;
}

function state(bs: BlockDriverState): FileState {
  const s = bs.opaque as FileState | null | undefined;
  if (s === null || s === undefined) {
    throw new BlockError('EBADF', `'${bs.filename}' is not open`, { op: 'file', path: bs.filename });
  }
  return s;
}

/** "Could not open 'PATH': No such file or directory", as QEMU words it, with the errno code. */
function openError(verb: 'open' | 'create', path: string, e: unknown): BlockError {
  const sysCode = (e as { code?: unknown } | null)?.code;
  if (typeof sysCode === 'string' && sysCode in ERRNO_MESSAGES) {
    const code = sysCode as BlockErrorCode;
    return new BlockError(code, `Could not ${verb} '${path}': ${ERRNO_MESSAGES[code]}`, { op: verb, path, cause: e });
  }
  const msg = e instanceof Error ? e.message : String(e);
  return new BlockError('EIO', `Could not ${verb} '${path}': ${msg}`, { op: verb, path, cause: e });
}

/** The buffers of `iov` after its first `skip` bytes (only built on the rare short-I/O path). */
function iovTail(iov: readonly Uint8Array[], skip: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (const b of iov) {
    if (skip >= b.length) {
      skip -= b.length;
      continue;
    }
    out.push(skip === 0 ? b : b.subarray(skip));
    skip = 0;
  }
  return out;
}

function preadOnce(fd: number, iov: readonly Uint8Array[], size: number, pos: number): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    const cb = (err: NodeJS.ErrnoException | null, n: number): void => (err === null ? resolve(n) : reject(err));
    // One buffer: plain pread, no array handed down.
    if (iov.length === 1) fsRead(fd, iov[0], 0, size, pos, cb);
    else fsReadv(fd, iov as Uint8Array[], pos, cb);
  });
}

function pwriteOnce(fd: number, iov: readonly Uint8Array[], size: number, pos: number): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    const cb = (err: NodeJS.ErrnoException | null, n: number): void => (err === null ? resolve(n) : reject(err));
    if (iov.length === 1) fsWrite(fd, iov[0], 0, size, pos, cb);
    else fsWritev(fd, iov as Uint8Array[], pos, cb);
  });
}

/**
 * The rest of a preadv after a first read of `done` bytes: on until `size` bytes or EOF; returns
 * the bytes read. A short count is not EOF by itself
 * (signals, IOV_MAX splitting), only a read returning 0 is.
 */
async function preadvRest(
  fd: number,
  iov: readonly Uint8Array[],
  size: number,
  pos: number,
  done: number,
): Promise<number> {
  while (done < size && done > 0) {
    const rest = iovTail(iov, done);
    const n = await preadOnce(fd, rest, size - done, pos + done);
    if (n === 0) break;
    done += n;
  }
  return done;
}

/** pwritev until every byte is written; a write that makes no progress is an I/O error. */
async function pwritevFull(fd: number, iov: readonly Uint8Array[], size: number, pos: number): Promise<void> {
  await pwritevRest(fd, iov, size, pos, await pwriteOnce(fd, iov, size, pos));
}

/** The rest of pwritevFull after a first write of `done` bytes (rarely anything to do). */
async function pwritevRest(
  fd: number,
  iov: readonly Uint8Array[],
  size: number,
  pos: number,
  done: number,
): Promise<void> {
  while (done < size) {
    const rest = iovTail(iov, done);
    const n = await pwriteOnce(fd, rest, size - done, pos + done);
    if (n === 0) throw new BlockError('EIO', 'short write made no progress', { op: 'write', offset: pos + done });
    done += n;
  }
}

function beginIO(s: FileState): void {
  s.pending++;
}

function endIO(s: FileState): void {
  if (--s.pending === 0) s.drained.restartAll();
}

async function fileOpen(bs: BlockDriverState, options: OpenOptions): Promise<void> {
  const path = fileStripPrefix(bs.filename);
  let fh: FileHandle;
  try {
    fh = await fsOpen(path, options.readOnly === true ? 'r' : 'r+');
  } catch (e) {
    throw openError('open', path, e);
  }
  let st: Stats;
  try {
    // A directory opens fine with O_RDONLY on Linux; refuse it here like a read-write open would.
    st = await fh.stat();
    if (st.isDirectory()) throw new BlockError('EISDIR', `Could not open '${path}': ${ERRNO_MESSAGES.EISDIR}`, { op: 'open', path });
    // Block devices are QEMU's host_device driver, not this one (their st_size is 0).
    if (!st.isFile()) {
      throw new BlockError('EINVAL', `'file' driver requires '${path}' to be a regular file`, { op: 'open', path });
    }
  } catch (e) {
    await fh.close();
    throw e instanceof BlockError ? e : openError('open', path, e);
  }
  bs.opaque = {
    fh,
    path,
    length: st.size,
    pending: 0,
    drained: new CoQueue(),
    hasWriteZeroes: true,
    hasDiscard: true,
    hasFallocate: true,
    readNowait: seekAddon()?.preadNowait ?? null,
  } satisfies FileState;
}

async function fileClose(bs: BlockDriverState): Promise<void> {
  const s = bs.opaque as FileState | null | undefined;
  if (s === null || s === undefined) return;
  bs.opaque = null;
  // The fd must outlive every read/write issued on it (a closed fd number can be reused by the
  // next open, and a late write would land in someone else's file).
  while (s.pending > 0) await s.drained.wait();
  await s.fh.close();
}

/** One shared, never-written zero buffer (only ever a write source, so sharing it is safe). */
const ZERO_SEGMENT = new Uint8Array(4096);

/**
 * After growing an empty file, write zeros over its first block (4 KiB, or one sector when the
 * file is smaller), as QEMU's file driver does on create and on resize from 0: a later
 * O_DIRECT open probes the alignment by reading there, and qemu-img map shows that block as
 * data, so ours must too. The bytes were zeros already; failures change nothing and are ignored.
 */
async function allocateFirstBlock(fd: number, size: number): Promise<void> {
  const n = Math.min(size, size < 4096 ? BDRV_SECTOR_SIZE : 4096);
  if (n <= 0) return;
  try {
    await pwritevFull(fd, [ZERO_SEGMENT.subarray(0, n)], n, 0);
  } catch {
    // Only an optimisation: the file already reads as zeros there.
  }
}

/** QEMU's PreallocMode names; `metadata` is a known mode that the file protocol refuses. */
const PREALLOC_MODES = ['off', 'metadata', 'falloc', 'full'] as const;
export type PreallocMode = (typeof PREALLOC_MODES)[number];

/** QEMU's extent size hint is a 32-bit field of the inode (FS_IOC_FSSETXATTR's fsx_extsize). */
const MAX_EXTENT_SIZE_HINT = 0xffffffff;

/** Bounded zero-write chunks for preallocation=full (QEMU writes 64 KiB at a time). */
const PREALLOC_CHUNK = 65536;

/** Write zeros over [from, to) in bounded chunks (preallocation=full, or falloc's fallback). */
async function writeZeroRange(fd: number, from: number, to: number): Promise<void> {
  const buf = new Uint8Array(Math.min(PREALLOC_CHUNK, Math.max(0, to - from)));
  for (let pos = from; pos < to; ) {
    const n = Math.min(buf.length, to - pos);
    await pwritevFull(fd, [buf.subarray(0, n)], n, pos);
    pos += n;
  }
}

/**
 * Grow (or set) a file's length from `current` to `size` with a preallocation mode, as
 * file-posix's handle_aiocb_truncate does:
 * - off: ftruncate, then the first block is written when the file was empty (allocateFirstBlock);
 * - falloc: allocate the new range (it reads as zeros but takes space). Like posix_fallocate,
 *   a host that cannot fallocate gets the range written with zeros instead. The first block is
 *   written after it when the file was empty;
 * - full: ftruncate to the final size first (lets the file system lay the file out at once),
 *   then zeros written over the new range and the file synced, so the space is really there;
 * - metadata: refused (the file protocol has no metadata to preallocate).
 * Failures are worded as QEMU's, the errno kept as the cause.
 */
async function filePreallocate(fh: FileHandle, current: number, size: number, mode: PreallocMode, op: string, path: string): Promise<void> {
  const fail = (msg: string, e: unknown): BlockError => {
    const err = toBlockError(e, { op, offset: size, path });
    return new BlockError(err.code, `${msg}: ${err.errnoMessage}`, { op, offset: size, path, cause: e });
  };
  switch (mode) {
    case 'off':
      await fh.truncate(size);
      if (current === 0 && size > 0) await allocateFirstBlock(fh.fd, size);
      return;
    case 'falloc': {
      if (size === current) return;
      const fn = seekAddon()?.allocateRange;
      let fallback = fn === undefined;
      if (fn !== undefined) {
        try {
          await fn(fh.fd, current, size - current);
        } catch (e) {
          const code = (e as { code?: unknown } | null)?.code;
          if (code !== 'ENOTSUP' && code !== 'EOPNOTSUPP' && code !== 'ENOSYS') throw fail('Could not preallocate new data', e);
          fallback = true;
        }
      }
      try {
        // posix_fallocate's own fallback: the range written with zeros.
        if (fallback) await writeZeroRange(fh.fd, current, size);
      } catch (e) {
        throw fail('Could not preallocate new data', e);
      }
      if (current === 0) await allocateFirstBlock(fh.fd, size);
      return;
    }
    case 'full':
      try {
        await fh.truncate(size);
      } catch (e) {
        throw fail('Could not resize file', e);
      }
      try {
        await writeZeroRange(fh.fd, current, size);
      } catch (e) {
        throw fail('Could not write zeros for preallocation', e);
      }
      try {
        await fh.sync();
      } catch (e) {
        throw fail('Could not flush file to disk', e);
      }
      return;
    default:
      throw new BlockError('ENOTSUP', `Unsupported preallocation mode: ${mode}`, { op, path });
  }
}

/** The preallocation option's value checked (QEMU's qapi_enum_parse), 'off' when absent. */
export function parsePreallocMode(value: string | number | boolean | undefined, path?: string): PreallocMode {
  if (value === undefined) return 'off';
  const v = String(value);
  if (!(PREALLOC_MODES as readonly string[]).includes(v)) {
    throw new BlockError('EINVAL', `invalid parameter value: ${v}`, { op: 'create', path });
  }
  return v as PreallocMode;
}

async function fileCreate(filename: string, options: CreateOptions): Promise<void> {
  const path = fileStripPrefix(filename);
  const size = options.size ?? 0;
  if (!Number.isSafeInteger(size) || size < 0) {
    throw new BlockError('EINVAL', `Invalid size ${String(size)} for '${path}'`, { op: 'create', path });
  }
  // Both checked before the file is touched, as QEMU does.
  const prealloc = parsePreallocMode(options.preallocation, path);
  const hint = options.extentSizeHint;
  if (typeof hint === 'number' && hint > MAX_EXTENT_SIZE_HINT) {
    throw new BlockError('EINVAL', 'Extent size hint is too large', { op: 'create', path });
  }
  let fh: FileHandle;
  try {
    // 'w' = O_WRONLY|O_CREAT|O_TRUNC: a new file, or an existing one emptied.
    fh = await fsOpen(path, 'w', 0o644);
  } catch (e) {
    throw openError('create', path, e);
  }
  try {
    // nocow (btrfs' FS_NOCOW_FL) and extent_size_hint (XFS' FS_IOC_FSSETXATTR) are inode flags
    // set through ioctls Node cannot issue; QEMU ignores their failure on other file systems
    // (nocow silently, the default hint too), and neither changes the file's bytes, size or
    // allocation as seen here, so both are accepted and left unapplied.
    // Sparse with off: ftruncate up to the size allocates nothing; whole sectors, as QEMU's
    // create does. A refused mode (metadata) leaves the new, empty file behind, as QEMU does.
    const sectors = Math.ceil(size / 512) * 512;
    if (sectors > 0 || prealloc === 'metadata') await filePreallocate(fh, 0, sectors, prealloc, 'create', path);
  } catch (e) {
    throw toBlockError(e, { op: 'create', path });
  } finally {
    await fh.close();
  }
}

async function fileCoPreadv(bs: BlockDriverState, offset: number, bytes: number, qiov: IOVector): Promise<void> {
  if (bytes === 0) return;
  const s = state(bs);
  // Never touch more than `bytes`, even if the vector is longer.
  const iov = qiov.size === bytes ? qiov.iov : qiov.slice(0, bytes).iov;
  // The page cache was asked first (filePreadvNow, through the generic layer): this is the
  // thread pool's read.
  let done: number;
  beginIO(s);
  try {
    // One pread inline (no helper frame); a short count goes on in preadvRest.
    done = await preadOnce(s.fh.fd, iov, bytes, offset);
    if (done < bytes && done > 0) done = await preadvRest(s.fh.fd, iov, bytes, offset, done);
  } catch (e) {
    throw toBlockError(e, { op: 'read', offset, path: s.path });
  } finally {
    endIO(s);
  }
  // Past EOF a host file reads as zeros (the layer above may cover a growing file).
  if (done < bytes) qiov.memset(done, 0, bytes - done);
}

/**
 * Larger reads go to the thread pool even when cached: a copy on this thread holds up every
 * other request's submission and completion while it runs (1 MiB is a few hundred
 * microseconds), and in the pool it overlaps with them (convert: read ahead while writing).
 */
const NOWAIT_MAX_BYTES = 256 * 1024;

/**
 * The preadvNow hook: the whole request from the page cache, now, or nothing (false: a miss,
 * only part cached, an error; coPreadv then reads it, and reports the error).
 */
function filePreadvNow(bs: BlockDriverState, offset: number, bytes: number, qiov: IOVector): boolean {
  const s = bs.opaque as FileState | null;
  if (s === null || s.readNowait === null || bytes > NOWAIT_MAX_BYTES) return false;
  if (bytes === 0) return true;
  const n = fileReadNowait(s, qiov.size === bytes ? qiov.iov : qiov.slice(0, bytes).iov, bytes, offset);
  // Past EOF a host file reads as zeros (the layer above may cover a growing file).
  if (n === 0) qiov.memset(0, 0, bytes);
  return n === 0 || n === bytes;
}

/** preadv2(RWF_NOWAIT); a host that cannot do it (-2) is not asked again. */
function fileReadNowait(s: FileState, iov: readonly Uint8Array[], bytes: number, offset: number): number {
  const n = s.readNowait!(s.fh.fd, iov, offset, bytes);
  if (n === -2) s.readNowait = null;
  return n;
}

async function fileCoPwritev(
  bs: BlockDriverState,
  offset: number,
  bytes: number,
  qiov: IOVector,
  flags: WriteFlags,
): Promise<void> {
  if (bytes === 0) return;
  const s = state(bs);
  const iov = qiov.size === bytes ? qiov.iov : qiov.slice(0, bytes).iov;
  beginIO(s);
  try {
    // A write past EOF grows the file; the gap is a hole that reads as zeros. One pwrite
    // inline (no helper frame); a short count goes on in pwritevRest.
    const done = await pwriteOnce(s.fh.fd, iov, bytes, offset);
    if (done < bytes) await pwritevRest(s.fh.fd, iov, bytes, offset, done);
    if (offset + bytes > s.length) s.length = offset + bytes;
    // FUA: the write must be durable when it completes.
    if (flags.fua === true) await s.fh.datasync();
  } catch (e) {
    // A failed write (ENOSPC...) may still have grown the file partly: learn the real length.
    await fileRefreshLength(s);
    throw toBlockError(e, { op: 'write', offset, path: s.path });
  } finally {
    endIO(s);
  }
}

type FallocOp = 'zeroRange' | 'punchHole' | 'allocateRange';

/**
 * One fallocate through the addon: null on success, else the error's code, with "this host
 * cannot do that" (no addon, an old addon, ENOSYS, ENODEV, ENOTTY, EOPNOTSUPP) folded into
 * ENOTSUP as QEMU's translate_err does. Any other failure is returned as the error itself for
 * the caller to decide.
 */
async function doFallocate(
  s: FileState,
  op: FallocOp,
  offset: number,
  bytes: number,
): Promise<{ code: string; error: unknown } | null> {
  const fn = seekAddon()?.[op];
  if (fn === undefined) return { code: 'ENOTSUP', error: null };
  beginIO(s);
  try {
    await fn(s.fh.fd, offset, bytes);
    return null;
  } catch (e) {
    const code = (e as { code?: unknown } | null)?.code;
    if (code === 'ENOTSUP' || code === 'EOPNOTSUPP' || code === 'ENOSYS' || code === 'ENODEV' || code === 'ENOTTY') {
      return { code: 'ENOTSUP', error: e };
    }
    return { code: typeof code === 'string' ? code : 'EIO', error: e };
  } finally {
    endIO(s);
  }
}

function notSupported(s: FileState, offset: number): BlockError {
  return new BlockError('ENOTSUP', `'${s.path}': the host file system cannot zero this range without writing`, {
    op: 'write_zeroes',
    offset,
    path: s.path,
  });
}

/** ZERO_RANGE and mode 0 grow the file when the range ends past it (PUNCH_HOLE keeps the size). */
function grewTo(s: FileState, end: number): void {
  if (end > s.length) s.length = end;
}

/**
 * Zero without unmapping, trying what the host offers in QEMU's order (file-posix's
 * handle_aiocb_write_zeroes): ZERO_RANGE; else punch a hole and allocate it again (the range
 * then reads as zeros and stays allocated); else, for a range wholly past EOF, allocate it
 * (new space reads as zeros). Nothing left: ENOTSUP, and the generic layer writes zeros.
 * EINVAL from a fallocate mode means only "not for this range" on some file systems
 * (unaligned bytes): the next way is tried.
 */
async function fileWriteZeroesNoUnmap(s: FileState, offset: number, bytes: number): Promise<void> {
  const end = offset + bytes;
  if (s.hasWriteZeroes) {
    const r = await doFallocate(s, 'zeroRange', offset, bytes);
    if (r === null) return grewTo(s, end);
    if (r.code === 'ENOTSUP') s.hasWriteZeroes = false;
    else if (r.code !== 'EINVAL') throw r.error;
  }
  if (s.hasDiscard && s.hasFallocate) {
    const r = await doFallocate(s, 'punchHole', offset, bytes);
    if (r === null) {
      // The hole reads as zeros; allocating it back keeps the range "written" as asked.
      const a = await doFallocate(s, 'allocateRange', offset, bytes);
      if (a === null) return grewTo(s, end);
      if (a.code !== 'ENOTSUP') throw a.error;
      s.hasFallocate = false;
    } else if (r.code === 'ENOTSUP') {
      s.hasDiscard = false;
    } else if (r.code !== 'EINVAL') {
      throw r.error;
    }
  }
  // Past EOF the file has no bytes to clear: allocating grows it with zeros.
  if (s.hasFallocate && offset >= s.length) {
    const a = await doFallocate(s, 'allocateRange', offset, bytes);
    if (a === null) return grewTo(s, end);
    if (a.code !== 'ENOTSUP') throw a.error;
    s.hasFallocate = false;
  }
  throw notSupported(s, offset);
}

/**
 * Native zeroing (QEMU's raw_co_pwrite_zeroes on a regular file). With mayUnmap a punched hole
 * is tried first: it reads as zeros and frees the space, but keeps the file size (a range
 * past EOF is then left as a hole past the end, reading as zeros, as with QEMU). A file system
 * that cannot punch (ENOTSUP), refuses the range (EINVAL) or is busy (EBUSY) gets the
 * allocate-keeping zeroing instead. ENOTSUP here makes the generic layer write a zero buffer,
 * or, with noFallback, report ENOTSUP to the caller.
 */
async function fileCoWriteZeroes(
  bs: BlockDriverState,
  offset: number,
  bytes: number,
  flags: WriteZeroesFlags,
): Promise<void> {
  const s = state(bs);
  if (bytes === 0) return;
  try {
    if (flags.mayUnmap === true) {
      const r = await doFallocate(s, 'punchHole', offset, bytes);
      if (r === null) return;
      if (r.code !== 'ENOTSUP' && r.code !== 'EINVAL' && r.code !== 'EBUSY') throw r.error;
    }
    await fileWriteZeroesNoUnmap(s, offset, bytes);
  } catch (e) {
    if (e instanceof BlockError) throw e;
    // A failed zeroing (ENOSPC...) may still have grown the file partly: learn the real length.
    await fileRefreshLength(s);
    throw toBlockError(e, { op: 'write_zeroes', offset, path: s.path });
  }
}

/**
 * Discard punches a hole (QEMU's handle_aiocb_discard): the range reads as zeros afterwards,
 * the file keeps its size. Discard is advisory: a host that cannot punch holes is not asked
 * again and the request succeeds with the data left in place, as QEMU ignores ENOTSUP.
 */
async function fileCoDiscard(bs: BlockDriverState, offset: number, bytes: number): Promise<void> {
  const s = state(bs);
  if (bytes === 0 || !s.hasDiscard) return;
  const r = await doFallocate(s, 'punchHole', offset, bytes);
  if (r === null) return;
  if (r.code === 'ENOTSUP') {
    s.hasDiscard = false;
    return;
  }
  throw toBlockError(r.error, { op: 'discard', offset, path: s.path });
}

async function fileCoFlush(bs: BlockDriverState): Promise<void> {
  const s = state(bs);
  try {
    await s.fh.datasync();
  } catch (e) {
    throw toBlockError(e, { op: 'flush', path: s.path });
  }
}

/** Where a byte of the host file lies, as lseek(SEEK_DATA / SEEK_HOLE) sees it. */
type Allocation =
  | { kind: 'data'; hole: number } // data from the offset up to `hole`
  | { kind: 'hole'; data: number } // a hole from the offset up to `data`
  | { kind: 'trailing' } // a hole up to the end of the file, or the offset is past it
  | { kind: 'unknown' }; // no answer: callers must assume data

/**
 * Classify `start`: first SEEK_DATA (where is the next data?), then, only when `start` is in
 * data, SEEK_HOLE (where does it end?). The file can change between the two calls (another
 * process punching a hole or truncating): an answer that contradicts the first is "unknown",
 * never a guess that could call data a hole. Errors (a file system without SEEK_DATA) are
 * "unknown" too: the caller then reports data, which is always safe.
 */
function findAllocation(seek: SeekAddon, fd: number, start: number): Allocation {
  try {
    const data = seek.seekData(fd, start);
    if (data < 0) return { kind: 'trailing' };
    if (data < start) return { kind: 'unknown' }; // lseek must not go backwards
    if (data > start) return { kind: 'hole', data };
    const hole = seek.seekHole(fd, start);
    // Truncated behind our back since SEEK_DATA: what is left past the end reads as zeros.
    if (hole < 0) return { kind: 'trailing' };
    // A hole right at `start` now: it was data a moment ago; the file is changing under us.
    if (hole <= start) return { kind: 'unknown' };
    return { kind: 'data', hole };
  } catch {
    return { kind: 'unknown' };
  }
}

/**
 * Data or hole, as QEMU's file-posix answers: a hole is zeros that take no room (zero), data is
 * data; both at the same offset of this file, and allocated at this layer (the range is
 * determined here; nothing lies below a protocol node). The answer runs up to the next
 * data/hole boundary, clamped to the request by the generic layer.
 *
 * lseek runs synchronously: it is a short syscall answered from the extent tree and page
 * cache, cheaper than a round trip through the thread pool. It moves the fd's file position,
 * which nothing uses: every read and write here is positioned (pread/pwrite).
 *
 * Without the native addon (see seek.ts) Node cannot find holes, and every byte is reported as
 * data, as QEMU does on a host without SEEK_DATA. (A st_blocks == 0 shortcut is not used:
 * inline-data file systems report 0 blocks for data.)
 */
async function fileCoBlockStatus(bs: BlockDriverState, offset: number, bytes: number): Promise<BlockStatus> {
  const s = state(bs);
  const seek = seekAddon();
  const where = seek === null ? ({ kind: 'unknown' } as const) : findAllocation(seek, s.fh.fd, offset);
  switch (where.kind) {
    case 'data':
      return { pnum: Math.min(bytes, where.hole - offset), allocated: true, data: true, zero: false, offset, file: bs };
    case 'hole':
      return { pnum: Math.min(bytes, where.data - offset), allocated: true, data: false, zero: true, offset, file: bs };
    case 'trailing':
      return { pnum: bytes, allocated: true, data: false, zero: true, offset, file: bs };
    case 'unknown':
      return { pnum: bytes, allocated: true, data: true, zero: false, offset, file: bs };
  }
}

async function fileTruncate(bs: BlockDriverState, size: number, prealloc?: string): Promise<void> {
  const s = state(bs);
  if (!Number.isSafeInteger(size) || size < 0) {
    throw new BlockError('EINVAL', `Invalid size ${size}`, { op: 'truncate', path: s.path });
  }
  if (prealloc !== undefined && prealloc !== 'off') {
    const mode = parsePreallocMode(prealloc, s.path);
    beginIO(s);
    try {
      await filePreallocate(s.fh, s.length, size, mode, 'truncate', s.path);
    } catch (e) {
      await fileRefreshLength(s);
      throw toBlockError(e, { op: 'truncate', offset: size, path: s.path });
    } finally {
      endIO(s);
    }
    await fileRefreshLength(s);
    return;
  }
  try {
    const wasEmpty = s.length === 0;
    await s.fh.truncate(size);
    s.length = size;
    // The generic layer serialises a truncate against every request from the old end on (here
    // from 0), so this write cannot race a guest write to the first block.
    if (wasEmpty && size > 0) {
      beginIO(s);
      try {
        await allocateFirstBlock(s.fh.fd, size);
      } finally {
        endIO(s);
      }
    }
  } catch (e) {
    await fileRefreshLength(s);
    throw toBlockError(e, { op: 'truncate', offset: size, path: s.path });
  }
}

async function fileRefreshLength(s: FileState): Promise<void> {
  try {
    s.length = (await s.fh.stat()).size;
  } catch {
    // Keep the cached value: the caller is already reporting the original error.
  }
}

/** Reread what may have changed behind our back: the length. */
async function fileInvalidateCache(bs: BlockDriverState): Promise<void> {
  await fileRefreshLength(state(bs));
}

/** Synchronous (cached): lets the generic layer bound-check without waiting. */
function fileGetLength(bs: BlockDriverState): number {
  return state(bs).length;
}

async function fileGetAllocatedFileSize(bs: BlockDriverState): Promise<number> {
  const s = state(bs);
  try {
    // st_blocks counts 512-byte units whatever the file system's block size.
    return (await s.fh.stat()).blocks * 512;
  } catch (e) {
    throw toBlockError(e, { op: 'getAllocatedFileSize', path: s.path });
  }
}

export const fileDriver: BlockDriver = {
  formatName: 'file',
  protocolName: 'file',
  isProtocol: true,
  requestAlignment: 1,
  // In QEMU's order (the Formatting line follows it; -o help sorts).
  createOptions: [
    { name: 'size', key: 'size', type: 'size', help: 'Virtual disk size' },
    { name: 'nocow', key: 'nocow', type: 'bool', help: 'Turn off copy-on-write (valid only on btrfs)' },
    { name: 'preallocation', key: 'preallocation', type: 'string', help: 'Preallocation mode (allowed values: off, falloc, full)' },
    { name: 'extent_size_hint', key: 'extentSizeHint', type: 'size', help: 'Extent size hint for the image file, 0 to disable' },
  ],
  // `file:a:b.qed` is the file ./a:b.qed (QEMU's bdrv_parse_filename_strip_prefix).
  parseFilename(filename, options) {
    options.set('filename', stripProtocolPrefix(filename, 'file:'));
  },
  open: fileOpen,
  close: fileClose,
  create: fileCreate,
  coPreadv: fileCoPreadv,
  preadvNow: filePreadvNow,
  coPwritev: fileCoPwritev,
  coWriteZeroes: fileCoWriteZeroes,
  coDiscard: fileCoDiscard,
  coFlush: fileCoFlush,
  coBlockStatus: fileCoBlockStatus,
  truncate: fileTruncate,
  truncatePreallocates: true,
  getLength: fileGetLength,
  getAllocatedFileSize: fileGetAllocatedFileSize,
  invalidateCache: fileInvalidateCache,
};
