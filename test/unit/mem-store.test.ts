import fc from 'fast-check';
import { afterEach, describe, expect, it } from 'vitest';
import { isBlockError } from '../../src/block/errors.js';
import {
  MEM_CHUNK_SIZE,
  MemStore,
  memStoreCreate,
  memStoreDelete,
  memStoreExists,
  memStoreGet,
  memStoreNames,
  memStoreRead,
  memStoreRestore,
  memStoreSnapshot,
  memStoreWrite,
} from '../../src/drivers/mem/index.js';
import { bytePattern, expectBytes } from './test-bytes.js';

const TIB = 1024 ** 4;

const bytes = bytePattern(31, 1);

function readFlat(store: MemStore, offset: number, n: number): Uint8Array {
  const out = new Uint8Array(n).fill(0xee);
  store.read(offset, [out], n);
  return out;
}

describe('MemStore', () => {
  it('reads never-written bytes as zeros and holds no chunk for them', () => {
    const s = new MemStore();
    s.length = 10 * MEM_CHUNK_SIZE;
    expect(readFlat(s, 12345, 100_000).every((b) => b === 0)).toBe(true);
    expect(s.chunks.size).toBe(0);
  });

  it('round-trips writes that cross chunk boundaries, through scattered buffers', () => {
    const s = new MemStore();
    const data = bytes(3 * MEM_CHUNK_SIZE + 77, 5);
    const off = MEM_CHUNK_SIZE - 13;
    // Split the source at odd places so segments and chunks do not line up.
    s.write(off, [data.subarray(0, 7), data.subarray(7, 70_000), data.subarray(70_000)], data.length);
    expect(s.length).toBe(off + data.length);
    expectBytes(readFlat(s, off, data.length), data);
    const a = new Uint8Array(5);
    const b = new Uint8Array(data.length - 5);
    s.read(off, [a, b], data.length);
    expect(a).toEqual(data.subarray(0, 5));
    expectBytes(b, data.subarray(5));
    expect(s.chunks.size).toBe(5);
  });

  it('writes only `bytes` bytes of a longer vector', () => {
    const s = new MemStore();
    s.write(0, [bytes(100, 1)], 10);
    expect(s.length).toBe(10);
    expect(readFlat(s, 0, 20).subarray(10).every((x) => x === 0)).toBe(true);
  });

  it('costs one chunk for the last byte of a 1 TiB store', () => {
    const s = new MemStore();
    s.length = TIB;
    s.write(TIB - 1, [Uint8Array.of(0x5a)], 1);
    expect(s.chunks.size).toBe(1);
    expect(s.allocatedBytes).toBe(MEM_CHUNK_SIZE);
    expect(s.length).toBe(TIB);
    expect(readFlat(s, TIB - 2, 2)).toEqual(Uint8Array.of(0, 0x5a));
  });

  it('shrinking drops chunks and zeroes the tail, so regrowth reads zeros', () => {
    const s = new MemStore();
    s.write(0, [new Uint8Array(4 * MEM_CHUNK_SIZE).fill(0xab)], 4 * MEM_CHUNK_SIZE);
    s.truncate(MEM_CHUNK_SIZE + 100);
    expect(s.chunks.size).toBe(2);
    expect(s.length).toBe(MEM_CHUNK_SIZE + 100);
    s.truncate(4 * MEM_CHUNK_SIZE);
    const after = readFlat(s, 0, 4 * MEM_CHUNK_SIZE);
    expect(after.subarray(0, MEM_CHUNK_SIZE + 100).every((b) => b === 0xab)).toBe(true);
    expect(after.subarray(MEM_CHUNK_SIZE + 100).every((b) => b === 0)).toBe(true);
    // Truncating exactly at a chunk boundary removes that chunk entirely.
    s.truncate(MEM_CHUNK_SIZE);
    expect([...s.chunks.keys()]).toEqual([0]);
    s.truncate(0);
    expect(s.chunks.size).toBe(0);
  });

  it('writeZeroes zero-fills partial chunks, drops whole ones only when unmapping, and grows', () => {
    const s = new MemStore();
    const n = 3 * MEM_CHUNK_SIZE;
    s.write(0, [new Uint8Array(n).fill(1)], n);
    s.writeZeroes(10, 2 * MEM_CHUNK_SIZE, false);
    expect(s.chunks.size).toBe(3);
    const flat = readFlat(s, 0, n);
    expect(flat.subarray(0, 10).every((b) => b === 1)).toBe(true);
    expect(flat.subarray(10, 10 + 2 * MEM_CHUNK_SIZE).every((b) => b === 0)).toBe(true);
    expect(flat.subarray(10 + 2 * MEM_CHUNK_SIZE).every((b) => b === 1)).toBe(true);
    s.writeZeroes(10, 2 * MEM_CHUNK_SIZE, true);
    expect([...s.chunks.keys()].sort()).toEqual([0, 2]);
    s.writeZeroes(TIB, 512, true);
    expect(s.length).toBe(TIB + 512);
    expect(s.chunks.size).toBe(2);
  });

  it('discard drops whole chunks only', () => {
    const s = new MemStore();
    const n = 3 * MEM_CHUNK_SIZE;
    s.write(0, [new Uint8Array(n).fill(7)], n);
    s.discard(1, 2 * MEM_CHUNK_SIZE);
    expect([...s.chunks.keys()].sort()).toEqual([0, 2]);
    expect(s.length).toBe(n);
  });

  it('status reports runs of data and holes, clipped to the request', () => {
    const s = new MemStore();
    s.length = 100 * MEM_CHUNK_SIZE;
    s.write(2 * MEM_CHUNK_SIZE, [new Uint8Array(2 * MEM_CHUNK_SIZE).fill(3)], 2 * MEM_CHUNK_SIZE);
    s.write(50 * MEM_CHUNK_SIZE + 5, [Uint8Array.of(9)], 1);
    expect(s.status(0, s.length)).toEqual({ data: false, pnum: 2 * MEM_CHUNK_SIZE });
    expect(s.status(2 * MEM_CHUNK_SIZE + 1, s.length)).toEqual({ data: true, pnum: 2 * MEM_CHUNK_SIZE - 1 });
    expect(s.status(2 * MEM_CHUNK_SIZE, 1000)).toEqual({ data: true, pnum: 1000 });
    expect(s.status(4 * MEM_CHUNK_SIZE, s.length)).toEqual({ data: false, pnum: 46 * MEM_CHUNK_SIZE });
    expect(s.status(50 * MEM_CHUNK_SIZE, 10 * MEM_CHUNK_SIZE)).toEqual({ data: true, pnum: MEM_CHUNK_SIZE });
    expect(s.status(51 * MEM_CHUNK_SIZE, 49 * MEM_CHUNK_SIZE)).toEqual({ data: false, pnum: 49 * MEM_CHUNK_SIZE });
  });
});

describe('MemStore against a flat model (property)', () => {
  // Small chunks of the real store are 64 KiB; sizes here straddle a few of them.
  const MAX = 4 * MEM_CHUNK_SIZE + 1000;
  type Op =
    | { k: 'w'; off: number; len: number; seed: number; split: number }
    | { k: 'z'; off: number; len: number; unmap: boolean }
    | { k: 't'; size: number };
  const op: fc.Arbitrary<Op> = fc.oneof(
    fc.record({ k: fc.constant('w' as const), off: fc.nat(MAX), len: fc.integer({ min: 1, max: 2 * MEM_CHUNK_SIZE }), seed: fc.nat(255), split: fc.nat() }),
    fc.record({ k: fc.constant('z' as const), off: fc.nat(MAX), len: fc.integer({ min: 1, max: 3 * MEM_CHUNK_SIZE }), unmap: fc.boolean() }),
    fc.record({ k: fc.constant('t' as const), size: fc.nat(MAX) }),
  );

  it('reads, length and status agree with a flat buffer after any sequence of writes, zeroes and truncates', () => {
    fc.assert(
      fc.property(fc.array(op, { maxLength: 25 }), (ops) => {
        const s = new MemStore();
        let model = new Uint8Array(0);
        const grow = (n: number): void => {
          if (n > model.length) {
            const m = new Uint8Array(n);
            m.set(model);
            model = m;
          }
        };
        for (const o of ops) {
          if (o.k === 'w') {
            const data = bytes(o.len, o.seed);
            const cut = o.split % (o.len + 1);
            s.write(o.off, [data.subarray(0, cut), data.subarray(cut)], o.len);
            grow(o.off + o.len);
            model.set(data, o.off);
          } else if (o.k === 'z') {
            s.writeZeroes(o.off, o.len, o.unmap);
            grow(o.off + o.len);
            model.fill(0, o.off, o.off + o.len);
          } else {
            s.truncate(o.size);
            model = model.length >= o.size ? model.slice(0, o.size) : (grow(o.size), model);
          }
          expect(s.length).toBe(model.length);
        }
        expectBytes(readFlat(s, 0, s.length), model);
        // Holes (by status) really read as zeros, and status runs tile the store.
        for (let pos = 0; pos < s.length; ) {
          const st = s.status(pos, s.length - pos);
          expect(st.pnum).toBeGreaterThan(0);
          if (!st.data) expect(model.subarray(pos, pos + st.pnum).every((b) => b === 0)).toBe(true);
          pos += st.pnum;
        }
        // No chunk lies wholly past the end.
        for (const idx of s.chunks.keys()) expect(idx * MEM_CHUNK_SIZE).toBeLessThan(s.length);
      }),
      { numRuns: 60 },
    );
  });
});

describe('mem store namespace', () => {
  const names = ['ns-a', 'ns-b', 'ns-c'];
  afterEach(() => {
    for (const n of names) memStoreDelete(n);
  });

  it('creates, empties in place, lists and deletes stores; mem: prefix optional', () => {
    expect(memStoreExists('ns-a')).toBe(false);
    const s = memStoreCreate('mem:ns-a', 4096);
    expect(memStoreExists('ns-a')).toBe(true);
    expect(memStoreGet('mem:ns-a')).toBe(s);
    expect(memStoreNames()).toContain('ns-a');
    s.write(0, [Uint8Array.of(1, 2, 3)], 3);
    // Create again empties the same object: open nodes see it, as with O_TRUNC.
    expect(memStoreCreate('ns-a', 10)).toBe(s);
    expect(s.chunks.size).toBe(0);
    expect(s.length).toBe(10);
    expect(memStoreDelete('ns-a')).toBe(true);
    expect(memStoreDelete('ns-a')).toBe(false);
    expect(memStoreExists('ns-a')).toBe(false);
  });

  it('rejects empty names and bad sizes with EINVAL', () => {
    expect(() => memStoreCreate('mem:')).toThrowError(expect.objectContaining({ code: 'EINVAL' }) as Error);
    let err: unknown;
    try {
      memStoreCreate('ns-a', -1);
    } catch (e) {
      err = e;
    }
    expect(isBlockError(err, 'EINVAL')).toBe(true);
    expect(memStoreExists('ns-a')).toBe(false);
  });

  it('snapshots are independent copies and restore replaces contents', () => {
    const s = memStoreCreate('ns-a', 3 * MEM_CHUNK_SIZE);
    s.write(MEM_CHUNK_SIZE, [new Uint8Array(10).fill(4)], 10);
    const snap = memStoreSnapshot('ns-a');
    s.write(MEM_CHUNK_SIZE, [new Uint8Array(10).fill(5)], 10);
    s.write(0, [Uint8Array.of(1)], 1);
    memStoreRestore('ns-b', snap);
    expect(memStoreGet('ns-b')?.chunks.size).toBe(1);
    const restored = memStoreRead('ns-b');
    expect(restored.length).toBe(3 * MEM_CHUNK_SIZE);
    expect(restored[MEM_CHUNK_SIZE]).toBe(4);
    expect(restored[0]).toBe(0);
    // Restoring over an existing store replaces its contents.
    memStoreRestore('ns-a', snap);
    expectBytes(memStoreRead('ns-a'), restored);
    // The snapshot did not alias the store.
    memStoreGet('ns-a')?.write(MEM_CHUNK_SIZE, [Uint8Array.of(9)], 1);
    expect(snap.chunks.get(1)?.[0]).toBe(4);
  });

  it('memStoreWrite keeps zero chunks sparse; memStoreRead of a missing store is ENOENT', () => {
    const flat = new Uint8Array(4 * MEM_CHUNK_SIZE + 3);
    flat[2 * MEM_CHUNK_SIZE + 1] = 0x77;
    flat[flat.length - 1] = 0x88;
    memStoreWrite('ns-c', flat);
    expect([...(memStoreGet('ns-c')?.chunks.keys() ?? [])].sort()).toEqual([2, 4]);
    expectBytes(memStoreRead('ns-c'), flat);
    expect(() => memStoreRead('ns-missing')).toThrowError(expect.objectContaining({ code: 'ENOENT' }) as Error);
  });
});
