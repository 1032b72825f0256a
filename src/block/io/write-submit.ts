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
import { fastBegin, fastEnd, fastPathOk, invalidNumber, type TrackedRequest } from './requests.js';

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
  // In flight and on the overlap list before the driver starts it, as the ordinary fast path.
  // The hook is called here, not through a closure: this runs for every write of every layer.
  const req = fastBegin(bs, offset, bytes);
  let started = false;
  try {
    started = drv.pwritevSubmit(bs, offset, bytes, qiov, flags, trackedEnd(bs, req, done));
  } catch {
    // A hook that throws took nothing: the ordinary path tries again and reports the error.
  }
  if (!started) untrack(bs, req);
  return started;
}

/** The completion of a tracked fast-path write (fastBegin): ends the tracking, then reports. */
export function trackedEnd(bs: BlockDriverState, req: TrackedRequest, done: CompletionFunc): CompletionFunc {
  return (err) => {
    fastEnd(bs, req, true);
    done(err);
  };
}

/** Undo fastBegin's bookkeeping for a write the driver did not take, counting no write. */
export function untrack(bs: BlockDriverState, req: TrackedRequest): void {
  bs.requests.end(req);
  bs.requests.leave();
}

/** bdrvPwritevSubmit as a promise; null when the driver did not take the write. */
export function pwritevSubmitted(bs: BlockDriverState, offset: number, qiov: IOVector, flags: WriteFlags): Promise<void> | null {
  let started = false;
  const p = new Promise<void>((resolve, reject) => {
    started = bdrvPwritevSubmit(bs, offset, qiov, flags, (err) => (err === null ? resolve() : reject(err)));
  });
  return started ? p : null;
}
