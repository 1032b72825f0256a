/**
 * qemu-img measure for qcow2 targets (QEMU's qcow2_measure): the file size a new image needs
 * for a given size or to hold a given source image, worked out from the create options alone.
 * The metadata of a fully allocated image is always counted (qcow2_calc_prealloc_size); only
 * the data clusters the source does not need are left out of `required`.
 */
import type { BlockMeasureInfo, CreateOptions, PersistentBitmapInfo } from '../../block/driver.js';
import { BlockError } from '../../block/errors.js';
import type { BlockDriverState } from '../../block/node.js';
import { MAX_CLUSTER_BITS, MIN_CLUSTER_BITS, QCOW_MAX_L1_SIZE } from './header.js';
import { refcountMetadataSize } from './refcount-codec.js';

const PREALLOC_MODES = ['off', 'metadata', 'falloc', 'full'];

function fail(message: string): never {
  throw new BlockError('EINVAL', message, { op: 'measure' });
}

function opt(options: CreateOptions, key: string, name: string): string | number | boolean | undefined {
  return options[key] ?? options[name];
}

function roundUp(n: bigint, to: bigint): bigint {
  return ((n + to - 1n) / to) * to;
}

/** The options qcow2_measure reads, in its order and with its messages (not create's). */
function measureParams(options: CreateOptions): { clusterSize: number; version: number; refcountOrder: number; extendedL2: boolean; prealloc: string; backing: boolean } {
  const extendedL2 = opt(options, 'extendedL2', 'extended_l2') === true;
  const cs = opt(options, 'clusterSize', 'cluster_size') ?? 65536;
  const bits = typeof cs === 'number' && cs > 0 ? Math.log2(cs & -cs) : -1;
  if (typeof cs !== 'number' || bits < MIN_CLUSTER_BITS || bits > MAX_CLUSTER_BITS || 2 ** bits !== cs) {
    fail(`Cluster size must be a power of two between ${1 << MIN_CLUSTER_BITS} and ${1 << (MAX_CLUSTER_BITS - 10)}k`);
  }
  if (extendedL2 && cs < (1 << MIN_CLUSTER_BITS) * 32) {
    fail(`Extended L2 entries are only supported with cluster sizes of at least ${(1 << MIN_CLUSTER_BITS) * 32} bytes`);
  }
  // Unlike create, measure knows only the numeric compat levels.
  const compat = opt(options, 'compat', 'compat');
  let version = 3;
  if (compat === '0.10') version = 2;
  else if (compat !== undefined && compat !== '1.1') fail(`Invalid compatibility level: '${String(compat)}'`);
  const rb = opt(options, 'refcountBits', 'refcount_bits') ?? 16;
  if (typeof rb !== 'number' || rb > 64 || rb <= 0 || (rb & (rb - 1)) !== 0) {
    fail('Refcount width must be a power of two and may not exceed 64 bits');
  }
  if (version < 3 && rb !== 16) {
    fail('Different refcount widths than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)');
  }
  const prealloc = String(opt(options, 'preallocation', 'preallocation') ?? 'off');
  if (!PREALLOC_MODES.includes(prealloc)) fail(`invalid parameter value: ${prealloc}`);
  const backing = opt(options, 'backingFile', 'backing_file') !== undefined;
  return { clusterSize: cs, version, refcountOrder: Math.log2(rb), extendedL2, prealloc, backing };
}

/**
 * qcow2_calc_prealloc_size: header cluster, every L2 table, the L1 table rounded to whole
 * clusters, the refcount structures covering all of them, and the data.
 */
export function qcow2CalcPreallocSize(totalSize: bigint, clusterSize: number, refcountOrder: number, extendedL2: boolean): bigint {
  const cs = BigInt(clusterSize);
  const l2eSize = extendedL2 ? 16n : 8n;
  const aligned = roundUp(totalSize, cs);
  let meta = cs;
  const nl2e = roundUp(aligned / cs, cs / l2eSize);
  meta += nl2e * l2eSize;
  const nl1e = roundUp((nl2e * l2eSize) / cs, cs / 8n);
  meta += nl1e * 8n;
  const clusters = Number((meta + aligned) / cs);
  meta += BigInt(refcountMetadataSize(clusters, clusterSize, refcountOrder, false).bytes);
  return meta + aligned;
}

/** Bytes of the source's data clusters: allocated, non-zero ranges rounded out to clusters. */
async function requiredData(inBs: BlockDriverState, ssize: number, clusterSize: number): Promise<bigint> {
  let required = 0n;
  for (let offset = 0; offset < ssize; ) {
    const st = await inBs.blockStatusAbove(offset, ssize - offset);
    let pnum = st.pnum;
    if (!st.zero && st.data && st.allocated) {
      // Whole clusters are written: count up to the end of this one, and go on from there.
      pnum = Math.ceil((offset + pnum) / clusterSize) * clusterSize - offset;
      required += BigInt((offset % clusterSize) + pnum);
    }
    offset += pnum;
  }
  return required;
}

/** What the source's persistent bitmaps take in a qcow2 image with this cluster size. */
function bitmapsSize(bitmaps: readonly PersistentBitmapInfo[], length: number, clusterSize: number): bigint {
  const cs = BigInt(clusterSize);
  const len = BigInt(length);
  let total = 0n;
  let dirSize = 0n;
  for (const bm of bitmaps) {
    const g = BigInt(bm.granularity);
    const bytes = ((len + g - 1n) / g + 7n) / 8n;
    const clusters = (bytes + cs - 1n) / cs;
    // The bitmap's data, fully allocated, and its table of cluster offsets.
    total += clusters * cs + roundUp(clusters * 8n, cs);
    dirSize += roundUp(24n + BigInt(new TextEncoder().encode(bm.name).length), 8n);
  }
  return total + roundUp(dirSize, cs);
}

export async function qcow2Measure(options: CreateOptions, inBs: BlockDriverState | null): Promise<BlockMeasureInfo> {
  const p = measureParams(options);
  const cs = p.clusterSize;
  const size = opt(options, 'size', 'size');
  let virtualSize = roundUp(BigInt(typeof size === 'number' ? size : 0), BigInt(cs));
  const l2eSize = p.extendedL2 ? 16n : 8n;
  const l2Tables = (virtualSize / BigInt(cs) + BigInt(cs) / l2eSize - 1n) / (BigInt(cs) / l2eSize);
  if (l2Tables * 8n > BigInt(QCOW_MAX_L1_SIZE)) fail('The image size is too large (try using a larger cluster size)');
  let required = 0n;
  if (inBs !== null) {
    const ssize = await inBs.getLength();
    virtualSize = roundUp(BigInt(ssize), BigInt(cs));
    // With a backing file the new image may share nothing with the source: count it all.
    required = p.backing ? virtualSize : await requiredData(inBs, ssize, cs);
  }
  // Metadata preallocation needs nothing more: metadata is always counted.
  if (p.prealloc === 'full' || p.prealloc === 'falloc') required = virtualSize;
  const fullyAllocated = qcow2CalcPreallocSize(virtualSize, cs, p.refcountOrder, p.extendedL2);
  const info: BlockMeasureInfo = { required: fullyAllocated - virtualSize + required, fullyAllocated };
  // Bitmaps are counted only when both the source and a v3 target can keep them.
  const bitmaps = p.version >= 3 && inBs !== null ? ((await inBs.driver.persistentDirtyBitmaps?.(inBs)) ?? null) : null;
  if (bitmaps !== null && inBs !== null) info.bitmaps = bitmapsSize(bitmaps, await inBs.getLength(), cs);
  return info;
}
