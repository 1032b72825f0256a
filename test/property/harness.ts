/**
 * Image set-up for the property tests: a builder that creates the image under test in the
 * format of a profile (profile.ts; QED unless told) with its backing chain in in-memory stores,
 * together with the byte-array model of what the guest must read.
 */
import { rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type fc from 'fast-check';
import { BlockDriverRegistry, BlockDriverState, VirtualClock, bdrvCreate, defaultRegistry, type CreateOptions } from '../../src/index.js';
import { memStoreDelete, memStoreNames, memStoreRead } from '../../src/drivers/mem/index.js';
import { powerlossStoreDelete } from '../../src/drivers/powerloss/index.js';
import { ByteModel, pattern } from './model.js';
import type { FormatProfile } from './profile.js';
import { QCOW2_PROFILE } from './qcow2-profile.js';
import { QED_PROFILE } from './qed-profile.js';

/**
 * The backing chain under the image under test: nothing, a raw file, a QED or qcow2 image (over
 * nothing), or a chain of three (raw <- QED or qcow2 <- the image under test).
 */
export type BackingKind = 'none' | 'raw' | 'qed' | 'qcow2' | 'chain3' | 'chain3qcow2';

export interface Geometry {
  clusterSize: number;
  /** QED's table size in clusters (1 for other formats). */
  tableSize: number;
  /** Create options of the format beyond the cluster size (qcow2: refcountBits, compat...). */
  formatOptions?: CreateOptions;
  /** Virtual size of the image under test (multiple of 512). */
  size: number;
  backing: BackingKind;
  /** Virtual size of the (top) backing image; may be shorter or longer than `size`. */
  backingSize: number;
  /** Cluster size of QED and qcow2 backing images. */
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
  /** The format under test (default QED). */
  format?: FormatProfile;
}

/** The profile a property runs with. */
export function profileOf(opts: { format?: FormatProfile }): FormatProfile {
  return opts.format ?? QED_PROFILE;
}

/** Whether the profile's driver is registered (the qcow2 properties wait for it). */
export function formatAvailable(profile: FormatProfile, registry: BlockDriverRegistry = defaultRegistry): boolean {
  return registry.find(profile.name) !== undefined;
}

export interface ImageSetup {
  /** Protocol prefix and store-name prefix of every file of this run. */
  proto: string;
  prefix: string;
  profile: FormatProfile;
  /** The profile's format name. */
  format: string;
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
  /** After a backing removal: the removed file's guest view (what an older snapshot's clusters hold past its end). */
  removedBacking?: Uint8Array;
  /**
   * Top-image units a write touched (clusters, or subclusters: see touchUnit): what a backing
   * removal leaves in place.
   */
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

/** A QED or qcow2 image over `backing` with a few pattern writes; returns its guest view. */
async function writeFormatLayer(
  format: FormatProfile,
  filename: string,
  size: number,
  clusterSize: number,
  backing: { name: string; fmt: string; view: Uint8Array } | null,
  seed: number,
  registry: BlockDriverRegistry,
): Promise<Uint8Array> {
  await bdrvCreate(filename, {
    format: format.name,
    options: {
      size,
      ...format.layerOptions(clusterSize),
      ...(backing ? { backingFile: backing.name, backingFmt: backing.fmt } : {}),
    },
    registry,
  });
  const view = new Uint8Array(size);
  if (backing) view.set(backing.view.subarray(0, Math.min(size, backing.view.length)));
  const bs = await BlockDriverState.open(filename, { format: format.name, registry });
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
  opts: { proto?: string; registry?: BlockDriverRegistry; dir?: string; profile?: FormatProfile } = {},
): Promise<ImageSetup> {
  const registry = opts.registry ?? defaultRegistry;
  const proto = opts.proto ?? 'mem';
  const profile = opts.profile ?? QED_PROFILE;
  const format = profile.name;
  const backingKind = geom.backing;
  // Host files ('file'): plain paths in `dir`; otherwise names in the protocol's namespace.
  const name = (n: string): string => (proto === 'file' ? `${opts.dir ?? '.'}/${prefix}-${n}` : `${proto}:${prefix}-${n}`);

  let backing: { name: string; fmt: string; view: Uint8Array } | null = null;
  if (backingKind === 'raw' || backingKind === 'chain3' || backingKind === 'chain3qcow2') {
    const len = backingKind === 'raw' ? geom.backingSize : geom.backingSize + 512 * 3;
    const data = rawContent(len, geom.seed);
    await writeRaw(name('base.raw'), data, registry);
    backing = { name: `${prefix}-base.raw`, fmt: 'raw', view: data };
  }
  const mid = backingKind === 'qed' || backingKind === 'chain3' ? QED_PROFILE : backingKind === 'qcow2' || backingKind === 'chain3qcow2' ? QCOW2_PROFILE : null;
  if (mid) {
    const size = geom.backingSize + (geom.backingSize % 512 === 0 ? 0 : 512 - (geom.backingSize % 512));
    const file = `mid.${mid.name}`;
    const view = await writeFormatLayer(mid, name(file), size, geom.backingClusterSize, backing, geom.seed + 7, registry);
    backing = { name: `${prefix}-${file}`, fmt: mid.name, view };
  }

  const top = name(`top.${format}`);
  const created = profile.createOptions(geom);
  // An external data file (qcow2) lives beside the image, in the same namespace.
  if (typeof created.dataFile === 'string') created.dataFile = name(created.dataFile);
  await bdrvCreate(top, {
    format,
    options: {
      size: geom.size,
      ...created,
      ...(backing ? { backingFile: backing.name, backingFmt: backing.fmt } : {}),
    },
    registry,
  });
  const model = new ByteModel(geom.size, backing?.view);
  return {
    proto,
    prefix,
    profile,
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

/**
 * Put the run's raw backing file (a mem store) on the host, and make `image` (opened without
 * its backing file) name it: qcow2 knows a raw file over a host file to hold data without
 * asking and reads its COW areas from the page cache, so only over one does it start a COW
 * write with a completion callback (alloc-submit.ts). Returns a function that removes it;
 * null, with nothing done, when the backing file is not raw.
 */
export async function hostRawBacking(setup: ImageSetup, image: BlockDriverState): Promise<(() => void) | null> {
  if (setup.geom.backing !== 'raw') return null;
  // Unique across the test runner's worker processes.
  const path = join(tmpdir(), `blocklayer-${process.pid}-${setup.prefix}-base.raw`);
  writeFileSync(path, memStoreRead(setup.backingName));
  await image.changeBackingFile(path, 'raw');
  return () => rmSync(path, { force: true });
}

export function cleanupPrefix(prefix: string): void {
  for (const n of memStoreNames()) if (n.startsWith(`${prefix}-`)) memStoreDelete(n);
  for (const fmt of ['qed', 'qcow2']) powerlossStoreDelete(`${prefix}-top.${fmt}`);
  powerlossStoreDelete(`${prefix}-data.raw`);
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
