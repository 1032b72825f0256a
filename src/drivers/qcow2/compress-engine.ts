/**
 * A zlib codec over an engine that runs elsewhere (the Node addon's system zlib on the libuv
 * thread pool, native/zlib.c): clusters compress and decompress off the main thread, several
 * at once, with the very settings of QEMU's qcow2_zlib_compress, so the bytes are qemu-img's.
 * zstd clusters, and everything when no engine is there, go to the fallback codec.
 *
 * No Node API here (the driver runs in browsers): the Node entry point passes the engine in.
 */
import { BlockError } from '../../block/errors.js';
import type { Qcow2Codec } from './compress.js';
import { QCOW2_COMPRESSION_TYPE_ZLIB } from './header.js';

export interface ZlibClusterEngine {
  /** Raw deflate of all of `src` into `dst`: the length, or -1 when it does not fit. */
  deflateCluster(src: Uint8Array, dst: Uint8Array): Promise<number>;
  /** Inflate from `src` until `dst` is full: dst.length, or -1 when the data falls short. */
  inflateCluster(src: Uint8Array, dst: Uint8Array): Promise<number>;
  /**
   * inflateCluster for n clusters as one job: cluster i from src[bounds[2i], +bounds[2i+1])
   * into the i-th n-th of `dst`. How many were inflated whole before the first that was not.
   * Optional (an older addon).
   */
  inflateClusters?(src: Uint8Array, dst: Uint8Array, bounds: Uint32Array): Promise<number>;
}

/**
 * `engine` is asked on each call (it may be loaded lazily, and be missing: null). Buffers
 * handed to it are private to the call, since another thread fills them.
 */
export function zlibEngineCodec(engine: () => ZlibClusterEngine | null, fallback: Qcow2Codec): Qcow2Codec {
  return {
    decompress(type, src, clusterSize, dst) {
      const e = type === QCOW2_COMPRESSION_TYPE_ZLIB ? engine() : null;
      if (e === null) return fallback.decompress(type, src, clusterSize, dst);
      // The caller's buffer is its own until this settles (qcow2ReadRange waits for it).
      const out = dst ?? new Uint8Array(clusterSize);
      return e.inflateCluster(src, out).then((n) => {
        if (n !== clusterSize) throw new BlockError('EIO', 'Could not decompress a compressed cluster', { op: 'read_compressed' });
        return out;
      });
    },
    decompressMany(type, src, bounds, dst) {
      const e = type === QCOW2_COMPRESSION_TYPE_ZLIB ? engine() : null;
      if (e?.inflateClusters === undefined) return null;
      return e.inflateClusters(src, dst, bounds).then((n) => {
        if (n !== bounds.length / 2) throw new BlockError('EIO', 'Could not decompress a compressed cluster', { op: 'read_compressed' });
      });
    },
    async compress(type, src, maxBytes) {
      const e = type === QCOW2_COMPRESSION_TYPE_ZLIB && maxBytes > 0 ? engine() : null;
      if (e === null) return fallback.compress(type, src, maxBytes);
      const out = new Uint8Array(maxBytes);
      const n = await e.deflateCluster(src, out);
      return n < 0 ? null : out.subarray(0, n);
    },
  };
}
