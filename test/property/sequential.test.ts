import { describe, expect, it } from 'vitest';
import { propSequential } from './properties.js';
import { formatUnderTest } from './harness.js';

describe(`model-based sequential (${formatUnderTest()} over mem)`, () => {
  it('random command sequences read back as the byte-array model', async () => {
    let commands = 0;
    await propSequential({ numRuns: 100, onCommands: (n) => (commands += n) });
    expect(commands).toBeGreaterThan(300);
  });
});
