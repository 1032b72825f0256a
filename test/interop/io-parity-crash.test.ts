// `abort` is a crash: the process dies by SIGABRT with nothing closed or flushed, so a QED image
// without a backing file keeps NEED_CHECK after an allocating write, exactly as qemu-io leaves
// it. qemu-img check (read-only) finds it consistent; a read-write open (ours or QEMU's)
// repairs it and clears the bit.
import { spawnSync } from 'node:child_process';
import { copyFileSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlockDriverState } from '../../src/index.js';
import { makeTempDir, removeTempDir, requireQemu, runQemuImg, runQemuIo } from './qemu.js';

const qemu = requireQemu();

const ROOT = resolve(import.meta.dirname, '../..');
const LAUNCHER = join(ROOT, 'test/interop/io-parity-launcher.ts');
const TSX = pathToFileURL(join(ROOT, 'node_modules/tsx/dist/loader.mjs')).href;

let crashDir = '';

function blkIo(args: string[], input = ''): { stdout: string; stderr: string; status: number | null; signal: string | null } {
  // Run in the temporary directory: should the host keep core dumps, they land there.
  const r = spawnSync(process.execPath, ['--import', TSX, LAUNCHER, ...args], {
    cwd: crashDir,
    input,
    encoding: 'utf8',
    timeout: 60_000,
  });
  return { stdout: r.stdout, stderr: r.stderr, status: r.status, signal: r.signal };
}

/** The shell's view of how a process ended: the status, or 128 + signal number. */
function shellStatus(r: { status: number | null; signal: string | null }): number | null {
  if (r.signal === 'SIGABRT') return 134;
  return r.status;
}

function features(path: string): bigint {
  return readFileSync(path).readBigUInt64LE(16);
}

const NEED_CHECK = 2n;

describe.skipIf(!qemu)('blk-io abort leaves the image as a crash would', () => {
  let dir = '';
  let fresh = '';

  beforeAll(() => {
    dir = makeTempDir('blk-io-crash');
    crashDir = dir;
    fresh = join(dir, 'fresh.qed');
    expect(runQemuImg(['create', '-q', '-f', 'qed', fresh, '1M']).status).toBe(0);
  });
  afterAll(() => removeTempDir(dir));

  it('dies with status 134 and NEED_CHECK set, like qemu-io', () => {
    const ours = join(dir, 'ours.qed');
    const theirs = join(dir, 'theirs.qed');
    copyFileSync(fresh, ours);
    copyFileSync(fresh, theirs);

    const b = blkIo(['-c', 'write -P 1 0 64k', '-c', 'abort', ours]);
    const q = runQemuIo(['-c', 'write -P 1 0 64k', '-c', 'abort', theirs]);
    expect(shellStatus(b)).toBe(134);
    // qemu-io's buffered stdout dies with it: nothing reaches the pipe.
    expect(b.stdout).toBe(q.stdout);
    expect(b.stdout).toBe('');
    expect(b.stderr).toBe('');

    expect(features(ours) & NEED_CHECK).toBe(NEED_CHECK);
    expect(features(theirs) & NEED_CHECK).toBe(NEED_CHECK);
    // The data and the metadata both made it to the file before the crash.
    expect(readFileSync(ours).equals(readFileSync(theirs))).toBe(true);

    // A read-only check neither repairs nor clears.
    const chk = runQemuImg(['check', '--output=json', ours]);
    expect(chk.status).toBe(0);
    expect(JSON.parse(chk.stdout)).toMatchObject({ 'check-errors': 0, 'allocated-clusters': 1 });
    expect(features(ours) & NEED_CHECK).toBe(NEED_CHECK);
  });

  it('our read-write open repairs the crashed image and clears the bit', async () => {
    const img = join(dir, 'repair.qed');
    copyFileSync(fresh, img);
    const b = blkIo(['-c', 'write -P 7 64k 4k', '-c', 'write -P 8 1M-4k 4k', '-c', 'abort', img]);
    expect(shellStatus(b)).toBe(134);
    expect(features(img) & NEED_CHECK).toBe(NEED_CHECK);

    const bs = await BlockDriverState.open(img, { format: 'qed' });
    const buf = new Uint8Array(4096);
    await bs.pread(65536, buf);
    expect(buf.every((x) => x === 7)).toBe(true);
    await bs.close();
    expect(features(img) & NEED_CHECK).toBe(0n);
    const chk = runQemuImg(['check', img]);
    expect(chk.status).toBe(0);
    expect(chk.stdout).toContain('No errors were found on the image.');
  });

  it('qemu-io repairs what blk-io left behind', () => {
    const img = join(dir, 'qemu-repair.qed');
    copyFileSync(fresh, img);
    expect(shellStatus(blkIo(['-c', 'write -P 3 0 4k', '-c', 'abort', img]))).toBe(134);
    expect(features(img) & NEED_CHECK).toBe(NEED_CHECK);
    const q = runQemuIo(['-c', 'read -P 3 0 4k', img]);
    expect(q.status).toBe(0);
    expect(features(img) & NEED_CHECK).toBe(0n);
  });

  it('with a backing file the bit is never set', () => {
    const base = join(dir, 'base.raw');
    const over = join(dir, 'over.qed');
    expect(runQemuImg(['create', '-q', '-f', 'raw', base, '1M']).status).toBe(0);
    expect(runQemuImg(['create', '-q', '-f', 'qed', '-b', base, '-F', 'raw', over]).status).toBe(0);
    expect(shellStatus(blkIo(['-c', 'write -P 1 0 64k', '-c', 'abort', over]))).toBe(134);
    expect(features(over) & NEED_CHECK).toBe(0n);
    expect(runQemuImg(['check', over]).status).toBe(0);
  });

  it('prompts already flushed survive the abort; the rest is lost', () => {
    const img = join(dir, 'stdin.qed');
    copyFileSync(fresh, img);
    const b = blkIo([img], 'length\nwrite -P 1 0 4k\nabort\nlength\n');
    expect(shellStatus(b)).toBe(134);
    const theirs = join(dir, 'stdin-q.qed');
    copyFileSync(fresh, theirs);
    const q = spawnSync(qemu?.qemuIo ?? 'qemu-io', [theirs], {
      input: 'length\nwrite -P 1 0 4k\nabort\nlength\n',
      encoding: 'utf8',
      argv0: 'blk-io',
    });
    expect(q.signal).toBe('SIGABRT');
    const mask = (t: string): string => t.replace(/ops; [^\n]*/g, 'ops; T');
    expect(mask(b.stdout)).toBe(mask(q.stdout).replaceAll('qemu-io> ', 'blk-io> '));
    expect(b.stdout.startsWith('blk-io> 1 MiB\nblk-io> wrote 4096/4096 bytes at offset 0\n')).toBe(true);
  });
});
