import { mkdtempSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { ConnectionClosed, onreadOptions, SocketReader } from '../../src/nbd/reader.js';
import { acceptOnce } from './nbd-wire.js';

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

  it('readInto fills the destination from what is buffered, then from what arrives', async () => {
    const src = new PassThrough();
    const reader = new SocketReader(src);
    src.write(Buffer.from([1, 2, 3, 4]));
    expect([...(await reader.read(1))]).toEqual([1]);
    const dest = new Uint8Array(10);
    const filled = reader.readInto(dest.subarray(2, 9));
    src.write(Buffer.from([5, 6]));
    src.write(Buffer.from([7, 8, 9, 10]));
    await filled;
    expect([...dest]).toEqual([0, 0, 2, 3, 4, 5, 6, 7, 8, 0]);
    // The rest of a piece that ran past the destination stays for the next read.
    expect([...(await reader.read(2))]).toEqual([9, 10]);
    const cut = reader.readInto(new Uint8Array(4));
    src.end(Buffer.from([1]));
    await expect(cut).rejects.toBeInstanceOf(ConnectionClosed);
  });

  it('keeps its own copy of what an onread socket delivered into its reused buffer', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'nbd-reader-'));
    const path = join(dir, 's.sock');
    const accepted = acceptOnce(path);
    const reuse = onreadOptions();
    const client = connect({ path, onread: reuse.onread });
    const reader = new SocketReader(client);
    reuse.feed(reader);
    const peer = await accepted;
    // Four pieces, each read into the same buffer; nobody reads until all have arrived.
    for (let i = 1; i <= 4; i++) {
      peer.write(Buffer.alloc(1000, i));
      while (reader.pending < i * 1000) await tick();
    }
    const all = await reader.read(4000);
    for (let i = 0; i < 4; i++) expect(all.subarray(i * 1000, (i + 1) * 1000).every((b) => b === i + 1)).toBe(true);
    const big = new Uint8Array(3 * 1024 * 1024);
    const into = reader.readInto(big);
    peer.write(Buffer.alloc(big.length, 9));
    await into;
    expect(big.every((b) => b === 9)).toBe(true);
    peer.destroy();
    client.destroy();
    rmSync(dir, { recursive: true, force: true });
  });
});
