/**
 * The compressed-write command for formats whose profile takes compressed clusters (qcow2,
 * zlib or zstd by geometry): one whole cluster, as qemu-io `write -c`. QEMU's rule decides the
 * outcome, read from the image's own block status before the write: a cluster without a host
 * cluster that is not allocated here, or reads as zeros, takes the write (compressed, or
 * stored as it is when it does not shrink); any other is refused with EIO and keeps its bytes,
 * unless the data does not shrink (QEMU then writes it as an ordinary write, anywhere).
 */
import fc from 'fast-check';
import { BlockError, IOVector, type BlockDriverState } from '../../src/index.js';
import { type RunState, markTouched } from './commands.js';
import { firstDiff, pattern } from './model.js';

export interface CompressCommand {
  op: 'compress';
  /** Which cluster (modulo the whole clusters of the disk). */
  at: number;
  seed: number;
  /** compressibleData's choice. */
  compressible: boolean;
}

export const compressCommandArb: fc.Arbitrary<CompressCommand> = fc.record({
  op: fc.constant('compress' as const),
  at: fc.nat({ max: 0x7fffffff }),
  seed: fc.nat({ max: 1 << 20 }),
  compressible: fc.boolean(),
});

/** How often compressed writes really ran (a command that is always refused proves little). */
export const compressStats = {
  /** Writes into free clusters (compressed unless noise), and those on zstd images. */
  written: 0,
  zstdWritten: 0,
  /** Refused on an allocated cluster (EIO). */
  refused: 0,
  /** Compressed writes among the power-loss property's operations, and those the power cut. */
  powerLossOps: 0,
  powerLossCut: 0,
};

class CompressMismatch extends Error {
  override readonly name = 'ModelMismatch';
}

/** Data that shrinks (a short pattern repeated, varied per 256 bytes), or noise that does not. */
export function compressibleData(len: number, seed: number, compressible: boolean): Uint8Array {
  if (!compressible) return pattern(len, seed);
  const tile = pattern(61, seed);
  const out = new Uint8Array(len);
  for (let i = 0; i < len; i++) out[i] = tile[i % tile.length] ^ (i >> 8);
  return out;
}

/** The whole cluster `at` picks, or null when the disk has none (the short end is left out). */
export function compressedClusterAt(at: number, size: number, cs: number): number | null {
  const clusters = Math.floor(size / cs);
  return clusters === 0 ? null : (at % clusters) * cs;
}

/**
 * A compressed write that the caller wants on the disk whatever the cluster holds: refused on
 * an allocated cluster (EIO, nothing written) or on a data-file image (ENOTSUP), it becomes an
 * ordinary write.
 */
export async function writeCompressedOrPlain(bs: BlockDriverState, offset: number, data: Uint8Array): Promise<void> {
  try {
    await bs.pwritevCompressed(offset, IOVector.from(data));
  } catch (e) {
    // EIO: an allocated cluster; ENOTSUP: an image whose data lives in a data file.
    if (!(e instanceof BlockError) || (e.code !== 'EIO' && e.code !== 'ENOTSUP')) throw e;
    await bs.pwrite(offset, data);
  }
}

export async function runCompressCommand(st: RunState, c: CompressCommand): Promise<void> {
  const { setup } = st;
  const cs = setup.geom.clusterSize;
  const offset = compressedClusterAt(c.at, setup.model.size, cs);
  if (offset === null) return;
  st.log.push(`compress ${offset}+${cs}${c.compressible ? '' : ' noise'}`);
  if (setup.geom.formatOptions?.dataFile !== undefined) {
    // Compressed clusters live in the qcow2 file, which holds no data here: QEMU refuses.
    const err = await st.bs.pwritevCompressed(offset, IOVector.from(compressibleData(cs, c.seed, c.compressible))).then(
      () => null,
      (e: unknown) => e,
    );
    if (!(err instanceof BlockError) || err.code !== 'ENOTSUP') {
      throw new CompressMismatch(`${st.log.join('; ')}: a data-file image gave ${err instanceof Error ? err.message : 'success'}, not ENOTSUP`);
    }
    compressStats.refused++;
    return;
  }
  const status = await st.bs.blockStatus(offset, cs);
  // No host cluster (nor compressed data) behind it. With extended L2 entries a cluster whose
  // first subcluster is unallocated may still have one (unallocated-alloc: an offset, not
  // allocated): QEMU refuses that one too.
  const free = status.offset === undefined && (!status.allocated || (status.zero && !status.data));
  // Noise never shrinks: QEMU then writes it as an ordinary cluster, allocated or not.
  const takes = free || !c.compressible;
  const data = compressibleData(cs, c.seed, c.compressible);
  let err: Error | null = null;
  try {
    await st.bs.pwritevCompressed(offset, IOVector.from(data));
  } catch (e) {
    err = e instanceof Error ? e : new Error(String(e));
  }
  if (takes) {
    if (err !== null) throw new CompressMismatch(`${st.log.join('; ')}: refused on a ${free ? 'free' : 'noise'} cluster: ${err.message}`);
    setup.model.write(offset, data);
    // The whole cluster: with extended L2 entries, every one of its subclusters.
    markTouched(setup, offset, cs);
    if (free) compressStats.written++;
    if (free && setup.geom.formatOptions?.compressionType === 'zstd') compressStats.zstdWritten++;
  } else if (!(err instanceof BlockError) || err.code !== 'EIO') {
    throw new CompressMismatch(`${st.log.join('; ')}: an allocated cluster gave ${err === null ? 'success' : err.message}, not EIO`);
  } else {
    compressStats.refused++;
  }
  const back = new Uint8Array(cs);
  await st.bs.pread(offset, back);
  if (firstDiff(back, setup.model.read(offset, cs)) >= 0) throw new CompressMismatch(`${st.log.join('; ')}: the cluster reads otherwise`);
}
