/**
 * Write-back metadata cache of cluster-sized tables (QEMU's qcow2-cache.c): one for L2
 * tables, one for refcount blocks.
 *
 * State: entries keyed by file offset, each with its bytes, a dirty flag and a reference
 * count (a table in use by the caller is never evicted). Capacity is bounded; the least
 * recently used unreferenced entry is written back (if dirty) and dropped when room is needed.
 *
 * Ordering: a cache may depend on another cache (`dependsOn`: that cache is flushed before any
 * entry of this one is written) or on a file flush (`dependsOnFlush`: data written before must
 * be durable first). That is how "refcounts before L2", "data before L2" and "L2 before the
 * refcount decrease" are kept without flushing on every update. Both are cleared once honoured.
 */
import { BlockError } from '../../block/errors.js';
import type { BlkDebugEvent } from '../../block/events.js';
import type { BlockDriverState } from '../../block/node.js';

export interface CacheEntry {
  offset: number;
  data: Uint8Array;
  dirty: boolean;
  ref: number;
}

export interface CacheHooks {
  file(): BlockDriverState;
  /**
   * Make guest data durable where it is not in file() (an external data file): a dependency
   * on a flush covers the data as well.
   */
  flushData?(): Promise<void>;
  /** Refuses a write that would overwrite other metadata (the overlap check). */
  checkWrite(offset: number, size: number): void;
}

export class Qcow2Cache {
  /** LRU order: the first entry is the least recently used. */
  private readonly entries = new Map<number, CacheEntry>();
  /** The most recently used entry (the last of `entries`): a use of it moves nothing. */
  private mru: CacheEntry | null = null;
  dependsOn: Qcow2Cache | null = null;
  dependsOnFlush = false;

  constructor(
    readonly name: 'l2' | 'refcount',
    readonly tableSize: number,
    readonly capacity: number,
    private readonly hooks: CacheHooks,
    /** Announced before each entry write (l2_update / refblock_update_part). */
    private readonly writeEvent: BlkDebugEvent,
  ) {}

  get size(): number {
    return this.entries.size;
  }

  /** The bytes of a cached table without taking a reference (synchronous lookups). */
  peek(offset: number): Uint8Array | undefined {
    return this.entries.get(offset)?.data;
  }

  /**
   * The bytes of a cached table, counted as a use (LRU) but without a reference: for
   * lookups that finish before anything else runs (the request fast paths).
   */
  lookup(offset: number): Uint8Array | undefined {
    return this.lookupEntry(offset)?.data;
  }

  /** The same, the entry itself (to mark it dirty within the same synchronous step). */
  lookupEntry(offset: number): CacheEntry | undefined {
    // The table of the last use again (a run of reads over one table): no map lookup, and
    // use() would move nothing.
    const last = this.mru;
    if (last !== null && last.offset === offset) return last;
    const e = this.entries.get(offset);
    if (e === undefined) return undefined;
    this.use(e);
    return e;
  }

  has(offset: number): boolean {
    return this.entries.has(offset);
  }

  /** Take a reference to the table at `offset`, reading it when not cached. */
  async get(offset: number, loadEvent: BlkDebugEvent): Promise<CacheEntry> {
    const hit = this.touch(offset);
    if (hit) return hit;
    await this.makeRoom();
    const again = this.touch(offset);
    if (again) return again;
    const file = this.hooks.file();
    await file.debugEvent(loadEvent);
    const data = new Uint8Array(this.tableSize);
    const len = await file.getLength();
    // A table past the end of the file reads as zeros, as QEMU's reads do.
    if (offset < len) await file.pread(offset, data.subarray(0, Math.min(this.tableSize, len - offset)));
    const raced = this.touch(offset);
    if (raced) return raced;
    const entry: CacheEntry = { offset, data, dirty: false, ref: 1 };
    this.entries.set(offset, entry);
    this.mru = entry;
    return entry;
  }

  /** A zeroed table for a newly allocated cluster (no read); the caller fills it. */
  async getEmpty(offset: number): Promise<CacheEntry> {
    const hit = this.touch(offset);
    if (hit) {
      hit.data.fill(0);
      return hit;
    }
    await this.makeRoom();
    const entry: CacheEntry = { offset, data: new Uint8Array(this.tableSize), dirty: false, ref: 1 };
    this.entries.set(offset, entry);
    this.mru = entry;
    return entry;
  }

  put(entry: CacheEntry): void {
    if (entry.ref > 0) entry.ref--;
  }

  markDirty(entry: CacheEntry): void {
    entry.dirty = true;
  }

  private touch(offset: number): CacheEntry | undefined {
    const e = this.entries.get(offset);
    if (!e) return undefined;
    this.use(e);
    e.ref++;
    return e;
  }

  /** Make `e` the most recently used (the last in LRU order). */
  private use(e: CacheEntry): void {
    if (e === this.mru) return;
    this.entries.delete(e.offset);
    this.entries.set(e.offset, e);
    this.mru = e;
  }

  private async makeRoom(): Promise<void> {
    while (this.entries.size >= this.capacity) {
      let victim: CacheEntry | null = null;
      for (const e of this.entries.values()) {
        if (e.ref === 0) {
          victim = e;
          break;
        }
      }
      if (!victim) return; // everything is in use: grow past the bound rather than deadlock
      await this.writeEntry(victim);
      if (victim.ref === 0 && !victim.dirty) this.remove(victim);
    }
  }

  /** Honour the dependencies, then write one entry if dirty (qcow2_cache_entry_flush). */
  private async writeEntry(e: CacheEntry): Promise<void> {
    if (!e.dirty) return;
    await this.honourDependencies();
    if (!e.dirty) return;
    this.hooks.checkWrite(e.offset, this.tableSize);
    const file = this.hooks.file();
    await file.debugEvent(this.writeEvent);
    const snapshot = e.data.slice();
    e.dirty = false;
    try {
      await file.pwrite(e.offset, snapshot);
    } catch (err) {
      e.dirty = true;
      throw err;
    }
  }

  /**
   * Data in an external data file is flushed there first: a flush of file() (this cache's or
   * its dependency's) does not reach it (QEMU flushes only bs->file here). Before anything
   * clears dependsOnFlush, or an entry pointing at that data could reach the disk before it.
   */
  private async flushExternalData(): Promise<void> {
    if (this.dependsOnFlush && this.hooks.flushData) await this.hooks.flushData();
  }

  private async honourDependencies(): Promise<void> {
    await this.flushExternalData();
    if (this.dependsOn) {
      const dep = this.dependsOn;
      // The dependency's flush includes a file flush: it also honours dependsOnFlush.
      await dep.flush();
      this.dependsOn = null;
      this.dependsOnFlush = false;
    } else if (this.dependsOnFlush) {
      await this.hooks.file().flush();
      this.dependsOnFlush = false;
    }
  }

  /** Write every dirty entry (qcow2_cache_write). */
  async write(): Promise<void> {
    let any = false;
    for (const e of this.entries.values()) if (e.dirty) any = true;
    if (!any) return;
    await this.honourDependencies();
    for (const e of [...this.entries.values()]) await this.writeEntry(e);
  }

  /** Write every dirty entry and flush the file (qcow2_cache_flush). */
  async flush(): Promise<void> {
    await this.write();
    await this.hooks.file().flush();
  }

  /** This cache's entries must not reach the disk before `dep`'s (qcow2_cache_set_dependency). */
  async setDependency(dep: Qcow2Cache): Promise<void> {
    if (dep.dependsOn) await dep.flushDependency();
    if (this.dependsOn && this.dependsOn !== dep) await this.flushDependency();
    this.dependsOn = dep;
  }

  /**
   * setDependency when it needs no flush (neither `dep` nor this cache depends on a third
   * cache): done, true; otherwise false and nothing changed.
   */
  setDependencyNow(dep: Qcow2Cache): boolean {
    if (dep.dependsOn !== null || (this.dependsOn !== null && this.dependsOn !== dep)) return false;
    this.dependsOn = dep;
    return true;
  }

  private async flushDependency(): Promise<void> {
    const dep = this.dependsOn;
    if (!dep) return;
    // dep.flush() ends in a flush of file() but not of an external data file; dependsOnFlush
    // is cleared below, so the data it waits for goes to the disk now (a dependency switch,
    // e.g. an amend freeing clusters, must not drop the L2 entries' "data first").
    await this.flushExternalData();
    await dep.flush();
    this.dependsOn = null;
    this.dependsOnFlush = false;
  }

  /** Entries must wait for a file flush of data written before (qcow2_cache_depends_on_flush). */
  dependOnFlush(): void {
    this.dependsOnFlush = true;
  }

  isDirty(): boolean {
    for (const e of this.entries.values()) if (e.dirty) return true;
    return false;
  }

  /** Forget an entry (the cluster was freed); its dirty bytes are dropped. */
  discard(offset: number): void {
    const e = this.entries.get(offset);
    if (e && e.ref === 0) this.remove(e);
    else if (e) e.dirty = false;
  }

  /** Drop everything (after close or on invalidate); dirty entries must have been written. */
  clear(): void {
    for (const e of this.entries.values()) {
      if (e.dirty) throw new BlockError('EIO', `qcow2 ${this.name} cache dropped with dirty entries`, { op: 'cache' });
    }
    this.entries.clear();
    this.mru = null;
  }

  /** Drop everything, dirty or not (a failed open). */
  reset(): void {
    this.entries.clear();
    this.mru = null;
  }

  private remove(e: CacheEntry): void {
    this.entries.delete(e.offset);
    if (e === this.mru) this.mru = null;
  }

  offsets(): number[] {
    return [...this.entries.keys()];
  }
}
