// blk-img convert must write the target byte for byte as qemu-img does: clusters allocated in
// image order, tables where qemu-img puts them. With in-order writes (no -W) a chunk writes only
// once the previous chunk's writes completed, and a chunk's writes go one after the other.
// Sources: data runs of odd lengths and alignments, holes, zero-filled data (skipped with the
// default -S 4k, written as data with -S 0), spanning many L2 tables of the smaller geometries.
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { main } from '../../src/tools/img/main.js';
import { makeTempDir, removeTempDir, requireQemu, runQemuImg, runQemuIo } from './qemu.js';

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

/** The two files are equal byte for byte (cmp: its first difference is the failure message). */
function expectSameBytes(theirs: string, ours: string): void {
  const r = spawnSync('cmp', [theirs, ours], { encoding: 'utf8' });
  expect(r.stdout + r.stderr, `${theirs} vs ${ours}`).toBe('');
  expect(r.status).toBe(0);
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
      expectSameBytes(theirs, ours);
      expect(runQemuImg(['check', ours]).status).toBe(0);
    });
  }
});

describe.runIf(qemu !== null)('convert -O qcow2 lays the image out as qemu-img does', () => {
  const dir = makeTempDir('convert-layout-qcow2');
  afterAll(() => removeTempDir(dir));

  // 1500 clusters written from the last to the first: each is its own block status run (its
  // host cluster is not contiguous with the next one's), then a zero run written as data (-S 0)
  // in 2 MiB chunks, each mapped one 32 KiB L2 table at a time in a 512-byte-cluster target.
  // The next chunk's write must not take clusters before the previous chunk's last piece.
  it('-S 0 of a qcow2 written in reverse order, into 512-byte clusters', async () => {
    const src = join(dir, 'reverse.qcow2');
    expect(runQemuImg(['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4k', src, '16M']).status).toBe(0);
    const cmds: string[] = [];
    for (let i = 1499; i >= 0; i--) cmds.push('-c', `write -P ${(i % 250) + 1} ${i * 4096} 4k`);
    expect(runQemuIo(['-f', 'qcow2', ...cmds, src]).status).toBe(0);
    for (const cs of ['512', '4k']) {
      const args = ['-S', '0', '-f', 'qcow2', '-O', 'qcow2', '-o', `cluster_size=${cs}`, src];
      const theirs = join(dir, `q-reverse-${cs}.qcow2`);
      const ours = join(dir, `b-reverse-${cs}.qcow2`);
      expect(runQemuImg(['convert', ...args, theirs]).status).toBe(0);
      expect(await ourConvert([...args, ours], dir)).toBe(0);
      expectSameBytes(theirs, ours);
    }
  });
});

describe.runIf(qemu !== null)('convert -B writes zero runs before the next chunk, as qemu-img', () => {
  const dir = makeTempDir('convert-layout-backing');
  afterAll(() => removeTempDir(dir));

  // A target over a backing file has no zero init: the zero runs of a data chunk go down as
  // zero writes between its data writes, each of which may allocate an L2 table.
  for (const fmt of ['qed', 'qcow2']) {
    it(`-O ${fmt} -B base.raw of data and zero runs interleaved`, async () => {
      const base = join(dir, 'base.raw');
      const img = new Uint8Array(16 * MiB);
      for (let i = 0; i < img.length; i += 4096) img[i] = 7;
      writeFileSync(base, img);
      const src = join(dir, 'mix.raw');
      makeSource(src, 5);
      for (const cs of ['4k', '64k']) {
        const args = ['-O', fmt, '-B', 'base.raw', '-o', `backing_fmt=raw,cluster_size=${cs}`, 'mix.raw'];
        expect(runQemuImg(['convert', ...args, `q-${cs}.${fmt}`], { cwd: dir }).status).toBe(0);
        expect(await ourConvert([...args, `b-${cs}.${fmt}`], dir)).toBe(0);
        expectSameBytes(join(dir, `q-${cs}.${fmt}`), join(dir, `b-${cs}.${fmt}`));
      }
    });
  }
  // A chunk of zero-filled data across one cluster boundary, covering no whole cluster, goes
  // down as one zero write; QEMU's generic layer splits it at the boundary and QED writes each
  // part as zeros, allocating the two clusters one after the other (the first one's new L2
  // table between them), not both at once.
  it('-O qed -B base.raw of a zero run across a cluster boundary', async () => {
    const img = new Uint8Array(MiB);
    img.fill(9);
    writeFileSync(join(dir, 'base1.raw'), img);
    expect(runQemuImg(['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4k', '-b', 'base1.raw', '-F', 'raw', 'top.qcow2'], { cwd: dir }).status).toBe(0);
    expect(runQemuIo(['-f', 'qcow2', '-c', 'write -P 0 258048 12k', '-c', 'write -P 5 524288 4k', 'top.qcow2'], { cwd: dir }).status).toBe(0);
    const args = ['-f', 'qcow2', '-O', 'qed', '-B', 'base1.raw', '-o', 'backing_fmt=raw', 'top.qcow2'];
    expect(runQemuImg(['convert', ...args, 'q-split.qed'], { cwd: dir }).status).toBe(0);
    expect(await ourConvert([...args, 'b-split.qed'], dir)).toBe(0);
    expectSameBytes(join(dir, 'q-split.qed'), join(dir, 'b-split.qed'));
  });
});
