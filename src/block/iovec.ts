/**
 * Scatter/gather vector over Uint8Arrays (QEMU's QEMUIOVector). Slices share memory with the
 * parent vector, so a driver can hand the part of a request that falls in one cluster to the
 * layer below without copying.
 */
import { bufferIsZero } from './buffer-is-zero.js';

export class IOVector {
  readonly iov: Uint8Array[];
  /**
   * Bytes in the vector. A field, not a getter over a private one: the request path reads it
   * in every layer, and in V8's baseline tier, where a fresh process runs its first few
   * thousand requests, a getter is a call each time. Only add() changes it.
   */
  readonly size: number;

  /**
   * `adopt` (module-private) takes `iov` as it is, already free of empty buffers and owned by
   * no one else: the hot paths (slices, single buffers) then skip the filtering copy.
   */
  constructor(iov: Uint8Array[] = [], adopt?: typeof ADOPT) {
    if (adopt === ADOPT) {
      this.iov = iov;
    } else {
      this.iov = [];
      for (const b of iov) if (b.length > 0) this.iov.push(b);
    }
    let size = 0;
    for (const b of this.iov) size += b.length;
    this.size = size;
  }

  static from(buf: Uint8Array): IOVector {
    return new IOVector(buf.length > 0 ? [buf] : [], ADOPT);
  }

  static alloc(size: number): IOVector {
    return IOVector.from(new Uint8Array(size));
  }

  get niov(): number {
    return this.iov.length;
  }

  /** Append a buffer (qemu_iovec_add). */
  add(buf: Uint8Array): this {
    if (buf.length > 0) {
      this.iov.push(buf);
      (this as { size: number }).size += buf.length;
    }
    return this;
  }

  /** Append vectors' buffers, sharing memory (qemu_iovec_concat). */
  static concat(...vectors: IOVector[]): IOVector {
    return new IOVector(vectors.flatMap((v) => v.iov));
  }

  /** A view of `len` bytes starting at `offset`, sharing memory (qemu_iovec_copy of old QEMU). */
  slice(offset: number, len: number = this.size - offset): IOVector {
    checkRange(offset, len, this.size);
    // The whole vector: the same buffers, no subarray views.
    if (offset === 0 && len === this.size) return new IOVector(this.iov.slice(), ADOPT);
    // Inside one buffer (the usual case: a cluster of a one-buffer request): one view.
    const first = this.iov[0];
    if (first !== undefined && offset + len <= first.length) {
      return new IOVector(len > 0 ? [first.subarray(offset, offset + len)] : [], ADOPT);
    }
    const out: Uint8Array[] = [];
    this.forEachSegment(offset, len, (seg) => out.push(seg));
    return new IOVector(out, ADOPT);
  }

  /** Copy bytes from `src` into the vector at `offset` (qemu_iovec_from_buf). */
  copyFrom(src: Uint8Array, offset = 0): void {
    checkRange(offset, src.length, this.size);
    let pos = 0;
    this.forEachSegment(offset, src.length, (seg) => {
      seg.set(src.subarray(pos, pos + seg.length));
      pos += seg.length;
    });
  }

  /** Copy `len` bytes at `offset` out into `dst` (qemu_iovec_to_buf). */
  copyTo(dst: Uint8Array, offset = 0, len = Math.min(dst.length, this.size - offset)): void {
    checkRange(offset, len, this.size);
    let pos = 0;
    this.forEachSegment(offset, len, (seg) => {
      dst.set(seg, pos);
      pos += seg.length;
    });
  }

  /** Fill `len` bytes at `offset` with `byte` (qemu_iovec_memset). */
  memset(offset: number, byte: number, len: number = this.size - offset): void {
    checkRange(offset, len, this.size);
    this.forEachSegment(offset, len, (seg) => seg.fill(byte));
  }

  /** The vector's bytes in one fresh buffer. */
  toBuffer(): Uint8Array {
    if (this.iov.length === 1) return this.iov[0].slice();
    const out = new Uint8Array(this.size);
    this.copyTo(out, 0, this.size);
    return out;
  }

  /**
   * Offset of the first byte that differs from `other` (qemu_iovec_compare), or -1 when the
   * first min(size) bytes are equal.
   */
  compare(other: IOVector | Uint8Array): number {
    const a = this.toBuffer();
    const b = other instanceof IOVector ? other.toBuffer() : other;
    const n = Math.min(a.length, b.length);
    for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
    return -1;
  }

  /** True when every byte is zero (used for copy-on-read and convert's zero detection). */
  isZero(): boolean {
    for (const buf of this.iov) if (!bufferIsZero(buf)) return false;
    return true;
  }

  /** Call `fn` with a view of each buffer's part of [offset, offset+len), in order. */
  private forEachSegment(offset: number, len: number, fn: (seg: Uint8Array) => void): void {
    let skip = offset;
    let left = len;
    for (const buf of this.iov) {
      if (left === 0) return;
      if (skip >= buf.length) {
        skip -= buf.length;
        continue;
      }
      const take = Math.min(buf.length - skip, left);
      fn(buf.subarray(skip, skip + take));
      skip = 0;
      left -= take;
    }
  }
}

/** Marks the trusted constructor call (not exported: only this module adopts arrays). */
const ADOPT: unique symbol = Symbol('IOVector.adopt');

function checkRange(offset: number, len: number, size: number): void {
  if (!Number.isInteger(offset) || !Number.isInteger(len) || offset < 0 || len < 0 || offset + len > size) {
    throw new RangeError(`IOVector range ${offset}+${len} outside 0..${size}`);
  }
}
