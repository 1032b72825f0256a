import { describe, expect, it } from 'vitest';
import { RequestTracker } from '../../src/block/io/requests.js';

describe('RequestTracker.overlaps', () => {
  it('finds overlaps below the highest end and none from it on, after any order of ends', () => {
    const t = new RequestTracker();
    const a = t.insert(0, 100, false);
    const b = t.insert(300, 400, false);
    const c = t.insert(100, 200, false);
    expect(t.overlaps(400, 500)).toBe(false);
    expect(t.overlaps(399, 500)).toBe(true);
    expect(t.overlaps(200, 300)).toBe(false);
    expect(t.overlaps(150, 160)).toBe(true);
    t.end(b);
    // 300-400 is gone: the bound stays, the walk answers.
    expect(t.overlaps(300, 400)).toBe(false);
    expect(t.overlaps(50, 60)).toBe(true);
    t.end(a);
    t.end(c);
    // Empty: nothing overlaps, and new ranges below the old bound are found again.
    expect(t.overlaps(0, 1000)).toBe(false);
    t.insert(10, 20, false);
    expect(t.overlaps(0, 15)).toBe(true);
    expect(t.overlaps(20, 1000)).toBe(false);
  });
});
