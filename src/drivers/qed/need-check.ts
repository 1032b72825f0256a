/**
 * The NEED_CHECK ("dirty") bit's timer: 5 s (on bs.clock) after the last allocating write of a
 * burst, make everything durable and mark the image clean again.
 */
import { QED_F_NEED_CHECK, QED_NEED_CHECK_TIMEOUT_MS } from './header.js';
import { type BDRVQEDState, qedFile, qedTrace, qedWriteHeader } from './state.js';

export function startNeedCheckTimer(s: BDRVQEDState): void {
  if (s.closed || !s.needCheckTimer) return;
  qedTrace(s, 'qedStartNeedCheckTimer', {});
  s.needCheckTimer.mod(QED_NEED_CHECK_TIMEOUT_MS);
}

/** Safe to call when no timer is armed. */
export function cancelNeedCheckTimer(s: BDRVQEDState): void {
  if (!s.needCheckTimer?.pending) return;
  qedTrace(s, 'qedCancelNeedCheckTimer', {});
  s.needCheckTimer.cancel();
}

/** The timer callback: runs the job in the background; close() waits for it. */
export function qedNeedCheckTimerCb(s: BDRVQEDState): void {
  if (s.closed || s.timerTask) return;
  // Fire-and-forget is right here: a timer has nobody to report to. The job catches every
  // error itself, and close() awaits s.timerTask before touching the image.
  s.timerTask = qedClearNeedCheck(s).finally(() => {
    s.timerTask = null;
  });
}

/**
 * Flush, clear the bit, rewrite the header sector, flush. Runs holding the allocation lock
 * (QEMU "plugs" allocating writes) so no allocation can slip in between the flush and the
 * header write; if an allocating write already holds it, that write re-arms the timer when
 * it completes, so there is nothing to do now.
 */
export async function qedClearNeedCheck(s: BDRVQEDState): Promise<void> {
  qedTrace(s, 'qedNeedCheckTimerCb', {});
  // An allocation in progress (or one still writing its L2 entries after releasing the lock)
  // re-arms the timer when the last of them completes: nothing to do now.
  if (s.allocLock.isLocked || s.allocPending > 0) return;
  await s.allocLock.lock();
  let cleared = false;
  try {
    const file = qedFile(s);
    // Data and tables the dirty bit protects must be on disk before the bit goes.
    await file.flush();
    // qed-format.md §17.5: never mark an image clean while a check left corruption in it.
    if (s.corruptionsRemain || (s.header.features & QED_F_NEED_CHECK) === 0n) return;
    s.header.features &= ~QED_F_NEED_CHECK;
    try {
      await qedWriteHeader(s);
      cleared = true;
    } catch {
      // Memory must not claim a clean image the disk does not hold.
      s.header.features |= QED_F_NEED_CHECK;
    }
  } catch {
    // A failed flush leaves the bit set: the next allocating burst re-arms the timer.
  } finally {
    s.allocLock.unlock();
  }
  if (cleared) {
    try {
      // Make the clean header itself durable: a flush of the QED node (as QEMU's job does),
      // which announces its flush events on the file and then flushes that file.
      await s.bs.flush();
    } catch {
      // Nothing to undo: at worst the next open sees the bit and runs a check.
    }
  }
}

/**
 * Drain (QEMU's bdrv_qed_drain_begin): the node's requests are done, so a pending timer fires
 * now rather than 5 s later; the drain ends only when its job (or one already running) has
 * finished, so a dirty image whose allocating writes completed is clean on disk by then.
 */
export async function qedDrainBegin(s: BDRVQEDState): Promise<void> {
  if (s.timerTask) await s.timerTask;
  if (s.closed || !s.needCheckTimer?.pending) return;
  cancelNeedCheckTimer(s);
  qedNeedCheckTimerCb(s);
  if (s.timerTask) await s.timerTask;
}
