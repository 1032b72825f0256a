// Holes in raw images against the reference: `qemu-img map --output=json -f raw` and our
// raw-over-file blockStatusAbove give the same runs (start, length, depth, present, zero, data,
// offset) for sparse files written by qemu-io, qemu-img and ourselves.
//
// Both sides ask the same kernel through lseek(SEEK_DATA / SEEK_HOLE), so the runs match exactly:
// they fall on file system block boundaries (4 KiB here) because that is what lseek reports (a
// 512-byte write makes its whole block data), not because qemu-img rounds (raw over file has a
// 1-byte request alignment). qemu-img map merges neighbouring answers with the same flags and
// contiguous offsets, and so does ours before comparing: how our driver splits its answers
// (one lseek pair per call) does not matter, only the merged map.
import { closeSync, openSync, statSync, truncateSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bdrvCreate } from '../../src/block/create.js';
import { BlockDriverState } from '../../src/block/node.js';
import { BlockDriverRegistry } from '../../src/block/registry.js';
import { fileDriver } from '../../src/drivers/file/index.js';
import { loadSeekAddon } from '../../src/drivers/file/seek.js';
import { rawDriver } from '../../src/drivers/raw/index.js';
import { makeTempDir, removeTempDir, requireQemu, runQemuImg, runQemuIo } from './qemu.js';

const qemu = requireQemu();
const addon = loadSeekAddon();
if (addon === null && process.env.CI === 'true') {
  throw new Error('the native seek addon (build/Release/blocklayer_seek.node) was not built: holes cannot match qemu-img map');
}
const registry = new BlockDriverRegistry().register(fileDriver).register(rawDriver);
const KiB = 1024;
const MiB = 1024 * 1024;

/** One entry of qemu-img map's JSON output (7.2: no "compressed" field yet; ignored if present). */
interface MapEntry {
  start: number;
  length: number;
  depth: number;
  present: boolean;
  zero: boolean;
  data: boolean;
  offset?: number;
}

function qemuMap(path: string): MapEntry[] {
  const r = runQemuImg(['map', '--output=json', '-f', 'raw', path]);
  expect(r.stderr).toBe('');
  expect(r.status).toBe(0);
  return (JSON.parse(r.stdout) as MapEntry[]).map((e) => {
    const out: MapEntry = { start: e.start, length: e.length, depth: e.depth, present: e.present, zero: e.zero, data: e.data };
    if (e.offset !== undefined) out.offset = e.offset;
    return out;
  });
}

/** Our map: blockStatusAbove over the whole disk, merged the way qemu-img map merges. */
async function ourMap(path: string): Promise<MapEntry[]> {
  const bs = await BlockDriverState.open(path, { format: 'raw', registry, readOnly: true });
  try {
    const len = await bs.getLength();
    const out: MapEntry[] = [];
    for (let pos = 0; pos < len; ) {
      const st = await bs.blockStatusAbove(pos, len - pos);
      expect(st.pnum).toBeGreaterThan(0);
      const e: MapEntry = { start: pos, length: st.pnum, depth: st.depth, present: st.allocated, zero: st.zero, data: st.data };
      if (st.offset !== undefined) e.offset = st.offset;
      const last = out.at(-1);
      const mergeable =
        last !== undefined &&
        last.depth === e.depth &&
        last.present === e.present &&
        last.zero === e.zero &&
        last.data === e.data &&
        (last.offset === undefined) === (e.offset === undefined) &&
        (e.offset === undefined || e.offset === last.offset! + last.length);
      if (mergeable) last.length += e.length;
      else out.push(e);
      pos += st.pnum;
    }
    return out;
  } finally {
    await bs.close();
  }
}

function qemuIo(path: string, cmds: string[]): void {
  const r = runQemuIo(['-f', 'raw', ...cmds.flatMap((c) => ['-c', c]), path]);
  expect(r.stderr).toBe('');
  expect(r.status).toBe(0);
}

describe.skipIf(!qemu || addon === null)('file driver holes vs qemu-img map (raw)', () => {
  let dir: string;
  beforeAll(() => {
    dir = makeTempDir('file-map');
  });
  afterAll(() => {
    removeTempDir(dir);
  });

  it('a sparse raw image written by qemu-io: same map', async () => {
    const p = join(dir, 'sparse.raw');
    expect(runQemuImg(['create', '-f', 'raw', p, '8M']).status).toBe(0);
    qemuIo(p, [
      'write -P 0x11 1M 64k',
      'write -P 0x22 3145984 512', // 3 MiB + 512: unaligned, the whole block becomes data
      'write -P 0x33 5M 4k',
      'write -P 0x44 7340032 12k',
      'write -P 0x55 8384512 4k', // the last block: no trailing hole
      'write -z 7344128 4k', // zeroed in the middle of data (fallocate zero-range or written)
      'write -z -u 1M 4k', // punched at the start of data
    ]);
    const want = qemuMap(p);
    // The image really is sparse here (else the test would prove nothing).
    expect(want.some((e) => e.zero && !e.data)).toBe(true);
    expect(want.some((e) => e.data)).toBe(true);
    expect(await ourMap(p)).toEqual(want);
  });

  it('qemu-img create alone, and a file with no holes at all: same map', async () => {
    const fresh = join(dir, 'fresh.raw');
    expect(runQemuImg(['create', '-f', 'raw', fresh, '2M']).status).toBe(0);
    const want = qemuMap(fresh);
    // QEMU's create writes the first block (alignment probing): data, then one hole.
    expect(want.map((e) => e.data)).toEqual([true, false]);
    expect(await ourMap(fresh)).toEqual(want);

    const full = join(dir, 'full.raw');
    expect(runQemuImg(['create', '-f', 'raw', full, '1M']).status).toBe(0);
    qemuIo(full, ['write -P 0x66 0 1M']);
    const fullMap = qemuMap(full);
    expect(fullMap).toEqual([{ start: 0, length: 1 * MiB, depth: 0, present: true, zero: false, data: true, offset: 0 }]);
    expect(await ourMap(full)).toEqual(fullMap);
  });

  it('an odd-length file: data up to its last block, then zeros to the sector end', async () => {
    const p = join(dir, 'odd.raw');
    const fd = openSync(p, 'w');
    try {
      writeSync(fd, Uint8Array.of(0x78), 0, 1, 20 * KiB + 3);
    } finally {
      closeSync(fd);
    }
    truncateSync(p, 40 * KiB + 1000);
    const want = qemuMap(p);
    expect(want.at(-1)).toMatchObject({ zero: true, data: false });
    expect(want.reduce((n, e) => n + e.length, 0)).toBe(41 * KiB);
    expect(await ourMap(p)).toEqual(want);
  });

  it('an image we create and write: qemu-img map sees what we report', async () => {
    const p = join(dir, 'ours.raw');
    await bdrvCreate(p, { format: 'raw', options: { size: 6 * MiB }, registry });
    // Same create result as QEMU's: first block data, the rest a hole.
    const created = qemuMap(p);
    expect(created.map((e) => [e.start, e.length, e.data])).toEqual([
      [0, 4 * KiB, true],
      [4 * KiB, 6 * MiB - 4 * KiB, false],
    ]);
    const bs = await BlockDriverState.open(p, { format: 'raw', registry });
    try {
      await bs.pwrite(2 * MiB, new Uint8Array(128 * KiB).fill(0x77));
      await bs.pwrite(4 * MiB + 100, new Uint8Array(10).fill(0x78));
      await bs.flush();
    } finally {
      await bs.close();
    }
    const want = qemuMap(p);
    expect(want.filter((e) => e.data).map((e) => e.start)).toEqual([0, 2 * MiB, 4 * MiB]);
    expect(await ourMap(p)).toEqual(want);
    expect(statSync(p).size).toBe(6 * MiB);
  });
  it('holes we punch and zero (write -z -u, discard, write -z, -zn): same map as qemu-io making them, and as we report', async () => {
    const ours = join(dir, 'zeroed-ours.raw');
    const theirs = join(dir, 'zeroed-qemu.raw');
    expect(runQemuImg(['create', '-f', 'raw', theirs, '4M']).status).toBe(0);
    await bdrvCreate(ours, { format: 'raw', options: { size: 4 * MiB }, registry });
    qemuIo(theirs, [
      'write -P 0x21 0 4M',
      'write -z -u 256k 256k',
      'discard 1M 512k',
      'write -z 2M 128k',
      'write -zn 2304k 64k',
      'write -z -u 3000001 70000',
      'discard 3500001 9000',
    ]);
    const bs = await BlockDriverState.open(ours, { format: 'raw', registry });
    try {
      // A flush after each write and zeroing, as qemu-io's default writethrough cache does: on
      // ext4 a ZERO_RANGE over data still dirty in the page cache stays data for SEEK_DATA.
      await bs.pwrite(0, new Uint8Array(4 * MiB).fill(0x21), { fua: true });
      await bs.writeZeroes(256 * KiB, 256 * KiB, { mayUnmap: true });
      await bs.flush();
      await bs.discard(1 * MiB, 512 * KiB);
      await bs.writeZeroes(2 * MiB, 128 * KiB);
      await bs.flush();
      await bs.writeZeroes(2304 * KiB, 64 * KiB, { noFallback: true });
      await bs.flush();
      await bs.writeZeroes(3_000_001, 70_000, { mayUnmap: true });
      await bs.flush();
      await bs.discard(3_500_001, 9_000);
    } finally {
      await bs.close();
    }
    const want = qemuMap(theirs);
    expect(want.filter((e) => e.zero && !e.data).map((e) => e.start)).toEqual(
      expect.arrayContaining([256 * KiB, 1 * MiB]),
    );
    expect(qemuMap(ours)).toEqual(want);
    expect(await ourMap(ours)).toEqual(want);
  });
});
