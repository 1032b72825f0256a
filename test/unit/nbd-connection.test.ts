// NbdConnection's back-pressure: replies that find the socket full wait for one shared
// 'drain', not a listener pair each (a client with many reads in flight would otherwise pile
// up listeners and Node's leak warning), and all of them go on once the peer reads. READ
// reply frames leave in one write and go back to the pool only once the socket wrote them.
import { mkdtempSync, rmSync } from 'node:fs';
import { createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { NbdConnection } from '../../src/nbd/connection.js';
import { acceptOnce } from './nbd-wire.js';

describe('NbdConnection.send', () => {
  const dir = mkdtempSync(join(tmpdir(), 'nbd-conn-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('waits for each reply until it is written, not for the whole queue, in order', async () => {
    const path = join(dir, 's.sock');
    const accepted = acceptOnce(path);
    const client = createConnection(path);
    client.pause();
    const conn = new NbdConnection(1, await accepted);
    const chunk = 256 * 1024;
    const sends: Promise<void>[] = [];
    for (let i = 0; i < 40; i++) sends.push(conn.send(new Uint8Array(16).fill(i), new Uint8Array(chunk).fill(i)));
    // Each reply waits for its own write callback: no 'drain' listener at all.
    expect(conn.socket.listenerCount('drain')).toBe(0);
    const order: number[] = [];
    sends.forEach((p, i) => void p.then(() => order.push(i)));
    await new Promise((r) => setTimeout(r, 20));
    expect(order.length).toBeLessThan(sends.length);

    const got: Buffer[] = [];
    let total = 0;
    client.on('data', (d: Buffer) => {
      got.push(d);
      total += d.length;
    });
    // The first reply is released once the kernel took it, long before the client has read
    // the other 39.
    let receivedAtFirst = -1;
    void sends[0].then(() => (receivedAtFirst = total));
    client.resume();
    await Promise.all(sends);
    expect(order).toEqual([...Array(40).keys()]);
    const want = 40 * (16 + chunk);
    expect(receivedAtFirst).toBeGreaterThanOrEqual(0);
    expect(receivedAtFirst).toBeLessThan(want / 2);
    expect(conn.whenWritten()).toBeNull();
    while (total < want) await new Promise((r) => setTimeout(r, 5));
    const all = Buffer.concat(got);
    expect(all.length).toBe(want);
    for (let i = 0; i < 40; i++) {
      const at = i * (16 + chunk);
      expect(all[at]).toBe(i);
      expect(all[at + 16 + chunk - 1]).toBe(i);
    }
    conn.destroy();
    client.destroy();
  });

  it('releases the replies still queued when the connection closes', async () => {
    const path = join(dir, 'closed.sock');
    const accepted = acceptOnce(path);
    const client = createConnection(path);
    client.pause();
    const conn = new NbdConnection(1, await accepted);
    const sends: Promise<void>[] = [];
    for (let i = 0; i < 20; i++) sends.push(conn.send(new Uint8Array(256 * 1024)));
    const last = conn.whenWritten();
    expect(last).not.toBeNull();
    conn.destroy();
    await Promise.all([...sends, last]);
    client.destroy();
  });

  it('writes a small chunk, header and payload, in one write', async () => {
    const path = join(dir, 'small.sock');
    const accepted = acceptOnce(path);
    const client = createConnection(path);
    const conn = new NbdConnection(3, await accepted);
    const writes: number[] = [];
    const write = conn.socket.write.bind(conn.socket) as (b: Uint8Array, cb?: (e?: Error | null) => void) => boolean;
    conn.socket.write = ((b: Uint8Array, cb?: (e?: Error | null) => void) => {
      writes.push(b.length);
      return write(b, cb);
    }) as typeof conn.socket.write;
    await conn.send(new Uint8Array(20).fill(1), new Uint8Array(12).fill(2));
    await conn.send(new Uint8Array(20), new Uint8Array(64 * 1024));
    // A large payload is not copied to be gathered with its header.
    expect(writes).toEqual([32, 20, 64 * 1024]);
    let got = 0;
    let first: Buffer | undefined;
    client.on('data', (d: Buffer) => {
      first ??= d;
      got += d.length;
    });
    while (got < 32 + 20 + 64 * 1024) await new Promise((r) => setTimeout(r, 5));
    expect([...(first ?? Buffer.alloc(0)).subarray(0, 32)]).toEqual([...Array<number>(20).fill(1), ...Array<number>(12).fill(2)]);
    conn.destroy();
    client.destroy();
  });

  it('sends a frame in one write and reuses it only after the socket wrote it', async () => {
    const path = join(dir, 'f.sock');
    const accepted = acceptOnce(path);
    const client = createConnection(path);
    client.pause();
    const conn = new NbdConnection(2, await accepted);
    const writes: number[] = [];
    const write = conn.socket.write.bind(conn.socket) as (b: Uint8Array, cb?: (e?: Error | null) => void) => boolean;
    conn.socket.write = ((b: Uint8Array, cb?: (e?: Error | null) => void) => {
      writes.push(b.length);
      return write(b, cb);
    }) as typeof conn.socket.write;
    const frames: Buffer[] = [];
    const size = 1024 * 1024;
    for (let i = 0; i < 8; i++) {
      const f = conn.frames.get(size);
      frames.push(f);
      f.fill(i, 0, 32 + size);
      void conn.sendFrame(f, 32 + size);
    }
    // The peer reads nothing yet: the frames are the socket's, a new READ gets a fresh one.
    expect(frames).not.toContain(conn.frames.get(size));
    expect(writes).toEqual(Array<number>(8).fill(32 + size));
    const got: Buffer[] = [];
    let total = 0;
    client.on('data', (d: Buffer) => {
      got.push(d);
      total += d.length;
    });
    client.resume();
    while (total < 8 * (32 + size)) await new Promise((r) => setTimeout(r, 5));
    await new Promise((r) => setImmediate(r));
    const all = Buffer.concat(got);
    for (let i = 0; i < 8; i++) expect(all[i * (32 + size) + 32 + size - 1]).toBe(i);
    // Written: the next READ of that size reuses one of them.
    expect(frames).toContain(conn.frames.get(size));
    conn.destroy();
    client.destroy();
  });
});
