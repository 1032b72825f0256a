// blk-img convert of a compressed qcow2 image: block status answers one cluster at a time, and
// convert reads consecutive data clusters as one request, each inflated straight into the
// chunk's buffer; the output is the source's bytes. A raw target gets them as one write, a
// qcow2 target one write per cluster, as qemu-img writes them.
import { closeSync, openSync, readFileSync, readSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { setIoEngineForTest } from '../../src/drivers/file/engine.js';
import { loadSeekAddon, setSeekAddonForTest, type SeekAddon } from '../../src/drivers/file/seek.js';
import { qcow2Codec, setQcow2Codec, type Qcow2Codec } from '../../src/drivers/qcow2/compress.js';
import { main } from '../../src/tools/img/main.js';
import { makeTempDir, removeTempDir } from '../interop/qemu.js';

const MiB = 1024 * 1024;
const CLUSTER = 65536;

async function blkImg(...args: string[]): Promise<number> {
  return main(['node', 'blk-img', ...args], { stdout: { write: () => undefined }, stderr: { write: () => undefined } });
}

/** Overwrite the compressed bytes of guest cluster `k` (in the first L2 table) with garbage. */
function corruptCompressedCluster(path: string, k: number): void {
  const fd = openSync(path, 'r+');
  try {
    const u64 = (at: number): bigint => {
      const b = Buffer.alloc(8);
      readSync(fd, b, 0, 8, at);
      return b.readBigUInt64BE(0);
    };
    const l2 = Number(u64(Number(u64(40))) & 0x00fffffffffffe00n);
    const entry = u64(l2 + 8 * k);
    expect(entry & (1n << 62n)).not.toBe(0n);
    // 64 KiB clusters: the host offset is the low 62 - (16 - 8) bits.
    writeSync(fd, new Uint8Array(64).fill(0xff), 0, 64, Number(entry & ((1n << 54n) - 1n)));
  } finally {
    closeSync(fd);
  }
}

/** 6 MiB: 3 MiB of data (every cluster different, no zero sector), a 1 MiB hole, 2 MiB of data. */
function sourceBytes(): Uint8Array {
  const raw = new Uint8Array(6 * MiB);
  for (let c = 0; c < raw.length / CLUSTER; c++) {
    if (c >= 48 && c < 64) continue;
    raw.fill((c % 251) + 1, c * CLUSTER, (c + 1) * CLUSTER);
    raw[c * CLUSTER + 100] = c;
  }
  return raw;
}

/** The lengths of the writes the file driver's engine is handed while `run` runs. */
async function engineWrites(run: () => Promise<void>): Promise<number[]> {
  const real = loadSeekAddon()!;
  const writes: number[] = [];
  const spy: SeekAddon = {
    ...real,
    engineSubmit: (op, fd, buffers, offset, length, mode) => {
      // OP_WRITE (engine.ts)
      if (op === 1 && buffers !== null) writes.push(buffers instanceof Uint8Array ? buffers.length : buffers.reduce((n, b) => n + b.length, 0));
      return real.engineSubmit!(op, fd, buffers, offset, length, mode);
    },
  };
  const prev = setSeekAddonForTest(spy);
  setIoEngineForTest(undefined);
  try {
    await run();
  } finally {
    setSeekAddonForTest(prev);
    setIoEngineForTest(undefined);
  }
  return writes;
}

describe('convert from a compressed qcow2 image', () => {
  let dir = '';
  beforeEach(() => {
    dir = makeTempDir('blk-convert-compressed');
  });
  afterEach(() => {
    removeTempDir(dir);
  });

  it('reads runs of compressed clusters as one request, inflated in place', async () => {
    const raw = sourceBytes();
    const src = join(dir, 'src.raw');
    writeFileSync(src, raw);
    const qcow2 = join(dir, 'c.qcow2');
    expect(await blkImg('convert', '-c', '-f', 'raw', '-O', 'qcow2', src, qcow2)).toBe(0);

    // Where each inflated cluster went: the buffer and the offset in it.
    const into: { buffer: ArrayBufferLike; at: number }[] = [];
    const real = qcow2Codec();
    const spy: Qcow2Codec = {
      compress: (type, s, maxBytes) => real.compress(type, s, maxBytes),
      decompress(type, s, size, dst) {
        if (dst !== undefined) into.push({ buffer: dst.buffer, at: dst.byteOffset });
        return real.decompress(type, s, size, dst);
      },
    };
    const prev = setQcow2Codec(spy);
    const out = join(dir, 'out.raw');
    try {
      expect(await blkImg('convert', '-f', 'qcow2', '-O', 'raw', qcow2, out)).toBe(0);
    } finally {
      setQcow2Codec(prev);
    }
    expect(Buffer.from(readFileSync(out)).equals(Buffer.from(raw))).toBe(true);
    // Every data cluster was inflated into the caller's buffer, none through a bounce buffer.
    expect(into.length).toBe(80);
    // Clusters one chunk apart in a buffer: a chunk held more than one cluster (a 2 MiB one
    // holds 32), where one chunk per cluster would put each at the start of its buffer.
    const spread = new Map<ArrayBufferLike, { lo: number; hi: number }>();
    for (const { buffer, at } of into) {
      const r = spread.get(buffer) ?? { lo: at, hi: at };
      spread.set(buffer, { lo: Math.min(r.lo, at), hi: Math.max(r.hi, at) });
    }
    expect(Math.max(...[...spread.values()].map((r) => r.hi - r.lo))).toBe(31 * CLUSTER);
  });

  it.skipIf(loadSeekAddon()?.engineSubmit === undefined)('joins the data writes for a raw target only', async () => {
    const raw = sourceBytes();
    const src = join(dir, 'src.raw');
    writeFileSync(src, raw);
    const qcow2 = join(dir, 'c.qcow2');
    expect(await blkImg('convert', '-c', '-f', 'raw', '-O', 'qcow2', src, qcow2)).toBe(0);
    const out = join(dir, 'out.raw');
    const toRaw = await engineWrites(async () => {
      expect(await blkImg('convert', '-f', 'qcow2', '-O', 'raw', qcow2, out)).toBe(0);
    });
    expect(Buffer.from(readFileSync(out)).equals(Buffer.from(raw))).toBe(true);
    // 2 MiB + 1 MiB of the first run, 2 MiB of the second.
    // (Besides the 4 KiB a new raw image gets at its start.)
    expect(toRaw.filter((n) => n >= CLUSTER).sort((a, b) => a - b)).toEqual([MiB, 2 * MiB, 2 * MiB]);
    const toQcow2 = await engineWrites(async () => {
      expect(await blkImg('convert', '-f', 'qcow2', '-O', 'qcow2', qcow2, join(dir, 'out.qcow2'))).toBe(0);
    });
    // Each data cluster on its own; nothing joined (the image's creation writes 3 clusters).
    expect(toQcow2.filter((n) => n === CLUSTER).length).toBeGreaterThanOrEqual(80);
    expect(toQcow2.filter((n) => n > 4 * CLUSTER)).toEqual([]);
  });

  it('reports a damaged cluster at its own offset, as qemu-img does', async () => {
    const src = join(dir, 'src.raw');
    writeFileSync(src, sourceBytes());
    const qcow2 = join(dir, 'c.qcow2');
    expect(await blkImg('convert', '-c', '-f', 'raw', '-O', 'qcow2', src, qcow2)).toBe(0);
    // Cluster 37: inside the first run, in the second 2 MiB chunk.
    corruptCompressedCluster(qcow2, 37);
    let err = '';
    const status = await main(['node', 'blk-img', 'convert', '-f', 'qcow2', '-O', 'raw', qcow2, join(dir, 'out.raw')], {
      stdout: { write: () => undefined },
      stderr: { write: (m: string) => void (err += m) },
    });
    expect(status).toBe(1);
    expect(err).toContain(`error while reading at byte ${37 * CLUSTER}: `);
  });
});
