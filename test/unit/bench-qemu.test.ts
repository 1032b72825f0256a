// blk-img bench against the real qemu-img bench 7.2: the same arguments on the same files give
// the same stdout, stderr and exit status (the program name and the measured time aside).
import { copyFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { imgBench } from '../../src/tools/img/bench.js';
import { makeTempDir, removeTempDir, requireQemu, runQemuImg } from '../interop/qemu.js';

const qemu = requireQemu();

function normalise(s: string, prog: string): string {
  return s
    .split(`${prog}:`)
    .join('PROG:')
    .split(`Try '${prog} --help'`)
    .join("Try 'PROG --help'")
    .replace(/Run completed in \d+\.\d{3} seconds\./g, 'Run completed in T seconds.');
}

async function ours(args: string[], cwd: string): Promise<{ stdout: string; stderr: string; status: number }> {
  let stdout = '';
  let stderr = '';
  const here = process.cwd();
  process.chdir(cwd);
  try {
    const status = await imgBench(args, { stdout: (s) => (stdout += s), stderr: (s) => (stderr += s) }, 'blk-img');
    return { stdout: normalise(stdout, 'blk-img'), stderr: normalise(stderr, 'blk-img'), status };
  } finally {
    process.chdir(here);
  }
}

describe.skipIf(!qemu)('blk-img bench matches qemu-img bench', () => {
  let dir = '';
  beforeAll(() => {
    dir = makeTempDir('bench-qemu');
    expect(runQemuImg(['create', '-q', '-f', 'qed', join(dir, 'a.qed'), '1M']).status).toBe(0);
    expect(runQemuImg(['create', '-q', '-f', 'raw', join(dir, 'r.raw'), '1M']).status).toBe(0);
  });
  afterAll(() => removeTempDir(dir));

  const cases: string[][] = [
    ['-c', '10', '-d', '2', 'a.qed'],
    ['-c', '10', '-d', '2', '-w', 'a.qed'],
    ['-c', '0', 'a.qed'],
    ['-c', '0', '-d', '0', 'a.qed'],
    ['-c', '3', '-s', '0', 'a.qed'],
    ['-c', '3', '-s', '1.5k', '-S', '0', 'a.qed'],
    ['-c', '3', '-o', '100', '-s', '1000', 'a.qed'],
    ['-c', '0x10', '-d', '010', 'a.qed'],
    ['-c', '3', '-w', '-d', '4', '--flush-interval=4', 'a.qed'],
    ['-c', '9', '-w', '-d', '4', '--flush-interval', '5', '--no-drain', 'a.qed'],
    ['-c', '3', '-w', '-d', '4', '--flush-interval=2', 'a.qed'],
    ['-c', '3', '-d', '4', '--flush-interval=4', 'a.qed'],
    ['-c', '3', '--flush-interval=abc', '-w', 'a.qed'],
    ['-c', '3', '-o', '2M', 'a.qed'],
    ['-c', '5', '-s', '512k', '-S', '256k', '-o', '768k', 'a.qed'],
    ['-c', '8', '-s', '64k', '-S', '64k', '-o', '512k', '-f', 'raw', 'r.raw'],
    ['-c', '3', '-f', 'raw', 'a.qed'],
    ['-c', '3', '-f', 'bogus', 'a.qed'],
    ['-c', '3', '-n', 'a.qed'],
    ['-c', '3', '-n', '-t', 'none', 'a.qed'],
    ['-c', '3', '-i', 'native', 'a.qed'],
    ['-c', '3', '-i', 'io_uring', '-U', '-q', 'a.qed'],
    ['-c', '3', '-i', 'bogus', 'a.qed'],
    ['-c', '3', '-t', 'bogus', 'a.qed'],
    ['-c', '3', '-t', 'unsafe', '-w', 'a.qed'],
    ['-c', '3', '-t', 'writethrough', '-w', 'a.qed'],
    ['-c', '-1', 'a.qed'],
    ['-c', '1e3', 'a.qed'],
    ['-d', 'x', 'a.qed'],
    ['-c', '3', '--pattern=256', 'a.qed'],
    ['-c', '3', '--patt=0x41', '-w', 'a.qed'],
    ['-c', '3', '-s', '-1', 'a.qed'],
    ['-c', '3', '-s', '3G', 'a.qed'],
    ['-c', '3', '-S', 'abc', 'a.qed'],
    ['-c', '3', '-o', '9E', 'a.qed'],
    ['-c', '3', '-z', 'a.qed'],
    ['a.qed', '-c'],
    ['-c', '3'],
    ['-c', '3', 'a.qed', 'a.qed'],
    ['-c', '3', 'missing.qed'],
    ['-wc3', 'a.qed'],
  ];

  for (const args of cases) {
    it(args.join(' '), async () => {
      // Each tool gets its own copy of the files, so writes of one cannot change the other's run.
      for (const f of ['a.qed', 'r.raw']) copyFileSync(join(dir, f), join(dir, `q-${f}`));
      const qargs = args.map((a) => (a === 'a.qed' || a === 'r.raw' ? `q-${a}` : a));
      const q = runQemuImg(['bench', ...qargs], { cwd: dir });
      const mine = await ours(args, dir);
      const expected = {
        stdout: normalise(q.stdout, 'qemu-img').split('q-a.qed').join('a.qed').split('q-r.raw').join('r.raw'),
        stderr: normalise(q.stderr, 'qemu-img').split('q-a.qed').join('a.qed').split('q-r.raw').join('r.raw'),
        status: q.status,
      };
      expect(mine).toEqual(expected);
    });
  }
});
