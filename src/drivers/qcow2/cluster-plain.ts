/**
 * The lookup plan for the common runs of standard L2 entries without a BigInt per entry:
 * plain data clusters contiguous on the host, or unallocated entries (all zeros). Map and
 * convert plan a run per extent, and a fragmented image has tens of thousands of extents.
 *
 * It answers only where the full plan (planInTable) would give the same run with nothing to
 * report: the run's first entry and the one that ends it must be plain data or all zeros, the
 * data aligned. Anything else (zero flags, compressed or reserved bits, extended entries, an
 * external data file) answers null, and the full plan decides.
 */
import type { Qcow2Run } from './cluster.js';
import { l2EntryEmpty, plainDataOffset } from './entries.js';
import { type BDRVQcow2State, offsetIntoCluster, offsetToL2Index } from './state.js';

/** The run at guest `offset` (at most `maxBytes`, inside the table `view`), or null. */
export function planPlainRun(s: BDRVQcow2State, offset: number, maxBytes: number, view: DataView): Qcow2Run | null {
  const cs = s.clusterSize;
  const first = offsetToL2Index(s, offset);
  const host = plainDataOffset(view, first * 8);
  const unallocated = host === 0;
  if (unallocated ? !l2EntryEmpty(view, first * 8) : host % cs !== 0) return null;
  const inCluster = offsetIntoCluster(s, offset);
  const end = first + Math.ceil((inCluster + maxBytes) / cs);
  let i = first + 1;
  if (unallocated) {
    while (i < end && l2EntryEmpty(view, i * 8)) i++;
    // Ended by data: another kind. Anything else is the full plan's to judge.
    if (i < end && plainDataOffset(view, i * 8) === 0) return null;
  } else {
    // Data continues while the host offsets do, whatever COPIED says.
    while (i < end && plainDataOffset(view, i * 8) === host + (i - first) * cs) i++;
    // Ended by an unallocated entry or by data elsewhere on the host.
    if (i < end && !l2EntryEmpty(view, i * 8) && plainDataOffset(view, i * 8) === 0) return null;
  }
  const bytes = Math.min((i - first) * cs, inCluster + maxBytes) - inCluster;
  return unallocated
    ? { kind: 'unallocated', type: 'unallocated-plain', bytes, hostOffset: 0, allocated: false, l2Entry: 0n }
    : { kind: 'normal', type: 'normal', bytes, hostOffset: host + inCluster, allocated: true, l2Entry: 0n };
}
