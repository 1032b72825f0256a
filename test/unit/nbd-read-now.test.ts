// READs answered now (src/nbd/read-now.ts): taken for a raw export on a host file, where
// block status and the page cache answer without waiting, and never for a qcow2 export; the
// replies, bounds and errors are the generic path's. A read-only export sends its data
// straight from the file (sendfile) when it can.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it, type MockInstance, vi } from 'vitest';
import { bdrvCreate } from '../../src/block/create.js';
import { SENDFILE_BROKEN, SENDFILE_DECLINED } from '../../src/block/driver.js';
import { BlockBackend } from '../../src/index.js';
import * as p from '../../src/nbd/protocol.js';
import { NbdServer } from '../../src/nbd/index.js';
import { WireClient } from './nbd-wire.js';

const KiB = 1024;
const SIZE = 1024 * KiB;
const cleanups: (() => Promise<void>)[] = [];

afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** 64 KiB of data, a 64 KiB hole, data again: the first 192 KiB as a sparse READ sees them. */
function content(): Buffer {
  const b = Buffer.alloc(SIZE);
  for (let i = 0; i < 64 * KiB; i++) b[i] = (i % 251) + 1;
  b.fill(0x77, 128 * KiB);
  return b;
}

interface Served {
  bs: BlockBackend;
  pread: MockInstance<BlockBackend['pread']>;
  status: MockInstance<BlockBackend['blockStatusAbove']>;
  client(sr: boolean): Promise<WireClient>;
}

/**
 * Export `image` (opened as `format`), with the generic path's entries spied on. Writable
 * unless `readOnly`: a read-only export sends from the file, past preadNow.
 */
async function serve(image: string, format: string, readOnly = false): Promise<Served> {
  const bs = await BlockBackend.open(image, { format, readOnly });
  const server = new NbdServer({ exports: [{ name: '', backend: bs }] });
  const addr = await server.listen({ host: '127.0.0.1', port: 0 });
  const clients: WireClient[] = [];
  cleanups.push(async () => {
    for (const c of clients) c.close();
    await server.close();
    await bs.close();
  });
  return {
    bs,
    pread: vi.spyOn(bs, 'pread'),
    status: vi.spyOn(bs, 'blockStatusAbove'),
    client: async (sr) => {
      const c = await WireClient.connect(addr);
      clients.push(c);
      await c.start();
      await c.go('', { sr });
      return c;
    },
  };
}

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'nbd-read-now-'));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** A raw file with data everywhere. */
async function rawFile(): Promise<{ path: string; data: Buffer }> {
  const path = join(await tempDir(), 'disk.raw');
  const data = content();
  await writeFile(path, data);
  return { path, data };
}

/** A raw file created sparse, with 64 KiB of data at 0 and at 512 KiB: holes around them. */
async function sparseFile(): Promise<string> {
  const path = join(await tempDir(), 'sparse.raw');
  await bdrvCreate(path, { format: 'raw', options: { size: SIZE } });
  const w = await BlockBackend.open(path, { format: 'raw' });
  await w.pwrite(0, Buffer.alloc(64 * KiB, 0x11));
  await w.pwrite(512 * KiB, Buffer.alloc(64 * KiB, 0x22));
  await w.close();
  return path;
}

function sparseContent(): Buffer {
  const b = Buffer.alloc(SIZE);
  b.fill(0x11, 0, 64 * KiB);
  b.fill(0x22, 512 * KiB, 576 * KiB);
  return b;
}

/** A structured READ, its chunks assembled. */
async function read(c: WireClient, offset: number, length: number, flags = 0): Promise<Buffer> {
  c.request(p.NBD_CMD_READ, offset, length, { flags });
  const r = await c.reply();
  if (r.kind !== 'structured') throw new Error('expected chunks');
  return WireClient.assemble(r.chunks, offset, length);
}

/**
 * Simple-reply READs of 64 KiB and of the whole export (larger than the file driver copies at
 * once; qemu-img reads 2 MiB: asked in pieces), checked against `data`.
 */
async function simpleReads(s: Served, data: Buffer): Promise<void> {
  const simple = await s.client(false);
  simple.request(p.NBD_CMD_READ, 4096, 64 * KiB);
  const r = await simple.reply(64 * KiB);
  expect(r.kind === 'simple' && r.data.equals(data.subarray(4096, 4096 + 64 * KiB))).toBe(true);
  simple.request(p.NBD_CMD_READ, 0, SIZE);
  const whole = await simple.reply(SIZE);
  expect(whole.kind === 'simple' && whole.data.equals(data)).toBe(true);
}

describe('NBD READ answered now', () => {
  it('serves a raw file export without the backend read and status promises', async () => {
    const { path, data } = await rawFile();
    const s = await serve(path, 'raw');
    const now = vi.spyOn(s.bs, 'preadNow');
    const direct = vi.spyOn(s.bs, 'sendfileNow');

    await simpleReads(s, data);

    const sr = await s.client(true);
    expect((await read(sr, 0, 256 * KiB)).equals(data.subarray(0, 256 * KiB))).toBe(true);
    sr.request(p.NBD_CMD_READ, 0, 64 * KiB, { flags: p.NBD_CMD_FLAG_DF });
    const df = await sr.reply();
    expect(df.kind === 'structured' && df.chunks.length === 1 && df.chunks[0].type === p.NBD_REPLY_TYPE_OFFSET_DATA).toBe(true);

    expect(now).toHaveBeenCalled();
    expect(now.mock.results.every((x) => x.value === true)).toBe(true);
    // A writable export never sends from the file (pages held by the socket must not change).
    expect(direct).not.toHaveBeenCalled();
    expect(s.pread).not.toHaveBeenCalled();
    expect(s.status).not.toHaveBeenCalled();
  });

  it('sends a sparse raw file in the chunks of the generic path, holes as OFFSET_HOLE', async () => {
    const s = await serve(await sparseFile(), 'raw');
    const c = await s.client(true);
    c.request(p.NBD_CMD_READ, 0, SIZE);
    const r = await c.reply();
    if (r.kind !== 'structured') throw new Error('expected chunks');
    // Whether the file system keeps the holes is its business; data is sent as data.
    expect(r.chunks.map((x) => x.type)).toContain(p.NBD_REPLY_TYPE_OFFSET_DATA);
    expect(r.chunks.filter((x) => (x.flags & p.NBD_REPLY_FLAG_DONE) !== 0)).toHaveLength(1);
    expect((r.chunks.at(-1)!.flags & p.NBD_REPLY_FLAG_DONE) !== 0).toBe(true);
    expect(WireClient.assemble(r.chunks, 0, SIZE).equals(sparseContent())).toBe(true);
    expect(s.pread).not.toHaveBeenCalled();
    expect(s.status).not.toHaveBeenCalled();
  });

  it('is not taken for a qcow2 export', async () => {
    const path = join(await tempDir(), 'disk.qcow2');
    await bdrvCreate(path, { format: 'qcow2', options: { size: SIZE } });
    const w = await BlockBackend.open(path, { format: 'qcow2' });
    await w.pwrite(0, Buffer.alloc(64 * KiB, 0x33));
    await w.close();
    const s = await serve(path, 'qcow2');
    const now = vi.spyOn(s.bs, 'preadNow');
    const c = await s.client(false);
    c.request(p.NBD_CMD_READ, 0, 64 * KiB);
    const r = await c.reply(64 * KiB);
    expect(r.kind === 'simple' && r.data.every((b) => b === 0x33)).toBe(true);
    expect(now.mock.results.every((x) => x.value === false)).toBe(true);
    expect(s.pread).toHaveBeenCalledTimes(1);
  });

  it('answers bounds, FUA and a declined page-cache read as the generic path does', async () => {
    const s = await serve(await sparseFile(), 'raw');
    const want = sparseContent();
    const c = await s.client(true);

    c.request(p.NBD_CMD_READ, SIZE - 512, 1024);
    expect(await c.error()).toEqual({ errno: p.NBD_EINVAL, message: `operation past EOF; From: ${SIZE - 512}, Len: 1024, Size: ${SIZE}` });
    expect(s.pread).not.toHaveBeenCalled();

    // FUA flushes before it reads: the generic path.
    expect((await read(c, 0, 4096, p.NBD_CMD_FLAG_FUA)).equals(want.subarray(0, 4096))).toBe(true);
    expect(s.pread).toHaveBeenCalledTimes(1);

    // The page cache declines the second data piece: nothing was sent yet, and the generic
    // path reads the whole request.
    const preadNow = s.bs.preadNow.bind(s.bs);
    let calls = 0;
    vi.spyOn(s.bs, 'preadNow').mockImplementation((offset, buf) => (++calls === 1 ? preadNow(offset, buf) : false));
    expect((await read(c, 0, SIZE)).equals(want)).toBe(true);
    expect(s.pread.mock.calls.length).toBeGreaterThan(1);

    // A read error on the generic path is still an NBD error, and the connection stays.
    vi.spyOn(s.bs, 'preadNow').mockReturnValue(false);
    s.pread.mockRejectedValueOnce(new Error('EIO'));
    c.request(p.NBD_CMD_READ, 0, 4096, { flags: p.NBD_CMD_FLAG_DF });
    expect(await c.error()).toEqual({ errno: p.NBD_EIO, message: 'reading from file failed' });
    expect((await read(c, 512 * KiB, 4096)).equals(want.subarray(512 * KiB, 516 * KiB))).toBe(true);
  });
});

describe('NBD READ sent from the file (read-only export)', () => {
  it('sends one data range straight from the file, simple and structured', async () => {
    const { path, data } = await rawFile();
    const s = await serve(path, 'raw', true);
    const now = vi.spyOn(s.bs, 'preadNow');
    const direct = vi.spyOn(s.bs, 'sendfileNow');

    await simpleReads(s, data);

    const sr = await s.client(true);
    sr.request(p.NBD_CMD_READ, 0, 64 * KiB);
    const one = await sr.reply();
    if (one.kind !== 'structured') throw new Error('expected chunks');
    // One OFFSET_DATA chunk, with DONE: what the generic path sends for one data extent.
    expect(one.chunks.map((c) => [c.type, c.flags])).toEqual([[p.NBD_REPLY_TYPE_OFFSET_DATA, p.NBD_REPLY_FLAG_DONE]]);
    expect(WireClient.assemble(one.chunks, 0, 64 * KiB).equals(data.subarray(0, 64 * KiB))).toBe(true);
    expect((await read(sr, 0, 64 * KiB, p.NBD_CMD_FLAG_DF)).equals(data.subarray(0, 64 * KiB))).toBe(true);

    expect(direct).toHaveBeenCalledTimes(4);
    expect(direct.mock.results.every((x) => typeof x.value === 'number' && x.value >= 0)).toBe(true);
    expect(now).not.toHaveBeenCalled();
    expect(s.pread).not.toHaveBeenCalled();
  });

  it('queues what the socket could not take and keeps the replies in order', async () => {
    const path = join(await tempDir(), 'big.raw');
    const big = Buffer.alloc(4 * SIZE);
    for (let i = 0; i < big.length; i += 4096) big.fill((i / 4096) % 253, i, i + 4096);
    await writeFile(path, big);
    const s = await serve(path, 'raw', true);
    const direct = vi.spyOn(s.bs, 'sendfileNow');
    const c = await s.client(false);
    // 48 MiB asked before any reply is read: more than the socket buffers hold.
    const n = 12;
    for (let i = 0; i < n; i++) c.request(p.NBD_CMD_READ, (i % 2) * SIZE, 3 * SIZE);
    await new Promise((r) => setTimeout(r, 50));
    for (let i = 0; i < n; i++) {
      const r = await c.reply(3 * SIZE);
      const at = (i % 2) * SIZE;
      expect(r.kind === 'simple' && r.error === 0 && r.data.equals(big.subarray(at, at + 3 * SIZE))).toBe(true);
    }
    // Some reply went out in part and the rest was queued from a frame.
    expect(direct.mock.results.some((x) => typeof x.value === 'number' && x.value > 0)).toBe(true);
  });

  it('falls back to a copy when declined, and closes a reply it cannot complete', async () => {
    const { path, data } = await rawFile();
    const s = await serve(path, 'raw', true);
    const now = vi.spyOn(s.bs, 'preadNow');
    const direct = vi.spyOn(s.bs, 'sendfileNow').mockReturnValueOnce(SENDFILE_DECLINED);
    const c = await s.client(true);
    expect((await read(c, 0, 64 * KiB)).equals(data.subarray(0, 64 * KiB))).toBe(true);
    expect(now).toHaveBeenCalled();

    // Part of a reply sent and the rest unreadable: the stream is out of step, so it closes.
    direct.mockReturnValueOnce(SENDFILE_BROKEN);
    c.request(p.NBD_CMD_READ, 0, 64 * KiB);
    expect(await c.closedByServer()).toBe(true);
  });
});
