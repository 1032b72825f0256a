/**
 * Reply frames for READ: one buffer holding the reply header (a simple reply, or an
 * OFFSET_DATA chunk header with its offset) followed by the data read straight into it, so a
 * reply leaves in one write(2) with no copy and no writev of three pieces. Frames are reused
 * once the socket has written them: a fresh buffer of hundreds of KiB per READ costs page
 * faults on first touch, mmap/munmap and garbage collections under external memory pressure.
 */
/** Room for the largest READ reply header: a 20-byte chunk header and an 8-byte offset. */
export const FRAME_HEADROOM = 32;
/** The smallest data capacity of a pooled frame. */
const MIN_CLASS = 64 * 1024;
/** Idle frames kept per pool: more than one client's READs in flight at nbdcopy's 64 x 256 KiB. */
const MAX_POOLED_BYTES = 32 * 1024 * 1024;

/** Data capacities are powers of two from 64 KiB, so READs of similar sizes share frames. */
function dataClass(bytes: number): number {
  let c = MIN_CLASS;
  while (c < bytes) c *= 2;
  return c;
}

export class FramePool {
  private readonly free = new Map<number, Buffer[]>();
  private pooledBytes = 0;

  /** A frame for `bytes` of data (contents undefined): FRAME_HEADROOM + bytes or more long. */
  get(bytes: number): Buffer {
    const cls = dataClass(bytes);
    const f = this.free.get(cls)?.pop();
    if (f !== undefined) {
      this.pooledBytes -= f.length;
      return f;
    }
    return Buffer.allocUnsafeSlow(FRAME_HEADROOM + cls);
  }

  /** Give a frame back once nothing refers to its bytes any more (the socket wrote them). */
  put(frame: Buffer): void {
    if (this.pooledBytes + frame.length > MAX_POOLED_BYTES) return;
    const cls = frame.length - FRAME_HEADROOM;
    let list = this.free.get(cls);
    if (list === undefined) {
      list = [];
      this.free.set(cls, list);
    }
    list.push(frame);
    this.pooledBytes += frame.length;
  }
}
