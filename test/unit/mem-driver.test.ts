import { afterEach, describe, expect, it } from 'vitest';
import { bdrvCreate } from '../../src/block/create.js';
import { IOVector } from '../../src/block/iovec.js';
import { BlockDriverState } from '../../src/block/node.js';
import { BlockDriverRegistry } from '../../src/block/registry.js';
import {
  MEM_CHUNK_SIZE,
  memDriver,
  memStoreCreate,
  memStoreDelete,
  memStoreExists,
  memStoreGet,
  memStoreRead,
} from '../../src/drivers/mem/index.js';
import { bytePattern, expectBytes, rejection } from './test-bytes.js';

const registry = new BlockDriverRegistry().register(memDriver);
const TIB = 1024 ** 4;

const pattern = bytePattern(11, 17, 9);

let seq = 0;
const used: string[] = [];
function freshName(): string {
  const n = `mem-driver-${process.pid}-${seq++}`;
  used.push(n);
  return n;
}

describe('mem driver', () => {
  const nodes: BlockDriverState[] = [];
  afterEach(async () => {
    for (const n of nodes.splice(0)) await n.close();
    for (const n of used.splice(0)) memStoreDelete(n);
  });
  // Opened as a format's child sees it (`child`): the store's own length, growth past the end.
  async function opened(filename: string, readOnly = false): Promise<BlockDriverState> {
    const bs = await BlockDriverState.open(filename, { format: 'mem', registry, readOnly, child: true });
    nodes.push(bs);
    return bs;
  }

  it('is found by its mem: prefix and opens the named store', async () => {
    const name = freshName();
    memStoreCreate(name, 4096);
    expect(registry.findProtocol(`mem:${name}`)).toBe(memDriver);
    const bs = await opened(`mem:${name}`);
    expect(bs.requestAlignment).toBe(1);
    expect(await bs.getLength()).toBe(4096);
  });

  it('opening a missing store is ENOENT with the name', async () => {
    const name = freshName();
    const e = await rejection(BlockDriverState.open(`mem:${name}`, { format: 'mem', registry }));
    expect(e.code).toBe('ENOENT');
    expect(e.path).toBe(`mem:${name}`);
    expect(e.message).toBe(`Could not open 'mem:${name}': No such file or directory`);
    expect((await rejection(BlockDriverState.open('mem:', { format: 'mem', registry }))).code).toBe('ENOENT');
  });

  it('create (via bdrvCreate) makes the store, and empties an existing one', async () => {
    const name = freshName();
    await bdrvCreate(`mem:${name}`, { format: 'mem', options: { size: 1 << 20 }, registry });
    expect(memStoreExists(name)).toBe(true);
    const bs = await opened(`mem:${name}`);
    expect(await bs.getLength()).toBe(1 << 20);
    await bs.pwrite(0, pattern(100, 1));
    await bdrvCreate(`mem:${name}`, { format: 'mem', options: { size: 512 }, registry });
    // The open node sees the emptied store, as an open fd sees O_TRUNC.
    expect(await bs.getLength()).toBe(512);
    const b = new Uint8Array(100);
    await bs.pread(0, b);
    expect(b.every((x) => x === 0)).toBe(true);
    const e = await rejection(memDriver.create!(`mem:${name}`, { size: -3 }, { registry, createFile: () => expect.fail() }));
    expect(e.code).toBe('EINVAL');
  });

  it('reads, writes, readv and writev at unaligned offsets across chunks', async () => {
    const name = freshName();
    memStoreCreate(name, 4 * MEM_CHUNK_SIZE);
    const bs = await opened(`mem:${name}`);
    const data = pattern(MEM_CHUNK_SIZE + 999, 2);
    await bs.pwrite(MEM_CHUNK_SIZE - 500, data);
    const back = new Uint8Array(data.length);
    await bs.pread(MEM_CHUNK_SIZE - 500, back);
    expectBytes(back, data);
    const segs = [pattern(3, 3), pattern(70_000, 4), pattern(1, 5)];
    await bs.pwritev(17, new IOVector(segs));
    const outs = [new Uint8Array(9), new Uint8Array(69_995)];
    await bs.preadv(17, new IOVector(outs));
    expectBytes(new IOVector(outs).toBuffer(), new IOVector(segs).toBuffer());
    // Another node on the same store sees the data.
    const other = await opened(`mem:${name}`, true);
    const via = new Uint8Array(70_004);
    await other.pread(17, via);
    expectBytes(via, new IOVector(segs).toBuffer());
    expectBytes(memStoreRead(name).subarray(17, 17 + 70_004), via);
  });

  it('past EOF: reads see zeros and writes grow the store (hooks and node)', async () => {
    const name = freshName();
    memStoreCreate(name, 100);
    const bs = await opened(`mem:${name}`);
    const buf = new Uint8Array(50).fill(0xee);
    await memDriver.coPreadv!(bs, 90, 50, IOVector.from(buf));
    expect(buf.every((b) => b === 0)).toBe(true);
    await memDriver.coPwritev!(bs, 1000, 3, IOVector.from(Uint8Array.of(7, 8, 9)), {});
    expect(await bs.getLength()).toBe(1003);
    const back = new Uint8Array(903);
    await bs.pread(100, back);
    expect([...back.subarray(900)]).toEqual([7, 8, 9]);
    expect(back.subarray(0, 900).every((b) => b === 0)).toBe(true);
    // The protocol node is growable: the same through the node.
    await bs.pwrite(2000, Uint8Array.of(1));
    expect(await bs.getLength()).toBe(2001);
    const past = new Uint8Array(4).fill(0xee);
    await bs.pread(2000, past);
    expect([...past]).toEqual([1, 0, 0, 0]);
  });

  it('a 1 TiB image costs one chunk for its last byte', async () => {
    const name = freshName();
    await bdrvCreate(`mem:${name}`, { format: 'mem', options: { size: TIB }, registry });
    const bs = await opened(`mem:${name}`);
    await bs.pwrite(TIB - 1, Uint8Array.of(0xa5));
    expect(memStoreGet(name)?.chunks.size).toBe(1);
    expect(await bs.getAllocatedFileSize()).toBe(MEM_CHUNK_SIZE);
    const b = new Uint8Array(2);
    await bs.pread(TIB - 2, b);
    expect([...b]).toEqual([0, 0xa5]);
    // Status of the whole TiB is cheap: one hole, then one data chunk.
    expect(await bs.blockStatus(0, TIB)).toMatchObject({ pnum: TIB - MEM_CHUNK_SIZE, data: false, zero: true });
    expect(await bs.blockStatus(TIB - MEM_CHUNK_SIZE, MEM_CHUNK_SIZE)).toMatchObject({
      pnum: MEM_CHUNK_SIZE,
      data: true,
      zero: false,
    });
  });

  it('blockStatus: unwritten chunks are zero, written ones data, offsets in this store', async () => {
    const name = freshName();
    memStoreCreate(name, 10 * MEM_CHUNK_SIZE);
    const bs = await opened(`mem:${name}`);
    await bs.pwrite(3 * MEM_CHUNK_SIZE + 10, new Uint8Array(MEM_CHUNK_SIZE));
    const a = await bs.blockStatus(0, 10 * MEM_CHUNK_SIZE);
    expect(a).toMatchObject({ pnum: 3 * MEM_CHUNK_SIZE, allocated: true, data: false, zero: true, offset: 0 });
    expect(a.file).toBe(bs);
    const b = await bs.blockStatus(3 * MEM_CHUNK_SIZE, 10 * MEM_CHUNK_SIZE - 3 * MEM_CHUNK_SIZE);
    expect(b).toMatchObject({ pnum: 2 * MEM_CHUNK_SIZE, data: true, zero: false, offset: 3 * MEM_CHUNK_SIZE });
    const c = await bs.blockStatus(5 * MEM_CHUNK_SIZE, 5 * MEM_CHUNK_SIZE);
    expect(c).toMatchObject({ pnum: 5 * MEM_CHUNK_SIZE, data: false, zero: true });
  });

  it('writeZeroes is native: unmap drops whole chunks, partial ones are zero-filled', async () => {
    const name = freshName();
    memStoreCreate(name, 4 * MEM_CHUNK_SIZE);
    const bs = await opened(`mem:${name}`);
    await bs.pwrite(0, new Uint8Array(4 * MEM_CHUNK_SIZE).fill(0x11));
    await bs.writeZeroes(100, 2 * MEM_CHUNK_SIZE, { mayUnmap: true });
    expect([...(memStoreGet(name)?.chunks.keys() ?? [])].sort()).toEqual([0, 2, 3]);
    const all = memStoreRead(name);
    expect(all.subarray(0, 100).every((b) => b === 0x11)).toBe(true);
    expect(all.subarray(100, 100 + 2 * MEM_CHUNK_SIZE).every((b) => b === 0)).toBe(true);
    expect(all.subarray(100 + 2 * MEM_CHUNK_SIZE).every((b) => b === 0x11)).toBe(true);
    await bs.writeZeroes(2 * MEM_CHUNK_SIZE, MEM_CHUNK_SIZE, { noFallback: true });
    expect(memStoreGet(name)?.chunks.size).toBe(3);
  });

  it('discard drops whole chunks; flush succeeds', async () => {
    const name = freshName();
    memStoreCreate(name, 3 * MEM_CHUNK_SIZE);
    const bs = await opened(`mem:${name}`);
    await bs.pwrite(0, new Uint8Array(3 * MEM_CHUNK_SIZE).fill(2));
    await bs.discard(1, 2 * MEM_CHUNK_SIZE);
    expect([...(memStoreGet(name)?.chunks.keys() ?? [])].sort()).toEqual([0, 2]);
    await bs.flush();
  });

  it('truncate shrinks (dropping data) and grows with zeros', async () => {
    const name = freshName();
    memStoreCreate(name, 2 * MEM_CHUNK_SIZE);
    const bs = await opened(`mem:${name}`);
    await bs.pwrite(0, new Uint8Array(2 * MEM_CHUNK_SIZE).fill(9));
    await bs.truncate(700);
    expect(await bs.getLength()).toBe(700);
    await bs.truncate(MEM_CHUNK_SIZE * 2);
    const b = new Uint8Array(2 * MEM_CHUNK_SIZE);
    await bs.pread(0, b);
    expect(b.subarray(0, 700).every((x) => x === 9)).toBe(true);
    expect(b.subarray(700).every((x) => x === 0)).toBe(true);
    expect(memStoreGet(name)?.chunks.size).toBe(1);
  });

  it('read-only node refuses writes; closed node is EBADF; the store outlives the node', async () => {
    const name = freshName();
    memStoreCreate(name, 512);
    const ro = await opened(`mem:${name}`, true);
    expect((await rejection(ro.pwrite(0, Uint8Array.of(1)))).code).toBe('EACCES');
    const bs = await BlockDriverState.open(`mem:${name}`, { format: 'mem', registry });
    await bs.pwrite(0, Uint8Array.of(42));
    await bs.close();
    expect((await rejection(bs.pread(0, new Uint8Array(1)))).code).toBe('EBADF');
    expect(() => memDriver.getLength!(bs)).toThrowError(expect.objectContaining({ code: 'EBADF' }) as Error);
    expect(memStoreRead(name)[0]).toBe(42);
  });

  it('AIO requests go through the coroutine hooks', async () => {
    const name = freshName();
    memStoreCreate(name, 8192);
    const bs = await opened(`mem:${name}`);
    const data = pattern(1024, 6);
    await new Promise<void>((resolve, reject) => {
      bs.aioWritev(2, IOVector.from(data), 2, (err) => (err ? reject(err) : resolve()));
    });
    const back = new Uint8Array(1024);
    await new Promise<void>((resolve, reject) => {
      bs.aioReadv(2, IOVector.from(back), 2, (err) => (err ? reject(err) : resolve()));
    });
    expectBytes(back, data);
    expectBytes(memStoreRead(name).subarray(1024, 2048), data);
  });
});
