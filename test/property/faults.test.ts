import { describe, expect, it } from 'vitest';
import { faultStats, propBlkdebug } from './fault-props.js';
import { propPowerLoss } from './powerloss-props.js';
import { submitStats } from './submit-stats.js';

describe('fault injection (QED over mem)', () => {
  it('an error injected at any event of a write fails that write and leaves only leaks', async () => {
    let commands = 0;
    const before = faultStats.injections;
    await propBlkdebug({ numRuns: 250, onCommands: (n) => (commands += n) });
    // The property proves something only if errors were really injected.
    expect(faultStats.injections - before).toBeGreaterThan(10);
    expect(commands).toBeGreaterThan(120);
  });
  it('power loss: flushed writes survive, the open-time check leaves only leaks', async () => {
    const before = { ...faultStats };
    const rewrites = submitStats.powerloss.qedRewrite;
    await propPowerLoss({ numRuns: 250 });
    // AIO rewrites started with the file's callback (qedAioWriteNow) ran under power loss.
    expect(submitStats.powerloss.qedRewrite - rewrites).toBeGreaterThan(5);
    expect(faultStats.crashedMidRequest - before.crashedMidRequest).toBeGreaterThan(5);
    expect(faultStats.pendingAtCrash - before.pendingAtCrash).toBeGreaterThan(20);
  });
});
