/**
 * qcow2's open options (QEMU's qcow2_runtime_opts) and what they mean for one image
 * (qcow2_update_options_prepare): cache sizes, lazy refcounts, discard passthrough and the
 * overlap-check template, checked in QEMU's order with QEMU's messages.
 */
import type { OpenOptions } from '../../block/driver.js';
import { BlockError } from '../../block/errors.js';
import { parseOptBool, type RuntimeOptionSpec } from '../../block/options.js';
import { parseOptionSize } from '../../block/strtosz.js';

const DEFAULT_L2_CACHE_MAX_SIZE = 32n * 1024n * 1024n;
const MIN_L2_CACHE_SIZE = 2n;
const MIN_REFCOUNT_CACHE_SIZE = 4n;
const MIN_CLUSTER_SIZE = 512n;
const INT_MAX = 2n ** 31n - 1n;
const UINT_MAX = 2n ** 32n - 1n;

const OVERLAP_BITS = [
  'main-header',
  'active-l1',
  'active-l2',
  'refcount-table',
  'refcount-block',
  'snapshot-table',
  'inactive-l1',
  'inactive-l2',
  'bitmap-directory',
] as const;

const OVERLAP_TEMPLATE_HELP = 'Selects which overlap checks to perform from a range of templates (none, constant, cached, all)';

/** The options a qcow2 node takes besides the generic ones, with QEMU's types. */
export const QCOW2_RUNTIME_OPTS: readonly RuntimeOptionSpec[] = [
  { name: 'lazy-refcounts', type: 'bool', help: 'Postpone refcount updates' },
  { name: 'pass-discard-request', type: 'bool', help: 'Pass guest discard requests to the layer below' },
  { name: 'pass-discard-snapshot', type: 'bool', help: 'Generate discard requests when snapshot related space is freed' },
  { name: 'pass-discard-other', type: 'bool', help: 'Generate discard requests when other clusters are freed' },
  { name: 'overlap-check', type: 'string', help: OVERLAP_TEMPLATE_HELP },
  { name: 'overlap-check.template', type: 'string', help: OVERLAP_TEMPLATE_HELP },
  ...OVERLAP_BITS.map((b) => ({ name: `overlap-check.${b}`, type: 'bool' as const })),
  { name: 'cache-size', type: 'size', help: 'Maximum combined metadata (L2 tables and refcount blocks) cache size' },
  { name: 'l2-cache-size', type: 'size', help: 'Maximum L2 table cache size' },
  { name: 'l2-cache-entry-size', type: 'size', help: 'Size of each entry in the L2 cache' },
  { name: 'refcount-cache-size', type: 'size', help: 'Maximum refcount block cache size' },
  { name: 'cache-clean-interval', type: 'number', help: 'Clean unused cache entries after this time (in seconds)' },
];

/** What the options decide for an open image. */
export interface Qcow2RuntimeSettings {
  /** Capacities in tables (this driver caches whole tables, not L2 slices). */
  l2CacheTables: number;
  refcountCacheTables: number;
  useLazyRefcounts: boolean;
  /** pass-discard-request: a guest discard also discards in the file below. */
  discardRequest: boolean;
  /** Overlap-check bits by name: the driver checks every write, these record the request. */
  overlapCheck: ReadonlySet<string>;
}

/** The image facts the options are checked against. */
export interface Qcow2OptionContext {
  clusterSize: number;
  l2EntrySize: number;
  /** Guest size in bytes. */
  size: number;
  version: number;
  /** The image's lazy_refcounts compatible bit. */
  lazyRefcountsBit: boolean;
}

function err(message: string): BlockError {
  return new BlockError('EINVAL', message, { op: 'open' });
}

/** qemu_strtou64 as QemuOpts numbers read it: a leading '-' wraps modulo 2^64. */
function optNumber(value: string): bigint {
  const t = value.trim();
  const neg = t.startsWith('-');
  const body = t.replace(/^[+-]/, '');
  const v = BigInt(body);
  return neg ? (2n ** 64n - v) % 2n ** 64n : v;
}

/** read_cache_sizes: the three cache sizes in bytes and the L2 entry size. */
function readCacheSizes(o: Record<string, string>, c: Qcow2OptionContext): { l2: bigint; entry: bigint; refcount: bigint } {
  const cs = BigInt(c.clusterSize);
  const size = (k: string, dflt: bigint): bigint => (o[k] === undefined ? dflt : parseOptionSize(k, o[k]));
  const combinedSet = o['cache-size'] !== undefined;
  const l2Set = o['l2-cache-size'] !== undefined;
  const refSet = o['refcount-cache-size'] !== undefined;
  const entrySet = o['l2-cache-entry-size'] !== undefined;
  const minRefcount = MIN_REFCOUNT_CACHE_SIZE * cs;
  // One L2 table is a whole cluster, so the largest useful cache is whole clusters.
  const maxL2Entries = (BigInt(c.size) + cs - 1n) / cs;
  const maxL2 = ((maxL2Entries * BigInt(c.l2EntrySize) + cs - 1n) / cs) * cs;
  const combined = size('cache-size', 0n);
  const l2Max = size('l2-cache-size', DEFAULT_L2_CACHE_MAX_SIZE);
  let refcount = size('refcount-cache-size', 0n);
  let entry = size('l2-cache-entry-size', cs);
  let l2 = maxL2 < l2Max ? maxL2 : l2Max;
  if (combinedSet) {
    if (l2Set && refSet) throw err('cache-size, l2-cache-size and refcount-cache-size may not be set at the same time');
    if (l2Set && l2Max > combined) throw err('l2-cache-size may not exceed cache-size');
    if (refcount > combined) throw err('refcount-cache-size may not exceed cache-size');
    if (l2Set) refcount = combined - l2;
    else if (refSet) l2 = combined - refcount;
    else if (combined >= maxL2 + minRefcount) {
      // As much as possible to the L2 cache, the rest to refcounts.
      l2 = maxL2;
      refcount = combined - l2;
    } else {
      refcount = combined < minRefcount ? combined : minRefcount;
      l2 = combined - refcount;
    }
  }
  // A cache too small for the whole disk defaults to 4 KiB entries (QEMU's slices).
  if (l2 < maxL2 && !entrySet) entry = cs < 4096n ? cs : 4096n;
  if (entry < MIN_CLUSTER_SIZE || entry > cs || (entry & (entry - 1n)) !== 0n) {
    throw err(`L2 cache entry size must be a power of two between 512 and the cluster size (${c.clusterSize})`);
  }
  return { l2, entry, refcount };
}

/** qcow2_update_options_prepare for an open: every check, in QEMU's order. */
export function qcow2RuntimeSettings(options: OpenOptions, c: Qcow2OptionContext): Qcow2RuntimeSettings {
  const o = options.driverOptions ?? {};
  const bool = (k: string, dflt: boolean): boolean => (o[k] === undefined ? dflt : parseOptBool(k, o[k]));
  const sizes = readCacheSizes(o, c);
  let l2Entries = sizes.l2 / sizes.entry;
  if (l2Entries < MIN_L2_CACHE_SIZE) l2Entries = MIN_L2_CACHE_SIZE;
  if (l2Entries > INT_MAX) throw err('L2 cache size too big');
  let refEntries = sizes.refcount / BigInt(c.clusterSize);
  if (refEntries < MIN_REFCOUNT_CACHE_SIZE) refEntries = MIN_REFCOUNT_CACHE_SIZE;
  if (refEntries > INT_MAX) throw err('Refcount cache size too big');
  if (o['cache-clean-interval'] !== undefined && optNumber(o['cache-clean-interval']) > UINT_MAX) throw err('Cache clean interval too big');

  const useLazyRefcounts = bool('lazy-refcounts', c.lazyRefcountsBit);
  if (useLazyRefcounts && c.version < 3) throw err('Lazy refcounts require a qcow2 image with at least qemu 1.1 compatibility level');

  let overlap = o['overlap-check'];
  const template = o['overlap-check.template'];
  if (template !== undefined && overlap !== undefined && template !== overlap) {
    throw err(`Conflicting values for qcow2 options 'overlap-check' ('${overlap}') and 'overlap-check.template' ('${template}')`);
  }
  overlap ??= template ?? 'cached';
  const templates: Record<string, readonly string[]> = {
    none: [],
    constant: ['main-header', 'active-l1', 'refcount-table', 'snapshot-table', 'bitmap-directory'],
    cached: OVERLAP_BITS.filter((b) => b !== 'inactive-l2'),
    all: OVERLAP_BITS,
  };
  const chosen = Object.hasOwn(templates, overlap) ? templates[overlap] : undefined;
  if (chosen === undefined) {
    throw err(`Unsupported value '${overlap}' for qcow2 option 'overlap-check'. Allowed are any of the following: none, constant, cached, all`);
  }
  const overlapCheck = new Set(OVERLAP_BITS.filter((b) => bool(`overlap-check.${b}`, chosen.includes(b))));

  // The driver's discard default (pass guest discards down) stays unless the option says.
  const discardRequest = bool('pass-discard-request', true);
  bool('pass-discard-snapshot', true);
  bool('pass-discard-other', false);

  // This driver caches whole L2 tables: the entry size only decides how many fit.
  const tables = (bytes: bigint, min: bigint): number => {
    const n = bytes / BigInt(c.clusterSize);
    return Number(n < min ? min : n);
  };
  return {
    l2CacheTables: tables(l2Entries * sizes.entry, MIN_L2_CACHE_SIZE),
    refcountCacheTables: Number(refEntries),
    useLazyRefcounts,
    discardRequest,
    overlapCheck,
  };
}
