/**
 * Refcounts read now from cached refcount blocks (qcow2_get_refcount without a wait: where
 * this answers null, the caller reads with qcow2GetRefcount), for walks that ask once per
 * cluster (check's comparison and COPIED pass, the metadata preallocation probe): tens of
 * thousands of clusters, most in the block asked before. The reader keeps that block at hand,
 * so a cluster costs no reftable lookup (a BigInt each) and no cache lookup.
 *
 * What it keeps is only valid until the next wait: the cache may evict the block and a repair
 * may change the reftable meanwhile. Callers call forget() before every await.
 */
import { REFT_OFFSET_MASK } from './entries.js';
import type { BDRVQcow2State } from './state.js';

export class RefcountReader {
  /** The reftable index of `block`, or -1. */
  private index = -1;
  /** Its block, or null when the reftable has none there (every count 0). */
  private block: Uint8Array | null = null;

  constructor(private readonly s: BDRVQcow2State) {}

  /** The refcount of `cluster` from the cache; null when its block must be read (or is unaligned). */
  now(cluster: number): number | null {
    const s = this.s;
    const entries = s.refcountBlockEntries;
    const t = Math.floor(cluster / entries);
    if (t !== this.index && !this.take(t)) return null;
    return this.block === null ? 0 : s.getRefcount(this.block, cluster - t * entries);
  }

  /**
   * How many clusters from `first` have a nonzero refcount, up to `end` or the end of first's
   * refcount block, where counting stopped (`next`); null when that block must be read. One
   * call per block instead of one per cluster (the metadata preallocation probe counts every
   * cluster of the file).
   */
  countNonZero(first: number, end: number): { count: number; next: number } | null {
    const s = this.s;
    const entries = s.refcountBlockEntries;
    const t = Math.floor(first / entries);
    if (t !== this.index && !this.take(t)) return null;
    const next = Math.min(end, (t + 1) * entries);
    const block = this.block;
    let count = 0;
    if (block !== null) {
      const to = next - t * entries;
      if (s.refcountOrder === 4 && block.byteOffset % 2 === 0) {
        // 16-bit refcounts (the default) are zero or not in either byte order.
        const counts = new Uint16Array(block.buffer, block.byteOffset, entries);
        for (let i = first - t * entries; i < to; i++) if (counts[i] !== 0) count++;
      } else {
        for (let i = first - t * entries; i < to; i++) if (s.getRefcount(block, i) !== 0) count++;
      }
    }
    return { count, next };
  }

  /** Drop what is kept: call after any wait. */
  forget(): void {
    this.index = -1;
    this.block = null;
  }

  /** Keep reftable entry `t`'s block if it can be had now. */
  private take(t: number): boolean {
    const s = this.s;
    this.forget();
    let block: Uint8Array | null = null;
    if (t < s.refcountTable.length) {
      const off = Number(s.refcountTable[t] & REFT_OFFSET_MASK);
      if (off !== 0) {
        if (off % s.clusterSize !== 0) return false;
        const data = s.refcountCache.lookup(off);
        if (data === undefined) return false;
        block = data;
      }
    }
    this.index = t;
    this.block = block;
    return true;
  }
}
