// Step mode: the ordered steps of one allocating write, as the driver announces them on its file
// child (blkdebug events: an event before each metadata or data write, some events for work done
// only in memory, then the pwritev of each write) and as the disk sees them (the powerloss store
// counts its flushes). Which event is which step, and the reason for each step's place in the
// order, come from the format's step book (steps-qed.ts, steps-qcow2.ts).
import type { BlkDebugEvent, BlockDriverState, PowerLossStore, TraceEvent, VolatileOp } from '../../src/browser.js';

export interface Step {
  kind: string;
  title: string;
  why: string;
  /** The store's request count when the step was issued: pulling the plug here = failAfter. */
  op: number;
  /** The file's bytes right after the step (what a reader of the disk would see). */
  after: Uint8Array;
  /** Host clusters the step wrote. */
  clusters: number[];
}

/** How one format's allocating write reads as steps. */
export interface StepBook {
  /** Events announcing the write that follows them. */
  io: Partial<Record<BlkDebugEvent, string>>;
  /** Events that are steps by themselves: work in memory, no request. */
  marks: Partial<Record<BlkDebugEvent, string>>;
  /** Trace points that rename the next mark (`qcow2L2Allocate`: the next allocation is a table). */
  traces?: Record<string, { mark: string; kind: string }>;
  /** The kind of a write no event announced. */
  unannounced: string;
  /** Refine a write's kind by what it wrote and the steps since the previous write. */
  refine?: (kind: string, op: VolatileOp | undefined, since: readonly Step[], clusterSize: number) => string;
  /** Title and reason of every kind but `flush`. */
  text: Record<string, [string, string]>;
  /** Why a flush sits after a step of this kind. */
  flushWhy: Record<string, string>;
}

export const WRITETHROUGH =
  "Not the driver: the image is open with cache=writethrough (blk-io's default), so a write completes only once it is durable.";

/**
 * Record the steps of the writes issued until `stop()` on `bs` (a format node over a powerloss
 * file), named by `book`.
 */
export function recordSteps(
  bs: BlockDriverState,
  store: PowerLossStore,
  clusterSize: number,
  book: StepBook,
): { steps: Step[]; stop: () => void } {
  const file = bs.file!;
  const steps: Step[] = [];
  let pending: string | null = null;
  let flushes = store.flushCount;
  let issued: { kind: string; op: number } | null = null;
  let renamed: { mark: string; kind: string } | null = null;
  const text = (kind: string): [string, string] => book.text[kind] ?? [kind, ''];
  const noteFlushes = (): void => {
    while (store.flushCount > flushes) {
      flushes++;
      const why = book.flushWhy[steps.at(-1)?.kind ?? ''] ?? WRITETHROUGH;
      steps.push({ kind: 'flush', title: 'Flush', why, op: store.opCount - 1, after: store.toBytes(), clusters: [] });
    }
  };
  const onTrace = (ev: TraceEvent): void => {
    renamed = book.traces?.[ev.name] ?? renamed;
  };
  const onDebug = (ev: BlkDebugEvent): void => {
    noteFlushes();
    let mark = book.marks[ev];
    if (mark !== undefined) {
      if (renamed?.mark === mark) {
        mark = renamed.kind;
        renamed = null;
      }
      const [title, why] = text(mark);
      steps.push({ kind: mark, title, why, op: store.opCount, after: store.toBytes(), clusters: [] });
      return;
    }
    const io = book.io[ev];
    if (io !== undefined) pending = io;
    else if (ev === 'pwritev') {
      issued = { kind: pending ?? book.unannounced, op: store.opCount };
      pending = null;
    } else if (ev === 'pwritev_done' && issued !== null) {
      const op = store.pendingOps.at(-1);
      const w = op?.kind === 'write' ? op : null;
      const first = w ? Math.floor(w.offset / clusterSize) : 0;
      const last = w ? Math.floor((w.offset + w.data.length - 1) / clusterSize) : 0;
      const lastWrite = steps.findLastIndex((s) => s.clusters.length > 0);
      const kind = book.refine?.(issued.kind, op, steps.slice(lastWrite + 1), clusterSize) ?? issued.kind;
      const [title, why] = text(kind);
      const clusters: number[] = [];
      for (let c = first; c <= last; c++) clusters.push(c);
      steps.push({ kind, title, why, op: issued.op, after: store.toBytes(), clusters });
      issued = null;
    }
  };
  file.events.on('debug', onDebug);
  bs.events.on('trace', onTrace);
  return {
    steps,
    stop: () => {
      noteFlushes();
      file.events.off('debug', onDebug);
      bs.events.off('trace', onTrace);
    },
  };
}
