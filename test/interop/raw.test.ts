// raw images against the reference: what we write is byte-identical to what `qemu-io -f raw`
// writes with the same commands, and qemu-img / qemu-io read our images.
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bdrvCreate } from '../../src/block/create.js';
import type { BlockDriver } from '../../src/block/driver.js';
import { BlockError } from '../../src/block/errors.js';
import { IOVector } from '../../src/block/iovec.js';
import { BlockDriverState } from '../../src/block/node.js';
import { BlockDriverRegistry } from '../../src/block/registry.js';
import { fileDriver } from '../../src/drivers/file/index.js';
import { memDriver } from '../../src/drivers/mem/index.js';
import { rawDriver } from '../../src/drivers/raw/index.js';
import { makeTempDir, removeTempDir, requireQemu, runQemuImg, runQemuIo } from './qemu.js';

/** Claims images starting with QED's magic, as QEMU's qed probe does (for the probed-raw guard). */
const qedMagicProbe: BlockDriver = {
  formatName: 'qedmagic',
  probe: (b) => (b.length >= 4 && b[0] === 0x51 && b[1] === 0x45 && b[2] === 0x44 && b[3] === 0 ? 100 : 0),
};
const registry = new BlockDriverRegistry().register(fileDriver).register(memDriver).register(rawDriver).register(qedMagicProbe);

type Op =
  | { kind: 'write'; offset: number; len: number; pattern: number; fua?: boolean }
  | { kind: 'writev'; offset: number; lens: number[]; pattern: number }
  | { kind: 'zero'; offset: number; len: number; unmap?: boolean; noFallback?: boolean }
  | { kind: 'discard'; offset: number; len: number }
  | { kind: 'truncate'; size: number };

function qemuCommand(op: Op): string {
  switch (op.kind) {
    case 'write':
      return `write ${op.fua === true ? '-f ' : ''}-P 0x${op.pattern.toString(16)} ${op.offset} ${op.len}`;
    case 'writev':
      return `writev -P 0x${op.pattern.toString(16)} ${op.offset} ${op.lens.join(' ')}`;
    case 'zero':
      return `write -z${op.unmap === true ? ' -u' : ''}${op.noFallback === true ? ' -n' : ''} ${op.offset} ${op.len}`;
    case 'discard':
      return `discard ${op.offset} ${op.len}`;
    case 'truncate':
      return `truncate ${op.size}`;
  }
}

async function applyOurs(bs: BlockDriverState, op: Op): Promise<void> {
  switch (op.kind) {
    case 'write':
      await bs.pwrite(op.offset, new Uint8Array(op.len).fill(op.pattern), { fua: op.fua === true });
      return;
    case 'writev':
      // qemu-io fills every buffer of the vector with the same pattern.
      await bs.pwritev(op.offset, new IOVector(op.lens.map((l) => new Uint8Array(l).fill(op.pattern))));
      return;
    case 'zero':
      await bs.writeZeroes(op.offset, op.len, { mayUnmap: op.unmap === true, noFallback: op.noFallback === true });
      return;
    case 'discard':
      await bs.discard(op.offset, op.len);
      return;
    case 'truncate':
      await bs.truncate(op.size);
      return;
  }
}

/** qemu-img map's JSON for a raw image: the reference reads both files' holes the same way. */
function qemuMapJson(path: string): unknown {
  const r = runQemuImg(['map', '--output=json', '-f', 'raw', path]);
  expect(r.status, r.stderr).toBe(0);
  return JSON.parse(r.stdout);
}

function runQemuIoOk(args: string[]): string {
  const r = runQemuIo(args);
  if (r.status !== 0 || /failed|error/i.test(r.stdout + r.stderr)) {
    throw new Error(`qemu-io ${args.join(' ')} -> ${r.status}\n${r.stdout}\n${r.stderr}`);
  }
  return r.stdout;
}

function sameFiles(a: string, b: string): void {
  const x = readFileSync(a);
  const y = readFileSync(b);
  expect(x.length).toBe(y.length);
  if (!x.equals(y)) {
    let i = 0;
    while (x[i] === y[i]) i++;
    expect.fail(`${a} and ${b} differ first at byte ${i}: ${x[i]} vs ${y[i]}`);
  }
}

/** mulberry32: a small seeded PRNG, so a failure reproduces. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const qemu = requireQemu();

describe.skipIf(!qemu)('raw interop with qemu-img / qemu-io', () => {
  let dir: string;
  beforeAll(() => {
    dir = makeTempDir('raw-interop');
  });
  afterAll(() => {
    removeTempDir(dir);
  });

  /** Create both images, run the ops on each side, compare the whole files. */
  async function compareRun(name: string, size: number, ops: Op[]): Promise<{ ours: string; theirs: string }> {
    const ours = join(dir, `${name}-ours.raw`);
    const theirs = join(dir, `${name}-qemu.raw`);
    const c = runQemuImg(['create', '-q', '-f', 'raw', theirs, String(size)]);
    expect(c.status, c.stderr).toBe(0);
    await bdrvCreate(ours, { format: 'raw', options: { size }, registry });
    sameFiles(ours, theirs);

    // qemu-io runs the commands in order in one process.
    runQemuIoOk(['-f', 'raw', ...ops.flatMap((op) => ['-c', qemuCommand(op)]), theirs]);
    const bs = await BlockDriverState.open(ours, { format: 'raw', registry });
    try {
      for (const op of ops) {
        await applyOurs(bs, op);
        // qemu-io's default cache is writethrough: a flush after every write (zeroing too, not
        // discard). It decides what later fallocates find: on ext4 a ZERO_RANGE over data
        // still dirty in the page cache stays data for SEEK_DATA, over written-back data it
        // becomes a hole; the maps only match if ours flushes where qemu-io does.
        if (op.kind !== 'discard' && op.kind !== 'truncate') await bs.flush();
      }
    } finally {
      await bs.close();
    }
    sameFiles(ours, theirs);
    return { ours, theirs };
  }

  it('fixed writes (unaligned offsets and lengths, vectors, FUA, zeroes) give identical files', async () => {
    const ops: Op[] = [
      { kind: 'write', offset: 1000, len: 3000, pattern: 0xab },
      { kind: 'write', offset: 0, len: 512, pattern: 0x01 },
      { kind: 'write', offset: 65_535, len: 70_000, pattern: 0xcd },
      { kind: 'zero', offset: 4096, len: 8192 },
      { kind: 'writev', offset: 100_001, lens: [1, 511, 4096, 3], pattern: 0x5a },
      { kind: 'write', offset: 777, len: 77, pattern: 0x77, fua: true },
      { kind: 'zero', offset: 70_001, len: 999 },
      { kind: 'write', offset: 1_048_575, len: 1, pattern: 0xef },
      { kind: 'zero', offset: 1_040_000, len: 8_575 },
      { kind: 'write', offset: 1_040_001, len: 3, pattern: 0x0f },
    ];
    const { ours, theirs } = await compareRun('fixed', 1 << 20, ops);

    // qemu-img and qemu-io read ours.
    const cmp = runQemuImg(['compare', '-f', 'raw', '-F', 'raw', ours, theirs]);
    expect(cmp.status, cmp.stdout + cmp.stderr).toBe(0);
    expect(cmp.stdout).toContain('Images are identical.');
    runQemuIoOk([
      '-f',
      'raw',
      '-r',
      '-c',
      'read -P 0x01 0 512',
      '-c',
      'read -P 0x77 777 77',
      '-c',
      'read -P 0xab 1000 3000',
      '-c',
      'read -P 0 854 146',
      '-c',
      'read -P 0 4096 8192',
      '-c',
      'read -P 0x5a 100001 4611',
      '-c',
      'read -P 0xef 1048575 1',
      ours,
    ]);
    const info = runQemuImg(['info', '--output=json', '-f', 'raw', ours]);
    expect(info.status).toBe(0);
    const parsed = JSON.parse(info.stdout) as Record<string, unknown>;
    expect(parsed['virtual-size']).toBe(1 << 20);
    expect(parsed.format).toBe('raw');
  });

  it('write -z, -z -u, -zn, -z -u -n and discard: identical files and identical qemu-img map', async () => {
    const size = 1 << 20;
    const ops: Op[] = [
      // Data everywhere first, so every hole below is one the zeroing or discard made.
      { kind: 'write', offset: 0, len: size, pattern: 0xa5 },
      { kind: 'zero', offset: 64 * 1024, len: 64 * 1024, unmap: true },
      { kind: 'discard', offset: 192 * 1024, len: 128 * 1024 },
      { kind: 'zero', offset: 384 * 1024, len: 64 * 1024 },
      { kind: 'zero', offset: 512 * 1024, len: 64 * 1024, noFallback: true },
      { kind: 'zero', offset: 600 * 1024, len: 40 * 1024, unmap: true, noFallback: true },
      // Unaligned edges: partial blocks are zeroed in place, whole blocks become holes.
      { kind: 'zero', offset: 700_001, len: 30_000, unmap: true },
      { kind: 'discard', offset: 760_123, len: 20_000 },
      { kind: 'zero', offset: 800_003, len: 9_999, noFallback: true },
      { kind: 'discard', offset: 900_000, len: 100 },
      // Written again over a hole, then zeroed at the very end of the image.
      { kind: 'write', offset: 70_000, len: 5_000, pattern: 0x3c },
      { kind: 'zero', offset: size - 12_288, len: 12_288, unmap: true },
      { kind: 'discard', offset: size - 20_480, len: 4_096 },
    ];
    const { ours, theirs } = await compareRun('zero-flags', size, ops);
    expect(qemuMapJson(ours)).toEqual(qemuMapJson(theirs));
    // The holes are real: both maps show zero ranges.
    expect(JSON.stringify(qemuMapJson(ours))).toContain('"zero":true');
    expect(statSync(ours).blocks).toBe(statSync(theirs).blocks);
  });

  it('zeroing and discarding the sector tail of an odd-length file matches qemu-io (length and map)', async () => {
    for (const [i, cmd] of (
      [
        { kind: 'zero', offset: 512, len: 512 },
        { kind: 'zero', offset: 512, len: 512, unmap: true },
        { kind: 'zero', offset: 512, len: 512, noFallback: true },
        { kind: 'zero', offset: 1000, len: 24 },
        { kind: 'discard', offset: 0, len: 1024 },
      ] satisfies Op[]
    ).entries()) {
      const ours = join(dir, `tail-${i}-ours.raw`);
      const theirs = join(dir, `tail-${i}-qemu.raw`);
      const body = new Uint8Array(1001).fill(0x42);
      writeFileSync(ours, body);
      writeFileSync(theirs, body);
      runQemuIoOk(['-f', 'raw', '-c', qemuCommand(cmd), theirs]);
      const bs = await BlockDriverState.open(ours, { format: 'raw', registry });
      try {
        await applyOurs(bs, cmd);
      } finally {
        await bs.close();
      }
      sameFiles(ours, theirs);
      expect(qemuMapJson(ours)).toEqual(qemuMapJson(theirs));
    }
  });

  it('random writes, zeroes (all flag mixes) and discards (seeded): identical files and map', async () => {
    const rnd = prng(0x2e40);
    const size = 2 << 20;
    const ops: Op[] = [{ kind: 'write', offset: 0, len: size, pattern: 0x11 }];
    for (let i = 0; i < 50; i++) {
      const len = 1 + Math.floor(rnd() * (rnd() < 0.3 ? 200_000 : 20_000));
      // Half the requests on 4 KiB boundaries, where whole blocks can become holes.
      let offset = Math.floor(rnd() * (size - len));
      if (rnd() < 0.5) offset -= offset % 4096;
      const r = rnd();
      if (r < 0.2) ops.push({ kind: 'discard', offset, len });
      else if (r < 0.6) ops.push({ kind: 'zero', offset, len, unmap: rnd() < 0.5, noFallback: rnd() < 0.3 });
      else ops.push({ kind: 'write', offset, len, pattern: Math.floor(rnd() * 256) });
    }
    const { ours, theirs } = await compareRun('zero-random', size, ops);
    expect(qemuMapJson(ours)).toEqual(qemuMapJson(theirs));
  });

  it('creation of odd sizes rounds up to whole sectors, like qemu-img create', async () => {
    for (const size of [0, 1, 511, 513, 1000, 1_000_001]) {
      const ours = join(dir, `size-${size}-ours.raw`);
      const theirs = join(dir, `size-${size}-qemu.raw`);
      expect(runQemuImg(['create', '-q', '-f', 'raw', theirs, String(size)]).status).toBe(0);
      await bdrvCreate(ours, { format: 'raw', options: { size }, registry });
      expect(statSync(ours).size).toBe(statSync(theirs).size);
      sameFiles(ours, theirs);
    }
  });

  it('growing with truncate, then writing into the new space, matches qemu-io', async () => {
    await compareRun('grow', 64 * 1024, [
      { kind: 'write', offset: 60_000, len: 5_536, pattern: 0x11 },
      { kind: 'truncate', size: 300_000 },
      { kind: 'write', offset: 65_000, len: 200_000, pattern: 0x22 },
      { kind: 'truncate', size: 1_000_000 },
      { kind: 'zero', offset: 100_000, len: 50_000 },
      { kind: 'write', offset: 999_999, len: 1, pattern: 0x33 },
    ]);
  });

  it('random unaligned writes (seeded) give identical files', async () => {
    const rnd = prng(0x5eed);
    const size = 512 * 1024;
    const ops: Op[] = [];
    for (let i = 0; i < 60; i++) {
      const len = 1 + Math.floor(rnd() * (rnd() < 0.2 ? 70_000 : 3_000));
      const offset = Math.floor(rnd() * (size - len));
      const pattern = Math.floor(rnd() * 256);
      const r = rnd();
      if (r < 0.15) ops.push({ kind: 'zero', offset, len });
      else if (r < 0.3) {
        const a = 1 + Math.floor(rnd() * (len - 1 || 1));
        ops.push(len > 1 ? { kind: 'writev', offset, lens: [a, len - a].filter((x) => x > 0), pattern } : { kind: 'write', offset, len, pattern });
      } else ops.push({ kind: 'write', offset, len, pattern });
    }
    const { ours, theirs } = await compareRun('random', size, ops);
    const cmp = runQemuImg(['compare', '-f', 'raw', '-F', 'raw', ours, theirs]);
    expect(cmp.status, cmp.stdout + cmp.stderr).toBe(0);
  });

  it('a file of odd length: same virtual size as qemu-img info, same tail writes as qemu-io', async () => {
    const ours = join(dir, 'odd-ours.raw');
    const theirs = join(dir, 'odd-qemu.raw');
    const body = new Uint8Array(1001).fill(0x42);
    writeFileSync(ours, body);
    writeFileSync(theirs, body);
    const info = runQemuImg(['info', '--output=json', '-f', 'raw', theirs]);
    expect(info.status).toBe(0);
    const bs = await BlockDriverState.open(ours, { format: 'raw', registry });
    try {
      expect(await bs.getLength()).toBe((JSON.parse(info.stdout) as Record<string, number>)['virtual-size']);
      await bs.pwrite(1010, new Uint8Array(4).fill(1));
    } finally {
      await bs.close();
    }
    runQemuIoOk(['-f', 'raw', '-c', 'write -P 1 1010 4', theirs]);
    sameFiles(ours, theirs);
  });

  it('we read what qemu-io wrote', async () => {
    const theirs = join(dir, 'read-qemu.raw');
    expect(runQemuImg(['create', '-q', '-f', 'raw', theirs, '1M']).status).toBe(0);
    runQemuIoOk(['-f', 'raw', '-c', 'write -P 0x3c 12345 6789', '-c', 'writev -P 0x4d 500000 1 2 3', theirs]);
    const bs = await BlockDriverState.open(theirs, { format: 'raw', registry, readOnly: true });
    try {
      expect(await bs.getLength()).toBe(1 << 20);
      const a = new Uint8Array(6791);
      await bs.pread(12344, a);
      expect(a[0]).toBe(0);
      expect(a.subarray(1, 6790).every((b) => b === 0x3c)).toBe(true);
      expect(a[6790]).toBe(0);
      const b = [new Uint8Array(2), new Uint8Array(4)];
      await bs.preadv(500_000, new IOVector(b));
      expect([...b[0], ...b[1]]).toEqual([0x4d, 0x4d, 0x4d, 0x4d, 0x4d, 0x4d]);
    } finally {
      await bs.close();
    }
  });

  it('probed raw: QEMU and we both refuse a QED magic in sector 0; with -f raw both allow it', async () => {
    const magicFile = join(dir, 'magic.bin');
    writeFileSync(magicFile, Uint8Array.of(0x51, 0x45, 0x44, 0x00));
    const theirs = join(dir, 'probed-qemu.raw');
    const ours = join(dir, 'probed-ours.raw');
    expect(runQemuImg(['create', '-q', '-f', 'raw', theirs, '64K']).status).toBe(0);
    await bdrvCreate(ours, { format: 'raw', options: { size: 64 * 1024 }, registry });

    // No -f: QEMU probes raw and restricts block 0.
    const refused = runQemuIo(['-c', `write -s ${magicFile} 0 512`, theirs]);
    expect(refused.stdout + refused.stderr).toContain('Operation not permitted');
    const bs = await BlockDriverState.open(ours, { registry });
    try {
      expect(bs.driver).toBe(rawDriver);
      const sector = new Uint8Array(512);
      for (let i = 0; i < 512; i += 4) sector.set([0x51, 0x45, 0x44, 0x00], i);
      const err = await bs.pwrite(0, sector).then(
        () => null,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(BlockError);
      expect((err as BlockError).code).toBe('EPERM');
      // Sector 1 is not probed: both allow it.
      runQemuIoOk(['-c', `write -s ${magicFile} 512 512`, theirs]);
      await bs.pwrite(512, sector);
    } finally {
      await bs.close();
    }
    sameFiles(ours, theirs);

    // With the format given, both write it.
    runQemuIoOk(['-f', 'raw', '-c', `write -s ${magicFile} 0 512`, theirs]);
    const explicit = await BlockDriverState.open(ours, { format: 'raw', registry });
    try {
      const sector = new Uint8Array(512);
      for (let i = 0; i < 512; i += 4) sector.set([0x51, 0x45, 0x44, 0x00], i);
      await explicit.pwrite(0, sector);
    } finally {
      await explicit.close();
    }
    sameFiles(ours, theirs);
  });
});
