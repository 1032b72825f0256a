/**
 * Scratch buffers of one size, reused: a driver that needs a large temporary buffer per
 * request (the head and tail a copy-on-write reads and writes back) takes one here and gives
 * it back when its I/O has settled. A fresh Uint8Array per request is zero-filled on
 * allocation and, being external memory, drives garbage collections; QEMU's blockalign
 * buffers are neither. A taken buffer's contents are whatever its last user left.
 */
export class BufferPool {
  private readonly free: Uint8Array[] = [];

  constructor(
    /** Bytes of every buffer. */
    readonly size: number,
    /** Idle buffers kept at most; more are left to the garbage collector. */
    private readonly maxIdle: number,
  ) {}

  /** A buffer of `size` bytes, contents undefined. */
  take(): Uint8Array {
    return this.free.pop() ?? new Uint8Array(this.size);
  }

  /** Give `buf` back once no I/O refers to it any more. */
  give(buf: Uint8Array): void {
    if (buf.length === this.size && this.free.length < this.maxIdle) this.free.push(buf);
  }
}
