// convert's zero scan of a data chunk (is_allocated_sectors, is_allocated_sectors_min): which
// sectors of a buffer read from the source go down as data and which as zeros (-S).
import { bufferIsZero, sectorRun } from '../../index.js';

export const SECTOR = 512;

/**
 * is_allocated_sectors: length of the first run of same-kind (zero / non-zero) sectors, with the
 * end of the run aligned to `alignment` sectors (a short zero tail is treated as data).
 */
function isAllocatedSectors(buf: Uint8Array, first: number, n: number, sectorNum: number, alignment: number): { ret: boolean; pnum: number } {
  if (n <= 0) return { ret: false, pnum: 0 };
  let isZero = bufferIsZero(buf, first * SECTOR, (first + 1) * SECTOR);
  let i = 1 + sectorRun(buf, first + 1, n - 1, SECTOR, isZero);
  if (i === n) return { ret: !isZero, pnum: i };
  const tail = (sectorNum + i) & (alignment - 1);
  if (tail) {
    if (isZero && i <= tail) isZero = false;
    if (!isZero) i = Math.min(i + alignment - tail, n);
    else i -= tail;
  }
  return { ret: !isZero, pnum: i };
}

/**
 * is_allocated_sectors_min: like isAllocatedSectors, but a zero run shorter than `min` sectors
 * between data is copied as data (fewer, larger writes).
 */
export function isAllocatedSectorsMin(buf: Uint8Array, first: number, n: number, min: number, sectorNum: number, alignment: number): { ret: boolean; pnum: number } {
  if (n < min) min = n;
  let r = isAllocatedSectors(buf, first, n, sectorNum, alignment);
  if (!r.ret) return r;
  let numUsed = r.pnum;
  let pos = first + r.pnum;
  let sn = sectorNum + r.pnum;
  let numChecked = numUsed;
  let left = n;
  while (left > 0) {
    left -= r.pnum;
    r = isAllocatedSectors(buf, pos, left, sn, alignment);
    pos += r.pnum;
    sn += r.pnum;
    numChecked += r.pnum;
    if (r.ret) numUsed = numChecked;
    else if (r.pnum >= min) break;
  }
  return { ret: true, pnum: numUsed };
}

/** A sector holds data: told by its first byte in nearly every case. */
function sectorHasData(buf: Uint8Array, sector: number): boolean {
  const at = sector * SECTOR;
  return buf[at] !== 0 || !bufferIsZero(buf, at, at + SECTOR);
}

/**
 * The n sectors from `first` (n >= min) begin and end with data and hold no run of `min` zero
 * sectors: isAllocatedSectorsMin would then call them all data (its shorter zero runs between
 * data are copied as data, whatever the alignment). Such a run would cover one of the sectors
 * looked at here, one in every `min`: the scan of a data chunk reads an eighth of its sectors
 * (-S 4k) instead of each.
 */
export function allDataAtStride(buf: Uint8Array, first: number, n: number, min: number): boolean {
  if (!sectorHasData(buf, first) || !sectorHasData(buf, first + n - 1)) return false;
  // sectorHasData inline: a call per sector looked at (256 per MiB) cost more than its test.
  const end = (first + n) * SECTOR;
  for (let at = (first + min - 1) * SECTOR; at < end; at += min * SECTOR) {
    if (buf[at] === 0 && bufferIsZero(buf, at, at + SECTOR)) return false;
  }
  return true;
}
