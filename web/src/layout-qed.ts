// The QED file as it is on disk: which host cluster is the header, the L1 table, an L2 table, a
// data cluster, or nothing anyone points at (a leak). Read from the image's bytes with the
// driver's own header codec; entries are checked as the driver checks them, and an entry it
// would refuse is drawn as such instead of followed.
import { QED_F_NEED_CHECK, QED_MAGIC, decodeHeader } from '../../src/drivers/qed/index.js';
import type { ClusterKind, LayoutBase } from './layout.js';

export interface QedLayout extends LayoutBase {
  format: 'qed';
  tableSize: number;
}

function u64(b: Uint8Array, off: number): number {
  return Number(new DataView(b.buffer, b.byteOffset, b.byteLength).getBigUint64(off, true));
}

/** Null when the bytes are no QED image (then there is nothing to draw). */
export function qedLayout(file: Uint8Array): QedLayout | null {
  if (file.length < 64) return null;
  const h = decodeHeader(file);
  if (h.magic !== QED_MAGIC) return null;
  const cs = h.clusterSize;
  const ts = h.tableSize;
  // A header the driver would refuse: nothing sensible to draw.
  if (cs < 4096 || (cs & (cs - 1)) !== 0 || ts < 1 || ts > 16 || h.headerSize < 1) return null;
  const nclusters = Math.ceil(file.length / cs);
  const clusters: ClusterKind[] = new Array<ClusterKind>(nclusters).fill('leak');
  const guestOf = new Map<number, number>();
  for (let i = 0; i < h.headerSize && i < nclusters; i++) clusters[i] = 'header';
  const l1 = Number(h.l1TableOffset);
  const valid = (off: number): boolean => off % cs === 0 && off >= h.headerSize * cs && off + cs <= file.length;
  let badEntries = 0;
  const entries = (ts * cs) / 8;
  if (!valid(l1)) return null;
  for (let i = 0; i < ts; i++) clusters[l1 / cs + i] = 'l1';
  for (let i = 0; i < entries; i++) {
    const l2 = u64(file, l1 + i * 8);
    if (l2 === 0) continue;
    if (!valid(l2) || l2 + ts * cs > file.length) {
      badEntries++;
      continue;
    }
    for (let k = 0; k < ts; k++) clusters[l2 / cs + k] = 'l2';
    for (let j = 0; j < entries; j++) {
      const d = u64(file, l2 + j * 8);
      if (d <= 1) continue; // unallocated, or the zero marker
      if (!valid(d)) {
        badEntries++;
        continue;
      }
      clusters[d / cs] = 'data';
      guestOf.set(d / cs, i * entries + j);
    }
  }
  const backing =
    h.backingFilenameSize > 0
      ? new TextDecoder().decode(file.subarray(h.backingFilenameOffset, h.backingFilenameOffset + h.backingFilenameSize))
      : null;
  return {
    format: 'qed',
    clusterSize: cs,
    tableSize: ts,
    imageSize: Number(h.imageSize),
    dirty: (h.features & QED_F_NEED_CHECK) !== 0n,
    backing,
    clusters,
    guestOf,
    badEntries,
    facts: `QED, cluster ${cs} B, table ${ts} cluster(s)`,
  };
}
