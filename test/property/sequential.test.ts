import { describe, it } from 'vitest';
import { propSequential } from './properties.js';
import { formatUnderTest } from './harness.js';

describe(`model-based sequential (${formatUnderTest()} over mem)`, () => {
  it('random command sequences read back as the byte-array model', async () => {
    await propSequential({ numRuns: 100 });
  });
});
