/**
 * A node's length as its user sees it. Who uses the node decides: protocol and filter nodes
 * under a parent node or a BlockBackend grow (a format driver allocates by writing past the
 * end of its file, and reads there see zeros, as QEMU's requests through a BdrvChild); a node
 * the user opened directly (-f file, a filter name as the top image) refuses requests past
 * its end with EIO, as QEMU's BlockBackend does; so do format nodes, whose virtual size is
 * fixed. The node (node.ts) keeps who its parent is; these are the rules.
 */
import { BDRV_SECTOR_SIZE, type BlockDriver } from '../driver.js';
import type { BlockDriverState } from '../node.js';
import { invalidNumber, roundUp } from './requests.js';

/**
 * Who uses a node: a parent node (driverOpen sets 'node' on a format's or filter's `file`), a
 * BlockBackend (attach sets 'backend', detach puts the old value back), or 'none'.
 *
 * Why 'none' exists at all: in QEMU a bare node has no user, since whoever issues requests
 * holds a BlockBackend (blk_new_open), and the backend alone bounds them. Here
 * `BlockDriverState.open` still hands the node itself to a caller who reads and writes it
 * directly: the library's first entry point, kept for existing callers, which expect what
 * `qemu-io -f file` shows (EIO past the end, nothing written; a length in whole sectors). A
 * node with no parent therefore stands for "the caller of open is the user" and gets the
 * backend's bounds; the moment a node or a backend takes it, the bounds are that parent's.
 * Opening through a backend instead would not remove the rule: the node's own methods would
 * have to find that backend, the same special case in another place.
 */
export type NodeParent = 'none' | 'node' | 'backend';

function isStorage(driver: BlockDriver): boolean {
  return (driver.isProtocol ?? false) || (driver.isFilter ?? false);
}

/** Does a node of `driver` used by `parent` grow when written past its end? */
export function nodeGrowable(driver: BlockDriver, parent: NodeParent): boolean {
  return parent !== 'none' && isStorage(driver);
}

/**
 * Does the user's view of a driver length count whole sectors? A protocol or filter node not
 * under a parent node does, as QEMU's bdrv_getlength (the tail of the last sector reads as
 * zeros, and a write there grows the file, as in qemu-io -f file). A parent node sees the
 * driver's own length (a format checks its file size against it).
 */
export function userLengthInSectors(driver: BlockDriver, parent: NodeParent): boolean {
  return parent !== 'node' && isStorage(driver);
}

/** The user's view of a driver length `len` (userLengthInSectors says which). */
export function userLengthOf(inSectors: boolean, len: number): number {
  return inSectors ? roundUp(len, BDRV_SECTOR_SIZE) : len;
}

/** The driver's length if its hook knows it without waiting (the fast-path gate), else null. */
export function driverLengthNow(
  bs: BlockDriverState,
  hook: ((bs: BlockDriverState) => number | Promise<number>) | null,
): number | null {
  if (!hook) return null;
  let r: number | Promise<number>;
  try {
    r = hook(bs);
  } catch {
    // The slow path asks again and reports the error where it belongs (callback, rejection).
    return null;
  }
  if (typeof r === 'number') return invalidNumber(r) ? null : r;
  // An async length cannot be checked here; the slow path awaits it instead.
  r.catch(() => undefined);
  return null;
}
