// The nbd client driver against our own NbdServer (in process, on 127.0.0.1 and on a Unix
// socket in a temp dir), and against a scripted peer that breaks the protocol on purpose.
// No external program: these run everywhere.
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { BlockBackend, BlockDriverState, isBlockError } from '../../src/index.js';
import * as p from '../../src/nbd/protocol.js';
import { NbdServer, type NbdExportOptions } from '../../src/nbd/index.js';
import { READ_BYTES_IN_FLIGHT } from '../../src/drivers/nbd/session.js';
import { makeMem } from './block-helpers.js';

const MiB = 1024 * 1024;
const cleanups: (() => Promise<void>)[] = [];

afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function serve(size: number, opts: Partial<NbdExportOptions> = {}): Promise<{ uri: string; backend: BlockBackend; server: NbdServer }> {
  const backend = await BlockBackend.open(makeMem(size, 'nbdc'), {});
  const server = new NbdServer({ exports: [{ name: 'exp', backend, ...opts }] });
  const dir = mkdtempSync(join(tmpdir(), 'nbdc-'));
  const path = join(dir, 's.sock');
  await server.listen({ path });
  cleanups.push(async () => {
    await server.close();
    await backend.close();
    rmSync(dir, { recursive: true, force: true });
  });
  return { uri: `nbd+unix:///exp?socket=${path}`, backend, server };
}

async function failure(pr: Promise<unknown>): Promise<{ code: string; errno: number; message: string }> {
  try {
    await pr;
  } catch (e) {
    if (isBlockError(e)) return { code: e.code, errno: e.errno, message: e.message };
    throw e;
  }
  throw new Error('no error');
}

function pattern(n: number, seed: number): Uint8Array {
  return new Uint8Array(n).map((_, i) => (i * 31 + seed) & 0xff);
}

describe('nbd client against NbdServer', () => {
  it('reads and writes across the 32 MiB request limit, many requests at once', async () => {
    const { uri, backend } = await serve(72 * MiB);
    const bs = await BlockDriverState.open(uri, { format: 'raw' });
    const big = pattern(40 * MiB + 123, 7);
    await bs.pwrite(1000, big);
    const back = new Uint8Array(big.length);
    await bs.pread(1000, back);
    expect(Buffer.from(back).equals(Buffer.from(big))).toBe(true);
    // The backend holds what we wrote: the bytes went over the wire.
    const direct = new Uint8Array(4096);
    await backend.pread(1000 + 32 * MiB, direct);
    expect(Buffer.from(direct).equals(Buffer.from(big.subarray(32 * MiB, 32 * MiB + 4096)))).toBe(true);
    // 40 small requests in parallel: more than 16 in flight wait for a slot, none is lost.
    await Promise.all(Array.from({ length: 40 }, (_, i) => bs.pwrite(60 * MiB + i * 4096, pattern(4096, i))));
    const all = await Promise.all(
      Array.from({ length: 40 }, async (_, i) => {
        const b = new Uint8Array(4096);
        await bs.pread(60 * MiB + i * 4096, b);
        return Buffer.from(b).equals(Buffer.from(pattern(4096, i)));
      }),
    );
    expect(all.every((x) => x)).toBe(true);
    await bs.close();
  });

  it('answers block status from base:allocation and zeroes, trims and flushes remotely', async () => {
    const { uri } = await serve(4 * MiB);
    const bs = await BlockDriverState.open(uri, { format: 'raw' });
    await bs.pwrite(MiB, pattern(64 * 1024, 1));
    const st = await bs.blockStatus(MiB, 3 * MiB);
    expect([st.pnum, st.data, st.zero]).toEqual([64 * 1024, true, false]);
    const hole = await bs.blockStatus(0, MiB);
    expect([hole.data, hole.zero]).toEqual([false, true]);
    await bs.writeZeroes(MiB, 4096, { mayUnmap: true });
    const z = new Uint8Array(4096);
    await bs.pread(MiB, z);
    expect(z.every((b) => b === 0)).toBe(true);
    await bs.discard(MiB + 4096, 4096);
    await bs.flush();
    await bs.close();
  });

  it("reports a missing export in QEMU's words and a read-only export as read-only", async () => {
    const { uri } = await serve(MiB, { readOnly: true });
    const missing = await failure(BlockDriverState.open(uri.replace('/exp?', '/nope?'), { format: 'raw' }));
    expect(missing.message).toBe("Requested export not available\nserver reported: export 'nope' not present");
    expect((await failure(BlockDriverState.open(uri, { format: 'raw' }))).message).toBe('NBD export is read-only');
    const ro = await BlockDriverState.open(uri, { format: 'raw', readOnly: true });
    expect(await ro.getLength()).toBe(MiB);
    await ro.close();
  });

  it('retries the first connect for open-timeout seconds', async () => {
    const backend = await BlockBackend.open(makeMem(MiB, 'nbdc'), {});
    const server = new NbdServer({ exports: [{ name: '', backend }] });
    const dir = mkdtempSync(join(tmpdir(), 'nbdc-late-'));
    const path = join(dir, 's.sock');
    cleanups.push(async () => {
      await server.close();
      await backend.close();
      rmSync(dir, { recursive: true, force: true });
    });
    const uri = `nbd+unix:///?socket=${path}`;
    expect((await failure(BlockDriverState.open(uri, { format: 'nbd' }))).message).toBe(`Failed to connect to '${path}': No such file or directory`);
    // The server comes up while the client is still trying.
    setTimeout(() => void server.listen({ path }), 700).unref();
    const bs = await BlockDriverState.open(uri, { format: 'nbd', driverOptions: { 'open-timeout': '5' } });
    expect(await bs.getLength()).toBe(MiB);
    await bs.close();
  });

  it('with reconnect-delay, a request waits for the server to come back and is sent again', async () => {
    const backend = await BlockBackend.open(makeMem(MiB, 'nbdc'), {});
    const dir = mkdtempSync(join(tmpdir(), 'nbdc-re-'));
    const path = join(dir, 's.sock');
    const servers = [new NbdServer({ exports: [{ name: '', backend }] }), new NbdServer({ exports: [{ name: '', backend }] })];
    cleanups.push(async () => {
      for (const srv of servers) await srv.close();
      await backend.close();
      rmSync(dir, { recursive: true, force: true });
    });
    await servers[0].listen({ path });
    const bs = await BlockDriverState.open(`nbd+unix:///?socket=${path}`, { format: 'nbd', driverOptions: { 'reconnect-delay': '5' } });
    await bs.pwrite(0, pattern(4096, 9));
    await servers[0].close();
    // The write below finds the connection gone; the server is back 700 ms later.
    setTimeout(() => void servers[1].listen({ path }), 700).unref();
    await bs.pwrite(4096, pattern(4096, 10));
    const back = new Uint8Array(8192);
    await bs.pread(0, back);
    expect(Buffer.from(back).equals(Buffer.concat([pattern(4096, 9), pattern(4096, 10)]))).toBe(true);
    await bs.close();
  });

  it('fails requests once the server shuts down', async () => {
    const { uri, server } = await serve(MiB);
    const bs = await BlockDriverState.open(uri, { format: 'raw' });
    await bs.pread(0, new Uint8Array(512));
    await server.close();
    const e = await failure(bs.pread(0, new Uint8Array(512)));
    expect(e.code).toBe('EIO');
    await bs.close();
  });
});

/**
 * A peer that negotiates correctly (fixed newstyle, structured replies, base:allocation, GO)
 * and then answers the first request with `reply`: the client's defences are what is tested.
 */
async function brokenPeer(reply: (cookie: bigint, sock: Socket, r: p.NbdRequest) => void, noGo = false, size = MiB): Promise<string> {
  const dir = mkdtempSync(join(tmpdir(), 'nbdc-peer-'));
  const path = join(dir, 'p.sock');
  const srv: Server = createServer((sock) => {
    let buf = Buffer.alloc(0);
    let stage = 0;
    sock.write(p.encodeGreeting());
    sock.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      for (;;) {
        if (stage === 0) {
          if (buf.length < 4) return;
          buf = buf.subarray(4);
          stage = 1;
        } else if (stage === 1) {
          if (buf.length < 16) return;
          const h = p.decodeOptionHeader(buf.subarray(0, 16));
          if (buf.length < 16 + h.length) return;
          buf = buf.subarray(16 + h.length);
          if (h.option === p.NBD_OPT_SET_META_CONTEXT) {
            sock.write(p.encodeOptionReply(h.option, p.NBD_REP_META_CONTEXT, p.encodeMetaContextReply(0, 'base:allocation')));
          }
          // An old server: no GO, so LIST and EXPORT_NAME (size, flags, no zero padding).
          if (noGo && h.option === p.NBD_OPT_GO) {
            sock.write(p.encodeOptionReply(h.option, p.NBD_REP_ERR_UNSUP));
            continue;
          }
          if (h.option === p.NBD_OPT_LIST) sock.write(p.encodeOptionReply(h.option, p.NBD_REP_SERVER, p.encodeServerReply('')));
          if (h.option === p.NBD_OPT_EXPORT_NAME) {
            sock.write(p.encodeExportNameReply(MiB, p.NBD_FLAG_HAS_FLAGS | p.NBD_FLAG_SEND_FLUSH, true));
            stage = 2;
            continue;
          }
          if (h.option === p.NBD_OPT_GO) {
            sock.write(p.encodeOptionReply(h.option, p.NBD_REP_INFO, p.encodeInfoExport(size, p.NBD_FLAG_HAS_FLAGS | p.NBD_FLAG_SEND_FLUSH)));
            stage = 2;
          }
          sock.write(p.encodeOptionReply(h.option, p.NBD_REP_ACK));
        } else {
          if (buf.length < 28) return;
          const r = p.decodeRequest(buf.subarray(0, 28));
          buf = buf.subarray(28 + (r.type === p.NBD_CMD_WRITE ? r.length : 0));
          reply(r.cookie, sock, r);
        }
      }
    });
    sock.on('error', () => undefined);
  });
  await new Promise<void>((resolve) => srv.listen(path, resolve));
  cleanups.push(async () => {
    await new Promise<void>((resolve) => srv.close(() => resolve()));
    rmSync(dir, { recursive: true, force: true });
  });
  return `nbd+unix:///?socket=${path}`;
}

describe('nbd client against a peer that breaks the protocol', () => {
  it('rejects data outside the request and poisons the connection', async () => {
    const uri = await brokenPeer((cookie, sock) => {
      const c = p.encodeOffsetDataChunk(cookie, 4096, new Uint8Array(512), true);
      sock.write(p.chunkBytes(c));
    });
    const bs = await BlockDriverState.open(uri, { format: 'nbd' });
    const e = await failure(bs.pread(0, new Uint8Array(512)));
    expect([e.code, e.message]).toEqual(['EIO', 'Protocol error: data chunk outside the request']);
    expect((await failure(bs.pread(0, new Uint8Array(512)))).code).toBe('EIO');
    await bs.close();
  });

  it('does not buffer a block-status chunk the size the server claims', async () => {
    const uri = await brokenPeer((cookie, sock) => {
      sock.write(p.encodeChunkHeader({ flags: 0, type: p.NBD_REPLY_TYPE_BLOCK_STATUS, cookie, length: 0xfffffff0 }));
    });
    const bs = await BlockDriverState.open(uri, { format: 'nbd' });
    const e = await failure(bs.blockStatus(0, 4096));
    expect(e.message).toBe(`Protocol error: chunk of type ${p.NBD_REPLY_TYPE_BLOCK_STATUS} with length ${0xfffffff0}`);
    await bs.close();
  });

  it('falls back to LIST and EXPORT_NAME when GO is not known', async () => {
    const uri = await brokenPeer((cookie, sock) => sock.write(p.encodeSimpleReply(cookie)), true);
    const bs = await BlockDriverState.open(uri, { format: 'nbd' });
    expect(await bs.getLength()).toBe(MiB);
    await bs.flush();
    await bs.close();
    const missing = await failure(BlockDriverState.open(uri.replace(':///?', ':///other?'), { format: 'nbd' }));
    expect(missing.message).toBe("No export with name 'other' available");
  });

  it('keeps at most READ_BYTES_IN_FLIGHT of READ data asked for, block status aside', async () => {
    // The peer holds every READ until the test answers it, and answers block status at once.
    const held: { cookie: bigint; offset: bigint; length: number }[] = [];
    let most = 0;
    let peer: Socket | null = null;
    const uri = await brokenPeer(
      (cookie, sock, r) => {
        peer = sock;
        if (r.type === p.NBD_CMD_BLOCK_STATUS) {
          sock.write(p.chunkBytes(p.encodeBlockStatusChunk(cookie, 0, [{ length: r.length, flags: 0 }], true)));
          return;
        }
        held.push({ cookie, offset: r.offset, length: r.length });
        most = Math.max(most, held.reduce((n, h) => n + h.length, 0));
      },
      false,
      16 * MiB,
    );
    const bs = await BlockDriverState.open(uri, { format: 'nbd' });
    // Six READs of 1.5 MiB at once: two fit in 4 MiB, the third would not.
    const len = 3 * (MiB / 2);
    let done = 0;
    const reads = Array.from({ length: 6 }, (_, i) =>
      bs.pread(i * len, new Uint8Array(len)).then(() => {
        done++;
      }),
    );
    // Block status is not held back by the READs waiting.
    expect((await bs.blockStatus(0, MiB)).data).toBe(true);
    expect(held.length).toBe(2);
    while (done < 6) {
      for (const h of held.splice(0)) peer!.write(p.chunkBytes(p.encodeOffsetDataChunk(h.cookie, h.offset, new Uint8Array(h.length), true)));
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    await Promise.all(reads);
    expect(most).toBe(2 * len);
    expect(most).toBeLessThanOrEqual(READ_BYTES_IN_FLIGHT);
    await bs.close();
  });

  it('maps an error chunk to its errno and keeps the connection', async () => {
    let n = 0;
    const uri = await brokenPeer((cookie, sock) => {
      if (n++ === 0) sock.write(p.chunkBytes(p.encodeErrorChunk(cookie, p.NBD_ENOSPC, 'disk full')));
      else sock.write(p.encodeSimpleReply(cookie));
    });
    const bs = await BlockDriverState.open(uri, { format: 'nbd' });
    const e = await failure(bs.pwrite(0, new Uint8Array(512)));
    expect([e.code, e.errno, e.message]).toEqual(['ENOSPC', 28, 'disk full']);
    await bs.flush();
    await bs.close();
  });
});
