// The sendfileNow hook (file, through raw): a reply's header and a host file's bytes sent into
// a socket from the page cache; what a full socket did not take comes back in the spill
// buffer, so that header, data and spill together are the whole reply.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createConnection, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { bdrvCreate } from '../../src/block/create.js';
import { SENDFILE_DECLINED } from '../../src/block/driver.js';
import { BlockBackend } from '../../src/index.js';
import { acceptOnce } from './nbd-wire.js';

const MiB = 1024 * 1024;

function fdOf(s: Socket): number {
  return (s as unknown as { _handle: { fd: number } })._handle.fd;
}

describe('file sendfileNow', () => {
  const dir = mkdtempSync(join(tmpdir(), 'file-sendfile-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('sends the header and the bytes, and spills what a full socket did not take', async (ctx) => {
    const path = join(dir, 'a.raw');
    const data = Buffer.alloc(2 * MiB);
    for (let i = 0; i < data.length; i += 512) data.fill((i / 512) % 251, i, i + 512);
    writeFileSync(path, data);
    const bs = await BlockBackend.open(path, { format: 'raw', readOnly: true });
    const sockPath = join(dir, 's.sock');
    const accepted = acceptOnce(sockPath);
    const client = createConnection(sockPath);
    client.pause();
    const server = await accepted;
    try {
      const head = Buffer.from('HEADER');
      const spill = Buffer.alloc(head.length + 2 * MiB);
      // Past the end: declined, nothing sent.
      expect(bs.sendfileNow(MiB, 2 * MiB, { sock: fdOf(server), head, spill, sendBuffer: 0 })).toBe(SENDFILE_DECLINED);
      const rest = bs.sendfileNow(4096, 2 * MiB - 8192, { sock: fdOf(server), head, spill, sendBuffer: 0 });
      // A host without cachestat (Linux before 6.5) declines everything.
      if (rest === SENDFILE_DECLINED) ctx.skip();
      const want = Buffer.concat([head, data.subarray(4096, 2 * MiB - 4096)]);
      // 2 MiB is more than a unix socket holds by default: the rest came back.
      expect(rest).toBeGreaterThan(0);
      expect(rest).toBeLessThan(want.length);
      const got: Buffer[] = [];
      let total = 0;
      const all = new Promise<void>((resolve) => {
        client.on('data', (d: Buffer) => {
          got.push(d);
          total += d.length;
          if (total === want.length - rest) resolve();
        });
      });
      client.resume();
      await all;
      expect(Buffer.concat([...got, spill.subarray(0, rest)]).equals(want)).toBe(true);
    } finally {
      client.destroy();
      server.destroy();
      await bs.close();
    }
  });

  it('is declined by a format that maps its bytes elsewhere', async () => {
    const path = join(dir, 'b.qcow2');
    await bdrvCreate(path, { format: 'qcow2', options: { size: MiB } });
    const bs = await BlockBackend.open(path, { format: 'qcow2', readOnly: true });
    try {
      const reply = { sock: 0, head: Buffer.alloc(0), spill: Buffer.alloc(MiB), sendBuffer: 0 };
      expect(bs.sendfileNow(0, 65536, reply)).toBe(SENDFILE_DECLINED);
    } finally {
      await bs.close();
    }
  });
});
