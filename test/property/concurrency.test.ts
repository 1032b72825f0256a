import { describe, expect, it } from 'vitest';
import { concStats, propConcurrent } from './concurrency.js';
import { submitStats } from './submit-stats.js';

describe('concurrent requests under fc.scheduler (QED over a scheduled mem protocol)', () => {
  it('every batch ends as some per-sector serialisation of its writes; cancelled AIO writes are all or nothing', async () => {
    const before = { ...concStats };
    const rewrites = submitStats.sched.qedRewrite;
    await propConcurrent({ numRuns: 150 });
    // AIO rewrites started with a callback completed in the scheduler's order.
    expect(submitStats.sched.qedRewrite - rewrites).toBeGreaterThan(5);
    expect(concStats.multiRequestBatches - before.multiRequestBatches).toBeGreaterThan(40);
    expect(concStats.cancelledBeforeStart - before.cancelledBeforeStart).toBeGreaterThan(0);
  });
});
