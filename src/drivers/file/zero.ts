/**
 * Zeroing and discard on a host file through fallocate (ZERO_RANGE, PUNCH_HOLE, mode 0), in
 * QEMU's order and with its fallbacks, remembering what the host file system refused.
 */
import type { BlockDriverHook } from '../../block/driver.js';
import { BlockError, toBlockError } from '../../block/errors.js';
import type { BlockDriverState } from '../../block/node.js';
import { FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE, ioEngine } from './engine.js';
import { seekAddon } from './seek.js';
import { type FileState, beginIO, endIO, fileRefreshLength, state } from './state.js';

type FallocOp = 'zeroRange' | 'punchHole' | 'allocateRange';

/** The fallocate(2) mode of each operation, as native/seek.c issues them. */
const FALLOC_MODES: Record<FallocOp, number> = {
  zeroRange: FALLOC_FL_ZERO_RANGE,
  punchHole: FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
  allocateRange: 0,
};

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
  const engine = ioEngine();
  const fn = engine === null ? seekAddon()?.[op] : (fd: number, o: number, n: number) => engine.fallocate(fd, FALLOC_MODES[op], o, n);
  if (fn === undefined) return { code: 'ENOTSUP', error: null };
  beginIO(s);
  try {
    await fn(s.fd, offset, bytes);
    return null;
  } catch (e) {
    return fallocateFailure(e);
  } finally {
    endIO(s);
  }
}

/**
 * A failed fallocate's code, with "this host cannot do that" (ENOSYS, ENODEV, ENOTTY,
 * EOPNOTSUPP) folded into ENOTSUP as QEMU's translate_err does.
 */
export function fallocateFailure(e: unknown): { code: string; error: unknown } {
  const code = (e as { code?: unknown } | null)?.code;
  if (code === 'ENOTSUP' || code === 'EOPNOTSUPP' || code === 'ENOSYS' || code === 'ENODEV' || code === 'ENOTTY') {
    return { code: 'ENOTSUP', error: e };
  }
  return { code: typeof code === 'string' ? code : 'EIO', error: e };
}

function notSupported(s: FileState, offset: number): BlockError {
  return new BlockError('ENOTSUP', `'${s.path}': the host file system cannot zero this range without writing`, {
    op: 'write_zeroes',
    offset,
    path: s.path,
  });
}

/** ZERO_RANGE and mode 0 grow the file when the range ends past it (PUNCH_HOLE keeps the size). */
export function grewTo(s: FileState, end: number): void {
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
export const fileCoWriteZeroes: BlockDriverHook<'coWriteZeroes'> = async (bs, offset, bytes, flags) => {
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
};

/**
 * Discard punches a hole (QEMU's handle_aiocb_discard): the range reads as zeros afterwards,
 * the file keeps its size. Discard is advisory: a host that cannot punch holes is not asked
 * again and the request succeeds with the data left in place, as QEMU ignores ENOTSUP.
 */
export async function fileCoDiscard(bs: BlockDriverState, offset: number, bytes: number): Promise<void> {
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

