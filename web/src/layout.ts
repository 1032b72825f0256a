// The QED file as it is on disk: which host cluster is the header, the L1 table, an L2 table, a
// data cluster, or nothing anyone points at (a leak). Read from the image's bytes with the
// driver's own header codec; entries are checked as the driver checks them, and an entry it
// would refuse is drawn as such instead of followed.
import { QED_F_NEED_CHECK, QED_MAGIC, decodeHeader } from '../../src/drivers/qed/index.js';

export type ClusterKind = 'header' | 'l1' | 'l2' | 'data' | 'leak';

export interface QedLayout {
  clusterSize: number;
  tableSize: number;
  imageSize: number;
  dirty: boolean;
  backing: string | null;
  /** Kind of every host cluster of the file, in file order. */
  clusters: ClusterKind[];
  /** Host cluster index -> the guest cluster it holds (data clusters only). */
  guestOf: Map<number, number>;
  /** Entries pointing past the end of the file or unaligned (what a check repairs). */
  badEntries: number;
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
    clusterSize: cs,
    tableSize: ts,
    imageSize: Number(h.imageSize),
    dirty: (h.features & QED_F_NEED_CHECK) !== 0n,
    backing,
    clusters,
    guestOf,
    badEntries,
  };
}

const LABEL: Record<ClusterKind, string> = { header: 'H', l1: 'L1', l2: 'L2', data: 'D', leak: '·' };

/** Draw the file's clusters into `el` (one cell each, its kind in data-kind). */
export function drawLayout(el: HTMLElement, layout: QedLayout | null, highlight: ReadonlySet<number> = new Set()): void {
  el.replaceChildren();
  if (layout === null) {
    el.textContent = 'no QED image';
    return;
  }
  const cs = layout.clusterSize;
  layout.clusters.forEach((kind, i) => {
    const cell = document.createElement('div');
    cell.className = `cluster ${kind}${highlight.has(i) ? ' hot' : ''}`;
    cell.dataset.kind = kind;
    const g = layout.guestOf.get(i);
    cell.title = `host ${i * cs}..${(i + 1) * cs - 1}: ${kind}${g === undefined ? '' : ` (guest ${g * cs})`}`;
    cell.textContent = LABEL[kind];
    el.append(cell);
  });
}
