/**
 * Dirty bitmaps (QEMU's block/dirty-bitmap.c): one bit per `granularity` bytes of a node,
 * set by every write, zero write and discard that ends on the node while the bitmap is
 * enabled. A format that keeps bitmaps in the image (qcow2) loads them into `bs.dirtyBitmaps`
 * at open and stores them back at close; the tools and the NBD server reach them only here.
 *
 * The bits are kept as the image stores them: bit i of the map is byte i>>3, bit i&7
 * (least significant first), so a table cluster of an image is a plain slice of `bits`.
 */
import { BlockError } from './errors.js';
import type { BlockDriverState } from './node.js';

/** QEMU's BDRV_BITMAP_MAX_NAME_SIZE. */
export const BDRV_BITMAP_MAX_NAME_SIZE = 1023;

export class BdrvDirtyBitmap {
  readonly name: string;
  readonly granularity: number;
  /** Bytes of the node the bitmap covers. */
  size: number;
  /** One bit per granularity chunk, padded to whole 64-bit words (QEMU's serialization unit). */
  bits: Uint8Array;
  /** Enabled bitmaps follow writes; disabled ones keep their bits. */
  enabled = true;
  /** Stored in the image at close. */
  persistent = false;
  /** The image said the bitmap was in use when we opened it: its bits mean nothing. */
  inconsistent = false;
  /** Loaded from an image opened read-only: it cannot change. */
  readonly = false;

  constructor(name: string, granularity: number, size: number) {
    this.name = name;
    this.granularity = granularity;
    this.size = size;
    this.bits = new Uint8Array(BdrvDirtyBitmap.serializationSize(size, granularity));
  }

  /** Bytes of the serialized map for `size` bytes (whole 64-bit words, as hbitmap). */
  static serializationSize(size: number, granularity: number): number {
    return Math.ceil(Math.ceil(size / granularity) / 64) * 8;
  }

  get nbBits(): number {
    return Math.ceil(this.size / this.granularity);
  }

  get(chunk: number): boolean {
    return (this.bits[chunk >>> 3] & (1 << (chunk & 7))) !== 0;
  }

  /** Is the chunk holding `offset` dirty? */
  isDirty(offset: number): boolean {
    return this.get(Math.floor(offset / this.granularity));
  }

  /** Mark [offset, offset + bytes) dirty, rounded out to the granularity. */
  setRange(offset: number, bytes: number): void {
    if (bytes <= 0 || offset >= this.size) return;
    const first = Math.floor(offset / this.granularity);
    const last = Math.min(Math.ceil((offset + bytes) / this.granularity), this.nbBits);
    let i = first;
    for (; i < last && (i & 7) !== 0; i++) this.bits[i >>> 3] |= 1 << (i & 7);
    const fullEnd = last & ~7;
    if (i < fullEnd) {
      this.bits.fill(0xff, i >>> 3, fullEnd >>> 3);
      i = fullEnd;
    }
    for (; i < last; i++) this.bits[i >>> 3] |= 1 << (i & 7);
  }

  clear(): void {
    this.bits.fill(0);
  }

  /** OR another map of the same size into this one (bdrv_merge_dirty_bitmap). */
  merge(src: BdrvDirtyBitmap): void {
    if (src.granularity === this.granularity) {
      for (let i = 0; i < this.bits.length; i++) this.bits[i] |= src.bits[i];
      return;
    }
    // Different granularities: every dirty chunk of the source dirties what it covers here.
    for (let c = 0; c < src.nbBits; c++) if (src.get(c)) this.setRange(c * src.granularity, src.granularity);
  }

  /** Follow a resize: new bits are clean, bits past a shrunk end are dropped. */
  truncate(size: number): void {
    const bits = new Uint8Array(BdrvDirtyBitmap.serializationSize(size, this.granularity));
    bits.set(this.bits.subarray(0, Math.min(bits.length, this.bits.length)));
    this.size = size;
    this.bits = bits;
    // Bits past the new end must read clean should the node grow again.
    const n = this.nbBits;
    if ((n & 7) !== 0) bits[n >>> 3] &= (1 << (n & 7)) - 1;
    bits.fill(0, (n + 7) >>> 3);
  }

  /** Dirty byte ranges, merged, in order: what NBD and the tests read. */
  *dirtyExtents(): Generator<{ offset: number; bytes: number }> {
    const n = this.nbBits;
    for (let i = 0; i < n; ) {
      if (this.bits[i >>> 3] === 0 && (i & 7) === 0) {
        i += 8;
        continue;
      }
      if (!this.get(i)) {
        i++;
        continue;
      }
      let j = i + 1;
      while (j < n && this.get(j)) j++;
      const offset = i * this.granularity;
      yield { offset, bytes: Math.min(j * this.granularity, this.size) - offset };
      i = j;
    }
  }
}

/** What an operation needs of a bitmap (bdrv_dirty_bitmap_check's flags). */
export interface BitmapCheck {
  /** The operation changes the bitmap: a read-only one is refused. */
  write: boolean;
}

/** Refuse an operation on a bitmap that cannot take it, with QEMU's messages. */
export function bdrvDirtyBitmapCheck(bm: BdrvDirtyBitmap, what: BitmapCheck): void {
  if (what.write && bm.readonly) {
    throw new BlockError('EPERM', `Bitmap '${bm.name}' is readonly and cannot be modified`, { op: 'bitmap' });
  }
  if (bm.inconsistent) {
    throw new BlockError('EINVAL', `Bitmap '${bm.name}' is inconsistent and cannot be used\nTry block-dirty-bitmap-remove to delete this bitmap from disk`, {
      op: 'bitmap',
    });
  }
}

export function bdrvFindDirtyBitmap(bs: BlockDriverState, name: string): BdrvDirtyBitmap | null {
  return bs.dirtyBitmaps.find((b) => b.name === name) ?? null;
}

/** The bitmap named `name`, or QEMU's "not found" error (block_dirty_bitmap_lookup). */
export function bdrvLookupDirtyBitmap(bs: BlockDriverState, name: string): BdrvDirtyBitmap {
  const bm = bdrvFindDirtyBitmap(bs, name);
  if (!bm) throw new BlockError('ENOENT', `Dirty bitmap '${name}' not found`, { op: 'bitmap' });
  return bm;
}

/** A new, clean, enabled bitmap over the node's current length (bdrv_create_dirty_bitmap). */
export async function bdrvCreateDirtyBitmap(bs: BlockDriverState, granularity: number, name: string): Promise<BdrvDirtyBitmap> {
  if (bdrvFindDirtyBitmap(bs, name)) throw new BlockError('EEXIST', `Bitmap already exists: ${name}`, { op: 'bitmap' });
  if (new TextEncoder().encode(name).length > BDRV_BITMAP_MAX_NAME_SIZE) {
    throw new BlockError('EINVAL', `Bitmap name too long: ${name}`, { op: 'bitmap' });
  }
  const bm = new BdrvDirtyBitmap(name, granularity, await bs.getLength());
  // The newest first, as QEMU's list (QLIST_INSERT_HEAD): the order bitmaps are stored and
  // copied in follows it.
  bs.dirtyBitmaps.unshift(bm);
  return bm;
}

export function bdrvReleaseDirtyBitmap(bs: BlockDriverState, bm: BdrvDirtyBitmap): void {
  const i = bs.dirtyBitmaps.indexOf(bm);
  if (i >= 0) bs.dirtyBitmaps.splice(i, 1);
}

/**
 * Mark a range dirty in every enabled bitmap (bdrv_set_dirty). Called when a write, zero
 * write or discard ends, whether or not it succeeded: a failed write may have changed part
 * of the range, and a dirty bit too many only costs a backup some bytes.
 */
export function bdrvSetDirty(bs: BlockDriverState, offset: number, bytes: number): void {
  const list = bs.dirtyBitmaps;
  for (let i = 0; i < list.length; i++) if (list[i].enabled) list[i].setRange(offset, bytes);
}

/** Can the node's format keep bitmaps in the image (bdrv_supports_persistent_dirty_bitmap)? */
export function bdrvSupportsPersistentDirtyBitmap(bs: BlockDriverState): boolean {
  return bs.driver.supportsPersistentDirtyBitmap?.(bs) === true;
}

/** Resize every bitmap with its node (bdrv_dirty_bitmap_truncate). */
export function bdrvDirtyBitmapTruncate(bs: BlockDriverState, size: number): void {
  for (const bm of bs.dirtyBitmaps) bm.truncate(size);
}

/** The granularity a new bitmap gets (bdrv_get_default_bitmap_granularity). */
export async function bdrvDefaultBitmapGranularity(bs: BlockDriverState): Promise<number> {
  try {
    const { clusterSize } = await bs.getInfo();
    if (clusterSize > 0) return Math.max(4096, 2 ** Math.ceil(Math.log2(clusterSize)));
  } catch {
    // A driver without info: QEMU's fallback.
  }
  return 65536;
}

const nodeNames = new WeakMap<BlockDriverState, string>();

/**
 * The name errors give a node (bdrv_get_device_or_node_name): QEMU's generated node names
 * are `#block`, a counter (1 for the first node a tool opens) and two random digits.
 */
export function bdrvNodeName(bs: BlockDriverState): string {
  let name = nodeNames.get(bs);
  if (name === undefined) {
    name = `#block1${String(Math.floor(Math.random() * 100)).padStart(2, '0')}`;
    nodeNames.set(bs, name);
  }
  return name;
}

/** May a persistent bitmap `name` be added (bdrv_co_can_store_new_dirty_bitmap)? */
export async function bdrvCanStoreNewDirtyBitmap(bs: BlockDriverState, name: string, granularity: number): Promise<void> {
  const hook = bs.driver.canStoreNewDirtyBitmap?.bind(bs.driver);
  if (!hook) throw new BlockError('ENOTSUP', `Can't store persistent bitmaps to ${bdrvNodeName(bs)}: Operation not supported`, { op: 'bitmap' });
  await hook(bs, name, granularity);
}

/** Drop a bitmap from the node, and from the image if it is stored there (block_dirty_bitmap_remove). */
export async function bdrvRemoveDirtyBitmap(bs: BlockDriverState, name: string): Promise<void> {
  const bm = bdrvLookupDirtyBitmap(bs, name);
  if (bm.readonly) throw new BlockError('EPERM', `Bitmap '${bm.name}' is readonly and cannot be modified`, { op: 'bitmap' });
  if (bm.persistent) await bs.driver.removePersistentDirtyBitmap?.(bs, name);
  bdrvReleaseDirtyBitmap(bs, bm);
}
