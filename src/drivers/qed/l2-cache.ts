/**
 * Bounded, reference-counted LRU cache of L2 tables (QEMU's qed-l2-cache.c).
 *
 * A table in use by a request (ref > 0) is never evicted: the request may be about to update
 * it, and a second copy read from disk would miss that update. Only unreferenced tables are
 * evicted, oldest first, so memory stays at `capacity` tables plus those in flight.
 */
import type { CoalescedRun } from '../../block/coroutine.js';
import { QED_L2_CACHE_SIZE } from './header.js';
import { QEDTable } from './table.js';

export interface CachedL2Table {
  /** File offset of the table. */
  offset: number;
  table: QEDTable;
  /** Requests holding this table. */
  ref: number;
  /**
   * Entry updates of this table going to disk (qedWriteL2Entries): one sector write in
   * flight, updates made meanwhile gathered into the next one. Made on the first update.
   */
  writer: CoalescedRun<L2Range> | null;
}

/** L2 entries [start, end) to write. */
export interface L2Range {
  start: number;
  end: number;
}

export class L2Cache {
  /** Committed tables in LRU order: the first is the least recently used. */
  private readonly entries = new Map<number, CachedL2Table>();
  /** The most recently used table (the last of `entries`): a hit on it moves nothing. */
  private mru: CachedL2Table | null = null;
  /** Reads in progress, so concurrent misses share one read. */
  readonly loading = new Map<number, Promise<CachedL2Table>>();

  constructor(
    readonly nelems: number,
    readonly capacity = QED_L2_CACHE_SIZE,
    /** Trace hook (QEMU's trace_qed_*_l2_cache_entry points). */
    private readonly trace?: (name: string, args: Record<string, unknown>) => void,
  ) {}

  get size(): number {
    return this.entries.size;
  }

  /** A fresh, uncommitted table held by the caller (ref 1). */
  alloc(offset: number): CachedL2Table {
    const entry: CachedL2Table = { offset, table: new QEDTable(this.nelems), ref: 1, writer: null };
    this.trace?.('qedAllocL2CacheEntry', { l2Cache: this, entry });
    return entry;
  }

  /** Look a table up and take a reference; marks it most recently used. */
  find(offset: number): CachedL2Table | undefined {
    const entry = this.lookup(offset);
    if (!entry) return undefined;
    entry.ref++;
    this.trace?.('qedFindL2CacheEntry', { l2Cache: this, entry, offset, ref: entry.ref });
    return entry;
  }

  /**
   * Look a table up, marked most recently used, without a reference: for lookups that end
   * before anything else runs (the read hook), which nothing can evict meanwhile.
   */
  lookup(offset: number): CachedL2Table | undefined {
    const entry = this.entries.get(offset);
    if (entry !== undefined && entry !== this.mru) {
      this.entries.delete(offset);
      this.entries.set(offset, entry);
      this.mru = entry;
    }
    return entry;
  }

  /** Drop a reference (null is fine). */
  unref(entry: CachedL2Table | null): void {
    if (!entry) return;
    if (entry.ref > 0) entry.ref--;
    this.trace?.('qedUnrefL2CacheEntry', { entry, ref: entry.ref });
    this.evict();
  }

  /**
   * Insert a table read from disk or newly written (replacing any entry at that offset). A
   * reference the caller holds stays held.
   */
  commit(entry: CachedL2Table): void {
    // Re-inserting moves the offset to the most-recently-used end.
    this.entries.delete(entry.offset);
    this.entries.set(entry.offset, entry);
    this.mru = entry;
    this.evict();
  }

  /** Forget a table (after a failed write that never linked it). */
  remove(offset: number): void {
    if (this.mru?.offset === offset) this.mru = null;
    this.entries.delete(offset);
  }

  /** Drop everything (invalidate_cache, close). */
  clear(): void {
    this.mru = null;
    this.entries.clear();
  }

  has(offset: number): boolean {
    return this.entries.has(offset);
  }

  private evict(): void {
    if (this.entries.size <= this.capacity) return;
    for (const [offset, entry] of this.entries) {
      if (this.entries.size <= this.capacity) break;
      if (entry.ref === 0) {
        this.entries.delete(offset);
        if (entry === this.mru) this.mru = null;
      }
    }
  }
}
