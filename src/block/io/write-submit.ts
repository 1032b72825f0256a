/**
 * Writes started through a driver's pwritevSubmit hook: the fast path of a write (see
 * requests.ts) with its end reported through a callback instead of a chain of promises. A raw
 * AIO write goes from the AIOCB to the host file's I/O engine and back without one promise;
 * a format driver's data write (`file.pwritev`) costs one.
 */
import type { CompletionFunc } from '../aio.js';
import type { WriteFlags } from '../driver.js';
import type { IOVector } from '../iovec.js';
import type { BlockDriverState } from '../node.js';
import { fastBegin, fastEnd, fastPathOk, invalidNumber } from './requests.js';

/**
 * Start a write of `qiov` at `offset` on `bs` now: true when the driver took it (`done` runs
 * later, exactly once), false when it did not (nothing was done: the caller takes the
 * ordinary path, which also reports what was wrong with the request).
 */
export function bdrvPwritevSubmit(bs: BlockDriverState, offset: number, qiov: IOVector, flags: WriteFlags, done: CompletionFunc): boolean {
  const drv = bs.driver;
  const bytes = qiov.size;
  // FUA may need the generic layer's flush after the write: the ordinary path does it.
  if (drv.pwritevSubmit === undefined || flags.fua === true || bs.readOnly || invalidNumber(offset) || !fastPathOk(bs, true, offset, bytes)) {
    return false;
  }
  return submitTracked(bs, offset, bytes, done, (end) => drv.pwritevSubmit!(bs, offset, bytes, qiov, flags, end));
}

/**
 * Start a checked fast-path write over [offset, +bytes) through `start` (a driver's submit
 * hook, given the completion to call): tracked from before the hook runs until its
 * completion, as the ordinary fast path. True when the hook took it; false with the
 * bookkeeping undone (nothing was done).
 */
export function submitTracked(bs: BlockDriverState, offset: number, bytes: number, done: CompletionFunc, start: (end: CompletionFunc) => boolean): boolean {
  // In flight and on the overlap list before the driver starts it, as the ordinary fast path.
  const req = fastBegin(bs, offset, bytes);
  let started = false;
  try {
    started = start((err) => {
      fastEnd(bs, req, true);
      done(err);
    });
  } catch {
    // A hook that throws took nothing: the ordinary path tries again and reports the error.
  }
  if (!started) {
    // Undo the bookkeeping without counting a write.
    bs.requests.end(req);
    bs.requests.leave();
  }
  return started;
}

/** bdrvPwritevSubmit as a promise; null when the driver did not take the write. */
export function pwritevSubmitted(bs: BlockDriverState, offset: number, qiov: IOVector, flags: WriteFlags): Promise<void> | null {
  let started = false;
  const p = new Promise<void>((resolve, reject) => {
    started = bdrvPwritevSubmit(bs, offset, qiov, flags, (err) => (err === null ? resolve() : reject(err)));
  });
  return started ? p : null;
}
