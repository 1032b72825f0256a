import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { BlockDriverState, memStoreRead } from '../../src/index.js';
import { makeMem, makeStrictDriver, testRegistry } from './block-helpers.js';

type Op =
  | { kind: 'write'; offset: number; len: number; seed: number }
  | { kind: 'zero'; offset: number; len: number }
  | { kind: 'read'; offset: number; len: number };

function opArb(size: number): fc.Arbitrary<Op> {
  const range = fc
    .tuple(fc.integer({ min: 0, max: size - 1 }), fc.integer({ min: 1, max: 1500 }))
    .map(([offset, len]) => ({ offset, len: Math.min(len, size - offset) }));
  return fc.oneof(
    fc.tuple(range, fc.integer({ min: 1, max: 255 })).map(([r, seed]) => ({ kind: 'write' as const, ...r, seed })),
    range.map((r) => ({ kind: 'zero' as const, ...r })),
    range.map((r) => ({ kind: 'read' as const, ...r })),
  );
}

describe('unaligned byte requests over a 512-aligned driver match a byte-array model', () => {
  it('sequential writes, zero writes and reads (also with an unaligned image size)', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(4096, 5000, 1000).chain((size) => fc.tuple(fc.constant(size), fc.array(opArb(size), { maxLength: 25 }))),
        async ([size, ops]) => {
          const name = makeMem(size, 'prop');
          const registry = testRegistry(makeStrictDriver());
          const bs = await BlockDriverState.open(name, { format: 'strict', registry });
          const model = new Uint8Array(size);
          try {
            for (const op of ops) {
              if (op.kind === 'write') {
                const d = new Uint8Array(op.len).map((_, i) => (op.seed + i) & 0xff);
                await bs.pwrite(op.offset, d);
                model.set(d, op.offset);
              } else if (op.kind === 'zero') {
                await bs.writeZeroes(op.offset, op.len);
                model.fill(0, op.offset, op.offset + op.len);
              } else {
                const back = new Uint8Array(op.len);
                await bs.pread(op.offset, back);
                expect(back).toEqual(model.subarray(op.offset, op.offset + op.len));
              }
            }
            expect(memStoreRead(name)).toEqual(model);
          } finally {
            await bs.close();
          }
        },
      ),
      { numRuns: 60 },
    );
  });
});
