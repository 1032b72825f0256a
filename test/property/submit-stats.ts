/**
 * Which write paths reached a test protocol's pwritevSubmit hook (the powerloss driver's, the
 * sched protocol's): a property proves something about the format drivers' callback paths
 * only if they ran under it. The hook is called synchronously from the path that started the
 * write, so the function on the call stack names it.
 */
import fc from 'fast-check';
import { BlockDriverRegistry, defaultRegistry, type BlockDriver, type BlockDriverState } from '../../src/index.js';
import type { Geometry } from './harness.js';
import type { FormatProfile } from './profile.js';

export interface SubmitCounts {
  /** qcow2: a write into a new cluster zeroed with it (no backing file), L2 entry set from its completion. */
  qcow2Zero: number;
  /** qcow2: a COW write (head, data, tail) over a cached backing file, L2 entry set from its completion. */
  qcow2Cow: number;
  /** qcow2: an allocating write of whole clusters, L2 entries set from its completion. */
  qcow2Alloc: number;
  /** qcow2: a rewrite of clusters the image owns (qcow2RewriteNow). */
  qcow2Rewrite: number;
  /** QED: a rewrite of allocated clusters (qedAioWriteNow). */
  qedRewrite: number;
  /** Anything else: the generic layer's fast path for a promise write (metadata, ordinary data). */
  other: number;
}

const zero = (): SubmitCounts => ({ qcow2Zero: 0, qcow2Cow: 0, qcow2Alloc: 0, qcow2Rewrite: 0, qedRewrite: 0, other: 0 });

export const submitStats: { powerloss: SubmitCounts; sched: SubmitCounts } = { powerloss: zero(), sched: zero() };

// First match wins: zeroSubmit and cowSubmit run inside allocSubmit.
const PATHS: [Exclude<keyof SubmitCounts, 'other'>, RegExp][] = [
  ['qcow2Zero', /\bzeroSubmit\b/],
  ['qcow2Cow', /\bcowSubmit\b/],
  ['qcow2Alloc', /\ballocSubmit\b/],
  ['qcow2Rewrite', /\bqcow2PwritevSubmit\b/],
  ['qedRewrite', /\bsubmitWriteNow\b/],
];

/** Count a write `bs`'s hook is about to take, by the path that started it. */
export function countSubmit(bs: BlockDriverState): void {
  const counts = bs.driver.protocolName === 'sched' ? submitStats.sched : submitStats.powerloss;
  const limit = Error.stackTraceLimit;
  Error.stackTraceLimit = 40;
  const stack = new Error().stack ?? '';
  Error.stackTraceLimit = limit;
  const hit = PATHS.find(([, re]) => re.test(stack));
  counts[hit === undefined ? 'other' : hit[0]]++;
}

/** `drv` with its submit hooks counted (countSubmit) each time one takes a write. */
export function countingDriver(drv: BlockDriver): BlockDriver {
  if (drv.pwritevSubmit === undefined) return drv;
  return {
    ...drv,
    pwritevSubmit(bs, offset, bytes, qiov, flags, done) {
      const started = drv.pwritevSubmit!(bs, offset, bytes, qiov, flags, done);
      if (started) countSubmit(bs);
      return started;
    },
    ...(drv.zeroThenPwritevSubmit === undefined
      ? {}
      : {
          zeroThenPwritevSubmit(bs, zeroOffset, zeroBytes, offset, bytes, qiov, done) {
            const started = drv.zeroThenPwritevSubmit!(bs, zeroOffset, zeroBytes, offset, bytes, qiov, done);
            if (started) countSubmit(bs);
            return started;
          },
        }),
  };
}

/** The default registry with the powerloss driver's callback writes counted. */
export function powerlossCountingRegistry(): BlockDriverRegistry {
  const r = new BlockDriverRegistry();
  for (const d of defaultRegistry.list()) r.register(d.protocolName === 'powerloss' ? countingDriver(d) : d);
  return r;
}

/** submitStats now, to compare with after a run. */
export function submitSnapshot(): { powerloss: SubmitCounts; sched: SubmitCounts } {
  return { powerloss: { ...submitStats.powerloss }, sched: { ...submitStats.sched } };
}

/**
 * Where qcow2's allocating writes take the callback path often, COW ones too (alloc-submit.ts):
 * an image of several clusters without subclusters or an external data file, over a raw
 * backing file that covers it (its data is known without asking: COW areas copied) or over
 * nothing (COW areas zeroed with the data).
 */
function favoursCallbacks(g: Geometry): boolean {
  const o = g.formatOptions ?? {};
  const backing = g.backing === 'none' || (g.backing === 'raw' && g.backingSize >= g.size);
  return backing && g.size >= 4 * g.clusterSize && o.extendedL2 !== true && o.dataFile === undefined;
}

/**
 * The profile's geometries, two draws in five of them ones that favour the callback paths: the
 * general draw seldom makes one (a raw backing file in one of six, and most images are small).
 */
export function callbackGeometryArb(profile: FormatProfile, wide: boolean): fc.Arbitrary<Geometry> {
  // Raw-backed (COW copied) and unbacked (COW zeroed) images each get a share: together, the
  // general draw's proportions left the COW copies few.
  return fc.oneof(
    { weight: 3, arbitrary: profile.geometryArb(wide) },
    { weight: 1, arbitrary: profile.geometryArb(wide).filter((g) => favoursCallbacks(g) && g.backing === 'raw') },
    { weight: 1, arbitrary: profile.geometryArb(wide).filter((g) => favoursCallbacks(g) && g.backing === 'none') },
  );
}
