/**
 * Compressed cluster codecs behind one small interface, so a build can plug other engines
 * (the browser's CompressionStream, a native zstd) without touching the driver.
 *
 * The default codec is pure JavaScript and runs anywhere: zlib-type clusters use pako (a
 * faithful port of zlib 1.2, so compressed clusters come out byte-identical to QEMU's with
 * raw deflate, level 6, a 4 KiB window and memLevel 9); zstd clusters are decoded with fzstd
 * and encoded by libzstd in WebAssembly (compress-zstd.ts), loaded on the first zstd write.
 * Node's entry point swaps in the system zlib of the native addon (compress-engine.ts).
 */
import { Decompress as ZstdDecompress } from 'fzstd';
import pako from 'pako';
import { BlockError } from '../../block/errors.js';
import { zstdCompressCluster } from './compress-zstd.js';
import { QCOW2_COMPRESSION_TYPE_ZLIB, QCOW2_COMPRESSION_TYPE_ZSTD } from './header.js';

export interface Qcow2Codec {
  /**
   * Decompress `src` (the compressed bytes, possibly followed by unrelated bytes up to the
   * end of the last sector) into exactly `clusterSize` bytes. Throws EIO when the data does
   * not produce a whole cluster. May answer later (an engine off the main thread). `dst`
   * (clusterSize bytes) is filled and returned instead of a fresh buffer; on failure its
   * bytes are undefined.
   */
  decompress(type: number, src: Uint8Array, clusterSize: number, dst?: Uint8Array): Uint8Array | Promise<Uint8Array>;
  /**
   * Optionally, decompress n clusters with one call (an engine's one hand-off for all):
   * cluster i from src[bounds[2i], +bounds[2i+1]) into the i-th n-th of `dst`. null when
   * this codec cannot (then each goes to decompress); throws EIO as decompress does.
   */
  decompressMany?(type: number, src: Uint8Array, bounds: Uint32Array, dst: Uint8Array): Promise<void> | null;
  /**
   * Compress one cluster into at most `maxBytes` bytes; null when it does not fit (the
   * caller then writes the cluster uncompressed, as QEMU does). Asynchronous so that an
   * encoder can be loaded when first needed.
   */
  compress(type: number, src: Uint8Array, maxBytes: number): Promise<Uint8Array | null>;
}

function inflateCluster(src: Uint8Array, clusterSize: number, out: Uint8Array = new Uint8Array(clusterSize)): Uint8Array {
  let filled = 0;
  const inflater = new pako.Inflate({ raw: true, chunkSize: clusterSize });
  // Collect output ourselves: stop once the cluster is full (QEMU accepts Z_BUF_ERROR then).
  inflater.onData = (chunk: Uint8Array): void => {
    const n = Math.min(chunk.length, clusterSize - filled);
    out.set(chunk.subarray(0, n), filled);
    filled += n;
  };
  inflater.push(src, true);
  if (filled < clusterSize) {
    throw new BlockError('EIO', 'Could not decompress a compressed cluster', { op: 'read_compressed' });
  }
  return out;
}

function zstdCluster(src: Uint8Array, clusterSize: number, out: Uint8Array = new Uint8Array(clusterSize)): Uint8Array {
  let filled = 0;
  const dec = new ZstdDecompress((chunk: Uint8Array) => {
    const n = Math.min(chunk.length, clusterSize - filled);
    out.set(chunk.subarray(0, n), filled);
    filled += n;
  });
  try {
    // Feed sector by sector: once the cluster is full, the bytes after the frame(s) are
    // whatever follows in the file and must not be parsed.
    for (let pos = 0; pos < src.length && filled < clusterSize; pos += 512) {
      dec.push(src.subarray(pos, Math.min(pos + 512, src.length)), false);
    }
  } catch (e) {
    if (filled < clusterSize) {
      throw new BlockError('EIO', 'Could not decompress a compressed cluster', { op: 'read_compressed', cause: e });
    }
  }
  if (filled < clusterSize) {
    throw new BlockError('EIO', 'Could not decompress a compressed cluster', { op: 'read_compressed' });
  }
  return out;
}

export const defaultQcow2Codec: Qcow2Codec = {
  decompress(type, src, clusterSize, dst) {
    if (type === QCOW2_COMPRESSION_TYPE_ZLIB) return inflateCluster(src, clusterSize, dst);
    if (type === QCOW2_COMPRESSION_TYPE_ZSTD) return zstdCluster(src, clusterSize, dst);
    throw new BlockError('ENOTSUP', `qcow2: unknown compression type: ${type}`, { op: 'read_compressed' });
  },
  async compress(type, src, maxBytes) {
    if (type === QCOW2_COMPRESSION_TYPE_ZSTD) return zstdCompressCluster(src, maxBytes);
    if (type !== QCOW2_COMPRESSION_TYPE_ZLIB) {
      throw new BlockError('ENOTSUP', `qcow2: unknown compression type: ${type}`, { op: 'write_compressed' });
    }
    const out = pako.deflateRaw(src, { level: 6, windowBits: 12, memLevel: 9 });
    return out.length <= maxBytes ? out : null;
  },
};

/** What images opened from now on use; the Node entry point may install a native one. */
let currentCodec: Qcow2Codec = defaultQcow2Codec;

export function qcow2Codec(): Qcow2Codec {
  return currentCodec;
}

/** Install `codec` for images opened later; returns the previous one (for tests to restore). */
export function setQcow2Codec(codec: Qcow2Codec): Qcow2Codec {
  const prev = currentCodec;
  currentCodec = codec;
  return prev;
}
