// qcow2 images with an external data file, on mem: stores (no external program): where the
// data goes, what the qcow2 file keeps, the order of the flushes, QEMU's refusals.
import { describe, expect, it } from 'vitest';
import { bdrvCreate } from '../../src/block/create.js';
import { memStoreDelete, memStoreGet } from '../../src/drivers/mem/index.js';
import { BlockDriverState, BlockError, IOVector, bdrvAmendOptions } from '../../src/index.js';
import { memName } from './block-helpers.js';

function bytes(name: string, offset: number, len: number): Uint8Array {
  const st = memStoreGet(name.slice(4));
  if (!st) throw new Error(`no store ${name}`);
  const out = new Uint8Array(len);
  if (offset < st.length) st.read(offset, [out.subarray(0, Math.min(len, st.length - offset))], Math.min(len, st.length - offset));
  return out;
}

/**
 * Append to `order`, as they come, the debug events of the data file and of the qcow2 file,
 * and the data file's flushes.
 */
function recordOrder(bs: BlockDriverState, order: string[]): void {
  const dataNode = bs.dataFile;
  const file = bs.file;
  if (!dataNode || !file) throw new Error('children missing');
  dataNode.events.on('debug', (e: string) => order.push(`data:${e}`));
  file.events.on('debug', (e: string) => order.push(`file:${e}`));
  const origFlush = dataNode.flush.bind(dataNode);
  dataNode.flush = async () => {
    order.push('data:flush');
    await origFlush();
  };
}

async function newPair(options: Record<string, string | number | boolean> = {}): Promise<{ image: string; data: string }> {
  const image = memName('qcow2');
  const data = memName('raw');
  await bdrvCreate(image, { format: 'qcow2', options: { size: 1 << 20, dataFile: data, ...options } });
  return { image, data };
}

describe('qcow2 external data files', () => {
  it('guest data goes to the data file at the guest offset; the qcow2 file keeps the tables', async () => {
    const { image, data } = await newPair();
    const bs = await BlockDriverState.open(image, { format: 'qcow2' });
    try {
      expect(bs.dataFile?.filename).toBe(data);
      await bs.pwrite(0, new Uint8Array(65536).fill(0x11));
      await bs.pwrite(200 << 10, new Uint8Array(4096).fill(0x22));
      await bs.flush();
      expect(bytes(data, 0, 65536).every((b) => b === 0x11)).toBe(true);
      expect(bytes(data, 200 << 10, 4096).every((b) => b === 0x22)).toBe(true);
      // Offset 0 in the data file: told from "unallocated" by COPIED.
      const l2 = new DataView(bytes(image, 0x40000, 32).buffer);
      expect(l2.getBigUint64(0)).toBe(0x8000000000000000n);
      expect(l2.getBigUint64(24)).toBe(0x8000000000030000n);
      const st = await bs.blockStatus(0, 1 << 20);
      expect(st).toMatchObject({ allocated: true, data: true, offset: 0, pnum: 65536 });
      expect(st.file).toBe(bs.dataFile);
      const r = await bs.check();
      expect(r).toMatchObject({ corruptions: 0, leaks: 0 });
      // Header, reftable, refblock, L1, L2: the data clusters are counted nowhere.
      expect(bytes(image, 0x20000, 12)).toEqual(new Uint8Array([0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 0]));
      const info = await bs.driver.getSpecificInfo!(bs);
      expect(info.data).toMatchObject({ 'data-file': data, 'data-file-raw': false });
    } finally {
      await bs.close();
    }
  });

  it('the data file is flushed before an L2 entry pointing into it is written', async () => {
    const { image } = await newPair();
    const bs = await BlockDriverState.open(image, { format: 'qcow2' });
    const order: string[] = [];
    try {
      recordOrder(bs, order);
      await bs.pwrite(65536, new Uint8Array(512).fill(7));
      await bs.flush();
    } finally {
      await bs.close();
    }
    const write = order.indexOf('data:write_aio');
    const flush = order.indexOf('data:flush', write);
    const l2 = order.indexOf('file:l2_update', write);
    expect(write).toBeGreaterThanOrEqual(0);
    expect(flush).toBeGreaterThan(write);
    expect(l2).toBeGreaterThan(flush);
  });

  // An amend that frees clusters (here the old refcount structures of a refcount_bits change)
  // makes the refcount cache depend on the L2 cache, which first honours the L2 cache's own
  // dependency on the refcount cache: that must not drop the pending data-file flush.
  it('a dependency switch keeps the data flush owed before the L2 entries', async () => {
    const { image } = await newPair({ clusterSize: 512 });
    const bs = await BlockDriverState.open(image, { format: 'qcow2' });
    const order: string[] = [];
    try {
      recordOrder(bs, order);
      await bs.pwrite(124, new Uint8Array(512).fill(7));
      await bdrvAmendOptions(bs, { refcountBits: 1 });
      await bs.pwrite(2048, new Uint8Array(512).fill(8));
      await bs.flush();
    } finally {
      await bs.close();
    }
    // The first write's entry reaches the qcow2 file only after its data reached the disk.
    const write = order.indexOf('data:write_aio');
    const l2 = order.indexOf('file:l2_update', write);
    expect(write).toBeGreaterThanOrEqual(0);
    expect(l2, order.join(' ')).toBeGreaterThan(write);
    expect(order.slice(write, l2), order.join(' ')).toContain('data:flush');
  });

  it('raw external data: metadata preallocated, zero writes zero the data file', async () => {
    const { image, data } = await newPair({ dataFileRaw: true });
    const bs = await BlockDriverState.open(image, { format: 'qcow2' });
    try {
      const l2 = new DataView(bytes(image, 0x40000, 128).buffer);
      for (let i = 0; i < 16; i++) expect(l2.getBigUint64(i * 8)).toBe(0x8000000000000000n | BigInt(i * 65536));
      await bs.pwrite(0, new Uint8Array(65536).fill(5));
      await bs.writeZeroes(0, 65536);
      await bs.flush();
      expect(bytes(data, 0, 65536).every((b) => b === 0)).toBe(true);
      expect((await bs.driver.getSpecificInfo!(bs)).data).toMatchObject({ 'data-file-raw': true });
    } finally {
      await bs.close();
    }
  });

  it("refuses what QEMU refuses, with QEMU's messages", async () => {
    const image = memName('qcow2');
    await expect(bdrvCreate(image, { format: 'qcow2', options: { size: 1 << 20, dataFileRaw: true } })).rejects.toThrow('data-file-raw requires data-file');
    await expect(bdrvCreate(image, { format: 'qcow2', options: { size: 1 << 20, dataFile: memName('raw'), compat: '0.10' } })).rejects.toThrow(
      'External data files are only supported with compatibility level 1.1 and above (use version=v3 or greater)',
    );
    const { image: img } = await newPair();
    const bs = await BlockDriverState.open(img, { format: 'qcow2' });
    try {
      await expect(bs.pwritevCompressed(0, IOVector.from(new Uint8Array(65536)))).rejects.toMatchObject({ code: 'ENOTSUP' });
    } finally {
      await bs.close();
    }
    // Without its data file an image opens only for info (no guest I/O).
    const gone = await newPair();
    memStoreDelete(gone.data.slice(4));
    await expect(BlockDriverState.open(gone.image, { format: 'qcow2' })).rejects.toMatchObject({ code: 'ENOENT' });
    const noIO = await BlockDriverState.open(gone.image, { format: 'qcow2', noIO: true, readOnly: true });
    expect((await noIO.driver.getSpecificInfo!(noIO)).data).toMatchObject({ 'data-file': gone.data, 'data-file-raw': false });
    await noIO.close();
    const plain = memName('qcow2');
    await bdrvCreate(plain, { format: 'qcow2', options: { size: 1 << 20 } });
    const err = await BlockDriverState.open(plain, { format: 'qcow2', childOptions: { 'data-file': new Map([['filename', memName('raw')]]) } }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BlockError);
    expect((err as BlockError).message).toContain("'data-file' can only be set for images with an external data file");
  });
});
