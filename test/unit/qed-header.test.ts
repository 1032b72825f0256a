import { describe, expect, it } from 'vitest';
import {
  decodeHeader,
  encodeHeader,
  QED_MAGIC,
  qedCheckClusterOffset,
  qedCheckTableOffset,
  qedIsClusterSizeValid,
  qedIsImageSizeValid,
  qedIsTableSizeValid,
  qedMaxImageSize,
  qedProbe,
  qedQemuCannotOpenTableSize,
  validateHeader,
  type RawQEDHeader,
} from '../../src/drivers/qed/index.js';
import { qedCreateParams, qedCreateWarnings } from '../../src/drivers/qed/create.js';
import { BlockError } from '../../src/block/errors.js';

/** The header of `qemu-img create -f qed a.qed 1G` (qed-format.md §2). */
const DEFAULT_1G = Uint8Array.from(
  Buffer.from(
    '51454400000001000400000001000000' +
      '00000000000000000000000000000000' +
      '00000000000000000000010000000000' +
      '00000040000000000000000000000000',
    'hex',
  ),
);

function raw(over: Partial<RawQEDHeader> = {}): RawQEDHeader {
  return {
    magic: QED_MAGIC,
    clusterSize: 65536,
    tableSize: 4,
    headerSize: 1,
    features: 0n,
    compatFeatures: 0n,
    autoclearFeatures: 0n,
    l1TableOffset: 65536n,
    imageSize: 1n << 30n,
    backingFilenameOffset: 0,
    backingFilenameSize: 0,
    ...over,
  };
}

const FILE_LEN = 5 * 65536;

function openError(over: Partial<RawQEDHeader>, fileLength = FILE_LEN): BlockError {
  try {
    validateHeader(raw(over), fileLength);
  } catch (e) {
    expect(e).toBeInstanceOf(BlockError);
    return e as BlockError;
  }
  throw new Error('header was accepted');
}

describe('QED header codec', () => {
  it('decodes QEMU’s default header', () => {
    const h = decodeHeader(DEFAULT_1G);
    expect(h).toEqual(raw());
  });

  it('round-trips every field, including u64 values past 2^53', () => {
    const h = raw({
      features: 0xffff_ffff_ffff_ffffn,
      compatFeatures: 0x8000_0000_0000_0001n,
      autoclearFeatures: 0x1234_5678_9abc_def0n,
      l1TableOffset: 0xfedc_ba98_7654_3210n,
      imageSize: (1n << 63n) + 512n,
      backingFilenameOffset: 0xffffffff,
      backingFilenameSize: 7,
      headerSize: 0xdeadbeef,
    });
    const bytes = encodeHeader(h);
    expect(bytes.length).toBe(64);
    expect(decodeHeader(bytes)).toEqual(h);
    expect(Buffer.from(encodeHeader(decodeHeader(DEFAULT_1G))).equals(Buffer.from(DEFAULT_1G))).toBe(true);
  });

  it('refuses a buffer shorter than the header', () => {
    expect(() => decodeHeader(new Uint8Array(63))).toThrow(BlockError);
  });

  it('probes by magic only', () => {
    expect(qedProbe(DEFAULT_1G)).toBe(100);
    const bad = DEFAULT_1G.slice();
    bad[3] = 1;
    expect(qedProbe(bad)).toBe(0);
    expect(qedProbe(DEFAULT_1G.subarray(0, 10))).toBe(0);
  });
});

describe('QED validity rules', () => {
  it('cluster and table sizes', () => {
    expect(qedIsClusterSizeValid(4096)).toBe(true);
    expect(qedIsClusterSizeValid(64 << 20)).toBe(true);
    expect(qedIsClusterSizeValid(2048)).toBe(false);
    expect(qedIsClusterSizeValid(128 << 20)).toBe(false);
    expect(qedIsClusterSizeValid(12288)).toBe(false);
    for (const ts of [1, 2, 4, 8, 16]) expect(qedIsTableSizeValid(ts)).toBe(true);
    for (const ts of [0, 3, 32]) expect(qedIsTableSizeValid(ts)).toBe(false);
  });

  it('computes the maximum image size exactly (no uint64 wrap)', () => {
    expect(qedMaxImageSize(4096, 1)).toBe(1n << 30n);
    expect(qedMaxImageSize(4096, 16)).toBe(256n << 30n);
    expect(qedMaxImageSize(65536, 4)).toBe(64n << 40n);
    expect(qedMaxImageSize(65536, 16)).toBe(1n << 50n);
    // QEMU computes 0 here; the true value is 2^(2*4 + 3*22 - 6) = 2^68.
    expect(qedMaxImageSize(4 << 20, 16)).toBe(1n << 68n);
    expect(qedIsImageSizeValid(64n << 40n, 65536, 4)).toBe(true);
    expect(qedIsImageSizeValid((64n << 40n) + 512n, 65536, 4)).toBe(false);
    expect(qedIsImageSizeValid(1000, 65536, 4)).toBe(false);
    expect(qedIsImageSizeValid(0, 65536, 4)).toBe(true);
    expect(qedIsImageSizeValid(1n << 60n, 16 << 20, 4)).toBe(true);
  });

  it('data and table offsets (qed-format.md §6), with table_size 1 accepted (§17.1)', () => {
    const g = { clusterSize: 4096, tableSize: 1, headerSize: 1, fileSize: 8 * 4096 };
    expect(qedCheckClusterOffset(g, 4096)).toBe(true);
    expect(qedCheckClusterOffset(g, 0)).toBe(false); // header
    expect(qedCheckClusterOffset(g, 4097)).toBe(false); // unaligned
    expect(qedCheckClusterOffset(g, 8 * 4096)).toBe(false); // EOF
    expect(qedCheckTableOffset(g, 4096)).toBe(true);
    expect(qedCheckTableOffset({ ...g, tableSize: 4 }, 5 * 4096)).toBe(false); // last cluster past EOF
    expect(qedCheckTableOffset({ ...g, tableSize: 4 }, 4 * 4096)).toBe(true);
    expect(qedQemuCannotOpenTableSize(1)).toBe(true);
    expect(qedQemuCannotOpenTableSize(2)).toBe(false);
  });
});

describe('QED open-time validation (QEMU order and messages)', () => {
  it('accepts a good header and rounds the file size down to a cluster', () => {
    const { header, fileSize } = validateHeader(raw(), FILE_LEN + 100);
    expect(fileSize).toBe(FILE_LEN);
    expect(header.imageSize).toBe(1 << 30);
    expect(header.l1TableOffset).toBe(65536);
  });

  it.each([
    [{ magic: 0x12345678 }, 'EINVAL', 'Image not in QED format'],
    [{ features: 0x18n }, 'ENOTSUP', 'Unsupported QED features: 18'],
    [{ clusterSize: 1000 }, 'EINVAL', 'QED cluster size is invalid'],
    [{ tableSize: 3 }, 'EINVAL', 'QED table size is invalid'],
    [{ imageSize: 1000n }, 'EINVAL', 'QED image size is invalid'],
    [{ imageSize: (64n << 40n) + 512n }, 'EINVAL', 'QED image size is invalid'],
    [{ l1TableOffset: 0n }, 'EINVAL', 'QED table offset is invalid'],
    [{ l1TableOffset: 65537n }, 'EINVAL', 'QED table offset is invalid'],
    [{ l1TableOffset: 2n * 65536n }, 'EINVAL', 'QED table offset is invalid'], // last cluster past EOF
    [{ l1TableOffset: 1n << 60n }, 'EINVAL', 'QED table offset is invalid'],
    [
      { features: 1n, backingFilenameOffset: 65530, backingFilenameSize: 10 },
      'EINVAL',
      'QED backing filename offset is invalid',
    ],
  ] as const)('%o -> %s %s', (over, code, message) => {
    const e = openError(over);
    expect(e.code).toBe(code);
    expect(e.message).toBe(message);
  });

  it('checks the features before anything else after the magic', () => {
    expect(openError({ features: 8n, clusterSize: 3 }).message).toBe('Unsupported QED features: 8');
  });

  it('refuses a header region larger than 4 GiB', () => {
    // With a huge header_size the L1 offset lies in the header region: QEMU fails on it first.
    const e = openError({ headerSize: 0x10000, l1TableOffset: 65536n });
    expect(e.message).toBe('QED table offset is invalid');
    // When the offsets line up, the size check speaks.
    const big = openError({ headerSize: 0x10000, clusterSize: 65536, l1TableOffset: 0x10000n * 65536n }, 2 ** 33);
    expect(big.message).toBe('QED header size is too large');
  });

  it('refuses a backing name that QEMU cannot read (>= 4096 bytes)', () => {
    const e = openError({ features: 1n, backingFilenameOffset: 64, backingFilenameSize: 5000 });
    expect(e.message).toBe('Failed to read backing filename');
  });

  it('opens table_size=1 images and images too large for a JS number are refused clearly', () => {
    const ts1 = raw({ clusterSize: 4096, tableSize: 1, l1TableOffset: 4096n, imageSize: 1n << 20n });
    expect(validateHeader(ts1, 8192).header.tableSize).toBe(1);
    const huge = openError({ clusterSize: 1 << 20, tableSize: 16, imageSize: 1n << 60n, l1TableOffset: 1n << 20n }, 17 << 20);
    expect(huge.message).toMatch(/exceeds the largest size this implementation supports/);
  });

  it('accepts a backing flag with an empty name', () => {
    const { header } = validateHeader(raw({ features: 1n }), FILE_LEN);
    expect(header.backingFilenameSize).toBe(0);
  });
});

describe('QED create options', () => {
  it('defaults and rounding', () => {
    expect(qedCreateParams({ size: 1000 })).toEqual({
      imageSize: 1024,
      clusterSize: 65536,
      tableSize: 4,
      backingFile: '',
      backingFmt: '',
    });
    expect(qedCreateParams({ size: 0, cluster_size: 4096, table_size: 1 }).tableSize).toBe(1);
  });

  it.each([
    [{ size: 1 << 20, clusterSize: 1000 }, 'QED cluster size must be within range [4096, 67108864] and power of 2'],
    [{ size: 1 << 20, clusterSize: 0 }, 'QED cluster size must be within range [4096, 67108864] and power of 2'],
    [{ size: 1 << 20, tableSize: 3 }, 'QED table size must be within range [1, 16] and power of 2'],
    [{ size: 1 << 20, tableSize: 0 }, 'QED table size must be within range [1, 16] and power of 2'],
    [
      { size: 2 * 2 ** 30, clusterSize: 4096, tableSize: 1 },
      'QED image size must be a non-zero multiple of cluster size and less than 1073741824 bytes',
    ],
    [
      { size: 2 ** 53 - 1 },
      'QED image size must be a non-zero multiple of cluster size and less than 70368744177664 bytes',
    ],
  ])('%o', (opts, message) => {
    expect(() => qedCreateParams(opts)).toThrow(message);
  });

  it('refuses backing names that do not fit in the header cluster (qed-format.md §17.6)', () => {
    expect(() => qedCreateParams({ size: 4096, clusterSize: 4096, backingFile: 'a'.repeat(4033) })).toThrow(
      /Backing file name is too long/,
    );
    expect(qedCreateParams({ size: 4096, clusterSize: 4096, backingFile: 'a'.repeat(4032) }).backingFile.length).toBe(4032);
    expect(() => qedCreateParams({ size: 4096, backingFile: 'a'.repeat(4096) })).toThrow(/too long/);
  });

  it('warns about table_size=1', () => {
    expect(qedCreateWarnings({ tableSize: 1 })).toHaveLength(1);
    expect(qedCreateWarnings({ tableSize: 4 })).toHaveLength(0);
  });
});
