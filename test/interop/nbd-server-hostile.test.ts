// Hostile clients against our NbdServer exporting a qed image: each misbehaviour gets a protocol
// error or a dropped connection, never a crash; afterwards a new client is served, every
// acknowledged write is on disk, no write is torn, and `qemu-img check` finds the image clean.
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { NbdServerOptions } from '../../src/nbd/index.js';
import * as p from '../../src/nbd/protocol.js';
import { WireClient } from '../unit/nbd-wire.js';
import { makeTempDir, removeTempDir } from './qemu.js';
import { haveNbdTools, killTools, runTool, serveImage, type Served } from './nbd-server-tools.js';

const enabled = haveNbdTools();
const SIZE = 16 * 1024 * 1024;
const BLOCK = 65536;

interface Ctx {
  s: Served;
  client: () => Promise<WireClient>;
  /** A well-behaved client after GO. */
  good: () => Promise<WireClient>;
}

describe.skipIf(!enabled)('NbdServer against hostile clients', () => {
  let dir = '';
  let seq = 0;

  beforeAll(() => {
    dir = makeTempDir('nbd-server-hostile');
  });

  afterAll(() => {
    killTools();
    removeTempDir(dir);
  });

  /**
   * Serve a fresh qed image, let `attack` misbehave, then prove the server still serves a
   * new client, close it, and check the image and the acknowledged writes with qemu.
   * `acked` lists [offset, byte] blocks of BLOCK bytes the attack saw acknowledged;
   * `maybe` lists blocks that may or may not have been written, but never torn.
   */
  async function scenario(
    attack: (c: Ctx) => Promise<{ acked?: [number, number][]; maybe?: [number, number][] } | undefined>,
    serverOpts: Partial<NbdServerOptions> = {},
  ): Promise<void> {
    const img = join(dir, `img${seq++}.qed`);
    const ok = (r: { status: number | null; stdout: string; stderr: string }): string => {
      if (r.status !== 0) throw new Error(r.stderr);
      return r.stdout;
    };
    ok(await runTool('qemu-img', ['create', '-f', 'qed', img, String(SIZE)]));
    const s = await serveImage(img, dir, { format: 'qed', name: 'exp' }, serverOpts);
    const clients: WireClient[] = [];
    const addr = { host: '127.0.0.1', port: Number(new URL(s.tcp).port) };
    const client = async (): Promise<WireClient> => {
      const c = await WireClient.connect(addr);
      clients.push(c);
      return c;
    };
    const good = async (): Promise<WireClient> => {
      const c = await client();
      await c.start();
      await c.go('exp');
      return c;
    };
    let result: Awaited<ReturnType<typeof attack>>;
    try {
      result = await attack({ s, client, good });
      // The server still serves others: a new client writes and reads back.
      const after = await good();
      after.request(p.NBD_CMD_WRITE, SIZE - BLOCK, BLOCK, { data: Buffer.alloc(BLOCK, 0xee), flags: p.NBD_CMD_FLAG_FUA });
      expect((await after.reply()).kind).toBe('simple');
      after.request(p.NBD_CMD_READ, SIZE - BLOCK, BLOCK, { flags: p.NBD_CMD_FLAG_DF });
      const r = await after.reply();
      expect(r.kind === 'structured' && WireClient.assemble(r.chunks, SIZE - BLOCK, BLOCK).every((b) => b === 0xee)).toBe(true);
    } finally {
      for (const c of clients) c.close();
      await s.close();
    }
    const check = await runTool('qemu-img', ['check', '-f', 'qed', img]);
    expect(check.stdout).toContain('No errors were found on the image.');
    expect(check.status).toBe(0);
    const reads: string[] = [];
    for (const [off, byte] of result?.acked ?? []) reads.push('-c', `read -P ${byte} ${off} ${BLOCK}`);
    if (reads.length > 0) {
      const out = ok(await runTool('qemu-io', ['-f', 'qed', ...reads, img]));
      expect(out).not.toContain('Pattern verification failed');
    }
    for (const [off, byte] of result?.maybe ?? []) {
      const out = ok(await runTool('qemu-io', ['-f', 'qed', '-c', `read -P ${byte} ${off} ${BLOCK}`, img]));
      if (out.includes('Pattern verification failed')) {
        const zero = ok(await runTool('qemu-io', ['-f', 'qed', '-c', `read -P 0 ${off} ${BLOCK}`, img]));
        expect(zero, `block at ${off} is torn`).not.toContain('Pattern verification failed');
      }
    }
  }

  /** Write blocks and wait for their acknowledgement. */
  async function ackedWrites(c: WireClient, blocks: [number, number][]): Promise<void> {
    for (const [off, byte] of blocks) c.request(p.NBD_CMD_WRITE, off, BLOCK, { data: Buffer.alloc(BLOCK, byte) });
    for (let i = 0; i < blocks.length; i++) expect(await c.error()).toEqual({ errno: 0, message: '' });
  }

  it('bad option magic and bad client flags close the connection', async () => {
    await scenario(async ({ client, s }) => {
      const a = await client();
      await a.start();
      a.write(Buffer.from('IHAVEOPX'), Buffer.alloc(8));
      expect(await a.closedByServer()).toBe(true);
      const b = await client();
      await b.start(0xff);
      expect(await b.closedByServer()).toBe(true);
      expect(s.errors).toContain('option negotiation failed: Bad magic received');
      return undefined;
    });
  });

  it('huge option lengths: over 32 MiB closes, an unknown 30 MiB option is drained', async () => {
    await scenario(async ({ client }) => {
      const a = await client();
      await a.start();
      a.write(p.encodeOptionHeader(p.NBD_OPT_INFO, 0xffffffff));
      expect(await a.closedByServer()).toBe(true);
      const b = await client();
      await b.start();
      b.write(p.encodeOptionHeader(1234, 30 * 1024 * 1024));
      const piece = Buffer.alloc(1024 * 1024, 0x41);
      for (let i = 0; i < 30; i++) b.write(piece);
      expect((await b.optionReply()).type).toBe(p.NBD_REP_ERR_UNSUP);
      b.write(p.encodeOptionHeader(p.NBD_OPT_GO, 2 * 1024 * 1024));
      b.write(Buffer.alloc(2 * 1024 * 1024));
      expect((await b.optionReply()).type).toBe(p.NBD_REP_ERR_TOO_BIG);
      return undefined;
    });
  });

  it('unknown commands and flags, past-the-end and oversized requests are answered; the connection stays', async () => {
    await scenario(async ({ good }) => {
      const c = await good();
      const acked: [number, number][] = [[0, 0x11]];
      await ackedWrites(c, acked);
      for (const type of [8, 99, 0xffff]) {
        c.request(type, 0, 0);
        expect((await c.error()).errno).toBe(p.NBD_EINVAL);
      }
      c.request(p.NBD_CMD_WRITE, 0, BLOCK, { flags: 0xffff, data: Buffer.alloc(BLOCK, 0x99) });
      expect((await c.error()).errno).toBe(p.NBD_EINVAL);
      c.request(p.NBD_CMD_WRITE, SIZE, BLOCK, { data: Buffer.alloc(BLOCK, 0x99) });
      expect((await c.error()).errno).toBe(p.NBD_EINVAL);
      c.request(p.NBD_CMD_WRITE_ZEROES, 2n ** 64n - 512n, 1024);
      expect((await c.error()).errno).toBe(p.NBD_EINVAL);
      c.request(p.NBD_CMD_READ, 0, 0xffffffff);
      expect((await c.error()).errno).toBe(p.NBD_EINVAL);
      c.request(p.NBD_CMD_TRIM, 0, 0xffffffff);
      expect((await c.error()).errno).toBe(p.NBD_EINVAL);
      return { acked };
    });
  });

  it('an oversized WRITE is answered and the connection closed, its payload never applied', async () => {
    await scenario(async ({ good }) => {
      const c = await good();
      c.request(p.NBD_CMD_WRITE, 0, 64 * 1024 * 1024);
      c.write(Buffer.alloc(BLOCK, 0x99));
      expect((await c.error()).errno).toBe(p.NBD_EINVAL);
      expect(await c.closedByServer()).toBe(true);
      return { acked: [[0, 0]] };
    });
  });

  it('half-sent requests and sudden disconnects: acknowledged writes stay, none is torn', async () => {
    await scenario(async ({ good }) => {
      const a = await good();
      const acked: [number, number][] = [
        [BLOCK, 0x21],
        [2 * BLOCK, 0x22],
      ];
      await ackedWrites(a, acked);
      // Half a header, then gone.
      a.write(p.encodeRequest({ type: p.NBD_CMD_WRITE, cookie: 9n, offset: 3 * BLOCK, length: BLOCK }).subarray(0, 13));
      a.close();
      // A WRITE whose payload stops half way: nothing of it may land.
      const b = await good();
      b.request(p.NBD_CMD_WRITE, 4 * BLOCK, BLOCK);
      b.write(Buffer.alloc(BLOCK / 2, 0x44));
      await new Promise((r) => setTimeout(r, 50));
      b.close();
      // Many writes in flight, half of them acknowledged, then a reset.
      const c = await good();
      const blocks: [number, number][] = [];
      for (let i = 0; i < 32; i++) blocks.push([(8 + i) * BLOCK, 0x50 + i]);
      for (const [off, byte] of blocks) c.request(p.NBD_CMD_WRITE, off, BLOCK, { data: Buffer.alloc(BLOCK, byte), cookie: BigInt(off) });
      const ackedNow: [number, number][] = [];
      for (let i = 0; i < 16; i++) {
        const r = await c.reply();
        if (r.kind === 'simple' && r.error === 0) ackedNow.push(blocks.find(([off]) => BigInt(off) === r.cookie) ?? [0, 0]);
      }
      c.socket.resetAndDestroy();
      return { acked: [...acked, [4 * BLOCK, 0], ...ackedNow], maybe: blocks.filter((b) => !ackedNow.includes(b)) };
    });
  });

  it('a flood of connections is capped; the handshake timeout frees the slots', async () => {
    await scenario(
      async ({ client, s }) => {
        const flood: Promise<WireClient>[] = [];
        for (let i = 0; i < 100; i++) flood.push(client());
        const socks = await Promise.all(flood);
        // Slots are taken by silent clients until the timeout throws them out.
        await new Promise((r) => setTimeout(r, 1500));
        expect(s.errors.filter((e) => e.includes('Negotiation timed out')).length).toBeGreaterThanOrEqual(4);
        for (const c of socks) c.close();
        return undefined;
      },
      { maxClients: 4, maxQueued: 4, handshakeTimeoutMs: 500 },
    );
  });
});
