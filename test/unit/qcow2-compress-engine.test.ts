// The zlib codec over an engine off the main thread (compress-engine.ts): the addon's system
// zlib gives pako's (and so qemu-img's) bytes, falls back to pako without the addon, and
// clusters compressing at once still take their host bytes in the order they came.
import pako from 'pako';
import { describe, expect, it } from 'vitest';
import { bdrvCreate } from '../../src/block/create.js';
import { memStoreRead } from '../../src/drivers/mem/index.js';
import { addonZlibEngine, setSeekAddonForTest } from '../../src/drivers/file/seek.js';
import { defaultQcow2Codec, type Qcow2Codec, setQcow2Codec } from '../../src/drivers/qcow2/compress.js';
import { zlibEngineCodec } from '../../src/drivers/qcow2/compress-engine.js';
import { QCOW2_COMPRESSION_TYPE_ZLIB } from '../../src/drivers/qcow2/header.js';
import { BlockDriverState, IOVector } from '../../src/index.js';
import { memName } from './block-helpers.js';

const ZLIB = QCOW2_COMPRESSION_TYPE_ZLIB;

/** Clusters of every kind: runs, text, noise (incompressible), zeros, mixed. */
function clusters(size: number): Uint8Array[] {
  let x = 12345;
  const rnd = (): number => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 0x100000000;
  };
  const text = new TextEncoder().encode('compressed clusters pack at byte granularity; ');
  const out: Uint8Array[] = [];
  for (let k = 0; k < 24; k++) {
    const c = new Uint8Array(size);
    for (let off = 0; off < size; off += 512) {
      // Every fourth cluster has more noise, and every sixth is noise only.
      const r = k % 6 === 5 ? 0.7 : (k % 4 === 1 ? 0.4 : 0) + rnd();
      for (let i = off; i < off + 512; i++) {
        if (r < 0.3) c[i] = off & 0xff;
        else if (r < 0.6) c[i] = text[(i * (k + 1)) % text.length];
        else if (r < 0.9) c[i] = (rnd() * 256) | 0;
      }
    }
    out.push(c);
  }
  return out;
}

const engine = addonZlibEngine();
// Locally an addon built without libz.a skips these tests; CI must have built it with zlib.
if (engine === null && process.env.CI === 'true') {
  throw new Error('the native addon was built without zlib (libz.a from zlib1g-dev): install it and run `npm ci`');
}

describe.skipIf(engine === null)('the addon zlib codec', () => {
  const codec = zlibEngineCodec(addonZlibEngine, defaultQcow2Codec);

  it('compresses to pako bytes, or gives up where pako does not fit', async () => {
    for (const size of [512, 4096, 65536, 2 << 20]) {
      let fitted = 0;
      let refused = 0;
      for (const c of clusters(size).slice(0, size > 65536 ? 4 : 24)) {
        const want = pako.deflateRaw(c, { level: 6, windowBits: 12, memLevel: 9 });
        const got = await codec.compress(ZLIB, c, size - 1);
        if (want.length <= size - 1) {
          fitted++;
          expect(got).not.toBeNull();
          expect(Buffer.from(got ?? []).equals(Buffer.from(want))).toBe(true);
        } else {
          refused++;
          expect(got).toBeNull();
        }
      }
      expect(fitted).toBeGreaterThan(0);
      if (size <= 65536) expect(refused).toBeGreaterThan(0);
    }
  });

  it('decompresses whole clusters, ignores what follows, refuses short data', async () => {
    for (const c of clusters(65536)) {
      const z = pako.deflateRaw(c, { level: 6, windowBits: 12, memLevel: 9 });
      // A compressed cluster is read in whole sectors: garbage after the stream.
      const sectors = new Uint8Array(Math.ceil((z.length + 1) / 512) * 512).fill(0xa5);
      sectors.set(z);
      expect(Buffer.from(await codec.decompress(ZLIB, sectors, 65536)).equals(c)).toBe(true);
      // Into the caller's buffer, whatever it held.
      const dst = new Uint8Array(65536).fill(0xee);
      expect(await codec.decompress(ZLIB, sectors, 65536, dst)).toBe(dst);
      expect(Buffer.from(dst).equals(c)).toBe(true);
      await expect(Promise.resolve(codec.decompress(ZLIB, z.subarray(0, z.length >> 1), 65536))).rejects.toMatchObject({ code: 'EIO' });
    }
  });

  it('decompresses a run of clusters into one buffer with one call', async () => {
    const cs = 65536;
    const data = clusters(cs);
    // Streams back to back in one buffer, each followed by garbage to its sector's end.
    const parts = data.map((c) => pako.deflateRaw(c, { level: 6, windowBits: 12, memLevel: 9 }));
    const src = new Uint8Array(parts.reduce((n, z) => n + z.length, 0) + 512).fill(0xa5);
    const bounds = new Uint32Array(2 * parts.length);
    let at = 0;
    for (const [i, z] of parts.entries()) {
      src.set(z, at);
      bounds[2 * i] = at;
      bounds[2 * i + 1] = Math.min(src.length - at, Math.ceil((z.length + 1) / 512) * 512);
      at += z.length;
    }
    const dst = new Uint8Array(data.length * cs).fill(0xee);
    await codec.decompressMany!(ZLIB, src, bounds, dst);
    for (const [i, c] of data.entries()) expect(Buffer.from(dst.subarray(i * cs, (i + 1) * cs)).equals(c)).toBe(true);
    // A short stream in the middle: the call fails, the clusters before it were inflated.
    const short = bounds.slice();
    short[2 * 3 + 1] = parts[3].length >> 1;
    await expect(codec.decompressMany!(ZLIB, src, short, dst)).rejects.toMatchObject({ code: 'EIO' });
    expect(await engine!.inflateClusters!(src, dst, short)).toBe(3);
    // Bounds outside src are refused before any work starts.
    expect(() => engine!.inflateClusters!(src, dst, Uint32Array.of(src.length - 4, 8))).toThrow(TypeError);
  });

  it('uses pako when the addon is missing', async () => {
    const prev = setSeekAddonForTest(null);
    try {
      const c = clusters(4096)[0];
      const got = codec.decompress(ZLIB, pako.deflateRaw(c, { level: 6, windowBits: 12, memLevel: 9 }), 4096);
      // pako answers at once, not through a promise.
      expect(got).toEqual(c);
      const dst = new Uint8Array(4096);
      expect(codec.decompress(ZLIB, pako.deflateRaw(c, { level: 6, windowBits: 12, memLevel: 9 }), 4096, dst)).toBe(dst);
      expect(dst).toEqual(c);
    } finally {
      setSeekAddonForTest(prev);
    }
  });
});

/** A codec whose compressions finish in the reverse order of their start. */
function reversingCodec(held: number): Qcow2Codec {
  const waiting: (() => void)[] = [];
  return {
    decompress: (type, src, size) => defaultQcow2Codec.decompress(type, src, size),
    async compress(type, src, maxBytes) {
      const out = await defaultQcow2Codec.compress(type, src, maxBytes);
      await new Promise<void>((resolve) => {
        waiting.push(resolve);
        if (waiting.length === held) for (const r of waiting.reverse()) r();
      });
      return out;
    },
  };
}

async function writeAll(codec: Qcow2Codec, data: Uint8Array[], cs: number): Promise<Uint8Array> {
  const name = memName('qcow2');
  await bdrvCreate(name, { format: 'qcow2', options: { size: data.length * cs, cluster_size: cs } });
  const prev = setQcow2Codec(codec);
  const bs = await BlockDriverState.open(name, { format: 'qcow2' });
  setQcow2Codec(prev);
  try {
    await Promise.all(data.map((c, i) => bs.pwritevCompressed(i * cs, IOVector.from(c))));
    await bs.pwritevCompressed(0, new IOVector());
    for (const [i, c] of data.entries()) {
      const back = new Uint8Array(cs);
      await bs.pread(i * cs, back);
      expect(Buffer.from(back).equals(c)).toBe(true);
    }
  } finally {
    await bs.close();
  }
  return memStoreRead(name.slice(4));
}

describe('compressed writes in flight together', () => {
  it('pack the clusters in the order the writes came, whatever order they compress in', async () => {
    const data = clusters(4096);
    const inOrder = await writeAll(defaultQcow2Codec, data, 4096);
    const reversed = await writeAll(reversingCodec(data.length), data, 4096);
    expect(Buffer.from(reversed).equals(Buffer.from(inOrder))).toBe(true);
  });
});

describe('compressed reads', () => {
  it('inflate several clusters of one request at once, and fail it only when all are done', async () => {
    const data = clusters(4096).slice(0, 12);
    const name = memName('qcow2');
    await bdrvCreate(name, { format: 'qcow2', options: { size: data.length * 4096, cluster_size: 4096 } });
    let busy = 0;
    let most = 0;
    let failAt = -1;
    const codec: Qcow2Codec = {
      compress: (type, src, maxBytes) => defaultQcow2Codec.compress(type, src, maxBytes),
      async decompress(type, src, size) {
        busy++;
        most = Math.max(most, busy);
        try {
          await new Promise((resolve) => setTimeout(resolve, 1));
          if (--failAt === 0) throw new Error('injected');
          return await defaultQcow2Codec.decompress(type, src, size);
        } finally {
          busy--;
        }
      },
    };
    const prev = setQcow2Codec(codec);
    const bs = await BlockDriverState.open(name, { format: 'qcow2' });
    setQcow2Codec(prev);
    try {
      for (const [i, c] of data.entries()) await bs.pwritevCompressed(i * 4096, IOVector.from(c));
      const back = new Uint8Array(data.length * 4096);
      await bs.pread(0, back);
      for (const [i, c] of data.entries()) expect(Buffer.from(back.subarray(i * 4096, (i + 1) * 4096)).equals(c)).toBe(true);
      expect(most).toBeGreaterThan(1);
      // The fourth cluster fails: the read fails, and no inflate is left running after it.
      failAt = 4;
      await expect(bs.pread(0, back)).rejects.toThrow('injected');
      expect(busy).toBe(0);
    } finally {
      await bs.close();
    }
  });
});

describe('compressed clusters next to each other in the file', () => {
  /** Write `order`'s clusters compressed, in that order; then read the whole image back. */
  async function readBack(order: number[], codec?: Qcow2Codec): Promise<{ reads: number[][]; ok: boolean }> {
    // Two bits of noise a byte: every cluster compresses (a noise cluster would be written as
    // data, between them), each to more than a sector (none shares all its sectors).
    let x = 2463534242;
    const data = order.map(() =>
      Uint8Array.from({ length: 4096 }, () => {
        x ^= x << 13;
        x ^= x >>> 17;
        x ^= x << 5;
        return x & 3;
      }),
    );
    const name = memName('qcow2');
    await bdrvCreate(name, { format: 'qcow2', options: { size: data.length * 4096, cluster_size: 4096 } });
    const prev = codec === undefined ? undefined : setQcow2Codec(codec);
    const bs = await BlockDriverState.open(name, { format: 'qcow2' });
    if (prev !== undefined) setQcow2Codec(prev);
    try {
      for (const i of order) await bs.pwritevCompressed(i * 4096, IOVector.from(data[i]));
      const file = bs.file!;
      const reads: number[][] = [];
      const pread = file.pread.bind(file);
      file.pread = (offset: number, buf: Uint8Array) => {
        reads.push([offset, buf.length]);
        return pread(offset, buf);
      };
      const back = new Uint8Array(data.length * 4096);
      await bs.pread(0, back);
      const ok = data.every((c, i) => Buffer.from(back.subarray(i * 4096, (i + 1) * 4096)).equals(c));
      return { reads, ok };
    } finally {
      await bs.close();
    }
  }

  it('are read with one file read', async () => {
    const { reads, ok } = await readBack([0, 1, 2, 3, 4, 5, 6, 7]);
    expect(ok).toBe(true);
    expect(reads).toHaveLength(1);
  });

  it.skipIf(engine === null)('are inflated by an engine in two calls, not one per cluster', async () => {
    const real = zlibEngineCodec(addonZlibEngine, defaultQcow2Codec);
    const calls = { one: 0, many: 0 };
    const codec: Qcow2Codec = {
      compress: (type, src, maxBytes) => real.compress(type, src, maxBytes),
      decompress(type, src, size, dst) {
        calls.one++;
        return real.decompress(type, src, size, dst);
      },
      decompressMany(type, src, bounds, dst) {
        calls.many++;
        return real.decompressMany!(type, src, bounds, dst);
      },
    };
    const { reads, ok } = await readBack([0, 1, 2, 3, 4, 5, 6, 7], codec);
    expect(ok).toBe(true);
    expect(reads).toHaveLength(1);
    expect(calls).toEqual({ one: 0, many: 2 });
  });

  it('out of the guest order in the file are read apart, and read back right', async () => {
    // 1 0 | 3 2 | 5 4 in the file: each guest cluster after the one whose bytes follow it.
    const { reads, ok } = await readBack([1, 0, 3, 2, 5, 4]);
    expect(ok).toBe(true);
    expect(reads.length).toBe(6);
    // Guest clusters 0 and 3 (or 2 and 5) do not touch in the file: no read spans a gap.
    const { reads: gaps, ok: ok2 } = await readBack([0, 4, 1, 5, 2, 3]);
    expect(ok2).toBe(true);
    expect(gaps.length).toBeGreaterThan(1);
  });
});
