/**
 * Zeroing a range and writing data inside it, in that order (the coZeroThenPwritev and
 * zeroThenPwritevSubmit hooks: a qcow2 allocating write whose new cluster would otherwise be
 * padded with written zeros). The I/O engine takes both as one request, fallocate(ZERO_RANGE)
 * linked to the writev: one submission and one completion instead of a round trip each,
 * which is most of what a write costs at queue depth 1.
 */
import type { BlockDriverHook } from '../../block/driver.js';
import { type BlockError, toBlockError } from '../../block/errors.js';
import type { IOVector } from '../../block/iovec.js';
import type { BlockDriverState } from '../../block/node.js';
import { FALLOC_FL_ZERO_RANGE, type IoEngine, ioEngine } from './engine.js';
import { fileCoPwritev, pwritevFinish } from './rw.js';
import { type FileState, beginIO, endIO, state } from './state.js';
import { fallocateFailure, fileCoWriteZeroes, grewTo } from './zero.js';

/**
 * Linked when the engine can and the file system zeroes ranges; otherwise, or when ZERO_RANGE
 * is refused, write_zeroes and the write apart (zeroThenWriteApart).
 */
export const fileCoZeroThenPwritev: BlockDriverHook<'coZeroThenPwritev'> = async (bs, zeroOffset, zeroBytes, offset, bytes, qiov) => {
  const s = state(bs);
  const engine = ioEngine();
  if (engine?.canLink === true && s.hasWriteZeroes && bytes > 0) {
    const end = await new Promise<LinkedEnd>((resolve) => linkedZeroWrite(s, engine, zeroOffset, zeroBytes, offset, bytes, qiov, resolve));
    if (end === null) return;
    if (end !== 'refused') throw end;
  }
  await zeroThenWriteApart(bs, zeroOffset, zeroBytes, offset, bytes, qiov);
};

/**
 * The zeroThenPwritevSubmit hook: the linked request started now, `done` called from its
 * completion with no promise. False (nothing done) where coZeroThenPwritev would not link.
 */
export const fileZeroThenPwritevSubmit: BlockDriverHook<'zeroThenPwritevSubmit'> = (bs, zeroOffset, zeroBytes, offset, bytes, qiov, done) => {
  const s = bs.opaque as FileState | null;
  const engine = ioEngine();
  if (s === null || engine?.canLink !== true || !s.hasWriteZeroes || bytes === 0 || qiov.size < bytes) return false;
  try {
    linkedZeroWrite(s, engine, zeroOffset, zeroBytes, offset, bytes, qiov, (end) => {
      if (end !== 'refused') {
        done(end);
        return;
      }
      zeroThenWriteApart(bs, zeroOffset, zeroBytes, offset, bytes, qiov).then(
        () => done(null),
        (e: unknown) => done(toBlockError(e, { op: 'write', offset, path: s.path })),
      );
    });
  } catch {
    // The engine refused the arguments: coZeroThenPwritev tries again and reports it.
    return false;
  }
  return true;
};

/**
 * Where the two cannot be linked: write_zeroes (which knows the other ways, and reports
 * ENOTSUP when none is left), then the write. After a refused ZERO_RANGE the zeroing clears
 * what the linked writev may have written in spite of the refusal, and the write puts it back.
 */
async function zeroThenWriteApart(bs: BlockDriverState, zeroOffset: number, zeroBytes: number, offset: number, bytes: number, qiov: IOVector): Promise<void> {
  await fileCoWriteZeroes(bs, zeroOffset, zeroBytes, { noFallback: true });
  await fileCoPwritev(bs, offset, bytes, qiov, {});
}

/** A linked request's end: done (null), ZERO_RANGE refused ('refused': the data may be written, or not), or the error. */
type LinkedEnd = null | 'refused' | BlockError;

/**
 * Start the linked request; `end` runs once, from its completion. Throws, with nothing
 * started, when the engine refuses the arguments.
 */
function linkedZeroWrite(s: FileState, engine: IoEngine, zeroOffset: number, zeroBytes: number, offset: number, bytes: number, qiov: IOVector, end: (e: LinkedEnd) => void): void {
  const iov = qiov.size === bytes ? qiov.iov : qiov.slice(0, bytes).iov;
  // A short write's rest, or a failure (the real length learnt: a failed request may still
  // have grown the file), the way coPwritev ends them (rare).
  const finish = (first: number | Error): void => {
    pwritevFinish(s, iov, bytes, offset, first).then(
      () => end(null),
      (err: unknown) => end(toBlockError(err, { op: 'write', offset, path: s.path })),
    );
  };
  beginIO(s);
  try {
    // The writev starts only once the zeroing is done: zeroing after it would clear it.
    engine.zeroThenPwritevThen(s.fd, FALLOC_FL_ZERO_RANGE, zeroOffset, zeroBytes, iov.length === 1 ? iov[0] : iov, offset, (res, headFailed) => {
      if (headFailed === true) {
        const e = engine.error(res, 'fallocate');
        const code = fallocateFailure(e).code;
        if (code === 'ENOTSUP') s.hasWriteZeroes = false;
        if (code !== 'ENOTSUP' && code !== 'EINVAL') {
          finish(e);
          return;
        }
        endIO(s);
        end('refused');
        return;
      }
      if (res >= 0) grewTo(s, zeroOffset + zeroBytes);
      if (res !== bytes) {
        finish(res < 0 ? engine.error(res, 'write') : res);
        return;
      }
      endIO(s);
      end(null);
    });
  } catch (e) {
    endIO(s);
    throw e;
  }
}
