/**
 * The `file` protocol driver: a host file (QEMU's raw-posix / file-posix). This file opens,
 * creates, resizes and closes it; the data path is in rw.ts, zeroing and discard in zero.ts,
 * preallocation in prealloc.ts, block status in status.ts, the shared state in state.ts.
 */
import type { Stats } from 'node:fs';
import type { BlockDriver, CreateOptions, OpenOptions } from '../../block/driver.js';
import { CoQueue } from '../../block/coroutine.js';
import { BlockError, ERRNO_MESSAGES, type BlockErrorCode, toBlockError } from '../../block/errors.js';
import { stripProtocolPrefix } from '../../block/options.js';
import { storageGetInfo } from '../../block/info.js';
import type { BlockDriverState } from '../../block/node.js';
import { type HostFile, openHostFile } from './handle.js';
import { allocateFirstBlock, filePreallocate, parsePreallocMode } from './prealloc.js';
import { NOWAIT_MAX_BYTES, fileCoFlush, fileCoPreadv, fileCoPwritev, filePreadvNow, filePwritevSubmit, fileSendfileNow } from './rw.js';
import { ioEngine } from './engine.js';
import { seekAddon } from './seek.js';
import { type FileState, beginIO, endIO, fileRefreshLength, fileStripPrefix, state } from './state.js';
import { fileBlockStatusNow, fileCoBlockStatus } from './status.js';
import { fileCoDiscard, fileCoWriteZeroes } from './zero.js';
import { fileCoZeroThenPwritev, fileZeroThenPwritevSubmit } from './zero-write.js';

export { fileStripPrefix } from './state.js';

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

async function fileOpen(bs: BlockDriverState, options: OpenOptions): Promise<void> {
  const path = fileStripPrefix(bs.filename);
  let fh: HostFile;
  try {
    fh = await openHostFile(path, options.readOnly === true ? 'r' : 'r+');
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
  // The I/O engine starts with the first open, not under the first request: its setup
  // (io_uring_setup and the ring mappings, or the worker threads) is not a request's latency.
  ioEngine();
  bs.opaque = {
    fh,
    fd: fh.fd,
    path,
    length: st.size,
    pending: 0,
    drained: new CoQueue(),
    hasWriteZeroes: true,
    hasDiscard: true,
    hasFallocate: true,
    readNowait: seekAddon()?.preadNowait ?? null,
    sendFile: seekAddon()?.sendFileNow ?? null,
  } satisfies FileState;
}

async function fileClose(bs: BlockDriverState): Promise<void> {
  const s = bs.opaque as FileState | null | undefined;
  if (s === null || s === undefined) return;
  bs.opaque = null;
  // The fd must outlive every read/write issued on it (a closed fd number can be reused by the
  // next open, and a late write would land in someone else's file).
  while (s.pending > 0) await s.drained.wait();
  s.fd = -1;
  await s.fh.close();
}

/** QEMU's extent size hint is a 32-bit field of the inode (FS_IOC_FSSETXATTR's fsx_extsize). */
const MAX_EXTENT_SIZE_HINT = 0xffffffff;

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
  let fh: HostFile;
  try {
    // 'w' = O_WRONLY|O_CREAT|O_TRUNC: a new file, or an existing one emptied.
    fh = await openHostFile(path, 'w', 0o644);
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
        await allocateFirstBlock(s.fd, size);
      } finally {
        endIO(s);
      }
    }
  } catch (e) {
    await fileRefreshLength(s);
    throw toBlockError(e, { op: 'truncate', offset: size, path: s.path });
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

/** The cached length, or null once closed (the gate then sends the request the slow way). */
function fileLengthNow(bs: BlockDriverState): number | null {
  const s = bs.opaque as FileState | null;
  return s === null ? null : s.length;
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
  preadvNowMaxBytes: NOWAIT_MAX_BYTES,
  sendfileNow: fileSendfileNow,
  coPwritev: fileCoPwritev,
  pwritevSubmit: filePwritevSubmit,
  coWriteZeroes: fileCoWriteZeroes,
  coZeroThenPwritev: fileCoZeroThenPwritev,
  zeroThenPwritevSubmit: fileZeroThenPwritevSubmit,
  coDiscard: fileCoDiscard,
  coFlush: fileCoFlush,
  coBlockStatus: fileCoBlockStatus,
  blockStatusNow: fileBlockStatusNow,
  truncate: fileTruncate,
  truncatePreallocates: true,
  getLength: fileGetLength,
  lengthNow: fileLengthNow,
  getAllocatedFileSize: fileGetAllocatedFileSize,
  getInfo: storageGetInfo,
  invalidateCache: fileInvalidateCache,
};
