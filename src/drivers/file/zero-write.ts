/**
 * Zeroing a range and writing data inside it, in that order (the coZeroThenPwritev hook: a
 * qcow2 allocating write whose new cluster would otherwise be padded with written zeros).
 * The I/O engine takes both as one request, fallocate(ZERO_RANGE) linked to the writev: one
 * submission and one completion instead of a round trip each, which is most of what a write
 * costs at queue depth 1.
 */
import type { BlockDriverHook } from '../../block/driver.js';
import { toBlockError } from '../../block/errors.js';
import type { IOVector } from '../../block/iovec.js';
import { FALLOC_FL_ZERO_RANGE, type IoEngine, ioEngine } from './engine.js';
import { fileCoPwritev, pwritevRest } from './rw.js';
import { type FileState, beginIO, endIO, fileRefreshLength, state } from './state.js';
import { fallocateFailure, fileCoWriteZeroes, grewTo } from './zero.js';

/**
 * Linked when the engine can and the file system zeroes ranges; otherwise, or when ZERO_RANGE
 * is refused, write_zeroes (which knows the other ways, and reports ENOTSUP when none is
 * left) and the write, one after the other: the zeroing clears what the linked writev may
 * have written in spite of the refusal, and the write puts it back.
 */
export const fileCoZeroThenPwritev: BlockDriverHook<'coZeroThenPwritev'> = async (bs, zeroOffset, zeroBytes, offset, bytes, qiov) => {
  const s = state(bs);
  const engine = ioEngine();
  if (engine?.canLink === true && s.hasWriteZeroes && bytes > 0 && (await linkedZeroWrite(s, engine, zeroOffset, zeroBytes, offset, bytes, qiov))) return;
  await fileCoWriteZeroes(bs, zeroOffset, zeroBytes, { noFallback: true });
  await fileCoPwritev(bs, offset, bytes, qiov, {});
};

/** The linked request; false when ZERO_RANGE was refused (the data may be written, or not). */
async function linkedZeroWrite(s: FileState, engine: IoEngine, zeroOffset: number, zeroBytes: number, offset: number, bytes: number, qiov: IOVector): Promise<boolean> {
  const iov = qiov.size === bytes ? qiov.iov : qiov.slice(0, bytes).iov;
  beginIO(s);
  try {
    let done: number;
    try {
      // The writev starts only once the zeroing is done: zeroing after it would clear it.
      done = await engine.zeroThenPwritev(s.fd, FALLOC_FL_ZERO_RANGE, zeroOffset, zeroBytes, iov.length === 1 ? iov[0] : iov, offset);
    } catch (e) {
      if ((e as { syscall?: unknown } | null)?.syscall !== 'fallocate') throw e;
      const r = fallocateFailure(e);
      if (r.code === 'ENOTSUP') s.hasWriteZeroes = false;
      else if (r.code !== 'EINVAL') throw e;
      return false;
    }
    grewTo(s, zeroOffset + zeroBytes);
    if (done < bytes) await pwritevRest(s.fd, iov, bytes, offset, done);
    return true;
  } catch (e) {
    // A failed request (ENOSPC...) may still have grown the file partly: learn the real length.
    await fileRefreshLength(s);
    throw toBlockError(e, { op: 'write', offset, path: s.path });
  } finally {
    endIO(s);
  }
}
