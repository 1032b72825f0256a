// blk-img convert issues each chunk's writes once the previous chunk has issued its own, without
// waiting for them to complete (qemu-img waits). The target must still come out byte for byte
// as qemu-img writes it: clusters allocated in image order, tables where qemu-img puts them.
// Sources: data runs of odd lengths and alignments, holes, zero-filled data (skipped with the
// default -S 4k, written as data with -S 0), spanning many L2 tables of the smaller geometries.
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { main } from '../../src/tools/img/main.js';
import { makeTempDir, removeTempDir, requireQemu, runQemuImg } from './qemu.js';

const qemu = requireQemu();
const MiB = 1024 * 1024;

/** Deterministic pseudo-random bytes (xorshift), never all zero in a sector. */
function fill(buf: Uint8Array, seed: number): void {
  let x = seed | 1;
  for (let i = 0; i < buf.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    buf[i] = (x & 0xff) | 1;
  }
}

/** A 24 MiB raw source: runs of data, zero-filled runs and holes. */
function makeSource(path: string, seed: number): void {
  const img = new Uint8Array(24 * MiB);
  let rnd = seed;
  const next = (n: number): number => {
    rnd = (rnd * 1103515245 + 12345) >>> 0;
    return rnd % n;
  };
  for (let pos = 0; pos < img.length; ) {
    const len = Math.min(img.length - pos, (1 + next(48)) * 4096 + next(8) * 512);
    const kind = next(3);
    if (kind === 0) fill(img.subarray(pos, pos + len), seed + pos);
    pos += len + (kind === 2 ? next(32) * 4096 : 0);
  }
  writeFileSync(path, img);
}

async function ourConvert(args: string[], cwd: string): Promise<number> {
  const old = process.cwd();
  process.chdir(cwd);
  let err = '';
  try {
    const status = await main(['node', 'blk-img', 'convert', ...args], {
      stdout: { write: () => undefined },
      stderr: { write: (s: string) => (err += s) },
    });
    expect(err).toBe('');
    return status;
  } finally {
    process.chdir(old);
  }
}

describe.runIf(qemu !== null)('convert -O qed lays the image out as qemu-img does', () => {
  const dir = makeTempDir('convert-layout');
  afterAll(() => removeTempDir(dir));

  const cases: Array<{ name: string; opts: string[]; seed: number }> = [
    { name: '4k clusters, table_size=2 (one L2 table per 4 MiB)', opts: ['-o', 'cluster_size=4k,table_size=2'], seed: 7 },
    { name: '64k clusters (default), -S 0 (zeros written as data)', opts: ['-S', '0'], seed: 11 },
    { name: '16k clusters, table_size=2, -m 16', opts: ['-o', 'cluster_size=16k,table_size=2', '-m', '16'], seed: 13 },
    { name: '4k clusters, table_size=2, -m 1', opts: ['-o', 'cluster_size=4k,table_size=2', '-m', '1'], seed: 17 },
  ];
  for (const c of cases) {
    it(c.name, async () => {
      const src = join(dir, `src-${c.seed}.raw`);
      makeSource(src, c.seed);
      const theirs = join(dir, `q-${c.seed}.qed`);
      const ours = join(dir, `b-${c.seed}.qed`);
      const q = runQemuImg(['convert', '-O', 'qed', ...c.opts, src, theirs]);
      expect(q.status, q.stderr).toBe(0);
      expect(await ourConvert(['-O', 'qed', ...c.opts, src, ours], dir)).toBe(0);
      const a = readFileSync(theirs);
      const b = readFileSync(ours);
      expect(b.length).toBe(a.length);
      expect(Buffer.compare(a, b)).toBe(0);
      expect(runQemuImg(['check', ours]).status).toBe(0);
    });
  }
});
