// convert --bitmaps: the source's persistent bitmaps checked before the copy and recreated in
// the target after it (qemu-img's convert_check_bitmaps and convert_copy_bitmaps), each as
// `bitmap --add` with the source's granularity and state, then `--merge` from the source.
import { type BlockDriverState, bdrvRemoveDirtyBitmap, bdrvSupportsPersistentDirtyBitmap } from '../../index.js';
import { errorMessage } from '../shared/output.js';
import { bitmapAdd, bitmapMerge } from './bitmap.js';
import type { ImgEnv } from './env.js';

/** Print QEMU's "prefix: message" with any hint lines after it. */
function reportErr(env: ImgEnv, prefix: string, e: unknown): void {
  const msg = errorMessage(e);
  const nl = msg.indexOf('\n');
  env.o.error(prefix + (nl < 0 ? msg : msg.slice(0, nl)));
  if (nl >= 0) env.o.errRaw(`${msg.slice(nl + 1)}\n`);
}

/** Can every persistent bitmap of the source be copied? Prints why not. */
export function convertCheckBitmaps(env: ImgEnv, src: BlockDriverState, skipBroken: boolean): boolean {
  if (!bdrvSupportsPersistentDirtyBitmap(src)) {
    env.o.error('Source lacks bitmap support');
    return false;
  }
  for (const bm of src.dirtyBitmaps) {
    if (!bm.persistent || skipBroken || !bm.inconsistent) continue;
    env.o.error(`Cannot copy inconsistent bitmap '${bm.name}'`);
    env.o.errRaw("Try --skip-broken-bitmaps, or use 'qemu-img bitmap --remove' to delete it\n");
    return false;
  }
  return true;
}

/** The target can keep bitmaps (checked once it is open). */
export function convertCheckTargetBitmaps(env: ImgEnv, dst: BlockDriverState): boolean {
  if (bdrvSupportsPersistentDirtyBitmap(dst)) return true;
  env.o.error(`Format driver '${dst.driver.formatName}' does not support bitmaps`);
  return false;
}

/** Recreate the source's persistent bitmaps in the target, bits included. */
export async function convertCopyBitmaps(env: ImgEnv, src: BlockDriverState, dst: BlockDriverState, skipBroken: boolean): Promise<boolean> {
  for (const bm of src.dirtyBitmaps) {
    if (!bm.persistent) continue;
    if (skipBroken && bm.inconsistent) {
      env.o.warn(`Skipping inconsistent bitmap '${bm.name}'`);
      continue;
    }
    try {
      await bitmapAdd(dst, bm.name, bm.granularity, !bm.enabled);
    } catch (e) {
      reportErr(env, `Failed to create bitmap ${bm.name}: `, e);
      return false;
    }
    try {
      bitmapMerge(dst, bm.name, src, bm.name);
    } catch (e) {
      reportErr(env, `Failed to populate bitmap ${bm.name}: `, e);
      await bdrvRemoveDirtyBitmap(dst, bm.name).catch(() => undefined);
      return false;
    }
  }
  return true;
}
