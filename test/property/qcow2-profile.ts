/**
 * The qcow2 profile of the property suites: clusters of 512 B..64 KiB (2 MiB when wide),
 * refcount widths of 1..64 bits, v2 and v3 images, lazy refcounts, extended L2 entries
 * (subclusters, clusters of 16 KiB and more), external data files (raw or not; with extended
 * L2 entries too, as QEMU 7.2 allows), zlib or zstd compressed clusters; backing chains mixing
 * raw, QED and qcow2; the driver's debug events; where the header fields (big-endian), L1/L2
 * tables, the refcount table and refcount blocks lie.
 */
import fc from 'fast-check';
import type { CreateOptions } from '../../src/index.js';
import type { BackingKind, Geometry } from './harness.js';
import { getUint, putUint, type FormatProfile, type MetadataLayout } from './profile.js';
import { sizedGeometry } from './qed-profile.js';

const MiB = 1024 * 1024;

/** The data file name in a geometry's options: buildImage names the real file after it. */
export const QCOW2_DATA_FILE = 'data.raw';

/** The events the qcow2 driver announces on its file child during guest requests. */
export const QCOW2_EVENTS = [
  'l1_update',
  'l2_load',
  'l2_update',
  'l2_alloc_cow_read',
  'l2_alloc_write',
  'read_aio',
  'read_backing_aio',
  'write_aio',
  'cow_read',
  'cow_write',
  'refblock_load',
  'refblock_update',
  'refblock_alloc',
  'refblock_alloc_hookup',
  'refblock_alloc_write',
  'reftable_load',
  'reftable_grow',
  'reftable_update',
  'cluster_alloc',
] as const;

/** Header fields: [offset, size in bytes], big-endian. */
export const QCOW2_HEADER_FIELDS = {
  magic: [0, 4],
  version: [4, 4],
  backingFileOffset: [8, 8],
  backingFileSize: [16, 4],
  clusterBits: [20, 4],
  size: [24, 8],
  cryptMethod: [32, 4],
  l1Size: [36, 4],
  l1TableOffset: [40, 8],
  refcountTableOffset: [48, 8],
  refcountTableClusters: [56, 4],
  nbSnapshots: [60, 4],
  snapshotsOffset: [64, 8],
  incompatibleFeatures: [72, 8],
  compatibleFeatures: [80, 8],
  autoclearFeatures: [88, 8],
  refcountOrder: [96, 4],
  headerLength: [100, 4],
  compressionType: [104, 1],
} as const;

const OFFSET_MASK = 0x00fffffffffffe00n;
const INCOMPAT_DIRTY = 1n;
const INCOMPAT_EXTL2 = 16n;

/**
 * qcow2 geometries; `formatOptions` holds the create options beyond the cluster size.
 * `extendedL2`: half of the v3 geometries with clusters of 16 KiB or more get subclusters.
 */
export function qcow2GeometryArb(wide = false, extendedL2 = true): fc.Arbitrary<Geometry> {
  return fc
    .record({
      clusterBits: fc.integer({ min: 9, max: wide ? 21 : 16 }),
      refcountOrder: fc.constantFrom(4, 4, 4, 0, 1, 2, 3, 5, 6),
      v2: fc.boolean(),
      lazyRefcounts: fc.boolean(),
      sizeFrac: fc.integer({ min: 1, max: 1000 }),
      clustersCap: fc.constantFrom(1, 3, 12, 40, 200),
      backing: fc.constantFrom<BackingKind>('none', 'raw', 'qed', 'qcow2', 'chain3', 'chain3qcow2'),
      backingRel: fc.constantFrom('equal', 'shorter', 'longer', 'tiny', 'odd'),
      backingClusterSize: fc.constantFrom(4096, 65536),
      seed: fc.integer({ min: 1, max: 0x7fffffff }),
      zstd: fc.boolean(),
    })
    .map((r) => {
      const clusterSize = 2 ** r.clusterBits;
      const cap = Math.min(clusterSize * r.clustersCap, wide ? 24 * MiB : 4 * MiB);
      const g = sizedGeometry(clusterSize, 1, cap, r);
      // v2 images have 16-bit refcounts and no feature bits.
      const v2 = r.v2 && r.refcountOrder === 4 && !r.lazyRefcounts;
      const formatOptions: CreateOptions = {};
      if (r.refcountOrder !== 4) formatOptions.refcountBits = 2 ** r.refcountOrder;
      if (v2) formatOptions.compat = '0.10';
      if (r.lazyRefcounts) formatOptions.lazyRefcounts = true;
      // Subclusters need v3 and clusters of at least 32 x 512 bytes. Derived from the content
      // seed, not drawn: the draws stay those of runs made before, so their seeds replay.
      if (extendedL2 && r.seed % 2 === 1 && !v2 && clusterSize >= 16384) formatOptions.extendedL2 = true;
      // An external data file (v3 only; raw external data cannot have a backing file). The
      // name is a placeholder: the harness puts the file beside the image (QCOW2_DATA_FILE).
      // Derived from the content seed, so that the other draws (and the runs they make) stay
      // as they were: about one image in six has a data file, one in twelve a raw one.
      const pick = r.seed % 12;
      const dataFile = pick === 10 ? 'plain' : pick === 11 ? 'raw' : 'none';
      if (dataFile !== 'none' && !v2 && (dataFile === 'plain' || g.backing === 'none')) {
        formatOptions.dataFile = QCOW2_DATA_FILE;
        if (dataFile === 'raw') formatOptions.dataFileRaw = true;
      }
      // zstd needs the compression type field of a v3 header.
      if (r.zstd && !v2) formatOptions.compressionType = 'zstd';
      return { ...g, formatOptions };
    });
}

/** A v3 header's fields as this profile reads them from a valid image. */
function qcow2Layout(image: Uint8Array): MetadataLayout {
  const be = (off: number, size: number): number => Number(getUint(image, off, size, true));
  const version = be(4, 4);
  const cb = be(20, 4);
  const cs = 2 ** Math.min(cb, 30);
  const extL2 = version >= 3 && (getUint(image, 72, 8, true) & INCOMPAT_EXTL2) !== 0n;
  const l1Offset = be(40, 8);
  const l1Entries = be(36, 4);
  const l2EntryBytes = extL2 ? 16 : 8;
  const l2Tables: number[] = [];
  for (let i = 0; i < l1Entries && l1Offset + 8 * i + 8 <= image.length; i++) {
    const e = Number(getUint(image, l1Offset + 8 * i, 8, true) & OFFSET_MASK);
    if (e !== 0) l2Tables.push(e);
  }
  const rtOffset = be(48, 8);
  const rtEntries = (be(56, 4) * cs) / 8;
  const refblocks: number[] = [];
  for (let i = 0; i < rtEntries && rtOffset + 8 * i + 8 <= image.length; i++) {
    const e = Number(getUint(image, rtOffset + 8 * i, 8, true) & ~0x1ffn);
    if (e !== 0) refblocks.push(e);
  }
  return {
    clusterSize: cs,
    l1Offset,
    l1Entries,
    l2Entries: cs / l2EntryBytes,
    l2EntryBytes,
    l2Tables,
    reftable: { offset: rtOffset, entries: rtEntries },
    refblocks,
    compressedOffsetBits: 62 - (cb - 8),
  };
}

/**
 * What a crash under lazy refcounts leaves: the dirty bit set and the refcounts of some data
 * clusters still 0 while L2 entries point at them (with COPIED set). The open-time repair
 * must rebuild them.
 */
function qcow2MakeDirty(valid: Uint8Array, picks: readonly number[]): Uint8Array {
  const img = valid.slice();
  // A v2 image has no dirty bit: refcounts there are never stale after a crash.
  if (Number(getUint(img, 4, 4, true)) < 3) return img;
  const lay = qcow2Layout(img);
  const cs = lay.clusterSize;
  const order = Number(getUint(img, 96, 4, true));
  const bits = 2 ** order;
  const perBlock = (cs * 8) / bits;
  const rt = lay.reftable;
  if (rt && lay.l2Tables.length > 0) {
    for (const d of picks) {
      const t = lay.l2Tables[d % lay.l2Tables.length];
      const e = getUint(img, t + lay.l2EntryBytes * (d % lay.l2Entries), 8, true);
      // Only normal (not compressed) allocated entries.
      if ((e & (1n << 62n)) !== 0n || (e & OFFSET_MASK) === 0n) continue;
      const cluster = Number(e & OFFSET_MASK) / cs;
      const block = Number(getUint(img, rt.offset + 8 * Math.floor(cluster / perBlock), 8, true) & ~0x1ffn);
      if (block === 0 || block + cs > img.length) continue;
      const bit = (cluster % perBlock) * bits;
      if (bits >= 8) img.fill(0, block + bit / 8, block + bit / 8 + bits / 8);
      else img[block + (bit >> 3)] &= ~(((1 << bits) - 1) << (bit & 7));
    }
  }
  putUint(img, 72, 8, getUint(img, 72, 8, true) | INCOMPAT_DIRTY, true);
  return img;
}

/** Images created through this profile with extended L2 entries (tests check they ran). */
export const qcow2ProfileStats = { extendedL2Images: 0 };

export const QCOW2_PROFILE: FormatProfile = {
  name: 'qcow2',
  geometryArb: qcow2GeometryArb,
  createOptions: (g) => {
    if (g.formatOptions?.extendedL2 === true) qcow2ProfileStats.extendedL2Images++;
    return { clusterSize: g.clusterSize, ...g.formatOptions };
  },
  layerOptions: (clusterSize) => ({ clusterSize }),
  backingKinds: ['none', 'raw', 'qed', 'qcow2', 'chain3', 'chain3qcow2'],
  snapshots: true,
  compressedWrites: true,
  leaksAfterCleanOps: false,
  debugEvents: QCOW2_EVENTS,
  grow: 'backing-or-zeros',
  discard: 'zeroes-clusters',
  tooLongBackingName(cs, extra) {
    // Names over 1023 bytes are refused outright; shorter ones that do not fit in cluster 0
    // after the header and its extensions get ENOSPC (only possible below 2 KiB clusters).
    if (cs < 2048 && extra % 2 === 0) {
      const from = cs - 60;
      return { length: from + (extra % (1023 - from)), code: 'ENOSPC' };
    }
    return { length: 1024 + extra, code: 'EINVAL' };
  },
  corruption: {
    headerFields: QCOW2_HEADER_FIELDS,
    bigEndian: true,
    refcounts: true,
    layout: qcow2Layout,
    makeDirty: qcow2MakeDirty,
    repairEvents: ['refblock_load', 'refblock_update', 'refblock_alloc', 'reftable_load', 'reftable_update', 'l2_load', 'read_aio', 'write_aio'],
  },
  hugeLayout(clusterBits, tableBits, shrink) {
    const cs = 2 ** clusterBits;
    const l2Span = (cs / 8) * cs;
    // L1 tables of 256..64 Ki entries (2 KiB..512 KiB): near the limits without 32 MiB tables.
    const l1Entries = 2 ** (8 + 2 * Math.min(tableBits, 4));
    const max = Math.min(l1Entries * l2Span, 2 ** 52);
    return { options: { clusterSize: cs }, size: Math.max(512, max - shrink * 512), l2Span };
  },
  hugeClusterBits: [9, 12, 16, 20],
  amendChoices: [
    { compat: '0.10' },
    { compat: '1.1' },
    { lazyRefcounts: true },
    { lazyRefcounts: false },
    { compat: '1.1', lazyRefcounts: true },
    { compat: '0.10', lazyRefcounts: false },
    { refcountBits: 1 },
    { refcountBits: 4 },
    { refcountBits: 16 },
    { refcountBits: 64 },
    { compat: '1.1', refcountBits: 8 },
  ],
  subclusterSize: (g) => (g.formatOptions?.extendedL2 === true ? g.clusterSize / 32 : g.clusterSize),
  // v3 only: a v2 image has no autoclear bits to say its bitmaps are current.
  persistentBitmaps: (g) => g.formatOptions?.compat !== '0.10',
};

/** The profile as it was before subclusters: replays of fuzz runs found then (regressions). */
export const QCOW2_PROFILE_NO_EXTL2: FormatProfile = { ...QCOW2_PROFILE, geometryArb: (wide) => qcow2GeometryArb(wide, false) };
