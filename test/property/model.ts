/**
 * The reference model for the property tests: a disk is a plain byte array. Whatever the image
 * format does (clusters, tables, copy-on-write, backing files), a guest read must return what
 * this array holds.
 */

export class ByteModel {
  bytes: Uint8Array;

  constructor(size: number, initial?: Uint8Array) {
    this.bytes = new Uint8Array(size);
    if (initial) this.bytes.set(initial.subarray(0, Math.min(size, initial.length)));
  }

  get size(): number {
    return this.bytes.length;
  }

  write(offset: number, data: Uint8Array): void {
    this.bytes.set(data, offset);
  }

  zero(offset: number, len: number): void {
    this.bytes.fill(0, offset, offset + len);
  }

  read(offset: number, len: number): Uint8Array {
    return this.bytes.subarray(offset, offset + len);
  }

  /** Grow to `size`; the new part shows `below` (the backing file's bytes there), else zeros. */
  grow(size: number, below?: Uint8Array): void {
    const old = this.bytes;
    this.bytes = new Uint8Array(size);
    this.bytes.set(old);
    if (below && below.length > old.length) {
      this.bytes.set(below.subarray(old.length, Math.min(size, below.length)), old.length);
    }
  }
}

/** Deterministic, position-dependent fill: a misplaced or shifted copy shows up as a mismatch. */
export function pattern(len: number, seed: number): Uint8Array {
  const out = new Uint8Array(len);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < len; i++) {
    // xorshift32: cheap and never constant, so shifted data always differs from its original.
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out[i] = x & 0xff;
  }
  return out;
}

/** Index of the first differing byte, or -1. */
export function firstDiff(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : n;
}

/** A small seeded PRNG for choices made inside a run (crash subsets, mutation bytes). */
export function mulberry32(seed: number): (n: number) => number {
  let a = seed >>> 0;
  return (n: number) => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    const r = ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    return Math.floor(r * n);
  };
}
