/**
 * A new refcount width for an open image (QEMU's qcow2_change_refcount_order, amend's
 * refcount_bits): every refcount copied into new refcount blocks of the new width, a new
 * refcount table, one header switch, the old structures freed.
 *
 * Ordering: the new blocks and table are allocated in the old structure (so that a crash
 * leaves them as mere leaks), written, and flushed together with the refcount cache before
 * the header points at them; only then are the old blocks and table freed, through the new
 * structure. The allocation walk repeats until it allocates nothing more, so that the new
 * blocks count themselves and the new table.
 */
import { BlockError } from '../../block/errors.js';
import { qcow2PreWriteOverlapCheck } from './corrupt.js';
import { REFT_OFFSET_MASK } from './entries.js';
import { QCOW_MAX_REFTABLE_SIZE } from './header.js';
import { refcountBlockEntries, refcountGetter, refcountMax, refcountSetter } from './refcount-codec.js';
import { qcow2AllocClusters, qcow2FreeClusters } from './refcount.js';
import { type BDRVQcow2State, qcow2File } from './state.js';

/** Progress of one walk: (walk index · table entries + entry, walks · table entries). */
type WalkStatus = (offset: number, total: number) => void;

interface NewTable {
  entries: bigint[];
  /** Next new block to finish. */
  index: number;
}

/** Index of the last non-zero byte of `b`, or -1 (a refcount block is mostly zeros past its start). */
function lastNonZeroByte(b: Uint8Array): number {
  let i = b.length - 1;
  if (b.byteOffset % 4 === 0) {
    const words = new Uint32Array(b.buffer, b.byteOffset, b.length >> 2);
    let w = words.length - 1;
    while (w >= 0 && words[w] === 0) w--;
    i = Math.min(i, 4 * w + 3);
  }
  while (i >= 0 && b[i] === 0) i--;
  return i;
}

/**
 * Walk every refcount of the image in order, filling blocks of the new width; `finish` gets
 * each completed block (and whether it holds only zeros). Refuses a refcount the new width
 * cannot hold, with QEMU's message.
 *
 * Runs of zero refcounts (missing blocks, the unused end of a block) are taken whole: with
 * large clusters a block counts millions of clusters and the table names hundreds of
 * thousands of blocks, nearly all empty. A whole new block of zeros goes to `finish` only
 * below `emptyLimit` (the write walk: the new table may name such a block); past it, and in
 * the allocation walks, finishing an empty block does nothing.
 */
async function walkOverReftable(
  s: BDRVQcow2State,
  t: NewTable,
  newOrder: number,
  block: Uint8Array | null,
  finish: (empty: boolean) => Promise<void>,
  emptyLimit: number,
  status: WalkStatus,
  index: number,
  total: number,
): Promise<void> {
  const newBits = 1 << newOrder;
  const newSize = refcountBlockEntries(s.clusterBits, newOrder);
  const set = refcountSetter(newOrder);
  // Every run below is a multiple of 64 entries (blocks hold a power of two of at least 64),
  // so `n` stays byte-aligned in the new block for any width.
  let n = 0;
  let empty = true;
  const complete = async (): Promise<void> => {
    await finish(empty);
    t.index++;
    n = 0;
    empty = true;
  };
  const zeros = async (count: number): Promise<void> => {
    if (n > 0) {
      const take = Math.min(count, newSize - n);
      if (block) block.fill(0, (n * newBits) / 8, ((n + take) * newBits) / 8);
      n += take;
      count -= take;
      if (n === newSize) await complete();
    }
    let whole = Math.floor(count / newSize);
    count -= whole * newSize;
    for (; whole > 0 && t.index < emptyLimit; whole--) {
      if (block) block.fill(0);
      await finish(true);
      t.index++;
    }
    t.index += whole;
    if (count > 0) {
      if (block) block.fill(0, 0, (count * newBits) / 8);
      n = count;
    }
  };
  const oldBits = 1 << s.refcountOrder;
  // The old table may grow while the first walks allocate: its length is read every time.
  for (let ri = 0; ri < s.refcountTable.length; ri++) {
    status(index * s.refcountTable.length + ri, total * s.refcountTable.length);
    const offset = Number(s.refcountTable[ri] & REFT_OFFSET_MASK);
    if (offset === 0) {
      // No block: all zeros.
      await zeros(s.refcountBlockEntries);
      continue;
    }
    if (offset % s.clusterSize !== 0) throw new BlockError('EIO', 'Image is corrupt (unaligned refblock offset)', { op: 'amend' });
    const entry = await s.refcountCache.get(offset, 'refblock_load');
    let used: number;
    try {
      // Entries one by one up to the last non-zero one (rounded up to 64), zeros after it.
      const last = lastNonZeroByte(entry.data);
      used = Math.min(s.refcountBlockEntries, Math.ceil(Math.ceil(((last + 1) * 8) / oldBits) / 64) * 64);
      for (let i = 0; i < used; i++) {
        const refcount = s.getRefcount(entry.data, i);
        if (newBits < 64 && refcount >= 2 ** newBits) {
          const at = (ri * s.refcountBlockEntries + i) * s.clusterSize;
          throw new BlockError('EINVAL', `Cannot decrease refcount entry width to ${newBits} bits: Cluster at offset 0x${at.toString(16)} has a refcount of ${refcount}`, { op: 'amend' });
        }
        if (block) set(block, n, refcount);
        n++;
        empty = empty && refcount === 0;
        if (n >= newSize) await complete();
      }
    } finally {
      s.refcountCache.put(entry);
    }
    await zeros(s.refcountBlockEntries - used);
  }
  if (n > 0) {
    // The last block, partly filled: the rest of it counts nothing.
    if (block) block.fill(0, (n * newBits) / 8);
    await finish(empty);
    t.index++;
  }
  status((index + 1) * s.refcountTable.length, total * s.refcountTable.length);
}

export async function qcow2ChangeRefcountOrder(s: BDRVQcow2State, newOrder: number, status: WalkStatus): Promise<void> {
  const cs = s.clusterSize;
  const t: NewTable = { entries: [], index: 0 };
  let tableOffset = 0;
  let allocatedTableEntries = 0;
  let walk = 0;
  let allocated: boolean;
  let switched = false;
  try {
    // Allocate blocks for the non-empty ranges (and a table for them) until nothing new is needed.
    do {
      allocated = false;
      const total = Math.max(walk + 2, 3);
      await walkOverReftable(s, t, newOrder, null, async (empty) => {
        if (empty) return;
        if (t.index >= t.entries.length) {
          const size = Math.ceil((t.index + 1) / (cs / 8)) * (cs / 8);
          if (size > QCOW_MAX_REFTABLE_SIZE / 8) {
            throw new BlockError('ENOTSUP', 'This operation would make the refcount table grow beyond the maximum size supported by QEMU, aborting', { op: 'amend' });
          }
          while (t.entries.length < size) t.entries.push(0n);
        }
        if (t.entries[t.index] === 0n) {
          t.entries[t.index] = BigInt(await qcow2AllocClusters(s, cs));
          allocated = true;
        }
      }, 0, status, walk++, total);
      t.index = 0;
      if (allocated) {
        if (tableOffset !== 0) await qcow2FreeClusters(s, tableOffset, allocatedTableEntries * 8, 'never');
        tableOffset = await qcow2AllocClusters(s, t.entries.length * 8);
        allocatedTableEntries = t.entries.length;
      }
    } while (allocated);

    // Write the new blocks where the table says (none past the last it names).
    const file = qcow2File(s);
    const block = new Uint8Array(cs);
    let lastNamed = t.entries.length;
    while (lastNamed > 0 && t.entries[lastNamed - 1] === 0n) lastNamed--;
    await walkOverReftable(s, t, newOrder, block, async () => {
      const at = t.index < t.entries.length ? Number(t.entries[t.index]) : 0;
      if (at === 0) return;
      qcow2PreWriteOverlapCheck(s, 0, at, cs);
      await file.pwrite(at, block.slice());
    }, lastNamed, status, walk, walk + 1);

    const table = new Uint8Array(t.entries.length * 8);
    const v = new DataView(table.buffer);
    t.entries.forEach((e, i) => v.setBigUint64(i * 8, e));
    qcow2PreWriteOverlapCheck(s, 0, tableOffset, table.length);
    await file.pwrite(tableOffset, table);
    // The new structures and every pending refcount are on disk before the header names them.
    await s.refcountCache.flush();

    const old = { order: s.refcountOrder, table: s.refcountTable, offset: s.refcountTableOffset, header: { ...s.header } };
    s.refcountOrder = newOrder;
    s.header.refcountOrder = newOrder;
    s.refcountTable = BigUint64Array.from(t.entries);
    s.refcountTableOffset = tableOffset;
    try {
      await s.updateHeader();
    } catch (e) {
      s.refcountOrder = old.order;
      s.header = old.header;
      s.refcountTable = old.table;
      s.refcountTableOffset = old.offset;
      throw new BlockError(e instanceof BlockError ? e.code : 'EIO', `Failed to update the qcow2 header: ${e instanceof Error ? e.message : String(e)}`, { op: 'amend' });
    }
    switched = true;
    s.refcountBlockEntries = refcountBlockEntries(s.clusterBits, newOrder);
    s.refcountMax = refcountMax(newOrder);
    s.getRefcount = refcountGetter(newOrder);
    s.setRefcount = refcountSetter(newOrder);
    // The cached blocks are the old width: they go, and the old structures are freed as leaks would be.
    s.refcountCache.clear();
    for (const e of old.table) {
      const offset = Number(e & REFT_OFFSET_MASK);
      if (offset !== 0) await qcow2FreeClusters(s, offset, cs, 'other');
    }
    await qcow2FreeClusters(s, old.offset, old.table.length * 8, 'other');
  } finally {
    if (!switched) {
      // Undo the allocations: the new blocks and table were never named by the header.
      for (const e of t.entries) if (e !== 0n) await qcow2FreeClusters(s, Number(e), cs, 'other');
      if (tableOffset !== 0) await qcow2FreeClusters(s, tableOffset, allocatedTableEntries * 8, 'other');
    }
  }
}
