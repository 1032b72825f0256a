import { describe, expect, it } from 'vitest';
import { l2EntryEmpty, setCopiedEntry } from '../../src/drivers/qcow2/entries.js';
import type { BDRVQcow2State } from '../../src/drivers/qcow2/state.js';
import { calculateL2Meta, plainL2Meta } from '../../src/drivers/qcow2/subcluster.js';

const cs = 65536;
const COPIED = 1n << 63n;

describe('qcow2 allocation without BigInt entries', () => {
  it('describes new clusters over empty entries as calculateL2Meta does', () => {
    const s = {
      clusterSize: cs,
      subclusterSize: cs,
      extendedL2: false,
      l2EntrySize: 8,
      header: { version: 3, incompatibleFeatures: 0n },
    } as unknown as BDRVQcow2State;
    const data = new Uint8Array(16 * 8);
    const cases: [number, number][] = [
      [0, cs],
      [3 * cs, cs],
      [100, 4096],
      [cs - 512, 1024],
      [5 * cs + 4096, 3 * cs],
      [7 * cs, 2 * cs - 512],
    ];
    for (const [offset, bytes] of cases) {
      const host = 2 ** 33 + 11 * cs;
      const l2Index = Math.floor(offset / cs);
      expect(plainL2Meta(s, host, offset, bytes)).toEqual(calculateL2Meta(s, host, offset, bytes, data, l2Index, false));
    }
  });

  it('writes and tests entries as two 32-bit halves, offsets past 4 GiB included', () => {
    const view = new DataView(new ArrayBuffer(32));
    expect(l2EntryEmpty(view, 8)).toBe(true);
    for (const host of [cs, 2 ** 32, 2 ** 32 + 5 * cs, 2 ** 55 - cs]) {
      setCopiedEntry(view, 8, host);
      expect(view.getBigUint64(8)).toBe(BigInt(host) | COPIED);
      expect(l2EntryEmpty(view, 8)).toBe(false);
    }
    // A set bit in either half is not empty.
    view.setBigUint64(16, 1n);
    expect(l2EntryEmpty(view, 16)).toBe(false);
    view.setBigUint64(16, 1n << 40n);
    expect(l2EntryEmpty(view, 16)).toBe(false);
    expect(l2EntryEmpty(view, 0)).toBe(true);
  });
});
