import { describe, it } from 'vitest';
import { propBlkdebug, propPowerLoss } from './fault-props.js';

describe('fault injection (QED over mem)', () => {
  it('an error injected at any event of a write fails that write and leaves only leaks', async () => {
    await propBlkdebug({ numRuns: 120 });
  });
  it('power loss: flushed writes survive, the open-time check leaves only leaks', async () => {
    await propPowerLoss({ numRuns: 120 });
  });
});
