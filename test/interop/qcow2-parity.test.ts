// qcow2 against the real qemu-img / qemu-io 7.2, both directions: images we create and write
// are byte-identical to QEMU's for the same options and qemu-io command sequences, pass
// `qemu-img check`, map the same; images QEMU writes (compressed ones too) read the same here.
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bdrvCreate } from '../../src/block/create.js';
import { BlockDriverState } from '../../src/index.js';
import { num, ourCommand } from './qcow2-support.js';
import { qemuMap, ourMap } from './qed-support.js';
import { makeTempDir, removeTempDir, requireQemu, runQemuImg, runQemuIo } from './qemu.js';

const qemu = requireQemu();
const d = qemu ? describe : describe.skip;

let dir = '';
beforeAll(() => {
  dir = makeTempDir('qcow2-parity');
  // A raw backing file of 4 MiB of 0x77.
  writeFileSync(join(dir, 'base.raw'), Buffer.alloc(4 << 20, 0x77));
});
afterAll(() => removeTempDir(dir));

interface Scenario {
  name: string;
  opts: string[];
  size: string;
  cmds: string[];
}

const scenarios: Scenario[] = [
  { name: 'first write', opts: [], size: '1G', cmds: ['write -P 0xaa 0 4k'] },
  { name: 'unaligned writes over several clusters', opts: [], size: '1G', cmds: ['write -P 0xaa 0 4k', 'write -P 0xbb 1M 64k', 'write -P 0xcc 65000 200000'] },
  { name: 'zero writes, unmap and not', opts: [], size: '1G', cmds: ['write -P 0xaa 0 4k', 'write -z 0 64k', 'write -z -u 1M 64k', 'write -z 2M 128k', 'write -P 1 512 512', 'write -z -u 0 64k', 'write -P 3 0 64k'] },
  { name: 'partial zero writes', opts: [], size: '1G', cmds: ['write -z 4096 4096', 'write -z 65536 1000', 'write -P 1 0 512', 'write -z 512 512'] },
  { name: 'discard and reuse of freed clusters', opts: [], size: '1G', cmds: ['write -P 0xaa 0 1M', 'discard 64k 128k', 'write -P 1 10M 4k', 'write -P 2 20M 200k'] },
  { name: 'v2 zero writes fall back to discard', opts: ['-o', 'compat=0.10'], size: '1G', cmds: ['write -P 0xaa 0 4k', 'write -z 0 64k', 'discard 1M 64k', 'write -P 2 1M 4k'] },
  { name: 'backing file COW', opts: ['-b', 'base.raw', '-F', 'raw'], size: '4M', cmds: ['write -P 0xaa 1000 4k', 'write -z 512k 100k', 'discard 1M 64k', 'write -z -u 2M 64k', 'write -P 5 3M 1000'] },
  { name: 'v2 backing file COW', opts: ['-o', 'compat=0.10', '-b', 'base.raw', '-F', 'raw'], size: '4M', cmds: ['write -P 0xaa 1000 4k', 'write -z 512k 100k', 'discard 1M 64k'] },
  { name: 'lazy refcounts', opts: ['-o', 'lazy_refcounts=on'], size: '4M', cmds: ['write -P 0xaa 1000 4k', 'write -P 1 2M 100k'] },
  { name: '512-byte clusters, refcount blocks and reftable growth', opts: ['-o', 'cluster_size=512'], size: '16M', cmds: ['write -P 0xaa 0 12M'] },
  { name: '1-bit refcounts', opts: ['-o', 'cluster_size=512,refcount_bits=1'], size: '16M', cmds: ['write -P 0xaa 0 9M', 'write -z -u 1M 1M', 'write -P 3 14M 64k'] },
  { name: '64-bit refcounts', opts: ['-o', 'cluster_size=4k,refcount_bits=64'], size: '64M', cmds: ['write -P 0xaa 0 3M', 'write -P 2 40M 100k'] },
  { name: '2 MiB clusters', opts: ['-o', 'cluster_size=2M'], size: '64M', cmds: ['write -P 0xaa 3M 100k', 'write -z 8M 2M'] },
  { name: 'write past a non-aligned end', opts: [], size: '1000k', cmds: ['write -P 9 960k 40k', 'write -z 900k 100k'] },
];

d('qcow2: qemu-io sequences give byte-identical files', () => {
  for (const sc of scenarios) {
    it(sc.name, async () => {
      const theirs = join(dir, `${sc.name.replace(/\W+/g, '-')}-q.qcow2`);
      const ours = join(dir, `${sc.name.replace(/\W+/g, '-')}-o.qcow2`);
      for (const f of [theirs, ours]) expect(runQemuImg(['create', '-q', '-f', 'qcow2', ...sc.opts, f, sc.size], { cwd: dir }).status).toBe(0);
      const args: string[] = ['-f', 'qcow2'];
      for (const c of sc.cmds) args.push('-c', c);
      const r = runQemuIo([...args, theirs], { cwd: dir });
      expect(r.stderr).toBe('');
      const bs = await BlockDriverState.open(ours, { format: 'qcow2' });
      try {
        for (const c of sc.cmds) await ourCommand(bs, c);
      } finally {
        await bs.close();
      }
      expect(readFileSync(ours).equals(readFileSync(theirs))).toBe(true);
      const check = runQemuImg(['check', ours]);
      expect(check.stdout).toContain('No errors were found on the image.');
      expect(check.status).toBe(0);
    });
  }
});

d('qcow2: resize is byte-identical to qemu-img resize', () => {
  for (const cs of ['512', '4k', '64k']) {
    for (const size of ['100k', '2M', '13M', '20M', '1G']) {
      it(`cluster_size=${cs} to ${size}`, async () => {
        const theirs = join(dir, `rs-${cs}-${size}-q.qcow2`);
        const ours = join(dir, `rs-${cs}-${size}-o.qcow2`);
        expect(runQemuImg(['create', '-q', '-f', 'qcow2', '-o', `cluster_size=${cs}`, theirs, '16M']).status).toBe(0);
        runQemuIo(['-f', 'qcow2', '-c', 'write -P 1 0 1M', '-c', 'write -P 2 12M 3M', theirs]);
        copyFileSync(theirs, ours);
        expect(runQemuImg(['resize', '-q', '--shrink', theirs, size]).status).toBe(0);
        const bs = await BlockDriverState.open(ours, { format: 'qcow2' });
        try {
          await bs.truncate(num(size));
        } finally {
          await bs.close();
        }
        expect(readFileSync(ours).equals(readFileSync(theirs))).toBe(true);
      });
    }
  }
});

const createSets: string[][] = [
  [],
  ['-o', 'compat=0.10'],
  ['-o', 'cluster_size=512'],
  ['-o', 'cluster_size=4k'],
  ['-o', 'cluster_size=2M'],
  ['-o', 'refcount_bits=1'],
  ['-o', 'refcount_bits=2'],
  ['-o', 'refcount_bits=8'],
  ['-o', 'refcount_bits=32'],
  ['-o', 'refcount_bits=64'],
  ['-o', 'lazy_refcounts=on'],
  ['-o', 'extended_l2=on'],
  ['-o', 'compression_type=zstd'],
  ['-o', 'preallocation=metadata'],
  ['-o', 'preallocation=metadata,cluster_size=4k'],
  ['-b', 'base.raw', '-F', 'raw'],
  ['-o', 'compat=0.10', '-b', 'base.raw', '-F', 'raw'],
  ['-o', 'cluster_size=4k', '-b', 'base.raw', '-F', 'raw'],
  ['-o', 'cluster_size=512', '-b', 'base.raw', '-F', 'raw'],
];

function createOptions(args: string[]): Record<string, string | number | boolean> {
  const out: Record<string, string | number | boolean> = {};
  for (let i = 0; i < args.length; i += 2) {
    if (args[i] === '-b') out.backing_file = args[i + 1];
    else if (args[i] === '-F') out.backing_fmt = args[i + 1];
    else {
      for (const kv of args[i + 1].split(',')) {
        const [k, v] = kv.split('=');
        if (v === 'on' || v === 'off') out[k] = v === 'on';
        else if (/^\d+[kM]?$/.test(v)) out[k] = num(v);
        else out[k] = v;
      }
    }
  }
  return out;
}

d('qcow2: create is byte-identical to qemu-img create', () => {
  for (const args of createSets) {
    // Metadata preallocation writes every L2 table: a smaller disk keeps the files quick to compare.
    const sizes = args.some((a) => a.includes('preallocation')) ? ['64M', '1000', '0'] : ['1G', '1000', '0'];
    for (const size of sizes) {
      if (size === '0' && args.includes('-b')) continue;
      it(`${args.join(' ') || 'defaults'} size=${size}`, async () => {
        const tag = `${args.join('_').replace(/\W+/g, '-')}-${size}`;
        const theirs = join(dir, `c-${tag}-q.qcow2`);
        const ours = join(dir, `c-${tag}-o.qcow2`);
        const sizeArgs = args.includes('-b') ? [] : [size];
        expect(runQemuImg(['create', '-q', '-f', 'qcow2', ...args, theirs, ...sizeArgs], { cwd: dir }).status).toBe(0);
        const options = createOptions(args);
        options.size = args.includes('-b') ? 4 << 20 : num(size);
        const cwd = process.cwd();
        process.chdir(dir);
        try {
          await bdrvCreate(ours, { format: 'qcow2', options });
        } finally {
          process.chdir(cwd);
        }
        expect(readFileSync(ours).equals(readFileSync(theirs))).toBe(true);
      });
    }
  }
});

d('qcow2: images written by QEMU read the same here', () => {
  it('compressed (zlib and zstd), zero and data clusters, with map parity', async () => {
    const raw = join(dir, 'src.raw');
    const data = Buffer.alloc(3 << 20);
    data.fill(0x11, 0, 65536);
    for (let i = 65536; i < 131072; i++) data[i] = (i * 7919) % 251;
    data.write('hello world '.repeat(10000), 200000);
    writeFileSync(raw, data);
    for (const ctype of ['zlib', 'zstd']) {
      const img = join(dir, `conv-${ctype}.qcow2`);
      expect(runQemuImg(['convert', '-c', '-O', 'qcow2', '-o', `compression_type=${ctype}`, raw, img]).status).toBe(0);
      runQemuIo(['-f', 'qcow2', '-c', 'write -z 1M 64k', '-c', 'write -P 3 2M 4k', img]);
      const expected = join(dir, `conv-${ctype}.raw`);
      expect(runQemuImg(['convert', '-O', 'raw', img, expected]).status).toBe(0);
      const bs = await BlockDriverState.open(img, { format: 'qcow2', readOnly: true });
      try {
        const got = new Uint8Array(await bs.getLength());
        await bs.pread(0, got);
        expect(Buffer.from(got).equals(readFileSync(expected))).toBe(true);
        expect(await ourMap(bs)).toEqual(qemuMap(img));
      } finally {
        await bs.close();
      }
    }
  });

  it('reads and maps extended-L2 images (subclusters) as QEMU does', async () => {
    const img = join(dir, 'ext.qcow2');
    expect(runQemuImg(['create', '-q', '-f', 'qcow2', '-o', 'extended_l2=on', '-b', 'base.raw', '-F', 'raw', img, '4M'], { cwd: dir }).status).toBe(0);
    runQemuIo(['-f', 'qcow2', '-c', 'write -P 1 4k 1k', '-c', 'write -z 64k 8k', '-c', 'write -P 2 200k 100k', '-c', 'discard 1M 64k', img], { cwd: dir });
    const expected = join(dir, 'ext.raw');
    expect(runQemuImg(['convert', '-O', 'raw', img, expected]).status).toBe(0);
    const bs = await BlockDriverState.open(img, { format: 'qcow2', readOnly: true });
    try {
      const got = new Uint8Array(4 << 20);
      await bs.pread(0, got);
      expect(Buffer.from(got).equals(readFileSync(expected))).toBe(true);
      expect(await ourMap(bs)).toEqual(qemuMap(img));
    } finally {
      await bs.close();
    }
  });

  it('copies clusters shared with an internal snapshot as QEMU does', async () => {
    const theirs = join(dir, 'snap-q.qcow2');
    const ours = join(dir, 'snap-o.qcow2');
    expect(runQemuImg(['create', '-q', '-f', 'qcow2', theirs, '1M']).status).toBe(0);
    runQemuIo(['-f', 'qcow2', '-c', 'write -P 1 0 64k', '-c', 'write -c -P 5 64k 64k', theirs]);
    expect(runQemuImg(['snapshot', '-c', 's1', theirs]).status).toBe(0);
    copyFileSync(theirs, ours);
    const cmds = ['write -P 2 0 4k', 'write -P 3 64k 4k', 'write -z -u 128k 64k'];
    runQemuIo(['-f', 'qcow2', ...cmds.flatMap((c) => ['-c', c]), theirs]);
    const bs = await BlockDriverState.open(ours, { format: 'qcow2' });
    try {
      for (const c of cmds) await ourCommand(bs, c);
    } finally {
      await bs.close();
    }
    expect(readFileSync(ours).equals(readFileSync(theirs))).toBe(true);
    expect(runQemuImg(['snapshot', '-a', 's1', ours]).status).toBe(0);
    expect(runQemuIo(['-r', '-f', 'qcow2', '-c', 'read -P 1 0 64k', '-c', 'read -P 5 64k 64k', ours]).stdout).not.toMatch(/Pattern verification failed/);
  });

  it('opens QEMU images with a backing chain (qcow2 over qcow2 over raw) and COWs from it', async () => {
    const mid = join(dir, 'chain-mid.qcow2');
    const top = join(dir, 'chain-top.qcow2');
    expect(runQemuImg(['create', '-q', '-f', 'qcow2', '-b', 'base.raw', '-F', 'raw', mid], { cwd: dir }).status).toBe(0);
    runQemuIo(['-f', 'qcow2', '-c', 'write -P 0x22 64k 64k', mid]);
    expect(runQemuImg(['create', '-q', '-f', 'qcow2', '-b', 'chain-mid.qcow2', '-F', 'qcow2', top], { cwd: dir }).status).toBe(0);
    const theirs = join(dir, 'chain-top-q.qcow2');
    copyFileSync(top, theirs);
    runQemuIo(['-f', 'qcow2', '-c', 'write -P 0x33 70k 1k', theirs], { cwd: dir });
    const bs = await BlockDriverState.open(top, { format: 'qcow2' });
    try {
      await ourCommand(bs, 'write -P 0x33 70k 1k');
      const buf = new Uint8Array(192 << 10);
      await bs.pread(0, buf);
      expect(buf[0]).toBe(0x77);
      expect(buf[64 << 10]).toBe(0x22);
      expect(buf[70 << 10]).toBe(0x33);
      expect(buf[128 << 10]).toBe(0x77);
    } finally {
      await bs.close();
    }
    expect(readFileSync(top).equals(readFileSync(theirs))).toBe(true);
  });
});
