// Internal snapshots read from images qemu-img 7.2 made: blk-img snapshot -l and info (text
// and JSON) against qemu-img on the same files, including an entry patched to have a VM
// clock, a large VM state, no icount and unknown extra data; and the snapshot table codec
// re-encoding QEMU's tables byte for byte.
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { decodeSnapshotTable, encodeSnapshotTable } from '../../src/drivers/qcow2/snapshot-table.js';
import { sessionDiffs, type Session } from './img-parity-harness.js';
import { makeTempDir, removeTempDir, requireQemu, runQemuImg, runQemuIo } from './qemu.js';

const qemu = requireQemu();

function ok(r: { status: number | null; stderr: string }): void {
  if (r.status !== 0) throw new Error(r.stderr);
}

/** Header fields of a qcow2 file: snapshot count and table offset. */
function snapshotTable(img: Buffer): { nb: number; offset: number } {
  return { nb: img.readUInt32BE(60), offset: Number(img.readBigUInt64BE(64)) };
}

/**
 * Templates made once (snapshot dates come from the clock, so both sides must read the same
 * files): plain.qcow2 without snapshots, snaps.qcow2 with three, patched.qcow2 whose first
 * entry was edited in place (same length: extra data stays 24 bytes).
 */
function templates(dir: string): void {
  ok(runQemuImg(['create', '-q', '-f', 'qcow2', 'plain.qcow2', '1M'], { cwd: dir }));
  ok(runQemuImg(['create', '-q', '-f', 'qcow2', 'snaps.qcow2', '1M'], { cwd: dir }));
  ok(runQemuIo(['-c', 'write -P 1 0 64k', 'snaps.qcow2'], { cwd: dir }));
  for (const n of ['snap1', 'a longer name than sixteen', 'snap1']) ok(runQemuImg(['snapshot', '-c', n, 'snaps.qcow2'], { cwd: dir }));
  const img = readFileSync(join(dir, 'snaps.qcow2'));
  const { offset } = snapshotTable(img);
  // First entry: VM clock 3725.5 s, VM state 5 GiB (32-bit field 0, as QEMU writes it), icount -1.
  img.writeBigUInt64BE(3725_500_000_000n, offset + 24);
  img.writeUInt32BE(0, offset + 32);
  img.writeBigUInt64BE(5n << 30n, offset + 40);
  img.writeBigInt64BE(-1n, offset + 56);
  writeFileSync(join(dir, 'patched.qcow2'), img);
}

describe.skipIf(!qemu)('qcow2 internal snapshots: listing against qemu-img 7.2', () => {
  const root = makeTempDir('qcow2-snapshot-img');
  const tdir = join(root, 'templates');
  if (qemu) {
    mkdirSync(tdir);
    templates(tdir);
  }
  afterAll(() => removeTempDir(root));

  const cp = (...names: string[]): string[][] => names.map((n) => ['sh', `cp ${join(tdir, n)} ${n}`]);
  const sessions: Session[] = [
    {
      name: 'snapshot -l and info on images with and without snapshots',
      setup: cp('plain.qcow2', 'snaps.qcow2', 'patched.qcow2'),
      steps: [
        { args: ['snapshot', '-l', 'snaps.qcow2'], merged: true },
        { args: ['snapshot', '-l', 'patched.qcow2'], merged: true },
        { args: ['snapshot', '-l', 'plain.qcow2'], merged: true },
        { args: ['snapshot', '-l', '-q', '-U', 'snaps.qcow2'], merged: true },
        { args: ['info', 'snaps.qcow2'], merged: true },
        { args: ['info', 'patched.qcow2'], merged: true },
        { args: ['info', '--output=json', 'snaps.qcow2'], merged: true },
        { args: ['info', '--output=json', 'patched.qcow2'], merged: true },
        { args: ['info', '--output=json', 'plain.qcow2'], merged: true },
        { args: ['snapshot', 'snaps.qcow2'], merged: true },
      ],
      images: ['snaps.qcow2'],
    },
    {
      name: 'snapshot: bad command lines and snapshots not found',
      setup: cp('snaps.qcow2'),
      steps: [
        { args: ['snapshot', '-l', '-c', 'x', 'snaps.qcow2'], merged: true },
        { args: ['snapshot', '-a', 'x', '-d', 'y', 'snaps.qcow2'], merged: true },
        { args: ['snapshot', '-l'], merged: true },
        { args: ['snapshot', '-l', 'a', 'b'], merged: true },
        { args: ['snapshot', '-f', 'qcow2', '-l', 'snaps.qcow2'], merged: true },
        { args: ['snapshot', '-d', 'nothere', 'snaps.qcow2'], merged: true },
        { args: ['snapshot', '-d', '1', 'snaps.qcow2'], merged: true },
        { args: ['snapshot', '-l', 'nothere.qcow2'], merged: true },
        { args: ['snapshot', '-l', '--image-opts', 'driver=qcow2,file.filename=snaps.qcow2'], merged: true },
      ],
      images: ['snaps.qcow2'],
    },
  ];
  for (const s of sessions) {
    it(s.name, async () => {
      expect(await sessionDiffs(root, s)).toEqual([]);
    });
  }

  it('decodes and re-encodes QEMU snapshot tables byte for byte', () => {
    for (const name of ['snaps.qcow2', 'patched.qcow2']) {
      const img = readFileSync(join(tdir, name));
      const { nb, offset } = snapshotTable(img);
      const { snapshots, size } = decodeSnapshotTable(img.subarray(offset), nb, 1 << 20);
      expect(snapshots.map((s) => [s.id, s.name])).toEqual([
        ['1', 'snap1'],
        ['2', 'a longer name than sixteen'],
        ['3', 'snap1'],
      ]);
      expect(Buffer.from(encodeSnapshotTable(snapshots))).toEqual(img.subarray(offset, offset + size));
    }
  });

  it('keeps unknown extra data when re-encoding', () => {
    const img = readFileSync(join(tdir, 'snaps.qcow2'));
    const { nb, offset } = snapshotTable(img);
    const { snapshots } = decodeSnapshotTable(img.subarray(offset), nb, 1 << 20);
    snapshots[1].unknownExtraData = Uint8Array.from([1, 2, 3, 4, 5, 6, 7, 8, 9]);
    const again = decodeSnapshotTable(encodeSnapshotTable(snapshots), nb, 1 << 20).snapshots;
    expect(again).toEqual(snapshots);
    expect(again[0].icount).toBe(0n);
  });
});
