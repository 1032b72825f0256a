import { describe, expect, it } from 'vitest';
import { BlockError } from '../../src/block/errors.js';
import {
  clusterType,
  compressedGeometry,
  decodeCompressed,
  encodeCompressed,
  nextUsedSlot,
  subclusterRangeType,
  subclusterType,
  tableWords,
} from '../../src/drivers/qcow2/entries.js';
import {
  decodeExtensions,
  decodeHeader,
  encodeHeaderCluster,
  validateFeatures,
  validateHeaderBasics,
  validateTables,
  type QCowHeader,
} from '../../src/drivers/qcow2/header.js';
import {
  refcountGetter,
  refcountMetadataSize,
  refcountSetter,
} from '../../src/drivers/qcow2/refcount-codec.js';

/** First cluster of `qemu-img create -f qcow2 -b base.raw -F raw ab.qcow2` (1 MiB), non-zero part. */
const WITH_BACKING_HEX =
  '514649fb000000030000000000000210000000080000001000000000001000000000000000000001000000000003000000000000000100000000000100000000000000000000000000000000000000000000000000000000000000000000000000000004000000700000000000000000e2792aca0000000372617700000000006803f857000001800000646972747920626974000000000000000000000000000000000000000000000000000000000000000000000000000001636f7272757074206269740000000000000000000000000000000000000000000000000000000000000000000000000265787465726e616c20646174612066696c65000000000000000000000000000000000000000000000000000000000003636f6d7072657373696f6e20747970650000000000000000000000000000000000000000000000000000000000000004657874656e646564204c3220656e747269657300000000000000000000000000000000000000000000000000000001006c617a7920726566636f756e7473000000000000000000000000000000000000000000000000000000000000000002006269746d61707300000000000000000000000000000000000000000000000000000000000000000000000000000002017261772065787465726e616c206461746100000000000000000000000000000000000000000000000000000000000000000000000000626173652e726177';
/** Header of `qemu-img create -f qcow2 -o compat=0.10 a2.qcow2 1G`, non-zero part. */
const V2_HEX = '514649fb0000000200000000000000000000000000000010000000004000000000000000000000020000000000030000000000000001000000000001';

function cluster(hex: string, size = 65536): Uint8Array {
  const out = new Uint8Array(size);
  out.set(Uint8Array.from(Buffer.from(hex, 'hex')));
  return out;
}

function rejects(fn: () => void, message: string): void {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(BlockError);
    expect((e as BlockError).message).toBe(message);
    return;
  }
  throw new Error(`expected "${message}"`);
}

describe('qcow2 header codec', () => {
  it('decodes and rewrites a v3 header cluster with backing file byte for byte', () => {
    const buf = cluster(WITH_BACKING_HEX);
    const h = decodeHeader(buf);
    expect(h).toMatchObject({ version: 3, clusterBits: 16, size: 1048576, l1Size: 1, l1TableOffset: 0x30000, headerLength: 112 });
    expect(h.backingFileOffset).toBe(0x210);
    const ext = decodeExtensions(h, buf);
    expect(ext.backingFormat).toBe('raw');
    expect(ext.featureTable).toHaveLength(8);
    expect(ext.featureTable[5]).toEqual({ type: 1, bit: 0, name: 'lazy refcounts' });
    const name = new TextDecoder().decode(buf.subarray(h.backingFileOffset, h.backingFileOffset + h.backingFileSize));
    const { buf: out } = encodeHeaderCluster({
      header: h,
      unknownHeaderFields: new Uint8Array(0),
      backingFile: name,
      backingFormat: ext.backingFormat,
      dataFile: null,
      crypto: null,
      bitmaps: null,
      unknownExtensions: [],
    });
    expect(Buffer.from(out).equals(Buffer.from(buf))).toBe(true);
  });

  it('writes v2 headers without a feature table, with the end marker at 0x48', () => {
    const buf = cluster(V2_HEX);
    const h = decodeHeader(buf);
    expect(h.version).toBe(2);
    expect(h.refcountOrder).toBe(4);
    const { buf: out } = encodeHeaderCluster({
      header: h,
      unknownHeaderFields: new Uint8Array(0),
      backingFile: null,
      backingFormat: null,
      dataFile: null,
      crypto: null,
      bitmaps: null,
      unknownExtensions: [],
    });
    expect(Buffer.from(out).equals(Buffer.from(buf))).toBe(true);
  });

  it('writes unknown extensions back in reverse order, before the end marker', () => {
    const h = decodeHeader(cluster(V2_HEX));
    const { buf } = encodeHeaderCluster({
      header: { ...h, version: 3, headerLength: 112 },
      unknownHeaderFields: new Uint8Array(0),
      backingFile: null,
      backingFormat: null,
      dataFile: null,
      crypto: null,
      bitmaps: null,
      unknownExtensions: [
        { magic: 0x11111111, data: Uint8Array.of(1) },
        { magic: 0x22222222, data: Uint8Array.of(2, 2) },
      ],
    });
    const ext = decodeExtensions(decodeHeader(buf), buf);
    expect(ext.unknown.map((u) => u.magic)).toEqual([0x22222222, 0x11111111]);
  });

  it('validates in QEMU order with QEMU messages', () => {
    const base = decodeHeader(cluster(WITH_BACKING_HEX));
    const with_ = (over: Partial<QCowHeader>): QCowHeader => ({ ...base, ...over });
    rejects(() => validateHeaderBasics(with_({ magic: 0 })), 'Image is not in qcow2 format');
    rejects(() => validateHeaderBasics(with_({ version: 4 })), 'Unsupported qcow2 version 4');
    rejects(() => validateHeaderBasics(with_({ clusterBits: 8 })), 'Unsupported cluster size: 2^8');
    rejects(() => validateHeaderBasics(with_({ headerLength: 100 })), 'qcow2 header too short');
    rejects(() => validateHeaderBasics(with_({ backingFileOffset: 65537 })), 'Invalid backing file offset');
    rejects(() => validateHeaderBasics(with_({ compressionType: 2 })), 'qcow2: unknown compression type: 2');
    rejects(
      () => validateHeaderBasics(with_({ compressionType: 1 })),
      'qcow2: Compression type incompatible feature bit must be set',
    );
    rejects(
      () => validateFeatures(with_({ incompatibleFeatures: 0x60n }), [{ type: 0, bit: 5, name: 'frobnicate' }], true, false),
      'Unsupported qcow2 feature(s): frobnicate, Unknown incompatible feature: 40',
    );
    rejects(() => validateFeatures(with_({ incompatibleFeatures: 2n }), [], true, false), 'qcow2: Image is corrupt; cannot be opened read/write');
    validateFeatures(with_({ incompatibleFeatures: 2n }), [], false, false);
    rejects(() => validateFeatures(with_({ refcountOrder: 7 }), [], true, false), 'Reference count entry width too large; may not exceed 64 bits');
    rejects(() => validateTables(with_({ refcountTableClusters: 0 }), false), 'Image does not contain a reference count table');
    rejects(() => validateTables(with_({ refcountTableClusters: 129 }), false), 'Reference count table too large');
    rejects(() => validateTables(with_({ refcountTableOffset: 0x10001 }), false), 'Reference count table offset invalid');
    rejects(() => validateTables(with_({ refcountTableOffset: Infinity }), false), 'Reference count table offset invalid');
    rejects(() => validateTables(with_({ l1Size: 0x400001 }), false), 'Active L1 table too large');
    rejects(() => validateTables(with_({ l1TableOffset: 0x30008 }), false), 'Active L1 table offset invalid');
    rejects(() => validateTables(with_({ size: Infinity }), false), 'Image is too big');
    rejects(() => validateTables(with_({ l1Size: 0, size: 1 << 30 }), false), 'L1 table is too small');
  });

  it('refuses extensions that cross the extension area', () => {
    const buf = cluster(WITH_BACKING_HEX);
    new DataView(buf.buffer).setUint32(0x74, 0x1000);
    rejects(() => decodeExtensions(decodeHeader(buf), buf), 'Header extension too large');
  });
});

describe('qcow2 refcount codec', () => {
  it('packs every width as QEMU does', () => {
    const expectFirst: Record<number, string> = { 0: '0f', 2: '1111', 3: '01010101', 4: '0001000100010001' };
    for (const [order, hex] of Object.entries(expectFirst)) {
      const block = new Uint8Array(64);
      const set = refcountSetter(Number(order));
      for (let i = 0; i < 4; i++) set(block, i, 1);
      expect(Buffer.from(block.subarray(0, hex.length / 2)).toString('hex')).toBe(hex);
      const get = refcountGetter(Number(order));
      expect([0, 1, 2, 3, 4].map((i) => get(block, i))).toEqual([1, 1, 1, 1, 0]);
    }
    const b64 = new Uint8Array(64);
    refcountSetter(6)(b64, 1, 2 ** 40);
    expect(refcountGetter(6)(b64, 1)).toBe(2 ** 40);
    const b5 = new Uint8Array(16);
    refcountSetter(5)(b5, 2, 0xfffffffe);
    expect(refcountGetter(5)(b5, 2)).toBe(0xfffffffe);
  });

  it('sizes refcount metadata as a fixed point', () => {
    // 1 TiB of 64 KiB clusters: 16 Mi clusters, 32768 refcounts per block.
    const r = refcountMetadataSize(16 * 1024 * 1024, 65536, 4, false);
    expect(r.blocks).toBe(513);
    expect(r.table).toBe(1);
  });
});

describe('qcow2 entries', () => {
  it('finds the used slots of a table whatever half of an entry is set', () => {
    const t = new BigUint64Array(9);
    t[2] = 1n; // reserved bits only: low word
    t[5] = 1n << 40n; // high word only
    t[8] = 0x8000000000050000n;
    const words = tableWords(t);
    const used: number[] = [];
    for (let i = nextUsedSlot(words, 0, t.length, 8); i < t.length; i = nextUsedSlot(words, i + 1, t.length, 8)) used.push(i);
    expect(used).toEqual([2, 5, 8]);
    // A table viewed from an offset (a subarray) keeps its own slots; `end` stops the search.
    expect(nextUsedSlot(tableWords(t.subarray(3)), 0, 6, 8)).toBe(2);
    expect(nextUsedSlot(words, 6, 8, 8)).toBe(8);
    // Extended L2 slots are 16 bytes: the bitmap alone makes a slot used.
    const l2 = new BigUint64Array(6);
    l2[3] = 1n;
    expect(nextUsedSlot(tableWords(l2), 0, 3, 16)).toBe(1);
  });

  it('finds used slots past long unused runs (the native search) as a loop over words does', () => {
    const naive = (words: Uint32Array, i: number, end: number, es: number): number => {
      for (let k = (i * es) / 4; k < (end * es) / 4; k++) if (words[k] !== 0) return Math.floor(k / (es / 4));
      return end;
    };
    // 64 KiB tables with one non-zero byte: every byte of a word, near and far, and values
    // a UTF-16 decoder treats specially (byte order marks, lone and paired surrogates).
    const t = new BigUint64Array(8192);
    const bytes = new Uint8Array(t.buffer);
    const words = tableWords(t);
    for (const at of [0, 1, 2, 3, 4, 1023, 1024, 1025, 2046, 2047, 2048, 2049, 4097, 30001, 65534, 65535]) {
      for (const v of [0x01, 0xfe, 0xff, 0xd8, 0xdc, 0x80]) {
        bytes.fill(0);
        bytes[at] = v;
        for (const es of [8, 16]) {
          const n = 65536 / es;
          for (const from of [0, 1, 100, Math.floor(at / es), Math.floor(at / es) + 1]) {
            if (from > n) continue;
            expect(nextUsedSlot(words, from, n, es)).toBe(naive(words, from, n, es));
          }
          expect(nextUsedSlot(words, 0, Math.floor(at / es), es)).toBe(Math.floor(at / es));
        }
      }
    }
    // Pairs that make surrogates (0xd800 then 0xdc00 as little-endian units) before the slot.
    bytes.fill(0);
    bytes.set([0x00, 0xd8, 0x00, 0xdc], 40000);
    bytes.set([0xff, 0xfe], 50000);
    expect(nextUsedSlot(words, 0, 8192, 8)).toBe(5000);
    expect(nextUsedSlot(words, 5001, 8192, 8)).toBe(6250);
    expect(nextUsedSlot(words, 6251, 8192, 8)).toBe(8192);
    // A view into a larger buffer, from an odd word.
    const big = new Uint32Array(20000);
    big[19999] = 7;
    expect(nextUsedSlot(big.subarray(3), 0, 19996 / 2, 8)).toBe(naive(big.subarray(3), 0, 19996 / 2, 8));
  });

  it('classifies L2 entries', () => {
    expect(clusterType(0n)).toBe('unallocated');
    expect(clusterType(1n)).toBe('zero-plain');
    expect(clusterType(0x8000000000050001n)).toBe('zero-alloc');
    expect(clusterType(0x8000000000050000n)).toBe('normal');
    expect(clusterType(0x4000000000050000n)).toBe('compressed');
    expect(subclusterType(0x8000000000050000n, 0x4n, 2, true, true)).toBe('normal');
    expect(subclusterType(0x8000000000050000n, 0x4n, 3, true, true)).toBe('unallocated-alloc');
    expect(subclusterType(0n, 0x100000000n, 0, true, true)).toBe('zero-plain');
    expect(subclusterType(0n, 0x100000001n, 0, true, true)).toBe('invalid');
  });

  it('classifies and counts subclusters as QEMU (whole-bitmap validity, runs of one type)', () => {
    const normal = 0x8000000000050000n;
    // Subcluster 5 both allocated and zero: the whole cluster is invalid, not just subcluster 5.
    expect(subclusterType(normal, 0x0000002000000020n, 0, true, true)).toBe('invalid');
    // An unallocated cluster with any allocation bit is invalid.
    expect(subclusterType(0n, 0x80000000n, 0, true, true)).toBe('invalid');
    // A compressed cluster is compressed whatever its bitmap says.
    expect(subclusterType(0x4000000000050000n, 0x1n, 0, true, true)).toBe('compressed');
    // Bit 0 of the entry is no zero flag with extended L2 entries.
    expect(subclusterType(0x8000000000050001n, 0n, 0, true, true)).toBe('unallocated-alloc');
    // Subclusters 2..4 allocated, 5..6 zero, the rest unallocated.
    const bm = 0x000000600000001cn;
    expect(subclusterRangeType(normal, bm, 0, true)).toEqual({ type: 'unallocated-alloc', count: 2 });
    expect(subclusterRangeType(normal, bm, 3, true)).toEqual({ type: 'normal', count: 2 });
    expect(subclusterRangeType(normal, bm, 5, true)).toEqual({ type: 'zero-alloc', count: 2 });
    expect(subclusterRangeType(normal, bm, 7, true)).toEqual({ type: 'unallocated-alloc', count: 25 });
    expect(subclusterRangeType(0n, 0xffffffff00000000n, 31, true)).toEqual({ type: 'zero-plain', count: 1 });
    expect(subclusterRangeType(0x4000000000050000n, 0n, 4, true)).toEqual({ type: 'compressed', count: 28 });
    expect(subclusterRangeType(normal, 0n, 0, false)).toEqual({ type: 'normal', count: 1 });
    expect(subclusterRangeType(0n, 0x3n, 0, true).count).toBe(-1);
  });

  it('codes compressed descriptors as QEMU (two 79-byte streams at 0x50000)', () => {
    const g = compressedGeometry(16);
    expect(encodeCompressed(0x50000, 79, g)).toBe(0x4000000000050000n);
    expect(encodeCompressed(0x5004f, 79, g)).toBe(0x400000000005004fn);
    expect(decodeCompressed(0x400000000005004fn, g)).toEqual({ offset: 0x5004f, length: 512 - 0x4f, sectors: 1 });
  });
});
