/** Block status of a host file: data and holes as lseek(SEEK_DATA / SEEK_HOLE) reports them. */
import type { BlockStatus } from '../../block/driver.js';
import type { BlockDriverState } from '../../block/node.js';
import { type SeekAddon, seekAddon } from './seek.js';
import { state } from './state.js';

/** Where a byte of the host file lies, as lseek(SEEK_DATA / SEEK_HOLE) sees it. */
type Allocation =
  | { kind: 'data'; hole: number } // data from the offset up to `hole`
  | { kind: 'hole'; data: number } // a hole from the offset up to `data`
  | { kind: 'trailing' } // a hole up to the end of the file, or the offset is past it
  | { kind: 'unknown' }; // no answer: callers must assume data

/**
 * Classify `start`: first SEEK_DATA (where is the next data?), then, only when `start` is in
 * data, SEEK_HOLE (where does it end?). The file can change between the two calls (another
 * process punching a hole or truncating): an answer that contradicts the first is "unknown",
 * never a guess that could call data a hole. Errors (a file system without SEEK_DATA) are
 * "unknown" too: the caller then reports data, which is always safe.
 */
function findAllocation(seek: SeekAddon, fd: number, start: number): Allocation {
  try {
    const data = seek.seekData(fd, start);
    if (data < 0) return { kind: 'trailing' };
    if (data < start) return { kind: 'unknown' }; // lseek must not go backwards
    if (data > start) return { kind: 'hole', data };
    const hole = seek.seekHole(fd, start);
    // Truncated behind our back since SEEK_DATA: what is left past the end reads as zeros.
    if (hole < 0) return { kind: 'trailing' };
    // A hole right at `start` now: it was data a moment ago; the file is changing under us.
    if (hole <= start) return { kind: 'unknown' };
    return { kind: 'data', hole };
  } catch {
    return { kind: 'unknown' };
  }
}

/**
 * Data or hole, as QEMU's file-posix answers: a hole is zeros that take no room (zero), data is
 * data; both at the same offset of this file, and allocated at this layer (the range is
 * determined here; nothing lies below a protocol node). The answer runs up to the next
 * data/hole boundary, clamped to the request by the generic layer.
 *
 * lseek runs synchronously: it is a short syscall answered from the extent tree and page
 * cache, cheaper than a round trip through the thread pool. It moves the fd's file position,
 * which nothing uses: every read and write here is positioned (pread/pwrite).
 *
 * Without the native addon (see seek.ts) Node cannot find holes, and every byte is reported as
 * data, as QEMU does on a host without SEEK_DATA. (A st_blocks == 0 shortcut is not used:
 * inline-data file systems report 0 blocks for data.)
 */
export async function fileCoBlockStatus(bs: BlockDriverState, offset: number, bytes: number): Promise<BlockStatus> {
  return fileBlockStatusNow(bs, offset, bytes);
}

/** The blockStatusNow hook: lseek answers synchronously, so the answer is always at hand. */
export function fileBlockStatusNow(bs: BlockDriverState, offset: number, bytes: number): BlockStatus {
  const s = state(bs);
  const seek = seekAddon();
  const where = seek === null ? ({ kind: 'unknown' } as const) : findAllocation(seek, s.fd, offset);
  switch (where.kind) {
    case 'data':
      return { pnum: Math.min(bytes, where.hole - offset), allocated: true, data: true, zero: false, offset, file: bs };
    case 'hole':
      return { pnum: Math.min(bytes, where.data - offset), allocated: true, data: false, zero: true, offset, file: bs };
    case 'trailing':
      return { pnum: bytes, allocated: true, data: false, zero: true, offset, file: bs };
    case 'unknown':
      return { pnum: bytes, allocated: true, data: true, zero: false, offset, file: bs };
  }
}

