// NbdConnection's back-pressure: replies that find the socket full wait for one shared
// 'drain', not a listener pair each (a client with many reads in flight would otherwise pile
// up listeners and Node's leak warning), and all of them go on once the peer reads.
import { mkdtempSync, rmSync } from 'node:fs';
import { createConnection, createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { NbdConnection } from '../../src/nbd/connection.js';

describe('NbdConnection.send', () => {
  const dir = mkdtempSync(join(tmpdir(), 'nbd-conn-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('shares one drain wait among replies and delivers them all in order', async () => {
    const path = join(dir, 's.sock');
    const accepted = new Promise<Socket>((resolve) => {
      const server = createServer((s) => {
        server.close();
        resolve(s);
      });
      server.listen(path);
    });
    const client = createConnection(path);
    client.pause();
    const conn = new NbdConnection(1, await accepted);
    const chunk = 256 * 1024;
    const sends: Promise<void>[] = [];
    for (let i = 0; i < 40; i++) sends.push(conn.send(new Uint8Array(16).fill(i), new Uint8Array(chunk).fill(i)));
    // The socket is far past its high-water mark: every later reply waits, on one listener.
    expect(conn.socket.listenerCount('drain')).toBe(1);
    let settled = 0;
    for (const p of sends) void p.then(() => settled++);
    await new Promise((r) => setTimeout(r, 20));
    expect(settled).toBeLessThan(sends.length);

    const got: Buffer[] = [];
    let total = 0;
    client.on('data', (d: Buffer) => {
      got.push(d);
      total += d.length;
    });
    client.resume();
    await Promise.all(sends);
    expect(conn.socket.listenerCount('drain')).toBe(0);
    const want = 40 * (16 + chunk);
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
});
