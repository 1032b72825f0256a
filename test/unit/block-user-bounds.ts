/**
 * The user's bounds, checked the same way through every user handle: a node the user opened
 * directly (BlockDriverState.open with a protocol as the format) and a BlockBackend.
 */
import { expect } from 'vitest';
import {
  BlockError,
  IOVector,
  memStoreGet,
  memStoreRead,
  memStoreWrite,
  type BlockAIOCB,
  type BlockErrorCode,
  type BlockStatus,
  type CompletionFunc,
} from '../../src/index.js';
import { makeMem } from './block-helpers.js';

/** What a user calls on its handle (a BlockDriverState or a BlockBackend). */
export interface UserHandle {
  pread(offset: number, buf: Uint8Array): Promise<void>;
  pwrite(offset: number, buf: Uint8Array): Promise<void>;
  pwritev(offset: number, qiov: IOVector): Promise<void>;
  writeZeroes(offset: number, bytes: number): Promise<void>;
  discard(offset: number, bytes: number): Promise<void>;
  truncate(size: number): Promise<void>;
  getLength(): Promise<number>;
  blockStatus(offset: number, bytes: number): Promise<BlockStatus>;
  aioWritev(sectorNum: number, qiov: IOVector, nbSectors: number, cb: CompletionFunc): BlockAIOCB;
}

export async function expectCode(p: Promise<unknown>, code: BlockErrorCode, message?: RegExp): Promise<void> {
  const e: unknown = await p.then(
    () => null,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(BlockError);
  expect((e as BlockError).code).toBe(code);
  if (message) expect((e as BlockError).message).toMatch(message);
}

export function aioWrite(h: UserHandle, sector: number, n: number): Promise<BlockError | null> {
  return new Promise((resolve) => {
    h.aioWritev(sector, IOVector.alloc(n * 512), n, (err) => resolve(err));
  });
}

export function storeLength(name: string): number {
  const s = memStoreGet(name);
  if (!s) throw new Error(`no store ${name}`);
  return s.length;
}

/** A 4096-byte mem store filled with 7s. */
export function makeSevens(): string {
  const name = makeMem(4096);
  memStoreWrite(name, new Uint8Array(4096).fill(7));
  return name;
}

/** Over makeSevens(): every request past the end fails with EIO and changes nothing. */
export async function expectRefusedPastEnd(h: UserHandle, name: string): Promise<void> {
  await expectCode(h.pwrite(4096, new Uint8Array(512)), 'EIO');
  // Straddling the end: nothing of it is written, not even the part inside.
  await expectCode(h.pwrite(4000, new Uint8Array(200).fill(1)), 'EIO');
  await expectCode(h.pwritev(3584, new IOVector([new Uint8Array(512), new Uint8Array(512)])), 'EIO');
  await expectCode(h.pread(4000, new Uint8Array(200)), 'EIO');
  await expectCode(h.pread(4096, new Uint8Array(1)), 'EIO');
  await expectCode(h.writeZeroes(4096, 512), 'EIO');
  await expectCode(h.writeZeroes(4000, 200), 'EIO');
  await expectCode(h.discard(4095, 2), 'EIO');
  // Even an empty request past the end, as qemu-io's "read 1048577 0".
  await expectCode(h.pread(4097, new Uint8Array(0)), 'EIO');
  await expectCode(h.pwrite(4097, new Uint8Array(0)), 'EIO');
  expect((await aioWrite(h, 8, 1))?.code).toBe('EIO');
  expect((await aioWrite(h, 7, 2))?.code).toBe('EIO');
  expect(storeLength(name)).toBe(4096);
  expect(memStoreRead(name).every((b) => b === 7)).toBe(true);
  // Up to the end, and empty at the end, are fine.
  await h.pwrite(4095, Uint8Array.of(1));
  await h.pread(4096, new Uint8Array(0));
  await h.writeZeroes(4096, 0);
  expect(await aioWrite(h, 7, 1)).toBeNull();
  expect(await h.getLength()).toBe(4096);
  // Truncate still changes the size (qemu-io's truncate), and the new end bounds requests.
  await h.truncate(8192);
  await h.pwrite(8000, new Uint8Array(192).fill(2));
  await expectCode(h.pwrite(8000, new Uint8Array(193)), 'EIO');
}

/** A 1000-byte mem store filled with 9s. */
export function makeNines(): string {
  const name = makeMem(1000);
  memStoreWrite(name, new Uint8Array(1000).fill(9));
  return name;
}

/** Over makeNines(): whole sectors; the tail of the last one reads zeros, a write there grows it. */
export async function expectSectorTail(h: UserHandle, name: string): Promise<void> {
  const back = new Uint8Array(34).fill(0xee);
  await h.pread(990, back);
  expect([...back.subarray(0, 10)]).toEqual(new Array<number>(10).fill(9));
  expect(back.subarray(10).every((b) => b === 0)).toBe(true);
  expect(await h.blockStatus(1000, 24)).toMatchObject({ pnum: 24 });
  await expectCode(h.pwrite(1023, new Uint8Array(2)), 'EIO');
  expect(storeLength(name)).toBe(1000);
  await h.pwrite(1020, Uint8Array.of(1, 2, 3, 4));
  expect(storeLength(name)).toBe(1024);
}
