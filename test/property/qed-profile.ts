/**
 * The QED profile of the property suites: geometries (clusters 4 KiB..64 KiB, 2 MiB when wide;
 * tables of 1..16 clusters), backing chains of raw and QED, its debug events and where its
 * header fields and tables lie (little-endian).
 */
import fc from 'fast-check';
import type { BackingKind, Geometry } from './harness.js';
import { getUint, putUint, type FormatProfile, type MetadataLayout } from './profile.js';

const KiB = 1024;
const MiB = 1024 * KiB;

export function qedGeometryArb(wide = false): fc.Arbitrary<Geometry> {
  const maxClusterBits = wide ? 21 : 16;
  return fc
    .record({
      clusterBits: fc.integer({ min: 12, max: maxClusterBits }),
      tableBits: fc.integer({ min: 0, max: 4 }),
      sizeFrac: fc.integer({ min: 1, max: 1000 }),
      clustersCap: fc.constantFrom(1, 3, 12, 40),
      backing: fc.constantFrom<BackingKind>('none', 'raw', 'qed', 'chain3'),
      backingRel: fc.constantFrom('equal', 'shorter', 'longer', 'tiny', 'odd'),
      backingClusterSize: fc.constantFrom(4096, 65536),
      seed: fc.integer({ min: 1, max: 0x7fffffff }),
    })
    .map((r) => {
      const clusterSize = 2 ** r.clusterBits;
      // Memory cap: the model keeps the whole disk. Small clusters may still span several L2
      // tables (4 KiB x table 1 maps 2 MiB per L2), so they get a few MiB.
      const cap = Math.min(clusterSize * r.clustersCap, wide ? 24 * MiB : 4 * MiB);
      return sizedGeometry(clusterSize, 2 ** r.tableBits, cap, r);
    });
}

/** Image and backing sizes from a size cap and the drawn fractions (shared by the profiles). */
export function sizedGeometry(
  clusterSize: number,
  tableSize: number,
  cap: number,
  r: { sizeFrac: number; backing: BackingKind; backingRel: string; backingClusterSize: number; seed: number },
): Geometry {
  const size = Math.max(512, Math.round((cap * r.sizeFrac) / 1000 / 512) * 512);
  let backingSize = size;
  switch (r.backingRel) {
    case 'shorter':
      backingSize = Math.max(512, Math.floor(size / 3 / 512) * 512);
      break;
    case 'longer':
      backingSize = size + clusterSize + 1024;
      break;
    case 'tiny':
      backingSize = 512;
      break;
    case 'odd':
      // Not a sector multiple: only a raw backing can be like this.
      backingSize = Math.max(1, Math.floor(size / 2) + 123);
      break;
  }
  // Only a raw backing file may have a size that is no multiple of 512.
  if (r.backing !== 'raw' && backingSize % 512 !== 0) backingSize += 512 - (backingSize % 512);
  return { clusterSize, tableSize, size, backing: r.backing, backingSize, backingClusterSize: r.backingClusterSize, seed: r.seed };
}

/** The events the QED driver announces on its file child. */
export const QED_EVENTS = ['read_aio', 'write_aio', 'cow_write', 'l1_update', 'l2_update', 'l2_load', 'read_backing_aio'] as const;

/** Header fields: [offset, size in bytes]. */
export const QED_HEADER_FIELDS = {
  magic: [0, 4],
  clusterSize: [4, 4],
  tableSize: [8, 4],
  headerSize: [12, 4],
  features: [16, 8],
  compatFeatures: [24, 8],
  autoclearFeatures: [32, 8],
  l1TableOffset: [40, 8],
  imageSize: [48, 8],
  backingFilenameOffset: [56, 4],
  backingFilenameSize: [60, 4],
} as const;

const QED_F_NEED_CHECK = 2n;

function qedLayout(image: Uint8Array): MetadataLayout {
  const cs = Number(getUint(image, 4, 4, false));
  const ts = Number(getUint(image, 8, 4, false));
  const l1 = Number(getUint(image, 40, 8, false));
  const entries = (ts * cs) / 8;
  const l2Tables: number[] = [];
  for (let i = 0; i < entries && l1 + 8 * i + 8 <= image.length; i++) {
    const e = Number(getUint(image, l1 + 8 * i, 8, false));
    if (e !== 0) l2Tables.push(e);
  }
  return { clusterSize: cs, l1Offset: l1, l1Entries: entries, l2Entries: entries, l2EntryBytes: 8, l2Tables };
}

/** NEED_CHECK set, and unallocated L2 entries pointing past the end of the file. */
function qedMakeDirty(valid: Uint8Array, picks: readonly number[]): Uint8Array {
  const img = valid.slice();
  const { clusterSize: cs, l2Entries: entries, l2Tables: tables } = qedLayout(img);
  if (tables.length > 0) {
    for (const d of picks) {
      const t = tables[d % tables.length];
      const idx = d % entries;
      // Only unallocated entries: the guest data the model knows stays reachable.
      if (getUint(img, t + 8 * idx, 8, false) !== 0n) continue;
      putUint(img, t + 8 * idx, 8, BigInt(img.length - (img.length % cs) + cs * (1 + (d % 3))), false);
    }
  }
  putUint(img, 16, 8, getUint(img, 16, 8, false) | QED_F_NEED_CHECK, false);
  return img;
}

export const QED_PROFILE: FormatProfile = {
  name: 'qed',
  geometryArb: qedGeometryArb,
  createOptions: (g) => ({ clusterSize: g.clusterSize, tableSize: g.tableSize }),
  layerOptions: (clusterSize) => ({ clusterSize, tableSize: 2 }),
  backingKinds: ['none', 'raw', 'qed', 'chain3'],
  snapshots: false,
  leaksAfterCleanOps: false,
  debugEvents: QED_EVENTS,
  grow: 'backing',
  discard: 'nothing',
  // The name must fit in the header cluster after the 64-byte header.
  tooLongBackingName: (cs, extra) => ({ length: cs - 64 + 1 + extra, code: 'ENOSPC' }),
  corruption: {
    headerFields: QED_HEADER_FIELDS,
    bigEndian: false,
    refcounts: false,
    layout: qedLayout,
    makeDirty: qedMakeDirty,
    repairEvents: ['l2_load', 'l2_update', 'l1_update', 'read_aio', 'write_aio'],
  },
  hugeLayout(clusterBits, tableBits, shrink) {
    const cs = 2 ** clusterBits;
    const ts = 2 ** tableBits;
    const n = (ts * cs) / 8;
    const max = Math.min(n * n * cs, 2 ** 52);
    return { options: { clusterSize: cs, tableSize: ts }, size: Math.max(512, max - shrink * 512), l2Span: n * cs };
  },
  hugeClusterBits: [12, 16, 20],
  persistentBitmaps: () => false,
};
