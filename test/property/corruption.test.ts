import { describe, expect, it } from 'vitest';
import { corruptStats, propCorruption, propRepairFault } from './corruption.js';

describe('corrupted QED images', () => {
  it('open/read/write/check end in a result or a BlockError, read-only opens never write', async () => {
    const before = { ...corruptStats };
    await propCorruption({ numRuns: 250 });
    // Both kinds of outcome must occur, or the mutations are too timid or too brutal.
    expect(corruptStats.roOpened - before.roOpened).toBeGreaterThan(10);
    expect(corruptStats.cases - before.cases - (corruptStats.roOpened - before.roOpened)).toBeGreaterThan(10);
  });
});

describe('I/O errors during the open-time repair', () => {
  it('a repair that fails leaves an image the next open repairs completely', async () => {
    let commands = 0;
    await propRepairFault({ numRuns: 200, onCommands: (n) => (commands += n) });
    expect(commands).toBeGreaterThan(100);
  });
});
