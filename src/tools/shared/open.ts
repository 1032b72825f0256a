// Opening and closing the user's image, as both tools do it: the driver's warning about the
// opened image (raw guessed by probing), and closing on a path that already failed.
import { BlockError, type BlockBackend, type BlockDriverState } from '../../index.js';
import type { ToolOutput } from './output.js';

/** Print what the image's driver warns about at open (QEMU's drivers print it themselves). */
export function printOpenWarning(o: ToolOutput, bs: BlockDriverState): void {
  const w = bs.driver.openWarning?.(bs);
  if (w !== undefined) o.errRaw(w);
}

/** The node a tool's BlockBackend was opened with (the image's format node). */
export function rootOf(blk: BlockBackend): BlockDriverState {
  const bs = blk.root;
  if (bs === null) throw new BlockError('ENOMEDIUM', 'No medium found', { op: 'root' });
  return bs;
}

/** Close and ignore errors (cleanup paths after a failure was already reported). */
export async function closeQuietly(h: BlockBackend | BlockDriverState | null | undefined): Promise<void> {
  if (h) await h.close().catch(() => undefined);
}
