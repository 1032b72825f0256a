/**
 * The `file` protocol driver: a host file through a node:fs/promises FileHandle
 * (QEMU's raw-posix / file-posix). It is under every on-disk image, so the request path avoids
 * per-request allocations beyond what the fs API itself needs.
 */
import type { Stats } from 'node:fs';
import { open as fsOpen, type FileHandle } from 'node:fs/promises';
import type { BlockDriver, BlockStatus, CreateOptions, OpenOptions, WriteFlags } from '../../block/driver.js';
import { BlockError, ERRNO_MESSAGES, type BlockErrorCode, toBlockError } from '../../block/errors.js';
import type { IOVector } from '../../block/iovec.js';
import type { BlockDriverState } from '../../block/node.js';

interface FileState {
  fh: FileHandle;
  path: string;
  /**
   * File length, cached: the generic layer asks for it on every request and an fstat per
   * request would be a thread-pool round trip on the hot path. Kept up to date by our writes
   * and truncates; like QEMU, a change made behind our back by another process is not seen.
   */
  length: number;
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

/**
 * preadv until `size` bytes or EOF; returns the bytes read. A short count is not EOF by itself
 * (signals, IOV_MAX splitting), only a read returning 0 is.
 */
async function preadvFull(fh: FileHandle, iov: readonly Uint8Array[], size: number, pos: number): Promise<number> {
  // Fast path: one buffer, one pread, no array built.
  let done =
    iov.length === 1
      ? (await fh.read(iov[0], 0, size, pos)).bytesRead
      : (await fh.readv(iov as Uint8Array[], pos)).bytesRead;
  while (done < size && done > 0) {
    const n = (await fh.readv(iovTail(iov, done), pos + done)).bytesRead;
    if (n === 0) break;
    done += n;
  }
  return done;
}

/** pwritev until every byte is written; a write that makes no progress is an I/O error. */
async function pwritevFull(fh: FileHandle, iov: readonly Uint8Array[], size: number, pos: number): Promise<void> {
  let done =
    iov.length === 1
      ? (await fh.write(iov[0], 0, size, pos)).bytesWritten
      : (await fh.writev(iov as Uint8Array[], pos)).bytesWritten;
  while (done < size) {
    const n = (await fh.writev(iovTail(iov, done), pos + done)).bytesWritten;
    if (n === 0) throw new BlockError('EIO', 'short write made no progress', { op: 'write', offset: pos + done });
    done += n;
  }
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
  bs.opaque = { fh, path, length: st.size } satisfies FileState;
}

async function fileClose(bs: BlockDriverState): Promise<void> {
  const s = bs.opaque as FileState | null | undefined;
  if (s === null || s === undefined) return;
  bs.opaque = null;
  // FileHandle.close waits for this handle's in-flight operations.
  await s.fh.close();
}

async function fileCreate(filename: string, options: CreateOptions): Promise<void> {
  const path = fileStripPrefix(filename);
  const size = options.size ?? 0;
  if (!Number.isSafeInteger(size) || size < 0) {
    throw new BlockError('EINVAL', `Invalid size ${String(size)} for '${path}'`, { op: 'create', path });
  }
  let fh: FileHandle;
  try {
    // 'w' = O_WRONLY|O_CREAT|O_TRUNC: a new file, or an existing one emptied.
    fh = await fsOpen(path, 'w', 0o644);
  } catch (e) {
    throw openError('create', path, e);
  }
  try {
    // Sparse: ftruncate up to the size allocates nothing; whole sectors, as QEMU's create does.
    if (size > 0) await fh.truncate(Math.ceil(size / 512) * 512);
  } catch (e) {
    throw toBlockError(e, { op: 'create', path });
  } finally {
    await fh.close();
  }
}

async function fileCoPreadv(bs: BlockDriverState, offset: number, bytes: number, qiov: IOVector): Promise<void> {
  if (bytes === 0) return;
  const s = state(bs);
  let done: number;
  try {
    done = await preadvFull(s.fh, qiov.iov, bytes, offset);
  } catch (e) {
    throw toBlockError(e, { op: 'read', offset, path: s.path });
  }
  // Past EOF a host file reads as zeros (the layer above may cover a growing file).
  if (done < bytes) qiov.memset(done, 0, bytes - done);
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
  try {
    // A write past EOF grows the file; the gap is a hole that reads as zeros.
    await pwritevFull(s.fh, qiov.iov, bytes, offset);
    if (offset + bytes > s.length) s.length = offset + bytes;
    // FUA: the write must be durable when it completes.
    if (flags.fua === true) await s.fh.datasync();
  } catch (e) {
    // A failed write (ENOSPC...) may still have grown the file partly: learn the real length.
    await fileRefreshLength(s);
    throw toBlockError(e, { op: 'write', offset, path: s.path });
  }
}

async function fileCoFlush(bs: BlockDriverState): Promise<void> {
  const s = state(bs);
  try {
    await s.fh.datasync();
  } catch (e) {
    throw toBlockError(e, { op: 'flush', path: s.path });
  }
}

/**
 * Node exposes no lseek(SEEK_DATA/SEEK_HOLE), so holes cannot be found portably: like QEMU on a
 * host without SEEK_DATA, every byte is reported as data stored at the same offset of this file.
 * (A st_blocks == 0 shortcut is not used: inline-data file systems report 0 blocks for data.)
 */
async function fileCoBlockStatus(bs: BlockDriverState, offset: number, bytes: number): Promise<BlockStatus> {
  return { pnum: bytes, allocated: true, data: true, zero: false, offset, file: bs };
}

async function fileTruncate(bs: BlockDriverState, size: number): Promise<void> {
  const s = state(bs);
  if (!Number.isSafeInteger(size) || size < 0) {
    throw new BlockError('EINVAL', `Invalid size ${size}`, { op: 'truncate', path: s.path });
  }
  try {
    await s.fh.truncate(size);
    s.length = size;
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
  createOptions: [{ name: 'size', key: 'size', type: 'size', help: 'Virtual disk size' }],
  open: fileOpen,
  close: fileClose,
  create: fileCreate,
  coPreadv: fileCoPreadv,
  coPwritev: fileCoPwritev,
  coFlush: fileCoFlush,
  coBlockStatus: fileCoBlockStatus,
  truncate: fileTruncate,
  getLength: fileGetLength,
  getAllocatedFileSize: fileGetAllocatedFileSize,
  invalidateCache: fileInvalidateCache,
};
