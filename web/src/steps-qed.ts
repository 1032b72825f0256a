// QED's allocating write as steps: dirty bit, data, L2 update (or a new L2 table), L1 update,
// with the reasons of the driver's own comments (src/drivers/qed/io.ts, table.ts; docs/qed.md).
import type { StepBook } from './steps.js';

export const QED_STEPS: StepBook = {
  io: { write_aio: 'data', l2_update: 'l2', l1_update: 'l1' },
  marks: {},
  // A write with no event of its own before it is the header (qedWriteHeader).
  unannounced: 'dirty',
  // A whole-table write is a new table.
  refine: (kind, op, _since, cs) => (kind === 'l2' && op?.kind === 'write' && op.data.length % cs === 0 ? 'l2-new' : kind),
  text: {
    dirty: [
      'Set the dirty bit (NEED_CHECK) in the header',
      'The L2 update that follows is not flushed: if it reached the disk while the data did not, the image would point at garbage or past EOF. The dirty bit makes the next read-write open run the check, which drops such entries.',
    ],
    data: [
      'Write the data to newly allocated clusters',
      'The new clusters sit at the end of the file and nothing points at them yet: lost now, they are only a leak. Head and tail of the clusters come from the backing file (copy-on-write), all in one write.',
    ],
    'l2-new': [
      'Write the new L2 table, whole',
      'The table is allocated after the data and points at it; L1 does not point at the table yet.',
    ],
    l2: [
      'Update the L2 entries (only their sectors)',
      'Our data is written (and flushed, with a backing file) before these entries were set, and the table is already linked from L1.',
    ],
    l1: [
      'Point the L1 entry at the new table',
      'Only the 512-byte L1 sector holding the entry is written, after the table it points at is durable.',
    ],
  },
  flushWhy: {
    dirty: 'The dirty bit must be durable before any metadata it protects is written, or a crash could leave tables pointing past EOF in an image marked clean.',
    data: 'With a backing file the untouched parts of the clusters hold backing data: it must be durable before the L2 table points here, or a crash would expose zeros in its place.',
    'l2-new': 'The new table must be durable before L1 points to it: a crash in between would otherwise leave L1 pointing at garbage.',
  },
};
