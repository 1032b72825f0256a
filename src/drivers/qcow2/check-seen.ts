/**
 * What a check's counting pass saw in the active L2 tables, for the COPIED pass after it: per
 * active L1 entry whose table held plain data entries only (the common case), each entry's
 * data cluster and COPIED bit. The COPIED pass then decides such a table from this list,
 * without reading the table again and scanning its mostly empty slots (QEMU reads every table
 * twice; so do we for any table not kept here, and for one whose list does not check out).
 *
 * A list stays true while nothing rewrites an L2 entry: the check's own repairs are the only
 * writers under s.lock, and any of them drops every list (a table may be reached from more
 * than one L1 entry, or from a snapshot's L1 table).
 */

/** A table's list: where it lies in `CheckSeen.list`. */
interface SeenTable {
  l2Offset: number;
  start: number;
  end: number;
}

export class CheckSeen {
  /** cluster * 2 + COPIED bit of every kept entry, table after table. */
  list = new Int32Array(1024);
  length = 0;
  private tables = new Map<number, SeenTable>();

  /** Append one entry; false when the cluster is too far out to be kept (keep nothing then). */
  push(cluster: number, copied: boolean): boolean {
    if (cluster >= 2 ** 30) return false;
    if (this.length === this.list.length) {
      const bigger = new Int32Array(this.list.length * 2);
      bigger.set(this.list);
      this.list = bigger;
    }
    this.list[this.length++] = cluster * 2 + (copied ? 1 : 0);
    return true;
  }

  /** Keep entries [start, length) as L1 entry `l1Index`'s table at `l2Offset`. */
  keep(l1Index: number, l2Offset: number, start: number): void {
    this.tables.set(l1Index, { l2Offset, start, end: this.length });
  }

  /** Give back entries from `start` on (a table that is not kept). */
  drop(start: number): void {
    this.length = Math.min(this.length, start);
  }

  /** The kept list of L1 entry `l1Index` if it still points at `l2Offset`. */
  table(l1Index: number, l2Offset: number): SeenTable | undefined {
    const t = this.tables.get(l1Index);
    return t?.l2Offset === l2Offset ? t : undefined;
  }

  /**
   * Whether every kept entry of `t` has COPIED exactly where its refcount (`refcount`; null
   * when not at hand now) is 1 and did not overflow: the COPIED pass's test of a plain data
   * entry. False sends the table through the full pass, which reports.
   */
  copiedRight(t: SeenTable, refcount: (cluster: number) => number | null, overflowed: ReadonlySet<number>): boolean {
    const list = this.list;
    for (let k = t.start; k < t.end; k++) {
      const cluster = list[k] >> 1;
      const r = refcount(cluster);
      if (r === null || (list[k] & 1) !== (r === 1 && !overflowed.has(cluster) ? 1 : 0)) return false;
    }
    return true;
  }

  /** An L2 entry was rewritten: no list holds any more. */
  forgetAll(): void {
    this.tables.clear();
    this.length = 0;
  }
}
