// blk-img convert of a compressed qcow2 image: block status answers one cluster at a time, and
// convert reads consecutive data clusters as one request, each inflated straight into the
// chunk's buffer; the output is the source's bytes.
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { qcow2Codec, setQcow2Codec, type Qcow2Codec } from '../../src/drivers/qcow2/compress.js';
import { main } from '../../src/tools/img/main.js';
import { makeTempDir, removeTempDir } from '../interop/qemu.js';

const MiB = 1024 * 1024;
const CLUSTER = 65536;

async function blkImg(...args: string[]): Promise<number> {
  return main(['node', 'blk-img', ...args], { stdout: { write: () => undefined }, stderr: { write: () => undefined } });
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
    // 6 MiB: 3 MiB of data (every cluster different), a 1 MiB hole, 2 MiB of data.
    const raw = new Uint8Array(6 * MiB);
    for (let c = 0; c < raw.length / CLUSTER; c++) {
      if (c >= 48 && c < 64) continue;
      raw.fill((c * 7 + 1) & 0xff, c * CLUSTER, (c + 1) * CLUSTER);
      raw[c * CLUSTER + 100] = c;
    }
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
});
