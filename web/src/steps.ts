// Step mode: the ordered steps of one allocating QED write, as the driver announces them on its
// file child (blkdebug events: write_aio, l2_update, l1_update, then the pwritev of each) and as
// the disk sees them (the powerloss store counts its flushes). Each step carries the reason for
// its place in the order, in the words of the driver's own comments (src/drivers/qed/io.ts,
// table.ts; docs/qed.md §4), written here once.
import type { BlkDebugEvent, BlockDriverState, PowerLossStore } from '../../src/browser.js';

export type StepKind = 'dirty' | 'data' | 'l2' | 'l2-new' | 'l1' | 'flush';

export interface Step {
  kind: StepKind;
  title: string;
  why: string;
  /** The store's request count when the step was issued: pulling the plug here = failAfter. */
  op: number;
  /** The file's bytes right after the step (what a reader of the disk would see). */
  after: Uint8Array;
  /** Host clusters the step wrote. */
  clusters: number[];
}

const TEXT: Record<Exclude<StepKind, 'flush'>, [string, string]> = {
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
};

const WRITETHROUGH = 'Not the driver: the image is open with cache=writethrough (blk-io\'s default), so a write completes only once it is durable.';

/** Why a flush sits after the step before it. */
const FLUSH_WHY: Partial<Record<StepKind, string>> = {
  dirty: 'The dirty bit must be durable before any metadata it protects is written, or a crash could leave tables pointing past EOF in an image marked clean.',
  data: 'With a backing file the untouched parts of the clusters hold backing data: it must be durable before the L2 table points here, or a crash would expose zeros in its place.',
  'l2-new': 'The new table must be durable before L1 points to it: a crash in between would otherwise leave L1 pointing at garbage.',
};

export function stepTitle(s: Step): string {
  return s.kind === 'flush' ? 'Flush' : TEXT[s.kind][0];
}

/**
 * Record the steps of the writes issued until `stop()` on `bs` (a QED node over a powerloss
 * file). `snapshot()` returns the file's current bytes.
 */
export function recordSteps(bs: BlockDriverState, store: PowerLossStore, clusterSize: number): { steps: Step[]; stop: () => void } {
  const file = bs.file!;
  const steps: Step[] = [];
  let pending: StepKind | null = null;
  let flushes = store.flushCount;
  let issued: { kind: StepKind; op: number } | null = null;
  const noteFlushes = (): void => {
    while (store.flushCount > flushes) {
      flushes++;
      const prev = steps.at(-1)?.kind ?? 'data';
      const why = FLUSH_WHY[prev] ?? WRITETHROUGH;
      steps.push({ kind: 'flush', title: 'Flush', why, op: store.opCount - 1, after: store.toBytes(), clusters: [] });
    }
  };
  const onDebug = (ev: BlkDebugEvent): void => {
    noteFlushes();
    if (ev === 'write_aio') pending = 'data';
    else if (ev === 'l2_update') pending = 'l2';
    else if (ev === 'l1_update') pending = 'l1';
    else if (ev === 'pwritev') {
      // A write with no event of its own before it is the header (qedWriteHeader).
      issued = { kind: pending ?? 'dirty', op: store.opCount };
      pending = null;
    } else if (ev === 'pwritev_done' && issued !== null) {
      const op = store.pendingOps.at(-1);
      const first = op?.kind === 'write' ? Math.floor(op.offset / clusterSize) : 0;
      const last = op?.kind === 'write' ? Math.floor((op.offset + op.data.length - 1) / clusterSize) : 0;
      let kind = issued.kind;
      // A whole-table write right after the data is a new table.
      if (kind === 'l2' && op?.kind === 'write' && op.data.length % clusterSize === 0) kind = 'l2-new';
      const [title, why] = kind === 'flush' ? ['Flush', ''] : TEXT[kind];
      const clusters: number[] = [];
      for (let c = first; c <= last; c++) clusters.push(c);
      steps.push({ kind, title, why, op: issued.op, after: store.toBytes(), clusters });
      issued = null;
    }
  };
  file.events.on('debug', onDebug);
  return {
    steps,
    stop: () => {
      noteFlushes();
      file.events.off('debug', onDebug);
    },
  };
}
