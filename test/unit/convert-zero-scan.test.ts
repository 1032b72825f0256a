// convert's zero scan of a data chunk (is_allocated_sectors_min): the stride check that calls a
// chunk all data must agree with the sector-by-sector scan whenever it answers.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { allDataAtStride, isAllocatedSectorsMin, SECTOR } from '../../src/tools/img/convert-zero-scan.js';

/** Sectors of kinds: 0 zero, 1 data in its first byte, 2 data only in its last byte. */
function chunk(kinds: number[]): Uint8Array {
  const buf = new Uint8Array(kinds.length * SECTOR);
  kinds.forEach((k, i) => {
    if (k === 1) buf[i * SECTOR] = 0x5a;
    if (k === 2) buf[i * SECTOR + SECTOR - 1] = 1;
  });
  return buf;
}

describe('convert zero scan', () => {
  it('calls a chunk all data only when the full scan does', () => {
    fc.assert(
      fc.property(
        // Mostly data, so that the stride check answers often.
        fc.array(fc.constantFrom(0, 1, 1, 1, 2), { minLength: 1, maxLength: 96 }),
        fc.constantFrom(1, 2, 4, 8, 16),
        fc.constantFrom(1, 2, 8, 16),
        fc.nat(64),
        (kinds, min, alignment, sectorNum) => {
          const n = kinds.length;
          fc.pre(n >= min);
          const buf = chunk(kinds);
          if (allDataAtStride(buf, 0, n, min)) {
            expect(isAllocatedSectorsMin(buf, 0, n, min, sectorNum, Math.max(alignment, min))).toEqual({ ret: true, pnum: n });
          }
        },
      ),
      { numRuns: 5000 },
    );
  });

  it('looks past a zero first byte and finds a run of min zero sectors', () => {
    // Data in the last byte of every sector: still all data.
    expect(allDataAtStride(chunk(Array<number>(64).fill(2)), 0, 64, 8)).toBe(true);
    // Eight zero sectors in the middle, not aligned to the stride: not all data.
    const kinds = Array<number>(64).fill(1);
    kinds.fill(0, 21, 29);
    expect(allDataAtStride(chunk(kinds), 0, 64, 8)).toBe(false);
    // Seven between the sectors it looks at are copied as data (it may also say no to fewer:
    // the full scan decides then).
    kinds.fill(1, 21, 29).fill(0, 16, 23);
    expect(allDataAtStride(chunk(kinds), 0, 64, 8)).toBe(true);
    // A zero last sector is the next run's business.
    kinds[63] = 0;
    expect(allDataAtStride(chunk(kinds), 0, 64, 8)).toBe(false);
  });
});
