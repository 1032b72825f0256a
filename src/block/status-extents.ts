/**
 * Block status of many extents in one synchronous call: what blockStatusNow would answer for
 * each extent in turn, from the metadata at hand (a cached table), written into reused
 * arrays instead of an object per extent. Map of a fragmented image meets tens of thousands
 * of extents, and an object and a call through the generic layers each cost more than
 * reading the table entry itself. An extent's kind is QEMU's flag word (BDRV_BLOCK_*).
 */
import { invalidNumber } from './io/requests.js';
import type { BlockDriverState } from './node.js';

export const BDRV_BLOCK_DATA = 0x01;
export const BDRV_BLOCK_ZERO = 0x02;
export const BDRV_BLOCK_OFFSET_VALID = 0x04;
export const BDRV_BLOCK_ALLOCATED = 0x10;

/** Consecutive extents as struct-of-arrays: extent i is pnum[i] bytes with flags[i]. */
export class StatusExtents {
  readonly pnum: Float64Array;
  /** Host byte offset in `file` where flags[i] has BDRV_BLOCK_OFFSET_VALID, else 0. */
  readonly hostOffset: Float64Array;
  readonly flags: Uint8Array;
  count = 0;
  /** The node holding the data of every extent with an offset (one driver answers a batch). */
  file: BlockDriverState | null = null;

  constructor(readonly capacity: number) {
    this.pnum = new Float64Array(capacity);
    this.hostOffset = new Float64Array(capacity);
    this.flags = new Uint8Array(capacity);
  }

  /** Append an extent; the caller checks `count < capacity` first. */
  push(pnum: number, flags: number, hostOffset: number): void {
    const i = this.count++;
    this.pnum[i] = pnum;
    this.flags[i] = flags;
    this.hostOffset[i] = hostOffset;
  }
}

/**
 * The backing file's length now (0 without one), null when it is not known without waiting:
 * a range this layer leaves unallocated reads as zeros from there on.
 */
export function backingLengthNow(bs: BlockDriverState): number | null {
  return bs.backing === null ? 0 : bs.backing.knownLength();
}

/** Does a range this layer leaves unallocated at `offset` read as zeros? null: not known now. */
export function unallocatedZeroNow(bs: BlockDriverState, offset: number): boolean | null {
  const len = backingLengthNow(bs);
  return len === null ? null : offset >= len;
}

/**
 * Fill `out` with the status of this layer from `offset` on, as far as the driver answers
 * without waiting (its blockStatusExtents hook), at most `bytes` and out.capacity extents;
 * the number of extents. 0 when it answers nothing, or for anything blockStatus would refuse:
 * the caller then asks the usual way (which also reports errors), and may try again after.
 */
export function bdrvBlockStatusExtents(bs: BlockDriverState, offset: number, bytes: number, out: StatusExtents): number {
  out.count = 0;
  out.file = null;
  const drv = bs.driver;
  if (drv.blockStatusExtents === undefined || invalidNumber(offset) || invalidNumber(bytes) || bytes === 0 || offset + bytes > Number.MAX_SAFE_INTEGER) return 0;
  const len = bs.knownLength();
  if (len === null || offset >= len) return 0;
  const n = Math.min(bytes, len - offset);
  drv.blockStatusExtents(bs, offset, n, out);
  // Keep the extents that make sense, as bdrvBlockStatusNow checks its single pnum.
  let done = 0;
  for (let i = 0; i < out.count; i++) {
    const p = out.pnum[i];
    if (!Number.isSafeInteger(p) || p <= 0) {
      out.count = i;
      break;
    }
    if (done + p >= n) {
      out.pnum[i] = n - done;
      out.count = i + 1;
      break;
    }
    done += p;
  }
  return out.count;
}
