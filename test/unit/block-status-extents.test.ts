// Block status in batches (BlockDriverState.blockStatusExtents and the drivers'
// blockStatusExtents hooks): each extent of a batch is what blockStatus answers at its start,
// over random qcow2 and QED images, with and without a backing file.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { bdrvCreate } from '../../src/block/create.js';
import {
  BDRV_BLOCK_ALLOCATED,
  BDRV_BLOCK_DATA,
  BDRV_BLOCK_OFFSET_VALID,
  BDRV_BLOCK_ZERO,
  BlockDriverState,
  StatusExtents,
  type BlockStatus,
} from '../../src/index.js';
import { memName } from './block-helpers.js';

const CLUSTER = 4096;
/** Two L2 tables of 512 entries, and a partial third: runs stop at table ends. */
const SIZE = 5 << 20;

type Op = { kind: 'write' | 'zero' | 'discard'; cluster: number; count: number };

const opArb: fc.Arbitrary<Op> = fc.record({
  kind: fc.constantFrom('write' as const, 'write' as const, 'zero' as const, 'discard' as const),
  cluster: fc.integer({ min: 0, max: SIZE / CLUSTER - 1 }),
  count: fc.integer({ min: 1, max: 40 }),
});

function flagsOf(st: BlockStatus): number {
  return (st.data ? BDRV_BLOCK_DATA : 0) | (st.zero ? BDRV_BLOCK_ZERO : 0) | (st.allocated ? BDRV_BLOCK_ALLOCATED : 0) | (st.offset !== undefined ? BDRV_BLOCK_OFFSET_VALID : 0);
}

async function makeImage(format: 'qcow2' | 'qed', ops: Op[], backingSize: number | null): Promise<string> {
  const name = memName(`bsext-${format}`);
  const options: Record<string, string | number> = { size: SIZE, cluster_size: CLUSTER };
  if (format === 'qed') options.table_size = 1;
  if (backingSize !== null) {
    const base = memName('bsext-base');
    await bdrvCreate(base, { format: 'qcow2', options: { size: backingSize } });
    Object.assign(options, { backing_file: base, backing_fmt: 'qcow2' });
  }
  await bdrvCreate(name, { format, options });
  const bs = await BlockDriverState.open(name, { format });
  try {
    for (const op of ops) {
      const offset = op.cluster * CLUSTER;
      const bytes = Math.min(op.count * CLUSTER, SIZE - offset);
      if (op.kind === 'write') await bs.pwrite(offset, new Uint8Array(bytes).fill(op.count));
      else if (op.kind === 'zero') await bs.writeZeroes(offset, bytes);
      else await bs.discard(offset, bytes);
    }
    await bs.flush();
  } finally {
    await bs.close();
  }
  return name;
}

/**
 * Walk the image from `start` as map does: batches where the driver answers them, blockStatus
 * elsewhere; every extent of a batch is checked against blockStatus. Returns the extents taken
 * from batches.
 */
async function walk(bs: BlockDriverState, start: number): Promise<number> {
  const out = new StatusExtents(7);
  let batched = 0;
  let pos = start;
  while (pos < SIZE) {
    const got = bs.blockStatusExtents(pos, SIZE - pos, out);
    expect(got).toBe(out.count);
    for (let i = 0; i < got; i++) {
      const st = await bs.blockStatus(pos, SIZE - pos);
      const at = `extent ${i} at ${pos}`;
      expect(out.pnum[i], at).toBe(st.pnum);
      expect(out.flags[i], at).toBe(flagsOf(st));
      expect(out.hostOffset[i], at).toBe(st.offset ?? 0);
      if (st.offset !== undefined) expect(out.file, at).toBe(st.file);
      pos += st.pnum;
    }
    batched += got;
    if (got === 0) pos += (await bs.blockStatus(pos, SIZE - pos)).pnum;
  }
  expect(pos).toBe(SIZE);
  return batched;
}

describe.each(['qcow2', 'qed'] as const)('%s: block status in batches', (format) => {
  it('answers each extent as blockStatus does, over random images', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(opArb, { maxLength: 30 }),
        fc.option(fc.constantFrom(CLUSTER * 100, SIZE), { nil: null }),
        fc.integer({ min: 0, max: 3 * CLUSTER }),
        async (ops, backingSize, start) => {
          const name = await makeImage(format, ops, backingSize);
          const bs = await BlockDriverState.open(name, { format });
          try {
            // Freshly opened, nothing cached: the first batch waits for a table read.
            await walk(bs, start);
            // Now every table is cached: the batches cover what the hook takes.
            const batched = await walk(bs, start);
            if (ops.length === 0 && backingSize === null) expect(batched).toBeGreaterThan(0);
          } finally {
            await bs.close();
          }
        },
      ),
      { numRuns: 40 },
    );
  });

  it('answers nothing for what blockStatus would refuse or outside the image', async () => {
    const bs = await BlockDriverState.open(await makeImage(format, [], null), { format });
    try {
      const out = new StatusExtents(4);
      expect(bs.blockStatusExtents(SIZE, 512, out)).toBe(0);
      expect(bs.blockStatusExtents(-1, 512, out)).toBe(0);
      expect(bs.blockStatusExtents(0, 0, out)).toBe(0);
      // Asked past the end: clamped to it.
      await bs.blockStatus(SIZE - CLUSTER, CLUSTER);
      expect(bs.blockStatusExtents(SIZE - CLUSTER, 4 * CLUSTER, out)).toBe(1);
      expect(out.pnum[0]).toBe(CLUSTER);
    } finally {
      await bs.close();
    }
  });
});
