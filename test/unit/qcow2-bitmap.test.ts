// The qcow2 bitmap directory decoder: entries with extra data and padding, the flags as info
// lists them, and directories that lie about their size.
import { describe, expect, it } from 'vitest';
import { BlockError } from '../../src/block/errors.js';
import { BME_FLAG_AUTO, BME_FLAG_IN_USE, bitmapInfoList, parseBitmapDirectory } from '../../src/drivers/qcow2/bitmap.js';

function entry(name: string, flags: number, granularityBits: number, extra = 0): Uint8Array {
  const nameBytes = new TextEncoder().encode(name);
  const len = 24 + extra + nameBytes.length;
  const out = new Uint8Array((len + 7) & ~7);
  const v = new DataView(out.buffer);
  v.setBigUint64(0, 0x30000n);
  v.setUint32(8, 1);
  v.setUint32(12, flags);
  v.setUint8(16, 1);
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
  it('decodes entries, skipping extra data and padding', () => {
    const dir = concat([entry('a', BME_FLAG_AUTO, 16), entry('in-use one', BME_FLAG_IN_USE | BME_FLAG_AUTO, 9, 5), entry('off', 0, 20)]);
    const list = parseBitmapDirectory(dir, 3);
    expect(list.map((e) => [e.name, e.granularityBits, e.flags, e.extraData.length])).toEqual([
      ['a', 16, BME_FLAG_AUTO, 0],
      ['in-use one', 9, BME_FLAG_IN_USE | BME_FLAG_AUTO, 5],
      ['off', 20, 0, 0],
    ]);
    expect(bitmapInfoList(list)).toEqual([
      { name: 'a', granularity: 65536, flags: ['auto'] },
      { name: 'in-use one', granularity: 512, flags: ['in-use', 'auto'] },
      { name: 'off', granularity: 1048576, flags: [] },
    ]);
  });

  it('refuses a directory shorter or longer than its entries', () => {
    const dir = concat([entry('a', 0, 16), entry('b', 0, 16)]);
    expect(() => parseBitmapDirectory(dir, 3)).toThrow(BlockError);
    expect(() => parseBitmapDirectory(dir, 1)).toThrow(/size does not match/);
    expect(() => parseBitmapDirectory(dir.subarray(0, dir.length - 8), 2)).toThrow(/past the end/);
  });

  it('refuses an empty name', () => {
    expect(() => parseBitmapDirectory(entry('', 0, 16), 1)).toThrow(/empty bitmap name/);
  });
});
