// bufferIsZero and sectorRun scan words, with byte loops at unaligned edges: they must answer
// what a byte-by-byte scan answers for every offset, length and position of a non-zero byte.
import { describe, expect, it } from 'vitest';
import { bufferIsZero, sectorRun } from '../../src/index.js';

function naiveZero(buf: Uint8Array, start: number, end: number): boolean {
  for (let i = start; i < end; i++) if (buf[i] !== 0) return false;
  return true;
}

function naiveRun(buf: Uint8Array, first: number, n: number, size: number, zero: boolean): number {
  let i = 0;
  for (; i < n; i++) {
    const s = (first + i) * size;
    if (naiveZero(buf, s, Math.min(s + size, buf.length)) !== zero) break;
  }
  return i;
}

describe('bufferIsZero', () => {
  it('finds a single non-zero byte anywhere, at any alignment of the view', () => {
    const backing = new Uint8Array(300);
    for (const off of [0, 1, 2, 3, 5]) {
      for (const len of [0, 1, 3, 7, 63, 64, 65, 100, 131, 255]) {
        const view = backing.subarray(off, off + len);
        expect(bufferIsZero(view)).toBe(true);
        for (let at = 0; at < len; at++) {
          view[at] = 0x80;
          expect(bufferIsZero(view)).toBe(false);
          // A sub-range that leaves the byte out is zero.
          expect(bufferIsZero(view, 0, at)).toBe(true);
          expect(bufferIsZero(view, at + 1, len)).toBe(true);
          view[at] = 0;
        }
      }
    }
  });
});

describe('sectorRun', () => {
  it('counts zero and data sectors as a byte scan does', () => {
    // Sectors of 16 bytes: zero, data in the first word, data in the last byte only, ...
    const size = 16;
    const pattern = [0, 1, 2, 0, 0, 2, 1, 1, 0, 2, 0, 0, 0, 1];
    for (const off of [0, 4, 1]) {
      const backing = new Uint8Array(off + pattern.length * size);
      const buf = backing.subarray(off);
      pattern.forEach((kind, s) => {
        if (kind === 1) buf[s * size] = 1;
        if (kind === 2) buf[s * size + size - 1] = 1;
      });
      for (let first = 0; first < pattern.length; first++) {
        for (let n = 0; first + n <= pattern.length; n++) {
          for (const zero of [true, false]) {
            expect(sectorRun(buf, first, n, size, zero), `off ${off} first ${first} n ${n} zero ${zero}`).toBe(naiveRun(buf, first, n, size, zero));
          }
        }
      }
    }
  });

  it('takes a short last sector where the buffer ends', () => {
    const buf = new Uint8Array(512 * 2 + 100);
    expect(sectorRun(buf, 0, 3, 512, true)).toBe(3);
    buf[512 * 2 + 99] = 7;
    expect(sectorRun(buf, 0, 3, 512, true)).toBe(2);
    expect(sectorRun(buf, 2, 1, 512, false)).toBe(1);
  });
});
