// Extended L2 entries (subclusters) against qemu-img / qemu-io 7.2. Each case runs the same
// steps on two copies of one image: qemu-io and qemu-img on the first, blk-io and blk-img (in
// process, under QEMU's program names) on the second. After every step stdout, stderr and the
// exit status must be the same and the two files byte-identical (snapshot dates masked); at
// the end qemu-img check must find the image clean. Cluster sizes 16 KiB to 2 MiB.
import { spawnSync } from 'node:child_process';
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { maskTimings } from '../../src/tools/io/main.js';
import { type Outcome, runOurs, runOursIo, runTheirs, sessionDiffs } from './img-parity-harness.js';
import { firstDiff, pairDirs } from './qcow2-snapshot-steps.js';
import { makeTempDir, qemuIoPath, removeTempDir, requireQemu, runQemuImg } from './qemu.js';

const qemu = requireQemu();

/** qemu-io commands on img.qcow2, a qemu-img command line, or a shell script (set-up, damage). */
type Step = { io: string[] } | { img: string[] } | { sh: string };

interface Case {
  name: string;
  steps: Step[];
}

function qemuIo(cmds: string[], cwd: string): Outcome {
  const r = spawnSync(qemuIoPath() ?? 'qemu-io', ['-f', 'qcow2', ...cmds.flatMap((c) => ['-c', c]), 'img.qcow2'], { argv0: 'qemu-io', cwd, encoding: 'utf8', timeout: 60_000 });
  return { stdout: maskTimings(String(r.stdout)), stderr: String(r.stderr), status: r.status };
}

function ourIo(cmds: string[], cwd: string): Promise<Outcome> {
  return runOursIo(['-f', 'qcow2', ...cmds.flatMap((c) => ['-c', c]), 'img.qcow2'], cwd);
}

function sh(script: string, cwd: string): void {
  const r = spawnSync('/bin/sh', ['-c', script], { cwd, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${script}: ${r.stderr}`);
}

const KiB = 1024;
const SIZES = [16 * KiB, 32 * KiB, 64 * KiB, 256 * KiB, 2048 * KiB];

const create = (cs: number, opts = '', size = 10 * cs): Step => ({ sh: `qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=${cs}${opts} img.qcow2 ${size}` });

/** Writes into new and kept clusters, one subcluster, several, across a cluster boundary. */
function writes(cs: number): string[] {
  const sc = cs / 32;
  return [
    `write -P 1 ${2 * sc + 100} ${sc / 2}`,
    `write -P 2 ${10 * sc} ${3 * sc + 700}`,
    `write -P 3 ${cs - sc - 300} ${2 * sc + 600}`,
    `write -P 4 ${3 * cs} ${cs}`,
    `write -P 5 ${5 * cs + 31 * sc} ${sc}`,
    `write -P 6 ${5 * cs} 512`,
    `read -P 1 ${2 * sc + 100} ${sc / 2}`,
    'map',
  ];
}

/** Zero writes aligned and not to subclusters, with and without unmap, and discards. */
function zeroes(cs: number): string[] {
  const sc = cs / 32;
  return [
    `write -P 5 0 ${cs}`,
    `write -z ${4 * sc} ${2 * sc}`,
    `write -z ${8 * sc + 512} 512`,
    `write -z ${cs + 2 * sc + 100} ${sc - 200}`,
    `write -z ${cs + 6 * sc + 100} ${3 * sc}`,
    `write -z ${2 * cs} ${cs}`,
    `write -P 7 ${2 * cs + 3 * sc} 1000`,
    `write -z -u 0 ${cs}`,
    `write -P 6 ${sc} 512`,
    `write -P 8 ${3 * cs} ${2 * cs}`,
    `write -z ${3 * cs + 30 * sc} ${cs + 4 * sc}`,
    `write -z -u ${4 * cs + 8 * sc} ${cs}`,
    `discard ${6 * cs} ${2 * cs}`,
    `discard ${3 * cs} ${cs}`,
    `discard ${sc} ${sc}`,
    `write -P 9 ${6 * cs + sc} ${sc}`,
    'map',
  ];
}

/** Compressed clusters: written, partly overwritten (copied), zeroed in part (written as zeros). */
function compressed(cs: number): string[] {
  const sc = cs / 32;
  return [
    `write -c -P 7 ${cs} ${cs}`,
    `write -c -P 8 ${2 * cs} ${cs}`,
    `write -z ${2 * cs + sc} ${sc}`,
    `write -P 9 ${cs + 100} 100`,
    `write -z 0 ${cs}`,
    `write -c -P 10 0 ${cs}`,
    `write -c -P 11 ${cs} ${cs}`,
    `write -z -u ${3 * cs} ${cs}`,
    `write -c -P 12 ${3 * cs} ${cs}`,
    'map',
  ];
}

const CASES: Case[] = [];
for (const cs of SIZES) {
  const sc = cs / 32;
  const k = `${cs / KiB} KiB clusters`;
  CASES.push({ name: `${k}: writes`, steps: [create(cs), { io: writes(cs) }, { io: ['write -P 2 0 100', 'map'] }] });
  CASES.push({ name: `${k}: zero writes and discard`, steps: [create(cs), { io: zeroes(cs) }] });
  CASES.push({
    name: `${k}: over a backing file`,
    steps: [
      { sh: `head -c ${12 * cs} /dev/zero | tr '\\0' 'w' > base.raw` },
      create(cs, ',backing_file=base.raw,backing_fmt=raw'),
      { io: writes(cs) },
      { io: zeroes(cs) },
      { img: ['map', '--output=json', 'img.qcow2'] },
    ],
  });
  CASES.push({ name: `${k}: compressed clusters`, steps: [create(cs), { io: compressed(cs) }] });
  CASES.push({
    name: `${k}: snapshots`,
    steps: [
      create(cs),
      { io: [`write -P 1 ${sc} ${2 * sc}`, `write -P 2 ${cs + 5 * sc} ${sc}`] },
      { img: ['snapshot', '-c', 's1', 'img.qcow2'] },
      { io: [`write -P 3 ${8 * sc} 512`, `write -P 4 ${cs} ${sc}`, `write -z ${3 * cs} ${sc}`, 'map'] },
      { img: ['snapshot', '-c', 's2', 'img.qcow2'] },
      { io: [`write -z ${sc} ${sc}`, `discard ${cs} ${cs}`] },
      { img: ['snapshot', '-a', 's1', 'img.qcow2'] },
      { io: [`read -P 1 ${sc} ${2 * sc}`, `write -P 5 ${20 * sc} ${sc}`] },
      { img: ['snapshot', '-d', 's1', 'img.qcow2'] },
      { img: ['snapshot', '-a', 's2', 'img.qcow2'] },
      { io: [`read -P 3 ${8 * sc} 512`, 'map'] },
    ],
  });
  CASES.push({
    name: `${k}: preallocation, then writes`,
    steps: [
      create(cs, ',preallocation=metadata'),
      { io: [`write -P 1 ${3 * sc + 100} 1000`, `write -z ${6 * sc} ${sc}`, `write -P 2 ${cs - 100} 200`, 'map'] },
      { img: ['resize', '--preallocation=falloc', 'img.qcow2', `${13 * cs - 1024}`] },
      { img: ['resize', '--preallocation=full', 'img.qcow2', `${15 * cs}`] },
      { img: ['resize', '--preallocation=metadata', 'img.qcow2', `${17 * cs + 512}`] },
      { io: [`write -P 3 ${11 * cs} ${sc * 3}`, `write -P 4 ${17 * cs} 512`, 'map'] },
    ],
  });
}
CASES.push(
  {
    name: 'create with preallocation over a backing file',
    steps: [
      { sh: `head -c ${1 << 20} /dev/zero | tr '\\0' 'b' > base.raw` },
      create(32 * KiB, ',preallocation=metadata,backing_file=base.raw,backing_fmt=raw', 1 << 20),
      { io: ['read -P 0x62 0 1M', 'write -P 1 40k 1k', 'read -P 0x62 32k 8k', 'map'] },
    ],
  },
  {
    name: 'amend: what stays and what is refused',
    steps: [
      create(64 * KiB),
      { io: ['write -P 1 4k 4k', 'write -z 64k 8k'] },
      { img: ['amend', '-o', 'extended_l2=off', 'img.qcow2'] },
      { img: ['amend', '-o', 'compat=0.10', 'img.qcow2'] },
      { img: ['amend', '-o', 'refcount_bits=4', 'img.qcow2'] },
      { img: ['amend', '-o', 'lazy_refcounts=on', 'img.qcow2'] },
      { io: ['write -P 2 70k 4k', 'map'] },
      { img: ['amend', '-o', 'lazy_refcounts=off,size=2M', 'img.qcow2'] },
      { img: ['info', 'img.qcow2'] },
    ],
  },
);

describe.skipIf(!qemu)('qcow2 extended L2 entries: the same steps through QEMU 7.2 and through us', () => {
  let root = '';
  let n = 0;
  beforeAll(() => {
    root = makeTempDir('qcow2-subcluster');
  });
  afterAll(() => removeTempDir(root));

  for (const c of CASES) {
    it(c.name, async () => {
      const [dq, db] = pairDirs(root, String(n++));
      for (const step of c.steps) {
        if ('sh' in step) {
          sh(step.sh, dq);
          for (const f of ['img.qcow2', 'base.raw']) {
            try {
              copyFileSync(join(dq, f), join(db, f));
            } catch {
              // Not made by this case.
            }
          }
          continue;
        }
        const label = 'io' in step ? `qemu-io ${step.io.join('; ')}` : `qemu-img ${step.img.join(' ')}`;
        const theirs = 'io' in step ? qemuIo(step.io, dq) : runTheirs(step.img, dq, false);
        const ours = 'io' in step ? await ourIo(step.io, db) : await runOurs(step.img, db, false);
        expect({ step: label, ...ours }).toEqual({ step: label, ...theirs });
        expect({ step: label, diff: firstDiff(join(db, 'img.qcow2'), join(dq, 'img.qcow2')) }).toEqual({ step: label, diff: null });
      }
      const check = runQemuImg(['check', 'img.qcow2'], { cwd: db });
      expect(check.stdout).toContain('No errors were found on the image.');
      expect(check.status).toBe(0);
    });
  }
});

/** Bytes poked into the L2 table of the first cluster: [entry index, word (0 entry, 1 bitmap), value]. */
interface Damage {
  name: string;
  pokes: Array<[number, 0 | 1, bigint]>;
}

const DAMAGES: Damage[] = [
  { name: 'a subcluster both allocated and zero', pokes: [[0, 1, 0x0000000400000004n]] },
  { name: 'an unallocated cluster with allocation bits', pokes: [[1, 1, 0x3n]] },
  { name: 'a compressed cluster with a bitmap', pokes: [[3, 1, 0x100000000n]] },
  { name: 'every kind at once', pokes: [[0, 1, 0xffffffffffffffffn], [1, 1, 0x80000000n], [3, 1, 1n]] },
];

describe.skipIf(!qemu)('qcow2 extended L2: check and check -r all on damaged subcluster bitmaps', () => {
  let root = '';
  beforeAll(() => {
    root = makeTempDir('qcow2-subcluster-check');
  });
  afterAll(() => removeTempDir(root));

  for (const [i, d] of DAMAGES.entries()) {
    it(d.name, async () => {
      const [dq, db] = pairDirs(root, String(i));
      sh('qemu-img create -q -f qcow2 -o extended_l2=on img.qcow2 1M', dq);
      expect(qemuIo(['write -P 1 4k 4k', 'write -c -P 2 192k 64k'], dq).status).toBe(0);
      const img = readFileSync(join(dq, 'img.qcow2'));
      const l2 = Number(img.readBigUInt64BE(Number(img.readBigUInt64BE(40))) & 0x00fffffffffffe00n);
      for (const [idx, word, value] of d.pokes) img.writeBigUInt64BE(value, l2 + idx * 16 + word * 8);
      writeFileSync(join(dq, 'img.qcow2'), img);
      writeFileSync(join(db, 'img.qcow2'), img);
      for (const args of [['check', 'img.qcow2'], ['check', '--output=json', 'img.qcow2'], ['check', '-r', 'all', 'img.qcow2'], ['map', 'img.qcow2']]) {
        const theirs = runTheirs(args, dq, false);
        const ours = await runOurs(args, db, false);
        expect({ step: args.join(' '), ...ours }).toEqual({ step: args.join(' '), ...theirs });
        expect(firstDiff(join(db, 'img.qcow2'), join(dq, 'img.qcow2'))).toBeNull();
      }
      // Writes into the damaged cluster are refused the same way (the corrupt bit is set).
      const theirs = qemuIo(['write -P 3 0 512', 'read -P 1 4k 4k'], dq);
      const ours = await ourIo(['write -P 3 0 512', 'read -P 1 4k 4k'], db);
      expect(ours).toEqual(theirs);
      expect(firstDiff(join(db, 'img.qcow2'), join(dq, 'img.qcow2'))).toBeNull();
    });
  }
});

describe.skipIf(!qemu)('qcow2 extended L2: create, convert and measure as qemu-img 7.2', () => {
  let root = '';
  beforeAll(() => {
    root = makeTempDir('qcow2-subcluster-create');
  });
  afterAll(() => removeTempDir(root));

  it('byte-identical images for clusters of 16 KiB to 2 MiB, every preallocation, over a backing file', async () => {
    const steps: string[][] = [];
    const identical: string[] = [];
    for (const cs of ['16k', '32k', '64k', '512k', '2M']) {
      for (const prealloc of ['off', 'metadata', 'falloc', 'full']) {
        const f = `c-${cs}-${prealloc}.qcow2`;
        steps.push(['create', '-f', 'qcow2', '-o', `extended_l2=on,cluster_size=${cs},preallocation=${prealloc}`, f, '5M']);
        identical.push(f);
      }
      const b = `b-${cs}.qcow2`;
      steps.push(['create', '-f', 'qcow2', '-o', `extended_l2=on,cluster_size=${cs},preallocation=metadata`, '-b', 'base.raw', '-F', 'raw', b]);
      steps.push(['measure', '-O', 'qcow2', '-o', `extended_l2=on,cluster_size=${cs}`, 'src.raw']);
      const conv = `conv-${cs}.qcow2`;
      steps.push(['convert', '-O', 'qcow2', '-o', `extended_l2=on,cluster_size=${cs}`, 'src.raw', conv]);
      identical.push(b, conv);
    }
    steps.push(['create', '-f', 'qcow2', '-o', 'extended_l2=on,cluster_size=8k', 'small.qcow2', '1M']);
    steps.push(['create', '-f', 'qcow2', '-o', 'extended_l2=on,compat=0.10', 'v2.qcow2', '1M']);
    const diffs = await sessionDiffs(root, {
      name: 'extended L2 create',
      setup: [
        ['qemu-img', 'create', '-q', '-f', 'raw', 'base.raw', '3M'],
        ['qemu-img', 'create', '-q', '-f', 'raw', 'src.raw', '5M'],
        ['qemu-io', '-f', 'raw', '-c', 'write -P 1 0 100k', '-c', 'write -P 2 1M 3k', '-c', 'write -P 3 4M 1M', 'src.raw'],
      ],
      steps,
      identical,
    });
    expect(diffs).toEqual([]);
  });
});
