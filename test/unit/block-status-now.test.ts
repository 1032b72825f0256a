// Block status now (BlockDriverState.blockStatusNow and the drivers' blockStatusNow hooks): the
// answer blockStatus gives, without a promise, once the table is in memory; null otherwise.
import { mkdtemp, rm, truncate } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { bdrvCreate } from '../../src/block/create.js';
import { qcow2State } from '../../src/drivers/qcow2/index.js';
import { BlockDriverState } from '../../src/index.js';
import { memName } from './block-helpers.js';

const CLUSTER = 65536;
const SIZE = 64 << 20;

async function openNew(format: 'qed' | 'qcow2', backing?: string): Promise<BlockDriverState> {
  const name = memName(`bsnow-${format}`);
  const options: Record<string, string | number> = { size: SIZE };
  if (backing !== undefined) Object.assign(options, { backing_file: backing, backing_fmt: 'qcow2' });
  await bdrvCreate(name, { format, options });
  const bs = await BlockDriverState.open(name, { format });
  await bs.pwrite(0, new Uint8Array(CLUSTER).fill(1));
  await bs.pwrite(3 * CLUSTER, new Uint8Array(2 * CLUSTER).fill(2));
  await bs.writeZeroes(8 * CLUSTER, CLUSTER);
  await bs.flush();
  await bs.close();
  return BlockDriverState.open(name, { format });
}

/** Offsets and lengths over every kind of run: data, unallocated, zero, partial clusters. */
const QUERIES: Array<[number, number]> = [
  [0, SIZE],
  [512, CLUSTER],
  [CLUSTER, SIZE - CLUSTER],
  [3 * CLUSTER + 4096, 4 * CLUSTER],
  [5 * CLUSTER, 10 * CLUSTER],
  [8 * CLUSTER, SIZE - 8 * CLUSTER],
  [SIZE - 512, 512],
];

describe.each(['qed', 'qcow2'] as const)('%s: block status now', (format) => {
  it('answers as blockStatus does once the table is cached, and null before', async () => {
    const bs = await openNew(format);
    try {
      // Freshly opened: no L2 table in memory yet.
      expect(bs.blockStatusNow(0, CLUSTER)).toBeNull();
      await bs.blockStatus(0, CLUSTER);
      for (const [offset, bytes] of QUERIES) {
        const now = bs.blockStatusNow(offset, bytes);
        expect(now, `${offset}+${bytes}`).not.toBeNull();
        expect(now).toEqual(await bs.blockStatus(offset, bytes));
      }
      // Outside the image, or a range the generic layer refuses: left to blockStatus.
      expect(bs.blockStatusNow(SIZE, 512)).toBeNull();
      expect(bs.blockStatusNow(-1, 512)).toBeNull();
      expect(bs.blockStatusNow(0, 0)).toBeNull();
    } finally {
      await bs.close();
    }
    expect(bs.blockStatusNow(0, CLUSTER)).toBeNull();
  });

  it('reads as zeros past the end of a shorter backing file, as blockStatus does', async () => {
    const base = memName('bsnow-base');
    await bdrvCreate(base, { format: 'qcow2', options: { size: 4 * CLUSTER } });
    const bs = await openNew(format, base);
    try {
      await bs.blockStatus(0, CLUSTER);
      for (const offset of [CLUSTER, 2 * CLUSTER, 16 * CLUSTER]) {
        const now = bs.blockStatusNow(offset, CLUSTER);
        expect(now).not.toBeNull();
        expect(now).toEqual(await bs.blockStatus(offset, CLUSTER));
      }
      expect(bs.blockStatusNow(16 * CLUSTER, CLUSTER)?.zero).toBe(true);
      expect(bs.blockStatusNow(CLUSTER, CLUSTER)?.zero).toBe(false);
    } finally {
      await bs.close();
    }
  });
});

describe('qcow2: block status now steps aside', () => {
  it('while s.lock is held', async () => {
    const bs = await openNew('qcow2');
    try {
      await bs.blockStatus(0, CLUSTER);
      expect(bs.blockStatusNow(0, CLUSTER)).not.toBeNull();
      const s = qcow2State(bs);
      await s.lock.lock();
      expect(bs.blockStatusNow(0, CLUSTER)).toBeNull();
      s.lock.unlock();
    } finally {
      await bs.close();
    }
  });
});

describe('raw on a host file: block status now', () => {
  it('answers as blockStatus does (lseek), null in the sector tail past the file', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'bsnow-raw-'));
    try {
      const path = join(dir, 'disk.raw');
      await bdrvCreate(path, { format: 'raw', options: { size: 4 * CLUSTER } });
      const w = await BlockDriverState.open(path, { format: 'raw' });
      await w.pwrite(CLUSTER, new Uint8Array(CLUSTER).fill(3));
      await w.close();
      // 100 bytes short of a sector: raw counts whole sectors, the tail reads as zeros.
      await truncate(path, 4 * CLUSTER - 100);
      const bs = await BlockDriverState.open(path, { format: 'raw' });
      try {
        for (const [offset, bytes] of [[0, 4 * CLUSTER], [CLUSTER + 512, CLUSTER], [2 * CLUSTER, 2 * CLUSTER - 512], [4 * CLUSTER - 512, 512]]) {
          expect(bs.blockStatusNow(offset, bytes)).toEqual(await bs.blockStatus(offset, bytes));
        }
        expect(bs.blockStatusNow(4 * CLUSTER - 50, 50)).toBeNull();
      } finally {
        await bs.close();
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
