// Byte helpers shared by the driver unit tests: seeded fill patterns, a byte comparison that
// names the first differing offset, and the BlockError a promise rejects with.
import { expect } from 'vitest';
import { BlockError } from '../../src/block/errors.js';

/**
 * A seeded fill pattern: byte i is (i * step + seed * seedStep + (i >> blockShift)) & 0xff, the
 * last term left out without a blockShift. Each test file keeps its own coefficients, so its data
 * (and the offsets its failures name) stay what they were.
 */
export function bytePattern(step: number, seedStep: number, blockShift?: number): (n: number, seed: number) => Uint8Array {
  return (n, seed) => {
    const b = new Uint8Array(n);
    for (let i = 0; i < n; i++) b[i] = (i * step + seed * seedStep + (blockShift === undefined ? 0 : i >> blockShift)) & 0xff;
    return b;
  };
}

/** Byte equality without vitest's slow element-wise diff of big arrays. */
export function expectBytes(actual: Uint8Array, expected: Uint8Array): void {
  const a = Buffer.from(actual.buffer, actual.byteOffset, actual.length);
  const b = Buffer.from(expected.buffer, expected.byteOffset, expected.length);
  if (!a.equals(b)) {
    let i = 0;
    while (i < Math.min(a.length, b.length) && a[i] === b[i]) i++;
    expect.fail(`bytes differ at ${i} (lengths ${a.length}/${b.length})`);
  }
}

/** The BlockError `p` rejects with; fails the test when it resolves or rejects with anything else. */
export async function rejection(p: Promise<unknown>): Promise<BlockError> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(BlockError);
    return e as BlockError;
  }
  return expect.fail('expected a rejection');
}
