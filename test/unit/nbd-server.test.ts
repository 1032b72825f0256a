// NbdServer against raw sockets: negotiation answers, request validation and replies, limits.
// The export is a mem: node, so these run without any external program.
import { afterEach, describe, expect, it } from 'vitest';
import { BlockBackend, BlockDriverState, memStoreWrite } from '../../src/index.js';
import * as p from '../../src/nbd/protocol.js';
import { NbdServer, type NbdExportOptions, type NbdListenAddress, type NbdServerOptions } from '../../src/nbd/index.js';
import { makeMem } from './block-helpers.js';
import { WireClient } from './nbd-wire.js';

const SIZE = 4 * 1024 * 1024;
const cleanups: (() => Promise<void>)[] = [];

afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

interface Setup {
  server: NbdServer;
  addr: NbdListenAddress;
  bs: BlockBackend;
  errors: string[];
  client(): Promise<WireClient>;
}

async function setup(exportOpts: Partial<NbdExportOptions> = {}, serverOpts: Partial<NbdServerOptions> = {}): Promise<Setup> {
  const bs = await BlockBackend.open(makeMem(SIZE, 'nbd'), {});
  const server = new NbdServer({ exports: [{ name: 'exp', backend: bs, description: 'a disk', ...exportOpts }], ...serverOpts });
  const errors: string[] = [];
  server.on('error', (e) => errors.push(e.message));
  const addr = await server.listen({ host: '127.0.0.1', port: 0 });
  const clients: WireClient[] = [];
  cleanups.push(async () => {
    for (const c of clients) c.close();
    await server.close();
    await bs.close();
  });
  return {
    server,
    addr,
    bs,
    errors,
    client: async () => {
      const c = await WireClient.connect(addr);
      clients.push(c);
      return c;
    },
  };
}

const text = (b: Buffer): string => b.toString('utf8');

describe('NbdServer negotiation', () => {
  it('greets with fixed newstyle + no zeroes and closes on unknown client flags', async () => {
    const s = await setup();
    const c = await s.client();
    expect(await c.start(0x7)).toBe(0x3);
    expect(await c.closedByServer()).toBe(true);
    await expect.poll(() => s.errors).toContain('option negotiation failed: Unknown client flags 0x4 received');
  });

  it('answers LIST, INFO, unknown options and repeated SR as qemu-nbd', async () => {
    const s = await setup();
    const c = await s.client();
    await c.start();
    c.option(p.NBD_OPT_LIST);
    const list = await c.optionReplies();
    expect(list.map((r) => r.type)).toEqual([p.NBD_REP_SERVER, p.NBD_REP_ACK]);
    expect(p.decodeServerReply(list[0].data)).toEqual({ name: 'exp', description: 'a disk' });

    c.option(p.NBD_OPT_LIST, new Uint8Array(3));
    const bad = await c.optionReply();
    expect([bad.type, text(bad.data)]).toEqual([p.NBD_REP_ERR_INVALID, "option 'list' has unexpected length"]);

    c.option(p.NBD_OPT_INFO, p.encodeInfoRequest({ name: 'nope', infos: [] }));
    const unk = await c.optionReply();
    expect([unk.type, text(unk.data)]).toEqual([p.NBD_REP_ERR_UNKNOWN, "export 'nope' not present"]);

    c.option(p.NBD_OPT_INFO, p.encodeInfoRequest({ name: 'exp', infos: [p.NBD_INFO_NAME] }));
    const info = (await c.optionReplies()).map((r) => (r.type === p.NBD_REP_INFO ? p.decodeInfoReply(r.data) : r.type));
    expect(info).toEqual([
      { type: p.NBD_INFO_NAME, name: 'exp' },
      { type: p.NBD_INFO_DESCRIPTION, description: 'a disk' },
      { type: p.NBD_INFO_BLOCK_SIZE, minimum: 1, preferred: 4096, maximum: 33554432 },
      { type: p.NBD_INFO_EXPORT, size: BigInt(SIZE), flags: 0x0d6d },
      p.NBD_REP_ACK,
    ]);

    c.option(11);
    const ext = await c.optionReply();
    expect([ext.type, text(ext.data)]).toEqual([p.NBD_REP_ERR_UNSUP, 'Unsupported option 11 (<unknown>)']);
    c.option(p.NBD_OPT_STARTTLS);
    const tls = await c.optionReply();
    expect([tls.type, text(tls.data)]).toEqual([p.NBD_REP_ERR_POLICY, 'TLS not configured']);
    c.option(p.NBD_OPT_SET_META_CONTEXT, p.encodeMetaContextRequest({ exportName: 'exp', queries: [] }));
    const early = await c.optionReply();
    expect(text(early.data)).toBe("request option 'set meta context' when structured reply is not negotiated");
    c.option(p.NBD_OPT_STRUCTURED_REPLY);
    expect((await c.optionReply()).type).toBe(p.NBD_REP_ACK);
    c.option(p.NBD_OPT_STRUCTURED_REPLY);
    const again = await c.optionReply();
    expect([again.type, text(again.data)]).toEqual([p.NBD_REP_ERR_INVALID, 'structured reply already negotiated']);
    c.option(p.NBD_OPT_ABORT);
    expect((await c.optionReply()).type).toBe(p.NBD_REP_ACK);
    expect(await c.closedByServer()).toBe(true);
  });

  it('lists and selects metadata contexts with qemu ids; wildcards list but never select', async () => {
    const s = await setup({ allocationDepth: true });
    const c = await s.client();
    await c.start();
    c.option(p.NBD_OPT_LIST_META_CONTEXT, p.encodeMetaContextRequest({ exportName: 'exp', queries: [] }));
    const names = (await c.optionReplies()).filter((r) => r.type === p.NBD_REP_META_CONTEXT).map((r) => p.decodeMetaContextReply(r.data));
    expect(names).toEqual([
      { id: 0, name: 'base:allocation' },
      { id: 0, name: 'qemu:allocation-depth' },
    ]);
    c.option(p.NBD_OPT_STRUCTURED_REPLY);
    await c.optionReplies();
    const set = async (queries: string[]): Promise<unknown[]> => {
      c.option(p.NBD_OPT_SET_META_CONTEXT, p.encodeMetaContextRequest({ exportName: 'exp', queries }));
      return (await c.optionReplies()).filter((r) => r.type === p.NBD_REP_META_CONTEXT).map((r) => p.decodeMetaContextReply(r.data));
    };
    expect(await set(['qemu:', 'base:', 'other:thing'])).toEqual([]);
    expect(await set(['qemu:allocation-depth', 'base:allocation', 'base:allocation'])).toEqual([
      { id: 0, name: 'base:allocation' },
      { id: 1, name: 'qemu:allocation-depth' },
    ]);
    // Overrunning query lengths are refused with qemu's text.
    const bad = p.encodeMetaContextRequest({ exportName: 'exp', queries: ['base:allocation'] });
    c.option(p.NBD_OPT_SET_META_CONTEXT, bad.subarray(0, bad.length - 2));
    const r = await c.optionReply();
    expect([r.type, text(r.data)]).toEqual([p.NBD_REP_ERR_INVALID, 'Inconsistent lengths in option set meta context']);
  });

  it('EXPORT_NAME ends the handshake with size, flags and 124 zeros unless NO_ZEROES', async () => {
    const s = await setup({ readOnly: true, maxClients: 1 });
    const c = await s.client();
    await c.start(p.NBD_FLAG_C_FIXED_NEWSTYLE);
    c.option(p.NBD_OPT_EXPORT_NAME, p.encodeString('exp'));
    const r = await c.reader.read(p.NBD_EXPORT_NAME_REPLY_SIZE);
    expect(p.decodeExportNameReply(r)).toEqual({ size: BigInt(SIZE), flags: 0x040f });
    expect(r.subarray(10).every((b) => b === 0)).toBe(true);
    const c2 = await s.client();
    await c2.start(0);
    c2.option(p.NBD_OPT_LIST);
    expect(await c2.closedByServer()).toBe(true);
    await expect.poll(() => s.errors).toContain('option negotiation failed: Unsupported option 3 (list)');
  });

  it('drains huge unknown options, closes on options over 32 MiB and on a bad magic', async () => {
    const s = await setup();
    const c = await s.client();
    await c.start();
    const big = 20 * 1024 * 1024;
    c.write(p.encodeOptionHeader(99, big));
    const piece = Buffer.alloc(1024 * 1024);
    for (let i = 0; i < 20; i++) c.write(piece);
    const r = await c.optionReply();
    expect([r.type, text(r.data)]).toEqual([p.NBD_REP_ERR_UNSUP, 'Unsupported option 99 (<unknown>)']);
    expect((await c.go('exp')).size).toBe(BigInt(SIZE));

    const c2 = await s.client();
    await c2.start();
    c2.write(p.encodeOptionHeader(p.NBD_OPT_GO, 0x40000000));
    expect(await c2.closedByServer()).toBe(true);
    const c3 = await s.client();
    await c3.start();
    c3.write(Buffer.alloc(16, 0x41));
    expect(await c3.closedByServer()).toBe(true);
    await expect
      .poll(() => s.errors)
      .toEqual(
        expect.arrayContaining([
          'option negotiation failed: len (1073741824 ) is larger than max len (33554432)',
          'option negotiation failed: Bad magic received',
        ]),
      );
  });

  it('closes a client that does not finish the handshake in time, and keeps serving', async () => {
    const s = await setup({}, { handshakeTimeoutMs: 300 });
    const idle = await s.client();
    await idle.start();
    expect(await idle.closedByServer(3000)).toBe(true);
    expect(s.errors).toContain('option negotiation failed: Negotiation timed out');
    const c = await s.client();
    await c.start();
    expect((await c.go('exp')).size).toBe(BigInt(SIZE));
  });

  it('caps connections: extra ones wait without a greeting, beyond the queue they are closed', async () => {
    const s = await setup({}, { maxClients: 2, maxQueued: 1 });
    const a = await s.client();
    const b = await s.client();
    await a.start();
    await b.start();
    const waiting = await s.client();
    const refused = await s.client();
    expect(await refused.closedByServer()).toBe(true);
    let greeted = false;
    const g = waiting.start().then(() => (greeted = true));
    await new Promise((r) => setTimeout(r, 200));
    expect(greeted).toBe(false);
    a.close();
    await g;
    expect((await waiting.go('exp')).size).toBe(BigInt(SIZE));
  });
});

describe('NbdServer exports', () => {
  it('refuses bitmaps no format here keeps, names over 4096 bytes and duplicate names', async () => {
    const bs = await BlockBackend.open(makeMem(SIZE, 'nbd-exp'), {});
    cleanups.push(() => bs.close());
    expect(() => new NbdServer({ exports: [{ name: '', backend: bs, bitmaps: ['b0'] }] })).toThrow("Bitmap 'b0' is not found");
    expect(() => new NbdServer({ exports: [{ name: 'x'.repeat(4097), backend: bs }] })).toThrow('too long');
    const server = new NbdServer({ exports: [{ name: 'a', backend: bs }] });
    expect(() => server.addExport({ name: 'a', backend: bs })).toThrow("export 'a' already exists");
    server.addExport({ name: 'b', backend: bs, readOnly: true });
    await server.close();
  });
});

describe('NbdServer transmission', () => {
  it('writes and reads with simple and structured replies', async () => {
    const s = await setup();
    const simple = await s.client();
    await simple.start();
    await simple.go('exp', { sr: false });
    const data = Buffer.alloc(5000, 0x5a);
    simple.request(p.NBD_CMD_WRITE, 1000, data.length, { data, flags: p.NBD_CMD_FLAG_FUA });
    expect((await simple.reply()).kind).toBe('simple');
    simple.request(p.NBD_CMD_READ, 1000, data.length);
    const r = await simple.reply(data.length);
    expect(r.kind === 'simple' && r.data.equals(data)).toBe(true);

    const sr = await s.client();
    await sr.start();
    await sr.go('exp');
    sr.request(p.NBD_CMD_READ, 0, 65536);
    const chunks = await sr.reply();
    expect(chunks.kind).toBe('structured');
    if (chunks.kind !== 'structured') return;
    const expected = Buffer.alloc(65536);
    data.copy(expected, 1000);
    expect(WireClient.assemble(chunks.chunks, 0, 65536).equals(expected)).toBe(true);
    sr.request(p.NBD_CMD_READ, 0, 65536, { flags: p.NBD_CMD_FLAG_DF });
    const df = await sr.reply();
    expect(df.kind === 'structured' && df.chunks.length === 1 && df.chunks[0].type === p.NBD_REPLY_TYPE_OFFSET_DATA).toBe(true);
    sr.request(p.NBD_CMD_READ, 0, 0);
    const none = await sr.reply();
    expect(none.kind === 'structured' && none.chunks[0].type).toBe(p.NBD_REPLY_TYPE_NONE);
  });

  it('reads into reused reply frames: the sector tail past the image is zeros every time', async () => {
    // 100 bytes short of a sector: the export is rounded up to 512, the tail reads as zeros.
    const node = await BlockDriverState.open(makeMem(SIZE, 'nbd'), {});
    class ShortBackend extends BlockBackend {
      override async getLength(): Promise<number> {
        return (await super.getLength()) - 100;
      }
    }
    const bs = new ShortBackend({ perm: { write: true, resize: false } });
    bs.attach(node);
    const server = new NbdServer({ exports: [{ name: 'exp', backend: bs }] });
    const addr = await server.listen({ host: '127.0.0.1', port: 0 });
    const c = await WireClient.connect(addr);
    cleanups.push(async () => {
      c.close();
      await server.close();
      await bs.close();
      await node.close();
    });
    await bs.pwrite(0, Buffer.alloc(SIZE, 0x5a));
    await c.start();
    await c.go('exp', { sr: false });
    const last = SIZE - 512;
    for (let i = 0; i < 3; i++) {
      // A full sector first, so the next READ gets a frame that held 0x5a bytes.
      c.request(p.NBD_CMD_READ, 0, 512);
      const full = await c.reply(512);
      expect(full.kind === 'simple' && full.data.equals(Buffer.alloc(512, 0x5a))).toBe(true);
      c.request(p.NBD_CMD_READ, last, 512);
      const tail = await c.reply(512);
      const want = Buffer.concat([Buffer.alloc(412, 0x5a), Buffer.alloc(100)]);
      expect(tail.kind === 'simple' && tail.data.equals(want)).toBe(true);
    }
  });

  it('validates requests in qemu order with qemu messages; the connection stays', async () => {
    const s = await setup();
    const c = await s.client();
    await c.start();
    await c.go('exp');
    const err = async (type: number, offset: number | bigint, length: number, flags = 0, data?: Uint8Array): Promise<unknown> => {
      c.request(type, offset, length, { flags, data });
      return c.error();
    };
    expect(await err(p.NBD_CMD_READ, SIZE - 512, 1024)).toEqual({
      errno: 22,
      message: `operation past EOF; From: ${SIZE - 512}, Len: 1024, Size: ${SIZE}`,
    });
    expect(await err(p.NBD_CMD_WRITE, SIZE - 512, 1024, 0, Buffer.alloc(1024))).toMatchObject({ errno: 22 });
    expect(await err(p.NBD_CMD_TRIM, 2n ** 64n - 1n, 1)).toEqual({
      errno: 22,
      message: `operation past EOF; From: 18446744073709551615, Len: 1, Size: ${SIZE}`,
    });
    expect(await err(p.NBD_CMD_READ, 0, 33554433)).toEqual({ errno: 22, message: 'len (33554433 ) is larger than max len (33554432)' });
    expect(await err(p.NBD_CMD_READ, 0, 512, 0x80)).toEqual({ errno: 22, message: 'unsupported flags for command read (got 0x80)' });
    expect(await err(p.NBD_CMD_WRITE, 0, 512, p.NBD_CMD_FLAG_NO_HOLE, Buffer.alloc(512))).toEqual({
      errno: 22,
      message: 'unsupported flags for command write (got 0x2)',
    });
    expect(await err(8, 0, 0)).toEqual({ errno: 22, message: 'invalid request type (8) received' });
    expect(await err(p.NBD_CMD_BLOCK_STATUS, 0, 512)).toEqual({ errno: 22, message: 'CMD_BLOCK_STATUS not negotiated' });
    expect(await err(p.NBD_CMD_FLUSH, 123, 456)).toEqual({ errno: 0, message: '' });
    // Still serving after all of that.
    c.request(p.NBD_CMD_READ, 0, 512, { flags: p.NBD_CMD_FLAG_DF });
    expect((await c.reply()).kind).toBe('structured');
  });

  it('refuses writes on a read-only export with EINVAL "Export is read-only"', async () => {
    const s = await setup({ readOnly: true });
    const c = await s.client();
    await c.start();
    const { flags } = await c.go('exp');
    expect(flags).toBe(0x058f);
    c.request(p.NBD_CMD_WRITE, 0, 512, { data: Buffer.alloc(512, 1) });
    expect(await c.error()).toEqual({ errno: 22, message: 'Export is read-only' });
    c.request(p.NBD_CMD_WRITE_ZEROES, 0, 512);
    expect(await c.error()).toEqual({ errno: 22, message: 'Export is read-only' });
    const back = Buffer.alloc(512);
    await s.bs.pread(0, back);
    expect(back.every((b) => b === 0)).toBe(true);
  });

  it('answers a bad request magic and an oversized write, then closes; others are still served', async () => {
    const s = await setup();
    const c = await s.client();
    await c.start();
    await c.go('exp');
    const req = p.encodeRequest({ type: p.NBD_CMD_READ, cookie: 42n, offset: 0, length: 512 });
    new DataView(req.buffer).setUint32(0, 0x12345678);
    c.write(req);
    const r = await c.reply();
    expect(r.kind === 'structured' && r.chunks[0].cookie).toBe(42n);
    expect(await c.closedByServer()).toBe(true);

    const w = await s.client();
    await w.start();
    await w.go('exp');
    w.request(p.NBD_CMD_WRITE, 0, 33554433);
    expect(await w.error()).toEqual({ errno: 22, message: 'len (33554433 ) is larger than max len (33554432)' });
    expect(await w.closedByServer()).toBe(true);
    await expect
      .poll(() => s.errors)
      .toEqual(
        expect.arrayContaining([
          'Disconnect client, due to: invalid magic (got 0x12345678)',
          'Disconnect client, due to: Request handling failed in intermediate state',
        ]),
      );
    const d = await s.client();
    await d.start();
    await d.go('exp');
    d.request(p.NBD_CMD_DISC, 0, 0);
    expect(await d.closedByServer()).toBe(true);
  });

  it('reports block status for both contexts, merged, clipped and with REQ_ONE', async () => {
    const s = await setup({ allocationDepth: true });
    await s.bs.pwrite(65536, Buffer.alloc(4096, 7));
    const c = await s.client();
    await c.start();
    await c.go('exp', { contexts: ['base:allocation', 'qemu:allocation-depth'] });
    c.request(p.NBD_CMD_BLOCK_STATUS, 0, SIZE);
    const r = await c.reply();
    if (r.kind !== 'structured') throw new Error('expected chunks');
    expect(r.chunks.map((ch) => p.decodeBlockStatus(ch.payload).contextId)).toEqual([0, 1]);
    expect(r.chunks[1].flags & p.NBD_REPLY_FLAG_DONE).toBe(1);
    for (const ch of r.chunks) {
      const total = p.decodeBlockStatus(ch.payload).extents.reduce((n, e) => n + e.length, 0);
      expect(total).toBe(SIZE);
    }
    c.request(p.NBD_CMD_BLOCK_STATUS, 100, 1000, { flags: p.NBD_CMD_FLAG_REQ_ONE });
    const one = await c.reply();
    if (one.kind !== 'structured') throw new Error('expected chunks');
    for (const ch of one.chunks) {
      const ex = p.decodeBlockStatus(ch.payload).extents;
      expect(ex.length).toBe(1);
      expect(ex[0].length).toBeLessThanOrEqual(1000);
    }
    c.request(p.NBD_CMD_BLOCK_STATUS, 0, 0);
    expect(await c.error()).toEqual({ errno: 22, message: 'need non-zero length' });
  });

  it('multi-conn: a write on one connection, flush on another, read on a third', async () => {
    const s = await setup();
    const [a, b, c] = [await s.client(), await s.client(), await s.client()];
    for (const x of [a, b, c]) await x.start();
    const flags = (await a.go('exp')).flags;
    expect(flags & p.NBD_FLAG_CAN_MULTI_CONN).not.toBe(0);
    await b.go('exp');
    await c.go('exp', { sr: false });
    const data = Buffer.alloc(4096, 0xab);
    a.request(p.NBD_CMD_WRITE, 8192, 4096, { data });
    expect((await a.reply()).kind).toBe('simple');
    b.request(p.NBD_CMD_FLUSH, 0, 0);
    expect(await b.error()).toEqual({ errno: 0, message: '' });
    c.request(p.NBD_CMD_READ, 8192, 4096);
    const r = await c.reply(4096);
    expect(r.kind === 'simple' && r.data.equals(data)).toBe(true);
  });

  it('keeps at most 16 requests in flight and answers every one of 200 pipelined requests', async () => {
    const s = await setup();
    const c = await s.client();
    await c.start();
    await c.go('exp', { sr: false });
    const n = 200;
    for (let i = 0; i < n; i++) {
      c.request(p.NBD_CMD_WRITE, i * 4096, 4096, { data: Buffer.alloc(4096, i & 0xff), cookie: BigInt(i) });
    }
    const seen = new Set<bigint>();
    for (let i = 0; i < n; i++) {
      const r = await c.reply();
      if (r.kind === 'simple') {
        expect(r.error).toBe(0);
        seen.add(r.cookie);
      }
    }
    expect(seen.size).toBe(n);
    const back = Buffer.alloc(4096);
    await s.bs.pread(199 * 4096, back);
    expect(back.every((b) => b === 199)).toBe(true);
  });

  it('a client that does not read its replies cannot make the server hold more than the budget', async () => {
    const big = 16 * 1024 * 1024;
    const bs = await BlockBackend.open(makeMem(big, 'nbd-budget'), {});
    const server = new NbdServer({ exports: [{ name: '', backend: bs }] });
    const c = await WireClient.connect(await server.listen({ host: '127.0.0.1', port: 0 }));
    cleanups.push(async () => {
      c.close();
      await server.close();
      await bs.close();
    });
    await c.start();
    await c.go('');
    const before = process.memoryUsage().arrayBuffers;
    const n = 32;
    for (let i = 0; i < n; i++) c.request(p.NBD_CMD_READ, 0, big, { flags: p.NBD_CMD_FLAG_DF });
    await new Promise((r) => setTimeout(r, 1000));
    // 16 replies of 16 MiB in flight would hold 256 MiB; the budget is 64 MiB plus one request.
    expect(process.memoryUsage().arrayBuffers - before).toBeLessThan(160 * 1024 * 1024);
    for (let i = 0; i < n; i++) expect((await c.reply()).kind).toBe('structured');
  });

  it('close() finishes in-flight requests, refuses new connections and closes clients', async () => {
    const s = await setup();
    const c = await s.client();
    await c.start();
    await c.go('exp', { sr: false });
    const negotiating = await s.client();
    await negotiating.start();
    c.request(p.NBD_CMD_WRITE, 0, 1 << 20, { data: Buffer.alloc(1 << 20, 3) });
    const reply = c.reply();
    // The whole request has left the client before the server is told to close.
    await new Promise((r) => c.socket.write(Buffer.alloc(0), r));
    await new Promise((r) => setTimeout(r, 50));
    const closed = s.server.close();
    // A client mid-handshake gets ERR_SHUTDOWN for its next option, then the connection ends.
    negotiating.option(p.NBD_OPT_LIST);
    const shut = await negotiating.optionReply();
    expect([shut.type, text(shut.data)]).toEqual([p.NBD_REP_ERR_SHUTDOWN, 'Server shutting down']);
    expect((await reply).kind).toBe('simple');
    expect(await c.closedByServer()).toBe(true);
    expect(await negotiating.closedByServer()).toBe(true);
    await closed;
    await expect(WireClient.connect(s.addr)).rejects.toThrow();
    const back = Buffer.alloc(1 << 20);
    await s.bs.pread(0, back);
    expect(back.every((b) => b === 3)).toBe(true);
  });
});

describe('NbdServer I/O errors', () => {
  it('maps backend errors to NBD errno values with qemu messages; the connection stays', async () => {
    // Data everywhere, so a sparse read has to read (a hole would be sent without a read).
    const img = `mem:nbd-err-${process.pid}`;
    memStoreWrite(img.slice(4), Buffer.alloc(SIZE, 0x42));
    const configText =
      '[inject-error]\nevent = "read_aio"\nerrno = "5"\nonce = "on"\n\n[inject-error]\nevent = "write_aio"\nerrno = "28"\nonce = "on"\n';
    const bs = await BlockBackend.open(`blkdebug::${img}`, { format: 'raw', driverOptions: { configText } });
    const server = new NbdServer({ exports: [{ name: '', backend: bs }] });
    const addr = await server.listen({ host: '127.0.0.1', port: 0 });
    const c = await WireClient.connect(addr);
    cleanups.push(async () => {
      c.close();
      await server.close();
      await bs.close();
    });
    await c.start();
    await c.go('');
    c.request(p.NBD_CMD_READ, 0, 4096);
    const r = await c.reply();
    if (r.kind !== 'structured') throw new Error('expected chunks');
    const last = r.chunks[r.chunks.length - 1];
    expect(last.flags & p.NBD_REPLY_FLAG_DONE).toBe(1);
    expect(p.decodeErrorChunk(last.type, last.payload)).toEqual({ errno: p.NBD_EIO, message: 'reading from file failed' });
    c.request(p.NBD_CMD_WRITE, 0, 512, { data: Buffer.alloc(512, 1) });
    expect(await c.error()).toEqual({ errno: p.NBD_ENOSPC, message: 'writing to file failed' });
    // Both rules fired once: the same connection now reads the untouched data.
    c.request(p.NBD_CMD_READ, 0, 4096, { flags: p.NBD_CMD_FLAG_DF });
    const ok = await c.reply();
    expect(ok.kind === 'structured' && WireClient.assemble(ok.chunks, 0, 4096).every((b) => b === 0x42)).toBe(true);
  });
});
