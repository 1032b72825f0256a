// The qcow2 file as it is on disk: header, refcount table, refcount blocks, L1 table, L2 tables,
// data and compressed clusters, and what each cluster's refcount says. Read from the image's
// bytes with the driver's own header, entry and refcount codecs. A cluster counted but
// referenced by nothing is a leak (a crash between the refcount update and the L2 entry leaves
// one); an entry the driver would refuse is counted as bad instead of followed.
import {
  L1E_OFFSET_MASK,
  QCOW2_COMPAT_LAZY_REFCOUNTS,
  QCOW2_INCOMPAT_DIRTY,
  QCOW2_INCOMPAT_EXTL2,
  QCOW_MAGIC,
  REFT_OFFSET_MASK,
  clusterType,
  compressedGeometry,
  decodeCompressed,
  decodeHeader,
  l2EntriesPerTable,
  l2EntryOffset,
  refcountBlockEntries,
  refcountGetter,
} from '../../src/drivers/qcow2/index.js';
import type { ClusterKind, LayoutBase } from './layout.js';

/** One reftable entry: the refcount block at host cluster `host` counts clusters first..last. */
export interface RefBlock {
  index: number;
  host: number;
  first: number;
  last: number;
}

export interface Qcow2Layout extends LayoutBase {
  format: 'qcow2';
  refcountBits: number;
  lazyRefcounts: boolean;
  /** Refcount of every host cluster of the file, as its refcount block says (0 if none). */
  refcounts: number[];
  refblocks: RefBlock[];
  /** Referenced clusters whose refcount is 0 (corruption: they could be handed out twice). */
  uncounted: number;
}

function u64(b: Uint8Array, off: number): bigint {
  return new DataView(b.buffer, b.byteOffset, b.byteLength).getBigUint64(off);
}

/** Null when the bytes are no qcow2 image this page can draw. */
export function qcow2Layout(file: Uint8Array): Qcow2Layout | null {
  if (file.length < 72 || new DataView(file.buffer, file.byteOffset).getUint32(0) !== QCOW_MAGIC) return null;
  const h = decodeHeader(file);
  if ((h.version !== 2 && h.version !== 3) || h.clusterBits < 9 || h.clusterBits > 21 || h.refcountOrder > 6) return null;
  const cs = 2 ** h.clusterBits;
  const nclusters = Math.ceil(file.length / cs);
  const clusters = new Array<ClusterKind>(nclusters).fill('free');
  const guestOf = new Map<number, number>();
  const inFile = (off: number, len: number): boolean => off % cs === 0 && off > 0 && off + len <= file.length;
  const mark = (off: number, len: number, kind: ClusterKind): void => {
    for (let c = Math.floor(off / cs); c * cs < off + len && c < nclusters; c++) clusters[c] = kind;
  };
  let badEntries = 0;
  clusters[0] = 'header';

  // Refcount table and blocks first: they say which clusters are in use at all.
  const refcounts = new Array<number>(nclusters).fill(0);
  const refblocks: RefBlock[] = [];
  const perBlock = refcountBlockEntries(h.clusterBits, h.refcountOrder);
  const get = refcountGetter(h.refcountOrder);
  const rtBytes = h.refcountTableClusters * cs;
  if (!inFile(h.refcountTableOffset, Math.min(rtBytes, file.length))) return null;
  mark(h.refcountTableOffset, rtBytes, 'reftable');
  for (let i = 0; i < rtBytes / 8 && h.refcountTableOffset + i * 8 + 8 <= file.length; i++) {
    const rb = Number(u64(file, h.refcountTableOffset + i * 8) & REFT_OFFSET_MASK);
    if (rb === 0) continue;
    if (!inFile(rb, cs)) {
      badEntries++;
      continue;
    }
    clusters[rb / cs] = 'refblock';
    refblocks.push({ index: i, host: rb / cs, first: i * perBlock, last: (i + 1) * perBlock - 1 });
    const block = file.subarray(rb, rb + cs);
    for (let j = 0; j < perBlock && i * perBlock + j < nclusters; j++) refcounts[i * perBlock + j] = get(block, j);
  }

  // Then the mapping: L1 -> L2 -> data (or a compressed extent).
  const ext = (h.incompatibleFeatures & QCOW2_INCOMPAT_EXTL2) !== 0n;
  const l2Entries = l2EntriesPerTable(h.clusterBits, ext);
  const entrySize = ext ? 16 : 8;
  const l1Bytes = h.l1Size * 8;
  if (h.l1Size > 0 && !inFile(h.l1TableOffset, l1Bytes)) return null;
  mark(h.l1TableOffset, l1Bytes, 'l1');
  const geometry = compressedGeometry(h.clusterBits);
  const referenced = new Set<number>([0]);
  for (let i = 0; i < h.l1Size; i++) {
    const l2 = Number(u64(file, h.l1TableOffset + i * 8) & L1E_OFFSET_MASK);
    if (l2 === 0) continue;
    if (!inFile(l2, cs)) {
      badEntries++;
      continue;
    }
    clusters[l2 / cs] = 'l2';
    referenced.add(l2 / cs);
    for (let j = 0; j < l2Entries; j++) {
      const e = u64(file, l2 + j * entrySize);
      const type = clusterType(e, h.version >= 3 && !ext);
      const guest = i * l2Entries + j;
      if (type === 'compressed') {
        const c = decodeCompressed(e, geometry);
        const start = c.offset & ~511;
        if (start + c.sectors * 512 > file.length + 511) {
          badEntries++;
          continue;
        }
        mark(start, c.sectors * 512, 'compressed');
        for (let k = Math.floor(start / cs); k * cs < start + c.sectors * 512; k++) referenced.add(k);
        guestOf.set(Math.floor(c.offset / cs), guest);
      } else if (type === 'normal' || type === 'zero-alloc') {
        const d = l2EntryOffset(e);
        if (!inFile(d, cs)) {
          badEntries++;
          continue;
        }
        clusters[d / cs] = 'data';
        referenced.add(d / cs);
        guestOf.set(d / cs, guest);
      }
    }
  }
  for (let c = 0; c < nclusters; c++) {
    if (clusters[c] === 'reftable' || clusters[c] === 'refblock' || clusters[c] === 'l1') referenced.add(c);
  }
  let uncounted = 0;
  for (let c = 0; c < nclusters; c++) {
    if (!referenced.has(c) && refcounts[c] > 0) clusters[c] = 'leak';
    if (referenced.has(c) && refcounts[c] === 0) uncounted++;
  }
  const backing =
    h.backingFileOffset > 0 && h.backingFileSize > 0
      ? new TextDecoder().decode(file.subarray(h.backingFileOffset, h.backingFileOffset + h.backingFileSize))
      : null;
  const lazyRefcounts = (h.compatibleFeatures & QCOW2_COMPAT_LAZY_REFCOUNTS) !== 0n;
  return {
    format: 'qcow2',
    clusterSize: cs,
    imageSize: h.size,
    dirty: (h.incompatibleFeatures & QCOW2_INCOMPAT_DIRTY) !== 0n,
    backing,
    clusters,
    guestOf,
    badEntries,
    refcountBits: 1 << h.refcountOrder,
    lazyRefcounts,
    refcounts,
    refblocks,
    uncounted,
    facts:
      `qcow2 v${h.version}, cluster ${cs} B, ${1 << h.refcountOrder}-bit refcounts, ` +
      `L1 ${h.l1Size} entr${h.l1Size === 1 ? 'y' : 'ies'}, ${lazyRefcounts ? 'lazy_refcounts=on' : 'lazy_refcounts=off'}` +
      (uncounted > 0 ? `, ${uncounted} referenced cluster(s) with refcount 0` : ''),
  };
}
