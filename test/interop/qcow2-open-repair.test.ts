// A dirty lazy_refcounts qcow2 image opened read-write is repaired as QEMU does it: a full
// `check -r all` whose lines go to stderr unprefixed, then the dirty bit is cleared. qemu-io
// and blk-io open copies of the same damaged image: the same output, status and repaired file.
import { spawnSync } from 'node:child_process';
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { maskTimings } from '../../src/tools/io/main.js';
import { makeTempDir, removeTempDir, requireQemu, runQemuImg, runQemuIo } from './qemu.js';

const qemu = requireQemu();

const ROOT = resolve(import.meta.dirname, '../..');
const LAUNCHER = join(ROOT, 'test/interop/io-parity-launcher.ts');
const TSX = pathToFileURL(join(ROOT, 'node_modules/tsx/dist/loader.mjs')).href;

function blkIo(args: string[]): { stdout: string; stderr: string; status: number | null } {
  const r = spawnSync(process.execPath, ['--import', TSX, LAUNCHER, ...args], { encoding: 'utf8', timeout: 60_000 });
  return { stdout: r.stdout, stderr: r.stderr, status: r.status };
}

const DIRTY = 1n;
const incompatible = (path: string): bigint => readFileSync(path).readBigUInt64BE(72);

describe.skipIf(!qemu)('qcow2 open-time repair of a dirty image, as qemu-io', () => {
  let dir = '';
  beforeAll(() => {
    dir = makeTempDir('qcow2-open-repair');
  });
  afterAll(() => removeTempDir(dir));

  /** Open copies of `image` with both tools, `read 0 512`; expect the same everything. */
  function parity(image: string, expectedLines: string[]): void {
    const ours = join(dir, 'ours.qcow2');
    const theirs = join(dir, 'theirs.qcow2');
    copyFileSync(image, ours);
    copyFileSync(image, theirs);
    const q = runQemuIo(['-c', 'read 0 512', theirs]);
    const b = blkIo(['-c', 'read 0 512', ours]);
    expect(b.status).toBe(q.status);
    expect(q.status).toBe(0);
    expect(maskTimings(b.stdout)).toBe(maskTimings(q.stdout));
    expect(b.stderr).toBe(q.stderr);
    expect(q.stderr.split('\n').filter((l) => l !== '')).toEqual(expectedLines);
    expect(incompatible(ours) & DIRTY).toBe(0n);
    expect(readFileSync(ours).equals(readFileSync(theirs))).toBe(true);
    expect(runQemuImg(['check', ours]).status).toBe(0);
  }

  it('rebuilds the refcounts of an image whose writer was killed', () => {
    const img = join(dir, 'crashed.qcow2');
    expect(runQemuImg(['create', '-q', '-f', 'qcow2', '-o', 'lazy_refcounts=on', img, '4M']).status).toBe(0);
    const crash = runQemuIo(['-c', 'write -P 0xab 0 128k', '-c', 'write 1M 64k', '-c', 'abort', img]);
    expect(crash.status).not.toBe(0);
    expect(incompatible(img) & DIRTY).toBe(DIRTY);
    parity(img, [
      'ERROR cluster 5 refcount=0 reference=1',
      'ERROR cluster 6 refcount=0 reference=1',
      'ERROR cluster 7 refcount=0 reference=1',
      'Rebuilding refcount structure',
      'Repairing cluster 1 refcount=1 reference=0',
      'Repairing cluster 2 refcount=1 reference=0',
    ]);
  });

  it('frees a leaked cluster of an image left dirty', () => {
    const img = join(dir, 'leaked.qcow2');
    expect(runQemuImg(['create', '-q', '-f', 'qcow2', '-o', 'lazy_refcounts=on', img, '4M']).status).toBe(0);
    expect(runQemuIo(['-c', 'write -P 0xcd 0 64k', img]).status).toBe(0);
    // Raise the refcount of the reftable's cluster (1) to 2 and set the dirty bit.
    const buf = readFileSync(img);
    const reftable = Number(buf.readBigUInt64BE(48));
    const block = Number(buf.readBigUInt64BE(reftable));
    buf.writeUInt16BE(2, block + 2);
    buf.writeBigUInt64BE(buf.readBigUInt64BE(72) | DIRTY, 72);
    writeFileSync(img, buf);
    parity(img, ['Leaked cluster 1 refcount=2 reference=1', 'Repairing cluster 1 refcount=2 reference=1']);
  });
});
