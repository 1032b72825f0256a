/**
 * Flush, length and truncate (QEMU's bdrv_co_flush, bdrv_getlength, bdrv_co_truncate).
 *
 * State: the node's `writeGen` (writes, zero writes, discards and size changes that ended on
 * it), `flushedGen` (what the last successful flush saw) and `flushingToDisk` (flushes now at
 * their flush_to_disk step). Writers only ever increase writeGen; only a flush sets flushedGen,
 * and only to the value it read before flushing.
 */
import { bdrvDirtyBitmapTruncate } from '../dirty-bitmap.js';
import { BlockError } from '../errors.js';
import type { BlockDriverState } from '../node.js';
import { checkArgs, checkWritable, inflight, invalidNumber, notSupported, roundDown, withTracked } from './requests.js';

/** Flush a node (no open check: close and FUA emulation call it too). */
export async function bdrvFlush(bs: BlockDriverState): Promise<void> {
  // Taken first: writes ending while we flush count for the next flush, not this one.
  const gen = bs.writeGen;
  const file = bs.file;
  // The disk step is due only when the node may reach the disk and something was written
  // since the last successful flush (QEMU's flushed_gen check).
  const toDisk = !(bs.openOptions.noFlush ?? false) && gen !== bs.flushedGen;
  // QEMU's bdrv_co_flush announces both steps on the primary child before any driver flush
  // runs (a read-only node returns before them): flush_to_os always, even with cache=unsafe.
  if (file !== null && !bs.readOnly) {
    await file.debugEvent('flush_to_os');
    if (toDisk) await file.debugEvent('flush_to_disk');
  }
  if (toDisk) bs.flushingToDisk++;
  try {
    await flushDriver(bs, toDisk);
  } finally {
    if (toDisk) bs.flushingToDisk--;
  }
  bs.flushedGen = gen;
}

async function flushDriver(bs: BlockDriverState, toDisk: boolean): Promise<void> {
  // A protocol's flush is its flush_to_disk step (fdatasync): skipped with cache=unsafe, and
  // when nothing was written through the node since its last successful flush (QEMU's
  // flushed_gen check: closing a read-mostly image costs no fdatasync). Format drivers
  // still write out what they cache and pass the flush down (flush_to_os).
  if (!toDisk && (bs.driver.isProtocol ?? false)) return;
  if (bs.driver.coFlush) {
    await bs.driver.coFlush(bs);
    return;
  }
  if (bs.file) await bs.file.flush();
}

/** The length the driver reports (through the file child without a hook), validated. */
export async function driverLength(bs: BlockDriverState): Promise<number> {
  let len: number;
  if (bs.driver.getLength) len = await bs.driver.getLength(bs);
  else if (bs.file) len = await bs.file.getLength();
  else throw notSupported(bs, 'get_length');
  if (invalidNumber(len)) {
    throw new BlockError('EIO', `Driver '${bs.driver.formatName}' reported an invalid length ${len}`, {
      op: 'get_length',
      path: bs.filename,
    });
  }
  return len;
}

/**
 * Resize the node. `prealloc` (QEMU's PreallocMode: off, metadata, falloc, full) says how a
 * grown range is allocated; only drivers with truncatePreallocates take one other than off.
 */
export async function bdrvTruncate(bs: BlockDriverState, size: number, prealloc?: string): Promise<void> {
  checkArgs(bs, 'truncate', size, 0);
  checkWritable(bs, 'truncate');
  const hook = bs.driver.truncate?.bind(bs.driver);
  if (!hook) throw notSupported(bs, 'truncate');
  const mode = prealloc === 'off' ? undefined : prealloc;
  if (mode !== undefined && bs.driver.truncatePreallocates !== true) {
    throw new BlockError('ENOTSUP', `Unsupported preallocation mode '${mode}'`, { op: 'truncate', offset: size, path: bs.filename });
  }
  await inflight(bs, 'truncate', async () => {
    const old = await driverLength(bs);
    // Requests touching what is cut off or added must not run beside the size change.
    const from = roundDown(Math.min(old, size), bs.requestAlignment);
    try {
      // The mode is passed only when there is one, so hooks written before it see no change.
      await withTracked(bs, from, Number.MAX_SAFE_INTEGER - from, true, () => (mode === undefined ? hook(bs, size) : hook(bs, size, mode)));
      // Bitmaps follow the new size; a grown range is not dirty (it reads as zeros).
      bdrvDirtyBitmapTruncate(bs, size);
    } finally {
      // A size change counts as a write for the next flush (QEMU's write_gen).
      bs.writeGen++;
    }
  });
}
