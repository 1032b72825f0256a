import { describe, expect, it } from 'vitest';
import { propBlkverify, propSequential, propSequentialFile } from './properties.js';
import { propHuge } from './huge.js';
import { propMisuse } from './misuse.js';

describe('model-based sequential (QED over mem)', () => {
  it('random command sequences read back as the byte-array model', async () => {
    let commands = 0;
    await propSequential({ numRuns: 250, onCommands: (n) => (commands += n) });
    expect(commands).toBeGreaterThan(300);
  });
});

describe('blkverify (raw reference vs QED under test)', () => {
  it('the same sequences through blkverify never report a mismatch', async () => {
    let commands = 0;
    await propBlkverify({ numRuns: 150, onCommands: (n) => (commands += n) });
    expect(commands).toBeGreaterThan(100);
  });
});

describe('huge sparse images (offsets past 2^31, 2^32, up to the size limit)', () => {
  it('writes near 32-bit and L2 boundaries and at the very end read back', async () => {
    let commands = 0;
    await propHuge({ numRuns: 40, onCommands: (n) => (commands += n) });
    expect(commands).toBeGreaterThan(40);
  });
});

describe('model-based sequential over host files (file protocol)', () => {
  it('the same sequences through the file driver read back as the model', async () => {
    let commands = 0;
    await propSequentialFile({ numRuns: 60, onCommands: (n) => (commands += n) });
    expect(commands).toBeGreaterThan(60);
  });
});

describe('API misuse', () => {
  it('odd numbers, mismatched AIO vectors and closed nodes get a BlockError, and the image stays clean', async () => {
    let commands = 0;
    await propMisuse({ numRuns: 100, onCommands: (n) => (commands += n) });
    expect(commands).toBeGreaterThan(100);
  });
});
