/**
 * Metadata operations of a node (QEMU's bdrv_get_info, bdrv_check, bdrv_change_backing_file,
 * bdrv_invalidate_cache, bdrv_make_empty): each counted as a request, refused with ENOTSUP
 * when the driver lacks the hook.
 */
import type { BlockDriverInfo, CheckFix, CheckResult } from './driver.js';
import { checkWritable, inflight, notSupported } from './io/requests.js';
import type { BlockDriverState } from './node.js';
import { storageFilename } from './open.js';
import { combineBackingPath } from './path.js';

/**
 * bdrv_get_info. Without a hook a filter answers for the node it filters; anything else has
 * no such information (ENOTSUP), and `info` then shows no dirty flag, as QEMU's nbd and curl.
 */
export async function bdrvGetInfo(bs: BlockDriverState): Promise<BlockDriverInfo> {
  const hook = bs.driver.getInfo?.bind(bs.driver);
  return inflight(bs, 'get_info', async () => {
    if (hook) return hook(bs);
    if (bs.driver.isFilter === true && bs.file) return bs.file.getInfo();
    throw notSupported(bs, 'get_info');
  });
}

/**
 * The getInfo hook of host storage (file, mem, opfs; QEMU's file-posix): no clusters and no
 * dirty state, but an answer, so that a raw image over it shows `dirty-flag: false`.
 */
export async function storageGetInfo(_bs: BlockDriverState): Promise<BlockDriverInfo> {
  return { clusterSize: 0, isDirty: false };
}

/** Host bytes used; without a hook, what the children use (QEMU's default). */
export async function bdrvGetAllocatedFileSize(bs: BlockDriverState): Promise<number> {
  return inflight(bs, 'get_allocated_file_size', async () => {
    if (bs.driver.getAllocatedFileSize) return bs.driver.getAllocatedFileSize(bs);
    if (bs.file) return bs.file.getAllocatedFileSize();
    throw notSupported(bs, 'get_allocated_file_size');
  });
}

export async function bdrvCheck(bs: BlockDriverState, fix: CheckFix): Promise<CheckResult> {
  if (fix.leaks || fix.errors) checkWritable(bs, 'check');
  const hook = bs.driver.check?.bind(bs.driver);
  return inflight(bs, 'check', async () => {
    if (!hook) throw notSupported(bs, 'check');
    return hook(bs, fix);
  });
}

export async function bdrvChangeBackingFile(bs: BlockDriverState, name: string | null, fmt: string | null): Promise<void> {
  checkWritable(bs, 'change_backing_file');
  const hook = bs.driver.changeBackingFile?.bind(bs.driver);
  await inflight(bs, 'change_backing_file', async () => {
    if (!hook) throw notSupported(bs, 'change_backing_file');
    await hook(bs, name, fmt);
    // The node's view follows the image (bdrv_change_backing_file); the open backing node
    // is left as it is, as QEMU does.
    bs.backingFile = name ?? '';
    bs.backingFormat = fmt ?? '';
    bs.fullBackingFilename = bs.backingFile === '' ? '' : combineBackingPath(storageFilename(bs), name ?? '');
  });
}

/** Drop cached metadata and reread it; without a hook, pass it to the file child. */
export async function bdrvInvalidateCache(bs: BlockDriverState): Promise<void> {
  await inflight(bs, 'invalidate_cache', async () => {
    if (bs.driver.invalidateCache) await bs.driver.invalidateCache(bs);
    else if (bs.file) await bs.file.invalidateCache();
  });
}

export async function bdrvMakeEmpty(bs: BlockDriverState): Promise<void> {
  checkWritable(bs, 'make_empty');
  const hook = bs.driver.makeEmpty?.bind(bs.driver);
  await inflight(bs, 'make_empty', async () => {
    if (!hook) throw notSupported(bs, 'make_empty');
    await hook(bs);
  });
}

/** The one-line summary console.log prints for a node: driver, filename, size, children. */
export function nodeSummary(bs: BlockDriverState): string {
  const len = bs.knownLength();
  const parts = [`${bs.driver.formatName} '${bs.filename}'`];
  if (len !== null) parts.push(`${len} bytes`);
  if (bs.readOnly) parts.push('read-only');
  if (!bs.isOpen) parts.push('closed');
  if (bs.file) parts.push(`file: ${bs.file.driver.formatName} '${bs.file.filename}'`);
  if (bs.backing) parts.push(`backing: ${bs.backing.driver.formatName} '${bs.backing.filename}'`);
  return `BlockDriverState { ${parts.join(', ')} }`;
}
