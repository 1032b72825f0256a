import { describe, expect, it } from 'vitest';
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
