// Page-aligned buffers (src/drivers/file/memalign.ts, native/memalign.c): qemuMemalign's
// buffers start on a page boundary in memory, and convert moves its data through them.
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { MEM_ALIGN, qemuMemalign } from '../../src/drivers/file/memalign.js';
import { loadSeekAddon, setSeekAddonForTest, type SeekAddon } from '../../src/drivers/file/seek.js';
import { makeTempDir, removeTempDir } from '../interop/qemu.js';
import { convertThroughAddon, writeAlternatingRaw } from './convert-helpers.js';

const addon = loadSeekAddon();
const memOffset = addon?.memOffset;
// Locally a missing addon skips the native tests; CI must have built it.
if (memOffset === undefined && process.env.CI === 'true') {
  throw new Error('the native addon (build/Release/blocklayer_seek.node) was not built with memOffset: run `npm ci`');
}
const MiB = 1024 * 1024;

describe.skipIf(memOffset === undefined)('memOffset', () => {
  const off = memOffset!;
  it('tells where a buffer starts past an alignment boundary', () => {
    const b = new Uint8Array(2 * MiB);
    const base = off(b, MEM_ALIGN);
    expect(base).toBeGreaterThanOrEqual(0);
    expect(base).toBeLessThan(MEM_ALIGN);
    expect(off(b.subarray(5), MEM_ALIGN)).toBe((base + 5) % MEM_ALIGN);
    expect(off(b.subarray(5), 1)).toBe(0);
    expect(off(new Uint8Array(0), MEM_ALIGN)).toBe(0);
  });

  it('rejects what is not a Uint8Array and alignments that are not powers of two', () => {
    const b = new Uint8Array(16);
    expect(() => off(new Uint16Array(8) as unknown as Uint8Array, 8)).toThrow(TypeError);
    for (const a of [0, 3, 4096.5, -8, 2 * MiB]) expect(() => off(b, a)).toThrow(RangeError);
  });
});

describe('qemuMemalign', () => {
  it.skipIf(memOffset === undefined)('starts its buffers on a page boundary, zeroed', () => {
    for (const size of [1, 512, 65536, 2 * MiB, 2 * MiB + 512]) {
      const b = qemuMemalign(size);
      expect(b.length).toBe(size);
      expect(memOffset!(b, MEM_ALIGN)).toBe(0);
      expect(b.every((x) => x === 0)).toBe(true);
    }
    expect(memOffset!(qemuMemalign(4096, 65536), 65536)).toBe(0);
  });

  it('is a plain buffer without the addon', () => {
    const prev = setSeekAddonForTest(null);
    try {
      const b = qemuMemalign(2 * MiB);
      expect(b.length).toBe(2 * MiB);
      expect(b.byteOffset).toBe(0);
    } finally {
      setSeekAddonForTest(prev);
    }
  });
});

describe.skipIf(typeof addon?.engineSubmit !== 'function' || memOffset === undefined)('convert', () => {
  let dir = '';
  beforeEach(() => {
    dir = makeTempDir('blk-memalign');
  });
  afterEach(() => {
    removeTempDir(dir);
  });

  it('reads and writes its chunks through page-aligned buffers', async () => {
    const real = addon!;
    // Every large read and write the file driver hands the engine: where its buffer starts.
    const offsets: number[] = [];
    const spy: SeekAddon = {
      ...real,
      engineSubmit: (op, fd, buffers, offset, length, mode) => {
        const bufs = buffers === null ? [] : buffers instanceof Uint8Array ? [buffers] : buffers;
        if (op <= 1) for (const b of bufs) if (b.length >= 64 * 1024) offsets.push(memOffset!(b, MEM_ALIGN));
        return real.engineSubmit!(op, fd, buffers, offset, length, mode);
      },
    };
    const src = join(dir, 'src.raw');
    // Data in every other MiB: each data run is a chunk of its own, read and written whole.
    writeAlternatingRaw(src);
    const status = await convertThroughAddon(spy, src, join(dir, 'out.raw'));
    expect(status).toBe(0);
    // Four reads and four writes of a MiB each.
    expect(offsets.length).toBe(8);
    expect(offsets.every((o) => o === 0)).toBe(true);
  });
});
