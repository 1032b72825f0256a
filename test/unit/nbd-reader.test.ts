import { PassThrough } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { ConnectionClosed, SocketReader } from '../../src/nbd/reader.js';

const tick = (): Promise<void> => new Promise((r) => setTimeout(r, 10));

describe('SocketReader', () => {
  it('holds at most about highWater bytes while nobody reads (back-pressure)', async () => {
    const src = new PassThrough({ highWaterMark: 16 * 1024 });
    const reader = new SocketReader(src, 64 * 1024);
    for (let i = 0; i < 64; i++) src.write(Buffer.alloc(16 * 1024, i));
    await tick();
    expect(reader.pending).toBeGreaterThan(0);
    expect(reader.pending).toBeLessThanOrEqual(64 * 1024 + 16 * 1024);
    // Everything still arrives, in order, when read.
    const all = await reader.read(64 * 16 * 1024);
    for (let i = 0; i < 64; i++) expect(all[i * 16 * 1024]).toBe(i);
  });

  it('skips large counts without buffering them, then reads exactly', async () => {
    const src = new PassThrough();
    const reader = new SocketReader(src, 4096);
    const skipped = reader.skip(1024 * 1024);
    for (let i = 0; i < 16; i++) src.write(Buffer.alloc(64 * 1024));
    src.write(Buffer.from([1, 2, 3]));
    await skipped;
    expect([...(await reader.read(3))]).toEqual([1, 2, 3]);
  });

  it('rejects a read cut short by end of stream; what arrived stays readable, nothing more', async () => {
    const src = new PassThrough();
    const reader = new SocketReader(src);
    const r = reader.read(10);
    src.end(Buffer.alloc(5, 7));
    await expect(r).rejects.toBeInstanceOf(ConnectionClosed);
    expect([...(await reader.read(5))]).toEqual([7, 7, 7, 7, 7]);
    await expect(reader.read(1)).rejects.toBeInstanceOf(ConnectionClosed);
  });
});
