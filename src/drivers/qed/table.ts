/**
 * L1/L2 tables: the in-memory form (raw little-endian bytes, so entries we never touch are
 * written back bit for bit) and the table I/O of QEMU's qed-table.c.
 */
import { CoalescedRun } from '../../block/coroutine.js';
import { BDRV_SECTOR_SIZE } from '../../block/driver.js';
import { IOVector } from '../../block/iovec.js';
import type { BDRVQEDState, QEDRequest } from './state.js';
import { qedTrace, qedTracing, qedFile } from './state.js';
import type { CachedL2Table, L2Range } from './l2-cache.js';

/** Table entry meaning "not allocated": reads fall through to the backing file. */
export const QED_UNALLOC_CLUSTER = 0;
/** L2 entry meaning "zero cluster": reads as zeros, never falls through. */
export const QED_ZERO_CLUSTER = 1;

const TWO_32 = 0x1_0000_0000;

/** A table of `nelems` u64 LE entries, kept as the bytes found on disk. */
export class QEDTable {
  readonly bytes: Uint8Array;
  private readonly view: DataView;
  /** The same bytes as 32-bit words (an entry is 0 when both of its words are). */
  private readonly words: Uint32Array;

  constructor(readonly nelems: number) {
    this.bytes = new Uint8Array(nelems * 8);
    this.view = new DataView(this.bytes.buffer);
    this.words = new Uint32Array(this.bytes.buffer);
  }

  /**
   * The first entry from `i` on that is not 0 (unallocated), or nelems. A check walks tables
   * of up to 2^17 entries, most of them 0: one small loop over words skips those, where a
   * get() per entry kept the walk's own large loop hot enough for V8 to optimise it.
   */
  nextNonZero(i: number): number {
    // nelems read before the loop: read only after it, its load had no type feedback when V8
    // optimised the first long scan, and the first scan to reach the end threw that code away.
    const { words, nelems } = this;
    for (let k = i * 2, end = nelems * 2; k < end; k++) if (words[k] !== 0) return k >> 1;
    return nelems;
  }

  /**
   * Entry `i` as a number. Values past 2^53 cannot be offsets of a file we can hold; they come
   * back rounded (still far beyond EOF, so every validity rule rejects them).
   */
  get(i: number): number {
    return this.view.getUint32(i * 8, true) + this.view.getUint32(i * 8 + 4, true) * TWO_32;
  }

  /** Set entry `i` to a safe, non-negative integer. */
  set(i: number, value: number): void {
    this.view.setUint32(i * 8, value % TWO_32, true);
    this.view.setUint32(i * 8 + 4, Math.floor(value / TWO_32), true);
  }

  fill(value: number): void {
    if (value === 0) this.bytes.fill(0);
    else for (let i = 0; i < this.nelems; i++) this.set(i, value);
  }
}

/** Entries per 512-byte sector. */
const SECTOR_ENTRIES = BDRV_SECTOR_SIZE / 8;

/** Read a whole table (table_size clusters) at `offset`. */
export async function qedReadTable(s: BDRVQEDState, offset: number, table: QEDTable): Promise<void> {
  await qedFile(s).preadv(offset, IOVector.from(table.bytes));
  qedTrace(s, 'qedReadTable', { offset, table });
}

/**
 * Write entries [index, index+n) of `table`, widened to whole 512-byte sectors: only the
 * sectors holding changed entries are touched (QEMU's qed_write_table). `flush` makes the
 * write durable before returning, for callers that are about to link to this table.
 */
export async function qedWriteTable(
  s: BDRVQEDState,
  offset: number,
  table: QEDTable,
  index: number,
  n: number,
  flush: boolean,
): Promise<void> {
  if (qedTracing(s)) qedTrace(s, 'qedWriteTable', { offset, table, index, n });
  const start = index - (index % SECTOR_ENTRIES);
  const end = Math.min(table.nelems, Math.ceil((index + n) / SECTOR_ENTRIES) * SECTOR_ENTRIES);
  // A private copy: the in-memory table may change again while the write is in flight.
  const bytes = table.bytes.slice(start * 8, end * 8);
  const file = qedFile(s);
  try {
    await file.pwritev(offset + start * 8, IOVector.from(bytes));
    // Flushed through the QED node itself, as QEMU does (bdrv_co_flush(s->bs)): the generic
    // flush announces flush_to_os/flush_to_disk on our file child and then flushes it, so
    // blkdebug rules on those events fire here as they do in QEMU.
    if (flush) await s.bs.flush();
    if (qedTracing(s)) qedTrace(s, 'qedWriteTableCb', { table, flush, ret: 0 });
  } catch (e) {
    qedTrace(s, 'qedWriteTableCb', { table, flush, ret: e });
    throw e;
  }
}

export async function qedReadL1Table(s: BDRVQEDState): Promise<void> {
  await qedReadTable(s, s.header.l1TableOffset, s.l1Table);
}

/** Write L1 entries [index, index+n) (only their sectors). */
export async function qedWriteL1Table(s: BDRVQEDState, index: number, n: number): Promise<void> {
  await qedFile(s).debugEvent('l1_update');
  await qedWriteTable(s, s.header.l1TableOffset, s.l1Table, index, n, false);
}

/** Write entries of the request's L2 table. */
export async function qedWriteL2Table(
  s: BDRVQEDState,
  request: QEDRequest,
  index: number,
  n: number,
  flush: boolean,
): Promise<void> {
  const l2 = request.l2Table!;
  await qedFile(s).debugEvent('l2_update');
  await qedWriteTable(s, l2.offset, l2.table, index, n, flush);
}

/**
 * Write L2 entries [index, index+n) of a table that is already linked from L1, coalescing
 * with other requests' updates of the same table: one table write is in flight per table at
 * a time; updates made meanwhile are gathered (their sector range widened to cover them all)
 * and go out as one write when it settles. The promise settles once a write issued after the
 * caller's entries were set in memory has settled, so a request still completes only after its
 * own entries are on disk (flushed or not, exactly as one write per request would be).
 *
 * Ordering: callers set their entries only after their data is written (and flushed, with a
 * backing file), and a write copies the table's sectors when it is issued, so no write ever
 * carries an entry whose data was not yet written. Only sectors of this table are touched,
 * and no flush is needed between them: tables already linked need none (qed-format.md §13).
 */
export function qedWriteL2Entries(s: BDRVQEDState, l2: CachedL2Table, index: number, n: number): Promise<void> {
  l2.writer ??= new CoalescedRun<L2Range>(
    (r) => qedWriteL2Sectors(s, l2, r.start, r.end - r.start),
    (into, add) => {
      into.start = Math.min(into.start, add.start);
      into.end = Math.max(into.end, add.end);
      return into;
    },
  );
  return l2.writer.run({ start: index, end: index + n });
}

async function qedWriteL2Sectors(s: BDRVQEDState, l2: CachedL2Table, index: number, n: number): Promise<void> {
  await qedFile(s).debugEvent('l2_update');
  await qedWriteTable(s, l2.offset, l2.table, index, n, false);
}

/**
 * Make `request.l2Table` the L2 table at `offset` if the cache holds it; false on a miss.
 * Synchronous on purpose: a hit must not yield (see qedFindCluster).
 */
export function qedTakeCachedL2Table(s: BDRVQEDState, request: QEDRequest, offset: number): boolean {
  const hit = s.l2Cache.find(offset);
  if (!hit) return false;
  s.l2Cache.unref(request.l2Table);
  request.l2Table = hit;
  return true;
}

/**
 * Make `request.l2Table` the L2 table at `offset`, from the cache or from disk. Concurrent
 * misses on the same table share one read, so there is only ever one copy of a table in memory
 * (an allocating write updates the copy every reader sees).
 */
export async function qedReadL2Table(s: BDRVQEDState, request: QEDRequest, offset: number): Promise<void> {
  s.l2Cache.unref(request.l2Table);
  request.l2Table = null;
  for (;;) {
    const hit = s.l2Cache.find(offset);
    if (hit) {
      request.l2Table = hit;
      return;
    }
    let loading = s.l2Cache.loading.get(offset);
    if (!loading) {
      loading = loadL2Table(s, offset);
      s.l2Cache.loading.set(offset, loading);
    }
    // The loaded entry is committed unreferenced; loop to take a reference through find().
    await loading;
  }
}

async function loadL2Table(s: BDRVQEDState, offset: number): Promise<CachedL2Table> {
  try {
    const entry = s.l2Cache.alloc(offset);
    await qedFile(s).debugEvent('l2_load');
    await qedReadTable(s, offset, entry.table);
    entry.ref = 0;
    s.l2Cache.commit(entry);
    return entry;
  } finally {
    s.l2Cache.loading.delete(offset);
  }
}
