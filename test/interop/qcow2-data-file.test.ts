// qcow2 images with an external data file (data_file, data_file_raw) against qemu-img and
// qemu-io 7.2: create, info, map, check, compare, convert, commit, rebase, resize, amend and
// guest I/O run by both programs on identical files in two directories; stdout, stderr and
// status must match, and so must the resulting files (the qcow2 file and the data file).
// Data file names are relative to the working directory (QEMU 7.2's rule), so the final
// inspections run as steps inside each directory.
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { maskTimings } from '../../src/tools/io/main.js';
import { makeTempDir, removeTempDir, requireQemu, runQemuImg, runQemuIo } from './qemu.js';
import { runOursIo, sessionDiffs, type Session } from './img-parity-harness.js';

const qemu = requireQemu();

const sessions: Session[] = [
  {
    name: 'create with a data file: plain, raw, preallocated, small clusters, refusals',
    setup: [['qemu-img', 'create', '-q', '-f', 'raw', 'base.raw', '1M']],
    steps: [
      ['create', '-f', 'qcow2', '-o', 'data_file=a.raw', 'a.qcow2', '3M'],
      ['create', '-f', 'qcow2', '-o', 'data_file=b.raw,data_file_raw=on', 'b.qcow2', '3M'],
      ['create', '-f', 'qcow2', '-o', 'data_file=c.raw,preallocation=metadata,cluster_size=512', 'c.qcow2', '1M'],
      ['create', '-f', 'qcow2', '-o', 'data_file=d.raw,preallocation=full', 'd.qcow2', '1M'],
      ['create', '-f', 'qcow2', '-o', 'data_file=e.raw,data_file_raw=on,preallocation=falloc,cluster_size=4k', 'e.qcow2', '1M'],
      ['create', '-f', 'qcow2', '-o', 'data_file=f.raw,lazy_refcounts=on,refcount_bits=1,compression_type=zstd', 'f.qcow2', '1M'],
      ['create', '-f', 'qcow2', '-o', 'data_file=g.raw', '-b', 'base.raw', '-F', 'raw', 'g.qcow2'],
      ['create', '-f', 'qcow2', '-o', 'data_file=x.raw,compat=0.10', 'x.qcow2', '1M'],
      ['create', '-f', 'qcow2', '-o', 'data_file_raw=on', 'x.qcow2', '1M'],
      ['create', '-f', 'qcow2', '-o', 'data_file=x.raw,data_file_raw=on', '-b', 'base.raw', '-F', 'raw', 'x.qcow2'],
      ['info', 'a.qcow2'],
      ['info', '--output=json', 'b.qcow2'],
      ['map', '--output=json', 'b.qcow2'],
      ['map', 'c.qcow2'],
      ['check', 'd.qcow2'],
      ['check', 'e.qcow2'],
      ['info', 'g.qcow2'],
      ['compare', 'g.qcow2', 'base.raw'],
    ],
    identical: ['a.qcow2', 'a.raw', 'b.qcow2', 'b.raw', 'c.qcow2', 'c.raw', 'd.qcow2', 'd.raw', 'e.qcow2', 'e.raw', 'f.qcow2', 'g.qcow2', 'g.raw'],
  },
  {
    name: 'open, convert, resize and check with a data file',
    setup: [
      ['qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'data_file=a.raw', 'a.qcow2', '4M'],
      ['qemu-io', '-c', 'write -P 0x11 0 100k', '-c', 'write -z 1M 64k', '-c', 'write -P 0x22 2M 64k', '-c', 'discard 2M 64k', '-c', 'write -P 3 3M 5k', 'a.qcow2'],
      ['qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'data_file=m.raw', 'm.qcow2', '1M'],
      ['qemu-io', '-c', 'write -P 0x44 64k 64k', 'm.qcow2'],
      ['qemu-img', 'amend', '-o', 'data_file=', 'm.qcow2'],
      ['qemu-img', 'create', '-q', '-f', 'qcow2', 'p.qcow2', '1M'],
    ],
    steps: [
      ['map', 'a.qcow2'],
      ['check', '--output=json', 'a.qcow2'],
      ['compare', 'a.qcow2', 'a.raw'],
      ['convert', '-O', 'qcow2', 'a.qcow2', 'plain.qcow2'],
      ['convert', '-O', 'qcow2', '-o', 'data_file=c.raw', 'a.qcow2', 'c.qcow2'],
      ['convert', '-O', 'qcow2', '-o', 'data_file=r.raw,data_file_raw=on', 'a.qcow2', 'r.qcow2'],
      ['convert', '-c', '-O', 'qcow2', '-o', 'data_file=z.raw', 'a.qcow2', 'z.qcow2'],
      ['compare', 'c.qcow2', 'plain.qcow2'],
      ['map', '--output=json', 'r.qcow2'],
      ['info', 'm.qcow2'],
      ['map', 'm.qcow2'],
      ['map', '--image-opts', 'driver=qcow2,file.filename=m.qcow2,data-file.filename=m.raw'],
      ['map', '--output=json', 'json:{"driver":"qcow2","file":{"filename":"m.qcow2"},"data-file":{"filename":"m.raw"}}'],
      ['info', '--image-opts', 'driver=qcow2,file.filename=p.qcow2,data-file.filename=m.raw'],
      ['snapshot', '-c', 's1', 'a.qcow2'],
      ['resize', 'c.qcow2', '6M'],
      ['resize', '--shrink', 'c.qcow2', '1M'],
      ['check', 'c.qcow2'],
      ['resize', '--preallocation=metadata', 'r.qcow2', '5M'],
      ['map', 'r.qcow2'],
      ['measure', '-O', 'qcow2', 'a.qcow2'],
    ],
    identical: ['a.qcow2', 'a.raw', 'plain.qcow2', 'c.qcow2', 'c.raw', 'r.qcow2', 'r.raw', 'm.qcow2'],
  },
  {
    name: 'commit and rebase through data-file images',
    setup: [
      ['qemu-img', 'create', '-q', '-f', 'raw', 'base.raw', '2M'],
      ['qemu-io', '-f', 'raw', '-c', 'write -P 0x55 0 2M', 'base.raw'],
      ['qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'data_file=mid.raw', '-b', 'base.raw', '-F', 'raw', 'mid.qcow2'],
      ['qemu-io', '-c', 'write -P 0x66 64k 100k', '-c', 'write -z 1M 64k', 'mid.qcow2'],
      ['qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'data_file=top.raw', '-b', 'mid.qcow2', '-F', 'qcow2', 'top.qcow2'],
      ['qemu-io', '-c', 'write -P 0x77 1M 200k', 'top.qcow2'],
      ['qemu-img', 'create', '-q', '-f', 'qcow2', '-b', 'mid.qcow2', '-F', 'qcow2', 'plain.qcow2'],
      ['qemu-io', '-c', 'write -P 0x88 0 64k', 'plain.qcow2'],
    ],
    steps: [
      ['map', 'top.qcow2'],
      ['compare', 'top.qcow2', 'mid.qcow2'],
      ['commit', 'plain.qcow2'],
      ['commit', 'top.qcow2'],
      ['map', 'top.qcow2'],
      ['check', 'top.qcow2'],
      ['compare', 'mid.qcow2', 'top.qcow2'],
      ['rebase', '-b', 'base.raw', '-F', 'raw', 'top.qcow2'],
      ['rebase', '-u', '-b', '', 'mid.qcow2'],
      ['check', 'mid.qcow2'],
      ['map', 'mid.qcow2'],
    ],
    identical: ['mid.qcow2', 'mid.raw', 'top.qcow2', 'top.raw', 'plain.qcow2'],
  },
  {
    name: 'amend data_file and data_file_raw',
    setup: [
      ['qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'data_file=d.raw,data_file_raw=on', 'a.qcow2', '1M'],
      ['qemu-img', 'create', '-q', '-f', 'qcow2', 'p.qcow2', '1M'],
      ['qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'data_file=d.raw', 'c.qcow2', '1M'],
    ],
    steps: [
      ['amend', '-o', 'data_file_raw=off', 'a.qcow2'],
      ['amend', '-o', 'data_file_raw=on', 'a.qcow2'],
      ['amend', '-o', 'data_file=x.raw', 'a.qcow2'],
      ['amend', '-o', 'data_file=', 'a.qcow2'],
      ['amend', '-o', 'data_file=x', 'p.qcow2'],
      ['amend', '-o', 'data_file=', 'p.qcow2'],
      ['amend', '-o', 'data_file_raw=off', 'p.qcow2'],
      ['amend', '-o', 'data_file=', 'c.qcow2'],
      ['info', 'c.qcow2'],
      ['info', '--output=json', 'c.qcow2'],
      ['amend', '-o', 'data_file=d.raw', 'c.qcow2'],
      ['amend', '-o', 'compat=0.10', 'c.qcow2'],
      ['amend', '--image-opts', '-o', 'data_file=d.raw', 'driver=qcow2,file.filename=c.qcow2,data-file.filename=d.raw'],
      ['info', 'c.qcow2'],
    ],
    identical: ['a.qcow2', 'p.qcow2', 'c.qcow2'],
  },
];

describe.skipIf(!qemu)('blk-img with qcow2 data files: parity with qemu-img 7.2', () => {
  const root = makeTempDir('qcow2-data-file');
  afterAll(() => removeTempDir(root));
  for (const s of sessions) {
    it(s.name, async () => {
      expect(await sessionDiffs(root, s)).toEqual([]);
    });
  }
});

const ioSessions: { name: string; create: string[]; args: string[]; files: string[] }[] = [
  {
    name: 'guest I/O over a data file',
    create: ['-o', 'data_file=d.raw', 'a.qcow2', '1M'],
    args: ['-c', 'write -P 0x11 0 64k', '-c', 'write -P 0x22 200k 4k', '-c', 'write -z 0 64k', '-c', 'write -P 0x33 300k 1k', '-c', 'discard 192k 64k', '-c', 'write -z -u 300k 64k', '-c', 'read -P 0 0 64k', '-c', 'map', 'a.qcow2'],
    files: ['a.qcow2', 'd.raw'],
  },
  {
    name: 'raw external data: zero writes reach the data file',
    create: ['-o', 'data_file=d.raw,data_file_raw=on', 'a.qcow2', '1M'],
    args: ['-c', 'write -P 1 0 64k', '-c', 'write -z 0 64k', '-c', 'write -P 2 64k 4k', '-c', 'write -z -u 128k 64k', '-c', 'discard 64k 64k', '-c', 'write -z 300k 1k', '-c', 'map', 'a.qcow2'],
    files: ['a.qcow2', 'd.raw'],
  },
  {
    // Extended L2 entries with a data file (QEMU 7.2 allows both): guest cluster 0 maps to
    // data file offset 0, COW stops at subcluster boundaries, subclusters are zeroed in place.
    name: 'extended L2 over a data file: subcluster writes, zeroes, discard',
    create: ['-o', 'data_file=d.raw,extended_l2=on,cluster_size=64k', 'a.qcow2', '1M'],
    args: ['-c', 'write -P 0x11 2k 1k', '-c', 'write -P 0x22 70k 6k', '-c', 'write -z 4k 4k', '-c', 'write -z 64k 8k', '-c', 'write -z -u 128k 64k', '-c', 'write -P 0x33 130k 1k', '-c', 'discard 192k 64k', '-c', 'read -P 0x11 2k 1k', '-c', 'map', 'a.qcow2'],
    files: ['a.qcow2', 'd.raw'],
  },
  {
    // Raw external data with extended L2: metadata preallocated at create (every subcluster
    // unallocated in an allocated cluster), subcluster zero writes reach the data file too.
    name: 'extended L2 over raw external data: preallocation, subcluster zeroes',
    create: ['-o', 'data_file=d.raw,data_file_raw=on,extended_l2=on,cluster_size=32k', 'a.qcow2', '1M'],
    args: ['-c', 'write -P 1 0 64k', '-c', 'write -z 1k 1k', '-c', 'write -z 32k 2k', '-c', 'write -P 2 100k 3k', '-c', 'write -z -u 128k 64k', '-c', 'discard 64k 32k', '-c', 'write -z 300k 1k', '-c', 'read -P 0 1k 1k', '-c', 'map', 'a.qcow2'],
    files: ['a.qcow2', 'd.raw'],
  },
  {
    name: 'write -c refused, data-file option and its errors',
    create: ['-o', 'data_file=d.raw', 'a.qcow2', '1M'],
    args: ['-c', 'write -c 0 64k', '-c', 'open -o data-file.filename=d.raw a.qcow2', '-c', 'write -P 5 4k 4k', '-c', 'open -o data-file.filename=nope.raw a.qcow2', '-c', 'open -o data-file.filename=d.raw p.qcow2'],
    files: ['a.qcow2', 'd.raw'],
  },
];

describe.skipIf(!qemu)('blk-io with qcow2 data files: parity with qemu-io 7.2', () => {
  const root = makeTempDir('qcow2-data-file-io');
  afterAll(() => removeTempDir(root));
  ioSessions.forEach((s, i) => {
    it(s.name, async () => {
      const dirs = [join(root, `q${i}`), join(root, `b${i}`)];
      for (const d of dirs) {
        mkdirSync(d);
        runQemuImg(['create', '-q', '-f', 'qcow2', 'p.qcow2', '1M'], { cwd: d });
        expect(runQemuImg(['create', '-q', '-f', 'qcow2', ...s.create], { cwd: d }).status).toBe(0);
      }
      const theirs = runQemuIo(s.args, { cwd: dirs[0] });
      const ours = await runOursIo(s.args, dirs[1]);
      expect(ours.stderr).toBe(theirs.stderr);
      expect(ours.stdout).toBe(maskTimings(theirs.stdout));
      expect(ours.status).toBe(theirs.status);
      for (const f of s.files) expect(readFileSync(join(dirs[1], f)).equals(readFileSync(join(dirs[0], f))), `${f} byte-identical`).toBe(true);
      const c = runQemuImg(['check', 'a.qcow2'], { cwd: dirs[1] });
      expect(c.stdout).toContain('No errors were found on the image.');
    });
  });
});
