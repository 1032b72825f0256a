import { mkdtempSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { OnreadRoute } from '../../src/drivers/nbd/onread.js';
import { ConnectionClosed, SocketReader } from '../../src/nbd/reader.js';
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

  it('hands over what it buffered and stops reading', async () => {
    const src = new PassThrough();
    const reader = new SocketReader(src);
    src.write(Buffer.from([1, 2, 3]));
    src.write(Buffer.from([4, 5]));
    expect([...(await reader.read(1))]).toEqual([1]);
    expect(Buffer.concat(reader.handOver()).equals(Buffer.from([2, 3, 4, 5]))).toBe(true);
    expect(reader.pending).toBe(0);
    // Later bytes are no longer the reader's.
    src.write(Buffer.from([6]));
    await tick();
    expect(reader.pending).toBe(0);
    expect(src.listenerCount('data')).toBe(0);
  });

  it('keeps its own copy of what an onread socket delivered into its reused buffer', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'nbd-reader-'));
    const path = join(dir, 's.sock');
    const accepted = acceptOnce(path);
    const route = new OnreadRoute();
    const client = connect({ path, onread: route.onread });
    const reader = new SocketReader(client);
    route.toReader(reader);
    const peer = await accepted;
    // Four pieces, each read into the same buffer; nobody reads until all have arrived.
    for (let i = 1; i <= 4; i++) {
      peer.write(Buffer.alloc(1000, i));
      while (reader.pending < i * 1000) await tick();
    }
    const all = await reader.read(4000);
    for (let i = 0; i < 4; i++) expect(all.subarray(i * 1000, (i + 1) * 1000).every((b) => b === i + 1)).toBe(true);
    peer.destroy();
    client.destroy();
    rmSync(dir, { recursive: true, force: true });
  });
});
