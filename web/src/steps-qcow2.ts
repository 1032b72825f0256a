// qcow2's allocating write as steps: cluster allocation in the refcount cache, the refcount block
// write, the new L2 table and the L1 entry (when the range has no table yet), the data, the L2
// entry; with the reasons of the driver's ordering rules (src/drivers/qcow2/cluster.ts, alloc.ts,
// refcount.ts; docs/qcow2.md §3-4).
import type { StepBook } from './steps.js';

export const QCOW2_STEPS: StepBook = {
  io: {
    write_aio: 'data',
    cow_write: 'data',
    cluster_alloc_space: 'data',
    refblock_update_part: 'refblock',
    refblock_alloc_hookup: 'reftable',
    l2_update: 'l2',
    l1_update: 'l1',
  },
  marks: { cluster_alloc: 'alloc', refblock_alloc: 'refblock-find', refblock_alloc_write: 'refblock-fill', l2_alloc_write: 'l2-fill' },
  // l2_allocate announces itself with a trace point before allocating the table's cluster.
  traces: { qcow2L2Allocate: { mark: 'alloc', kind: 'alloc-l2' } },
  // With lazy_refcounts the only write without an event is the header's dirty bit.
  unannounced: 'dirty',
  // The L2 table written right after it was filled in memory is the new table, whole.
  refine: (kind, _op, since) => (kind === 'l2' && since.some((s) => s.kind === 'l2-fill') ? 'l2-new' : kind),
  text: {
    'alloc-l2': [
      'cluster_alloc: a cluster for a new L2 table (refcount +1, in the cache)',
      'No L2 table maps this range yet. The first free cluster is taken and counted in the refcount block cache; nothing is on disk yet.',
    ],
    alloc: [
      'cluster_alloc: clusters for the data (refcount +1, in the cache)',
      'First fit from the allocation cursor. The refcount goes up in memory now; the L2 entry that will point at the cluster may reach the disk only after the count does.',
    ],
    'refblock-find': [
      'refblock_alloc: find the refcount block that counts them',
      'The reftable entry for these clusters already points at a block, so it is loaded (or found in the cache). Had it been empty, a new block would be written and hooked into the reftable before anything counted in it.',
    ],
    'refblock-fill': [
      'refblock_alloc_write: fill a new refcount block',
      'The new block counts itself when it lies in its own range; it is written before the reftable points at it.',
    ],
    reftable: [
      'refblock_alloc_hookup: point the reftable entry at the new block',
      'Eight bytes, written only once the block they point at is on disk.',
    ],
    refblock: [
      'Write the refcount block (refblock_update_part)',
      'Refcounts before references: the cluster is counted on disk before any table points at it. Lost after this, the cluster is only a leak (counted, unused), which a check repairs.',
    ],
    'l2-fill': [
      'l2_alloc_write: fill the new L2 table in the cache',
      'The table starts zeroed (or as a copy of a shared one). Its refcount is already durable.',
    ],
    'l2-new': [
      'l2_update: write the new L2 table, whole',
      'The table goes to disk before L1 points at it, so L1 never points at garbage.',
    ],
    l1: [
      'l1_update: point the L1 entry at the new table',
      'Eight bytes, written synchronously, only after the table and its refcount are durable.',
    ],
    data: [
      'write_aio: write the guest data into the new cluster',
      'On disk nothing counts or references the cluster yet: lost now, it is free space again, never garbage a reader could see.',
    ],
    dirty: [
      'Set the dirty bit in the header (lazy_refcounts)',
      'With lazy_refcounts the refcount blocks may lag behind on disk from now on; the bit tells the next read-write open to recount every reference first.',
    ],
    l2: [
      'l2_update: write the L2 table with the new entry',
      'The entry points at the data with COPIED set (refcount exactly 1). The L2 cache was made to depend on the refcount cache and on a flush of the data: both are durable before this write.',
    ],
  },
  flushWhy: {
    refblock:
      'Refcounts before references: no L2 or L1 entry may reach the disk pointing at a cluster whose refcount there is still 0 (it would be handed out twice). The data written before is made durable by the same flush, before the L2 entry that points at it.',
    'l2-new': 'New L2 table before the L1 entry: a crash between them must not leave L1 pointing at an unwritten table.',
    l1: 'qcow2 writes an L1 entry synchronously: the write and its flush, before the guest write goes on.',
    dirty: 'The dirty bit is durable before the L2 entry whose refcount it may leave stale: a crash after this makes the next open recount.',
    reftable: 'The reftable entry is durable before allocations counted in the new block go on.',
    data: 'Data before the L2 entry: an entry must not point at a cluster whose contents never reached the disk.',
  },
};
