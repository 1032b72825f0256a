import { describe, expect, it } from 'vitest';
import { refcountGetter } from '../../src/drivers/qcow2/refcount-codec.js';
import { RefcountReader } from '../../src/drivers/qcow2/refcount-now.js';
import type { BDRVQcow2State } from '../../src/drivers/qcow2/state.js';
import { decodeTable, encodeTable } from '../../src/drivers/qcow2/table-switch.js';

/** A sparse table: entries whose high, low or both words are set, the rest 0. */
function sparseTable(n: number): BigUint64Array {
  const t = new BigUint64Array(n);
  for (let i = 0; i < n; i += 7) t[i] = i % 3 === 0 ? BigInt(i) << 40n : i % 3 === 1 ? BigInt(i) : (BigInt(i) << 33n) | 0x200n;
  t[n - 1] = 0xfffffffffffffe00n;
  return t;
}

describe('qcow2 tables in their on-disk form', () => {
  it('encodes big-endian and decodes back, zero entries included', () => {
    const t = sparseTable(100);
    const raw = encodeTable(t);
    const v = new DataView(raw.buffer);
    for (let i = 0; i < t.length; i++) expect(v.getBigUint64(i * 8)).toBe(t[i]);
    expect(decodeTable(raw)).toEqual(t);
  });

  it('decodes a table inside a larger buffer, and pads a short one with zeros', () => {
    const t = sparseTable(20);
    const raw = new Uint8Array(8 + 20 * 8);
    raw.set(encodeTable(t), 8);
    expect(decodeTable(raw.subarray(8))).toEqual(t);
    const padded = decodeTable(raw.subarray(8, 8 + 10 * 8), 16);
    expect(padded.length).toBe(16);
    expect([...padded.subarray(0, 10)]).toEqual([...t.subarray(0, 10)]);
    expect([...padded.subarray(10)]).toEqual(new Array<bigint>(6).fill(0n));
  });
});

describe('RefcountReader.countNonZero', () => {
  /** A state of two refcount blocks of `entries` refcounts of 2^order bits, the second absent. */
  function state(order: number, counts: number[]): BDRVQcow2State {
    const cs = 512;
    const entries = (cs * 8) / 2 ** order;
    const block = new Uint8Array(cs);
    const set = (i: number, v: number): void => {
      const bits = 2 ** order;
      if (bits >= 8) for (let b = 0; b < bits / 8; b++) block[(i * bits) / 8 + b] = (v / 2 ** (bits - 8 - 8 * b)) & 0xff;
      else block[Math.floor((i * bits) / 8)] |= v << ((i * bits) % 8);
    };
    counts.forEach((v, i) => set(i, v));
    const cache = new Map([[cs * 3, block]]);
    return {
      clusterSize: cs,
      refcountOrder: order,
      refcountBlockEntries: entries,
      refcountTable: new BigUint64Array([BigInt(cs * 3), 0n]),
      getRefcount: refcountGetter(order),
      refcountCache: { lookup: (off: number) => cache.get(off) },
    } as unknown as BDRVQcow2State;
  }

  for (const order of [0, 3, 4, 6]) {
    it(`counts refcounts of ${2 ** order} bits a block at a time`, () => {
      const counts = [1, 0, 1, 1, 0, 0, 1, 0, 1];
      const s = state(order, counts);
      const reader = new RefcountReader(s);
      const entries = s.refcountBlockEntries;
      expect(reader.countNonZero(0, 2 * entries)).toEqual({ count: 5, next: entries });
      expect(reader.countNonZero(2, 7)).toEqual({ count: 3, next: 7 });
      expect(reader.countNonZero(entries, 2 * entries + 5)).toEqual({ count: 0, next: 2 * entries });
      // Past the reftable: no block, every count 0.
      expect(reader.countNonZero(2 * entries, 2 * entries + 5)).toEqual({ count: 0, next: 2 * entries + 5 });
    });
  }

  it('answers null when the block is not cached', () => {
    const s = state(4, [1]);
    s.refcountTable[1] = BigInt(s.clusterSize * 5);
    expect(new RefcountReader(s).countNonZero(s.refcountBlockEntries, s.refcountBlockEntries + 1)).toBeNull();
  });
});
