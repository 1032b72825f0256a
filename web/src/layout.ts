// An image file as it is on disk, one cell per host cluster: what each cluster holds, read from
// the file's bytes by the format's own codecs (layout-qed.ts, layout-qcow2.ts), and drawn here.
import { qcow2Layout, type Qcow2Layout } from './layout-qcow2.js';
import { qedLayout, type QedLayout } from './layout-qed.js';

/**
 * What a host cluster holds. `leak`: referenced by nothing, yet counted (qcow2) or inside the
 * file (QED); `free`: a qcow2 cluster with refcount 0 that nothing references, reusable.
 */
export type ClusterKind = 'header' | 'l1' | 'l2' | 'data' | 'compressed' | 'reftable' | 'refblock' | 'leak' | 'free';

export interface LayoutBase {
  clusterSize: number;
  imageSize: number;
  /** QED's NEED_CHECK, qcow2's dirty bit: the next read-write open checks and repairs. */
  dirty: boolean;
  backing: string | null;
  /** Kind of every host cluster of the file, in file order. */
  clusters: ClusterKind[];
  /** Host cluster index -> the guest cluster it holds (data clusters only). */
  guestOf: Map<number, number>;
  /** Entries pointing past the end of the file or unaligned (what a check repairs). */
  badEntries: number;
  /** The format's geometry in a few words, for the facts line. */
  facts: string;
}

export type ImageLayout = QedLayout | Qcow2Layout;

/** Null when the bytes are no image this page can draw. */
export function imageLayout(file: Uint8Array): ImageLayout | null {
  return qedLayout(file) ?? qcow2Layout(file);
}

const LABEL: Record<ClusterKind, string> = {
  header: 'H',
  l1: 'L1',
  l2: 'L2',
  data: 'D',
  compressed: 'C',
  reftable: 'RT',
  refblock: 'RB',
  leak: '·',
  free: '',
};

/** Draw the file's clusters into `el` (one cell each, its kind in data-kind, qcow2's refcount below). */
export function drawLayout(el: HTMLElement, layout: ImageLayout | null, highlight: ReadonlySet<number> = new Set()): void {
  el.replaceChildren();
  el.classList.toggle('counted', layout?.format === 'qcow2');
  if (layout === null) {
    el.textContent = 'no image';
    return;
  }
  const cs = layout.clusterSize;
  layout.clusters.forEach((kind, i) => {
    const cell = document.createElement('div');
    cell.className = `cluster ${kind}${highlight.has(i) ? ' hot' : ''}`;
    cell.dataset.kind = kind;
    const g = layout.guestOf.get(i);
    let title = `host cluster ${i} (${i * cs}..${(i + 1) * cs - 1}): ${kind}${g === undefined ? '' : ` (guest ${g * cs})`}`;
    cell.textContent = LABEL[kind];
    if (layout.format === 'qcow2') {
      const rc = layout.refcounts[i] ?? 0;
      cell.dataset.refcount = String(rc);
      const rb = layout.refblocks.find((b) => i >= b.first && i <= b.last);
      title += rb === undefined ? ', no refcount block covers it' : `, refcount ${rc} (refcount block at host cluster ${rb.host}, entry ${i - rb.first})`;
      const count = document.createElement('i');
      count.textContent = String(rc);
      cell.append(count);
    }
    cell.title = title;
    el.append(cell);
  });
}

/** qcow2: which host clusters each refcount block counts, one line per reftable entry. */
export function drawRefmap(el: HTMLElement, layout: ImageLayout | null): void {
  el.replaceChildren();
  if (layout?.format !== 'qcow2') return;
  for (const b of layout.refblocks) {
    const li = document.createElement('li');
    li.dataset.host = String(b.host);
    li.dataset.first = String(b.first);
    li.dataset.last = String(b.last);
    const inUse = layout.refcounts.slice(b.first, b.last + 1).filter((r) => r > 0).length;
    li.textContent =
      `reftable[${b.index}] → refcount block at host cluster ${b.host}: counts host clusters ` +
      `${b.first}..${b.last} (${layout.refcountBits}-bit entries), ${inUse} of them in use`;
    el.append(li);
  }
}
