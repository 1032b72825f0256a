// qcow2 corrupt bit and compressed clusters against the real qemu-img / qemu-io 7.2: an image
// we mark corrupt is refused read-write by QEMU (and shows corrupt: true), one QEMU marks is
// refused by us; compressed clusters we write are byte-identical to `qemu-io write -c`.
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { qcow2CoPwritevCompressed, qcow2State } from '../../src/drivers/qcow2/index.js';
import { BlockDriverState, IOVector } from '../../src/index.js';
import { makeTempDir, removeTempDir, requireQemu, runQemuImg, runQemuIo } from './qemu.js';

const qemu = requireQemu();
const d = qemu ? describe : describe.skip;

let dir = '';
beforeAll(() => {
  dir = makeTempDir('qcow2-corrupt');
});
afterAll(() => removeTempDir(dir));

/** Point L2 entry 1 of the first table at the L1 table (cluster 3): a write there hits metadata. */
function damage(file: string): void {
  const buf = readFileSync(file);
  const l2 = Number(buf.readBigUInt64BE(0x30000) & 0x00fffffffffffe00n);
  buf.writeBigUInt64BE(0x8000000000030000n, l2 + 8);
  writeFileSync(file, buf);
}

d('qcow2 corrupt bit, both directions', () => {
  it('we mark it: QEMU refuses read-write, info says corrupt: true', async () => {
    const f = join(dir, 'ours.qcow2');
    expect(runQemuImg(['create', '-q', '-f', 'qcow2', f, '1M']).status).toBe(0);
    runQemuIo(['-f', 'qcow2', '-c', 'write -P 1 0 4k', f]);
    damage(f);
    const bs = await BlockDriverState.open(f, { format: 'qcow2' });
    const orig = console.error;
    console.error = () => undefined;
    try {
      await expect(bs.pwrite(65536, new Uint8Array(512))).rejects.toMatchObject({ code: 'EIO' });
    } finally {
      console.error = orig;
      await bs.close();
    }
    const io = runQemuIo(['-f', 'qcow2', '-c', 'read 0 512', f]);
    expect(io.stderr).toContain(`can't open device ${f}: qcow2: Image is corrupt; cannot be opened read/write`);
    const info = runQemuImg(['info', '--output=json', f]);
    const parsed = JSON.parse(info.stdout) as { 'format-specific': { data: { corrupt: boolean } } };
    expect(parsed['format-specific'].data.corrupt).toBe(true);
    expect(runQemuIo(['-r', '-f', 'qcow2', '-c', 'read -P 1 0 4k', f]).stdout).toContain('read 4096/4096');
  });

  it('QEMU marks it: we refuse read-write and read it read-only', async () => {
    const f = join(dir, 'theirs.qcow2');
    expect(runQemuImg(['create', '-q', '-f', 'qcow2', f, '1M']).status).toBe(0);
    runQemuIo(['-f', 'qcow2', '-c', 'write -P 1 0 4k', f]);
    damage(f);
    const r = runQemuIo(['-f', 'qcow2', '-c', 'write 64k 512', f]);
    expect(r.stderr).toContain('qcow2: Marking image as corrupt: Preventing invalid write on metadata (overlaps with active L1 table)');
    await expect(BlockDriverState.open(f, { format: 'qcow2' })).rejects.toThrow('qcow2: Image is corrupt; cannot be opened read/write');
    const bs = await BlockDriverState.open(f, { format: 'qcow2', readOnly: true });
    try {
      const buf = new Uint8Array(4096);
      await bs.pread(0, buf);
      expect(buf.every((b) => b === 1)).toBe(true);
    } finally {
      await bs.close();
    }
  });
});

d('qcow2 compressed writes', () => {
  it('pack like qemu-io write -c, byte for byte', async () => {
    const theirs = join(dir, 'c-q.qcow2');
    const ours = join(dir, 'c-o.qcow2');
    const text = Buffer.from('compressible text, but not too much: 0123456789 abcdefghij '.repeat(2000)).subarray(0, 65536);
    writeFileSync(join(dir, 'chunk.bin'), text);
    for (const f of [theirs, ours]) expect(runQemuImg(['create', '-q', '-f', 'qcow2', f, '1000k']).status).toBe(0);
    const io = runQemuIo(
      ['-f', 'qcow2', '-c', 'write -c -P 0x11 0 64k', '-c', 'write -c -s chunk.bin 64k 64k', '-c', 'write -c -P 0x22 960k 40k', theirs],
      { cwd: dir },
    );
    expect(io.stderr).toBe('');
    const bs = await BlockDriverState.open(ours, { format: 'qcow2' });
    try {
      const s = qcow2State(bs);
      await qcow2CoPwritevCompressed(s, 0, 65536, IOVector.from(new Uint8Array(65536).fill(0x11)));
      await qcow2CoPwritevCompressed(s, 65536, 65536, IOVector.from(new Uint8Array(text)));
      await qcow2CoPwritevCompressed(s, 960 << 10, 40 << 10, IOVector.from(new Uint8Array(40 << 10).fill(0x22)));
    } finally {
      await bs.close();
    }
    expect(readFileSync(ours).equals(readFileSync(theirs))).toBe(true);
    expect(runQemuImg(['check', ours]).status).toBe(0);
  });
});
