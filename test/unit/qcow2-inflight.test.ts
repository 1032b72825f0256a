import { describe, expect, it } from 'vitest';
import { qcow2FirstAllocation, qcow2InFlightBegin, qcow2InFlightEnd } from '../../src/drivers/qcow2/inflight.js';
import type { BDRVQcow2State } from '../../src/drivers/qcow2/state.js';

const cs = 65536;

describe('qcow2 writes in flight', () => {
  it('finds the first allocation over a range, counting allocations apart from rewrites', () => {
    const s = { clusterSize: cs, inFlight: new Set(), allocationsInFlight: 0, allocationsLow: 0, allocationsHigh: 0 } as unknown as BDRVQcow2State;
    const rewrite = qcow2InFlightBegin(s, 0, 4 * cs, false);
    expect(s.allocationsInFlight).toBe(0);
    // Only rewrites in flight: nothing to wait for.
    expect(qcow2FirstAllocation(s, 0, cs)).toBeNull();
    const later = qcow2InFlightBegin(s, 3 * cs, cs, true);
    const earlier = qcow2InFlightBegin(s, cs + 100, 100, true);
    expect(s.allocationsInFlight).toBe(2);
    expect(qcow2FirstAllocation(s, 0, 4 * cs)).toBe(earlier);
    expect(qcow2FirstAllocation(s, 2 * cs, cs)).toBeNull();
    // Past the range that holds the allocations (sequential writes): no walk, none found.
    expect([s.allocationsLow, s.allocationsHigh]).toEqual([cs, 4 * cs]);
    expect(qcow2FirstAllocation(s, 4 * cs, cs)).toBeNull();
    expect(qcow2FirstAllocation(s, 3 * cs + 1, cs)).toBe(later);
    qcow2InFlightEnd(s, earlier);
    // Ended twice (a failed write given up): counted out once.
    qcow2InFlightEnd(s, earlier);
    expect(s.allocationsInFlight).toBe(1);
    expect(qcow2FirstAllocation(s, 0, 4 * cs)).toBe(later);
    qcow2InFlightEnd(s, later);
    qcow2InFlightEnd(s, rewrite);
    expect(s.allocationsInFlight).toBe(0);
    expect(s.inFlight.size).toBe(0);
    // The next allocation with none in flight starts the range anew.
    const next = qcow2InFlightBegin(s, 8 * cs, cs, true);
    expect([s.allocationsLow, s.allocationsHigh]).toEqual([8 * cs, 9 * cs]);
    expect(qcow2FirstAllocation(s, 0, 8 * cs)).toBeNull();
    expect(qcow2FirstAllocation(s, 0, 9 * cs)).toBe(next);
    qcow2InFlightEnd(s, next);
  });
});
