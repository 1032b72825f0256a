// The qcow2 bitmap directory codec: entries with padding, the flags as info lists them, and
// directories QEMU refuses (a count that lies, extra data, entries breaking the constraints).
import { describe, expect, it } from 'vitest';
import { BlockError } from '../../src/block/errors.js';
import { BME_FLAG_AUTO, BME_FLAG_IN_USE, bitmapInfoList, encodeBitmapDirectory, parseBitmapDirectory } from '../../src/drivers/qcow2/bitmap.js';

/** A 64 KiB-cluster image of 1 GiB: one table cluster covers it at any granularity ≥ 512. */
const geom = { clusterSize: 65536, diskSize: 1 << 30 };

function entry(name: string, flags: number, granularityBits: number, extra = 0, type = 1): Uint8Array {
  const nameBytes = new TextEncoder().encode(name);
  const len = 24 + extra + nameBytes.length;
  const out = new Uint8Array((len + 7) & ~7);
  const v = new DataView(out.buffer);
  v.setBigUint64(0, 0x30000n);
  v.setUint32(8, 1);
  v.setUint32(12, flags);
  v.setUint8(16, type);
  v.setUint8(17, granularityBits);
  v.setUint16(18, nameBytes.length);
  v.setUint32(20, extra);
  out.fill(0xaa, 24, 24 + extra);
  out.set(nameBytes, 24 + extra);
  return out;
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let pos = 0;
  for (const p of parts) {
    out.set(p, pos);
    pos += p.length;
  }
  return out;
}

describe('qcow2 bitmap directory', () => {
  it('decodes entries, skipping padding, and encodes them back byte for byte', () => {
    const dir = concat([entry('a', BME_FLAG_AUTO, 16), entry('in-use one', BME_FLAG_IN_USE | BME_FLAG_AUTO, 9), entry('off', 0, 20)]);
    const list = parseBitmapDirectory(geom, dir, 3);
    expect(list.map((e) => [e.name, e.granularityBits, e.flags, e.tableOffset, e.tableSize])).toEqual([
      ['a', 16, BME_FLAG_AUTO, 0x30000, 1],
      ['in-use one', 9, BME_FLAG_IN_USE | BME_FLAG_AUTO, 0x30000, 1],
      ['off', 20, 0, 0x30000, 1],
    ]);
    expect(bitmapInfoList(list)).toEqual([
      { name: 'a', granularity: 65536, flags: ['auto'] },
      { name: 'in-use one', granularity: 512, flags: ['in-use', 'auto'] },
      { name: 'off', granularity: 1048576, flags: [] },
    ]);
    expect(encodeBitmapDirectory(geom, list)).toEqual(dir);
  });

  it('refuses a directory with fewer or more entries than the header says, or a torn one', () => {
    const dir = concat([entry('a', 0, 16), entry('b', 0, 16)]);
    expect(() => parseBitmapDirectory(geom, dir, 3)).toThrow(BlockError);
    expect(() => parseBitmapDirectory(geom, dir, 3)).toThrow(/Less bitmaps found than specified/);
    expect(() => parseBitmapDirectory(geom, dir, 1)).toThrow(/More bitmaps found than specified/);
    expect(() => parseBitmapDirectory(geom, dir.subarray(0, dir.length - 8), 2)).toThrow(/Broken bitmap directory/);
  });

  it('refuses extra data and entries that break the constraints, as QEMU does', () => {
    expect(() => parseBitmapDirectory(geom, entry('x', 0, 16, 5), 1)).toThrow(/Bitmap extra data is not supported/);
    expect(() => parseBitmapDirectory(geom, entry('x', 0, 8), 1)).toThrow(/Bitmap 'x' doesn't satisfy the constraints/);
    expect(() => parseBitmapDirectory(geom, entry('x', 4, 16), 1)).toThrow(/doesn't satisfy the constraints/);
    expect(() => parseBitmapDirectory(geom, entry('x', 0, 16, 0, 2), 1)).toThrow(/doesn't satisfy the constraints/);
    // One table cluster at 512-byte granularity covers 256 MiB: too small for a consistent
    // bitmap of 1 GiB, fine for one in use (its size may be stale after a resize).
    expect(() => parseBitmapDirectory(geom, entry('x', 0, 9), 1)).toThrow(/doesn't satisfy the constraints/);
    expect(parseBitmapDirectory(geom, entry('x', BME_FLAG_IN_USE, 9), 1)).toHaveLength(1);
  });
});
