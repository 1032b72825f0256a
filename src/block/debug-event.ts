/**
 * Announcing blkdebug events (QEMU's BLKDBG_EVENT): every data request announces at least
 * one, so the common case (no listener, no driver hook: anything but blkdebug) must cost
 * nothing, not even a promise allocation.
 */
import type { BlkDebugEvent } from './events.js';
import type { BlockDriverState } from './node.js';

/** Shared settled promise: an event with nothing to run allocates nothing. */
const RESOLVED: Promise<void> = Promise.resolve();

/** Does anything act on `bs`'s debug events (a driver hook such as blkdebug's, or a listener)? */
export function bdrvDebugWatched(bs: BlockDriverState): boolean {
  return bs.driver.debugEvent !== undefined || bs.events.debugListened;
}

/** Announce `event` on `bs` to its listeners, then let its driver act on it. */
export function bdrvDebugEvent(bs: BlockDriverState, event: BlkDebugEvent): Promise<void> {
  if (!bdrvDebugWatched(bs)) return RESOLVED;
  return debugEventSlow(bs, event);
}

async function debugEventSlow(bs: BlockDriverState, event: BlkDebugEvent): Promise<void> {
  bs.events.emit('debug', event);
  await bs.driver.debugEvent?.(bs, event);
}
