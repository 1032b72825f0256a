// qcow2 check's COPIED pass decides an active L2 table of plain data entries from what the
// counting pass kept of it (src/drivers/qcow2/check-seen.ts): each such table is read once, and
// a table whose COPIED flags are wrong is still read again and reported as QEMU does.
import { describe, expect, it } from 'vitest';
import { bdrvCreate } from '../../src/block/create.js';
import { L1E_OFFSET_MASK, qcow2State } from '../../src/drivers/qcow2/index.js';
import { BlockDriverState } from '../../src/index.js';
import { memName } from './block-helpers.js';

const CLUSTER = 65536;
/** One L2 table maps 8192 clusters (512 MiB). */
const L2_SPAN = 8192 * CLUSTER;

/** A 2 GiB image with data in three L2 tables; returns its name and the tables' offsets. */
async function imageWithThreeTables(): Promise<{ name: string; tables: number[] }> {
  const name = memName('qcow2seen');
  await bdrvCreate(name, { format: 'qcow2', options: { size: 4 * L2_SPAN } });
  const bs = await BlockDriverState.open(name, { format: 'qcow2' });
  try {
    for (const at of [0, L2_SPAN + 5 * CLUSTER, 3 * L2_SPAN]) await bs.pwrite(at, new Uint8Array(4096).fill(0x5a));
    const s = qcow2State(bs);
    const tables = [...s.l1Table].map((e) => Number(e & L1E_OFFSET_MASK)).filter((o) => o !== 0);
    return { name, tables };
  } finally {
    await bs.close();
  }
}

/** Check the image, counting the reads of each L2 table; returns the report too. */
async function checkCountingReads(name: string, tables: number[]): Promise<{ lines: string[]; reads: Map<number, number> }> {
  const bs = await BlockDriverState.open(name, { format: 'qcow2' });
  try {
    const file = bs.file!;
    const reads = new Map<number, number>();
    const pread = file.pread.bind(file);
    file.pread = (offset: number, buf: Uint8Array) => {
      if (tables.includes(offset)) reads.set(offset, (reads.get(offset) ?? 0) + 1);
      return pread(offset, buf);
    };
    const lines: string[] = [];
    await bs.check({ report: (l) => lines.push(l) });
    return { lines, reads };
  } finally {
    await bs.close();
  }
}

describe('qcow2 check: the COPIED pass', () => {
  it('reads each active L2 table of plain data entries once', async () => {
    const { name, tables } = await imageWithThreeTables();
    expect(tables).toHaveLength(3);
    const { lines, reads } = await checkCountingReads(name, tables);
    expect(lines).toEqual([]);
    expect(tables.map((t) => reads.get(t))).toEqual([1, 1, 1]);
  });

  it('reads a table again and reports when a data entry lacks COPIED', async () => {
    const { name, tables } = await imageWithThreeTables();
    // Clear COPIED of the second table's entry (its slot 5) in the file itself.
    const raw = await BlockDriverState.open(name, { format: 'raw' });
    let entry: bigint;
    try {
      const at = tables[1] + 5 * 8;
      const buf = new Uint8Array(8);
      await raw.pread(at, buf);
      const v = new DataView(buf.buffer);
      entry = v.getBigUint64(0) & ~(1n << 63n);
      v.setBigUint64(0, entry);
      await raw.pwrite(at, buf);
    } finally {
      await raw.close();
    }
    const { lines, reads } = await checkCountingReads(name, tables);
    expect(lines).toEqual([`ERROR OFLAG_COPIED data cluster: l2_entry=${entry.toString(16)} refcount=1`]);
    expect(tables.map((t) => reads.get(t))).toEqual([1, 2, 1]);
  });
});
