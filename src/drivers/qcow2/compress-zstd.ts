/**
 * The zstd encoder for compressed clusters: libzstd compiled to WebAssembly
 * (@hpcc-js/wasm-zstd, one ES module with the wasm inside, no Node API, so browsers get it
 * too). It is loaded on the first zstd compressed write only: reading zstd clusters needs the
 * pure decoder in compress.ts, and an image that never compresses never pays for the module.
 *
 * QEMU's qcow2_zstd_compress writes one frame at libzstd's default level (3) with the content
 * size in it, and gives up when the frame does not fit in the room it has; so do we.
 */
import { BlockError, toBlockError } from '../../block/errors.js';

/** What is used of the wasm module. */
interface ZstdEncoder {
  compress(data: Uint8Array, level?: number): Uint8Array;
}

/** libzstd's ZSTD_CLEVEL_DEFAULT, what a fresh ZSTD_CCtx (QEMU's) compresses with. */
const ZSTD_CLEVEL_DEFAULT = 3;
/** A zstd frame starts with this magic number, little-endian. */
const ZSTD_MAGIC = [0x28, 0xb5, 0x2f, 0xfd];

let encoder: Promise<ZstdEncoder> | undefined;

function loadEncoder(): Promise<ZstdEncoder> {
  encoder ??= import('@hpcc-js/wasm-zstd')
    .then((m) => m.Zstd.load())
    .catch((e: unknown) => {
      // Let a later write try again (a page may get the module after a reload of its chunk).
      encoder = undefined;
      throw new BlockError('ENOTSUP', `zstd compression is not available: ${toBlockError(e).message}`, { op: 'write_compressed', cause: e });
    });
  return encoder;
}

/**
 * Compress one cluster into a single zstd frame of at most `maxBytes` bytes; null when the
 * frame is larger (the caller writes the cluster uncompressed).
 */
export async function zstdCompressCluster(src: Uint8Array, maxBytes: number): Promise<Uint8Array | null> {
  const zstd = await loadEncoder();
  const out = zstd.compress(src, ZSTD_CLEVEL_DEFAULT);
  // The wrapper reports libzstd errors on the console only: never store what is not a frame.
  if (out.length < ZSTD_MAGIC.length || ZSTD_MAGIC.some((b, i) => out[i] !== b)) {
    throw new BlockError('EIO', 'zstd compression failed', { op: 'write_compressed' });
  }
  return out.length <= maxBytes ? out : null;
}
