import { describe, expect, it } from 'vitest';
import { planPlainRun } from '../../src/drivers/qcow2/cluster-plain.js';
import type { BDRVQcow2State } from '../../src/drivers/qcow2/state.js';

const cs = 65536;
const s = { clusterSize: cs, l2Size: 16 } as BDRVQcow2State;
const COPIED = 1n << 63n;

function table(entries: bigint[]): DataView {
  const v = new DataView(new ArrayBuffer(16 * 8));
  entries.forEach((e, i) => v.setBigUint64(i * 8, e));
  return v;
}

describe('qcow2 plain run plan', () => {
  const host = 5 * 2 ** 32 + 7 * cs;

  it('runs over contiguous data whatever COPIED says, to the first entry elsewhere', () => {
    const data = table([BigInt(host) | COPIED, BigInt(host + cs), BigInt(host + 2 * cs) | COPIED, BigInt(host + 9 * cs), 0n]);
    expect(planPlainRun(s, 100, 16 * cs, data)).toEqual({ kind: 'normal', type: 'normal', bytes: 3 * cs - 100, hostOffset: host + 100, allocated: true, l2Entry: 0n });
    // Asked for less: the run ends where asked.
    expect(planPlainRun(s, cs, cs + 5, data)?.bytes).toBe(cs + 5);
  });

  it('runs over unallocated entries to the first data entry', () => {
    const data = table([0n, 0n, 0n, BigInt(host) | COPIED]);
    expect(planPlainRun(s, 0, 16 * cs, data)).toEqual({ kind: 'unallocated', type: 'unallocated-plain', bytes: 3 * cs, hostOffset: 0, allocated: false, l2Entry: 0n });
    // To the end of the table when nothing else follows.
    expect(planPlainRun(s, 4 * cs, 12 * cs, data)?.bytes).toBe(12 * cs);
  });

  it('leaves every other entry to the full plan', () => {
    const zero = 1n;
    const compressed = 1n << 62n;
    const reserved = 1n << 56n;
    for (const first of [zero, BigInt(host) | zero, BigInt(host) | compressed, BigInt(host) | reserved, BigInt(host + 512), COPIED]) {
      expect(planPlainRun(s, 0, 16 * cs, table([first]))).toBeNull();
    }
    // Ended by an entry the full plan must judge (it may continue the run or be corrupt).
    expect(planPlainRun(s, 0, 16 * cs, table([BigInt(host), BigInt(host + cs) | zero]))).toBeNull();
    expect(planPlainRun(s, 0, 16 * cs, table([0n, zero]))).toBeNull();
    expect(planPlainRun(s, 0, 16 * cs, table([0n, COPIED]))).toBeNull();
  });
});
