/**
 * Image set-up for the property tests: a geometry arbitrary, and a builder that creates the
 * image under test (QED when the driver is registered, else raw) with its backing chain in
 * in-memory stores, together with the byte-array model of what the guest must read.
 */
import fc from 'fast-check';
import { BlockDriverRegistry, BlockDriverState, VirtualClock, bdrvCreate, defaultRegistry } from '../../src/index.js';
import { memStoreDelete, memStoreNames } from '../../src/drivers/mem/index.js';
import { powerlossStoreDelete } from '../../src/drivers/powerloss/index.js';
import { ByteModel, pattern } from './model.js';

export type BackingKind = 'none' | 'raw' | 'qed' | 'chain3';

export interface Geometry {
  clusterSize: number;
  tableSize: number;
  /** Virtual size of the image under test (multiple of 512). */
  size: number;
  backing: BackingKind;
  /** Virtual size of the (top) backing image; may be shorter or longer than `size`. */
  backingSize: number;
  /** Cluster size of QED backing images. */
  backingClusterSize: number;
  /** Seeds the backing contents. */
  seed: number;
}

export interface PropertyOptions {
  seed?: number;
  numRuns: number;
  /** Wider geometries and longer sequences (the fuzz entry point). */
  wide?: boolean;
  /** Receives a count of executed commands (for the fuzz report). */
  onCommands?: (n: number) => void;
  /** Log fast-check's verbose output (counterexamples) through this. */
  verbose?: boolean;
  /** Extra literal counterexamples replayed first. */
  examples?: unknown[];
}

/** The format under test: QED once its driver is registered, raw before that. */
export function formatUnderTest(registry: BlockDriverRegistry = defaultRegistry): 'qed' | 'raw' {
  return registry.find('qed') ? 'qed' : 'raw';
}

const KiB = 1024;
const MiB = 1024 * KiB;

export function geometryArb(wide = false): fc.Arbitrary<Geometry> {
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
      const tableSize = 2 ** r.tableBits;
      // Memory cap: the model keeps the whole disk. Small clusters may still span several L2
      // tables (4 KiB x table 1 maps 2 MiB per L2), so they get a few MiB.
      const cap = Math.min(clusterSize * r.clustersCap, wide ? 24 * MiB : 4 * MiB);
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
      return {
        clusterSize,
        tableSize,
        size,
        backing: r.backing,
        backingSize,
        backingClusterSize: r.backingClusterSize,
        seed: r.seed,
      };
    })
    .map((g) => (g.backing !== 'raw' && g.backingSize % 512 !== 0 ? { ...g, backingSize: g.backingSize + (512 - (g.backingSize % 512)) } : g));
}

export interface ImageSetup {
  /** Protocol prefix and store-name prefix of every file of this run. */
  proto: string;
  prefix: string;
  format: 'qed' | 'raw';
  /** Filename of the image under test. */
  top: string;
  geom: Geometry;
  model: ByteModel;
  /** Guest view of the current backing image ('' when none). */
  backingView: Uint8Array | null;
  /** Backing file name as recorded in the top image, and its format. */
  backingName: string;
  backingFmt: string;
  /** Copy a file of this run to a new name in the same namespace (host files; mem uses snapshots). */
  copyFile?: (from: string, to: string) => void;
  /** After a backing removal: the bytes past the end that a straddling cluster holds. */
  tailView?: Uint8Array;
  /** Top-image clusters touched by a write (what a backing removal leaves in place). */
  touched: Set<number>;
  registry: BlockDriverRegistry;
  open(opts?: { readOnly?: boolean }): Promise<BlockDriverState>;
  /** Delete every store of this run. */
  cleanup(): void;
}

let runCounter = 0;

/** A fresh name prefix for one property run. */
export function freshPrefix(tag: string): string {
  runCounter++;
  return `${tag}${runCounter}`;
}

/** Fill a raw image of `len` bytes: pattern data with zero holes, so COW copies both. */
function rawContent(len: number, seed: number): Uint8Array {
  const out = pattern(len, seed);
  const hole = Math.max(512, Math.floor(len / 5));
  for (let start = hole; start < len; start += 3 * hole) out.fill(0, start, Math.min(len, start + hole));
  return out;
}

async function writeRaw(filename: string, data: Uint8Array, registry: BlockDriverRegistry): Promise<void> {
  await bdrvCreate(filename, { format: 'raw', options: { size: data.length }, registry });
  const bs = await BlockDriverState.open(filename, { format: 'raw', registry });
  try {
    // raw over a protocol: an odd-sized tail is written through the generic layer's RMW.
    if (data.length > 0) await bs.pwrite(0, data);
  } finally {
    await bs.close();
  }
}

/** A QED image over `backing` with a few pattern writes; returns its guest view. */
async function writeQedLayer(
  filename: string,
  size: number,
  clusterSize: number,
  backing: { name: string; fmt: string; view: Uint8Array } | null,
  seed: number,
  registry: BlockDriverRegistry,
): Promise<Uint8Array> {
  await bdrvCreate(filename, {
    format: 'qed',
    options: {
      size,
      clusterSize,
      tableSize: 2,
      ...(backing ? { backingFile: backing.name, backingFmt: backing.fmt } : {}),
    },
    registry,
  });
  const view = new Uint8Array(size);
  if (backing) view.set(backing.view.subarray(0, Math.min(size, backing.view.length)));
  const bs = await BlockDriverState.open(filename, { format: 'qed', registry });
  try {
    const rnd = pattern(64, seed);
    for (let i = 0; i < 4; i++) {
      const off = Math.floor(((rnd[i * 2] * 256 + rnd[i * 2 + 1]) / 65536) * size);
      const len = Math.min(size - off, 512 + rnd[8 + i] * 37);
      if (len <= 0) continue;
      const data = pattern(len, seed + i + 1);
      await bs.pwrite(off, data);
      view.set(data, off);
    }
  } finally {
    await bs.close();
  }
  return view;
}

/**
 * Build the image under test for `geom` in protocol `proto` ('mem', or a test protocol over
 * mem stores such as 'sched'), with its backing chain.
 */
export async function buildImage(
  geom: Geometry,
  prefix: string,
  opts: { proto?: string; registry?: BlockDriverRegistry; dir?: string } = {},
): Promise<ImageSetup> {
  const registry = opts.registry ?? defaultRegistry;
  const proto = opts.proto ?? 'mem';
  const format = formatUnderTest(registry);
  const backingKind: BackingKind = format === 'qed' ? geom.backing : 'none';
  // Host files ('file'): plain paths in `dir`; otherwise names in the protocol's namespace.
  const name = (n: string): string => (proto === 'file' ? `${opts.dir ?? '.'}/${prefix}-${n}` : `${proto}:${prefix}-${n}`);

  let backing: { name: string; fmt: string; view: Uint8Array } | null = null;
  if (backingKind === 'raw' || backingKind === 'chain3') {
    const len = backingKind === 'chain3' ? geom.backingSize + 512 * 3 : geom.backingSize;
    const data = rawContent(len, geom.seed);
    await writeRaw(name('base.raw'), data, registry);
    backing = { name: `${prefix}-base.raw`, fmt: 'raw', view: data };
  }
  if (backingKind === 'qed' || backingKind === 'chain3') {
    const size = geom.backingSize + (geom.backingSize % 512 === 0 ? 0 : 512 - (geom.backingSize % 512));
    const view = await writeQedLayer(name('mid.qed'), size, geom.backingClusterSize, backing, geom.seed + 7, registry);
    backing = { name: `${prefix}-mid.qed`, fmt: 'qed', view };
  }

  const top = name(format === 'qed' ? 'top.qed' : 'top.raw');
  if (format === 'qed') {
    await bdrvCreate(top, {
      format: 'qed',
      options: {
        size: geom.size,
        clusterSize: geom.clusterSize,
        tableSize: geom.tableSize,
        ...(backing ? { backingFile: backing.name, backingFmt: backing.fmt } : {}),
      },
      registry,
    });
  } else {
    await bdrvCreate(top, { format: 'raw', options: { size: geom.size }, registry });
  }
  const model = new ByteModel(geom.size, backing?.view);
  return {
    proto,
    prefix,
    format,
    top,
    geom,
    model,
    backingView: backing?.view ?? null,
    backingName: backing?.name ?? '',
    backingFmt: backing?.fmt ?? '',
    touched: new Set(),
    registry,
    // A virtual clock: the need-check timer never fires behind the test's back.
    open: (o = {}) => BlockDriverState.open(top, { format, registry, readOnly: o.readOnly, clock: new VirtualClock() }),
    cleanup: () => cleanupPrefix(prefix),
  };
}

export function cleanupPrefix(prefix: string): void {
  for (const n of memStoreNames()) if (n.startsWith(`${prefix}-`)) memStoreDelete(n);
  powerlossStoreDelete(`${prefix}-top.qed`);
}

/** fast-check parameters shared by every property. */
export function fcParams(opts: PropertyOptions): fc.Parameters<unknown> {
  return {
    numRuns: opts.numRuns,
    ...(opts.seed !== undefined ? { seed: opts.seed } : {}),
    ...(opts.verbose ? { verbose: 1 } : {}),
    endOnFailure: false,
  };
}
