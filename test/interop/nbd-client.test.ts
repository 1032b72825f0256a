// The nbd client driver against the real servers: qemu-nbd 7.2 and nbdkit (memory plugin, with
// --no-sr, the blocksize-policy filter, the error filter and the log filter). Reads, writes,
// block status (blk-img map equal to qemu-img map), convert of a remote export, request
// splitting, errors and a server that goes away.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlockDriverState, isBlockError } from '../../src/index.js';
import { freePort, requireTools, runBlkImg, startServer, unixUri, waitForPort, type RunningServer } from './nbd-client-servers.js';
import { makeTempDir, removeTempDir, runQemuImg, runQemuIo } from './qemu.js';

const tools = requireTools('qemu-nbd', 'qemu-img', 'qemu-io', 'nbdkit');
const KiB = 1024;
const MiB = 1024 * KiB;

async function openRaw(uri: string, readOnly = false): Promise<BlockDriverState> {
  return BlockDriverState.open(uri, { format: 'raw', readOnly });
}

async function readAll(bs: BlockDriverState): Promise<Uint8Array> {
  const buf = new Uint8Array(await bs.getLength());
  await bs.pread(0, buf);
  return buf;
}

async function errorOf(p: Promise<unknown>): Promise<{ code: string; errno: number; message: string }> {
  try {
    await p;
  } catch (e) {
    if (isBlockError(e)) return { code: e.code, errno: e.errno, message: e.message };
    throw e;
  }
  throw new Error('no error');
}

describe.skipIf(tools === null)('nbd client against qemu-nbd', () => {
  let dir = '';
  let img = '';
  let sock = '';
  let server: RunningServer | null = null;

  beforeAll(async () => {
    dir = makeTempDir('nbd-client-qemu');
    img = join(dir, 'a.raw');
    sock = join(dir, 's.sock');
    expect(runQemuImg(['create', '-q', '-f', 'raw', img, '4M']).status).toBe(0);
    // 5 bytes at 64 KiB and 128 KiB of data at 2.5 MiB, holes elsewhere.
    expect(runQemuIo(['-f', 'raw', '-c', 'write -P 0x5a 65536 5', '-c', 'write -P 0x11 2560k 128k', img]).status).toBe(0);
    server = await startServer(tools!['qemu-nbd'], ['-f', 'raw', '-t', '-e', '0', '-x', 'exp', '-k', sock, img], sock);
  });

  afterAll(async () => {
    await server?.stop();
    removeTempDir(dir);
  });

  it('reads what the file holds and writes what the file then holds', async () => {
    const bs = await openRaw(unixUri(sock, 'exp'));
    expect(await bs.getLength()).toBe(4 * MiB);
    expect(Buffer.from(await readAll(bs)).equals(readFileSync(img))).toBe(true);
    // Unaligned, crossing a hole/data border, and with FUA.
    await bs.pwrite(65530, new Uint8Array(20).fill(0xc3), { fua: true });
    await bs.flush();
    await bs.close();
    const file = readFileSync(img);
    expect([...file.subarray(65529, 65551)]).toEqual([0, ...new Array<number>(20).fill(0xc3), 0]);
  });

  it('maps as qemu-img does (block status through base:allocation)', async () => {
    const uri = unixUri(sock, 'exp');
    const theirs = runQemuImg(['map', '--output=json', uri]);
    const ours = await runBlkImg(['map', '--output=json', uri]);
    expect(ours.stderr).toBe('');
    expect(ours.stdout).toBe(theirs.stdout);
    const human = await runBlkImg(['map', uri]);
    expect(human.stdout).toBe(runQemuImg(['map', uri]).stdout);
  });

  it('converts a remote export to a local image that qemu-img finds identical and sparse', async () => {
    const uri = unixUri(sock, 'exp');
    const out = join(dir, 'out.raw');
    const r = await runBlkImg(['convert', '-O', 'raw', uri, out]);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(runQemuImg(['compare', '-f', 'raw', '-F', 'raw', img, out]).status).toBe(0);
    // The holes stayed holes: the local map shows the same data ranges as the source.
    const dataRanges = (json: string): unknown =>
      (JSON.parse(json) as { start: number; length: number; data: boolean }[]).filter((e) => e.data).map((e) => [e.start, e.length]);
    expect(dataRanges(runQemuImg(['map', '--output=json', '-f', 'raw', out]).stdout)).toEqual(
      dataRanges(runQemuImg(['map', '--output=json', '-f', 'raw', img]).stdout),
    );
  });

  it('zeroes and discards through the server', async () => {
    const bs = await openRaw(unixUri(sock, 'exp'));
    await bs.pwrite(1 * MiB, new Uint8Array(64 * KiB).fill(0x77));
    await bs.writeZeroes(1 * MiB, 64 * KiB, { mayUnmap: true });
    const back = new Uint8Array(64 * KiB);
    await bs.pread(1 * MiB, back);
    expect(back.every((b) => b === 0)).toBe(true);
    const st = await bs.blockStatus(1 * MiB, 64 * KiB);
    expect(st.zero).toBe(true);
    await bs.pwrite(2 * MiB, new Uint8Array(64 * KiB).fill(0x78));
    await bs.discard(2 * MiB, 64 * KiB);
    await bs.close();
  });

  it('says which export is missing, as qemu-img does', async () => {
    const uri = unixUri(sock, 'nope');
    const theirs = runQemuImg(['info', uri]);
    const ours = await runBlkImg(['info', uri]);
    expect(ours.status).toBe(theirs.status);
    expect(ours.stderr).toBe(theirs.stderr);
    expect(ours.stderr).toContain("server reported: export 'nope' not present");
  });

  it('shows the canonical name whatever spelling opened it, as qemu-img info does', async () => {
    const plain = join(dir, 'plain.sock');
    const srv = await startServer(tools!['qemu-nbd'], ['-f', 'raw', '-t', '-k', plain, img], plain);
    try {
      for (const name of [unixUri(sock, 'exp'), `nbd:unix:${sock}:exportname=exp`, unixUri(plain), `nbd:unix:${plain}`]) {
        const theirs = runQemuImg(['info', name]);
        const ours = await runBlkImg(['info', name]);
        expect(theirs.status).toBe(0);
        expect({ name, ...ours }).toEqual({ name, stdout: theirs.stdout, stderr: theirs.stderr, status: theirs.status });
      }
      // The default export drops the path's slash: nbd+unix://?socket=P, not nbd+unix:///?socket=P.
      expect((await runBlkImg(['info', unixUri(plain)])).stdout).toContain(`image: nbd+unix://?socket=${plain}\n`);
    } finally {
      await srv.stop();
    }
  });

  it('refuses to open a read-only export for writing', async () => {
    const rosock = join(dir, 'ro.sock');
    const ro = await startServer(tools!['qemu-nbd'], ['-f', 'raw', '-r', '-t', '-k', rosock, img], rosock);
    try {
      expect((await errorOf(openRaw(unixUri(rosock)))).message).toBe('NBD export is read-only');
      const bs = await openRaw(unixUri(rosock), true);
      expect(await bs.getLength()).toBe(4 * MiB);
      await bs.close();
    } finally {
      await ro.stop();
    }
  });

  it('connects over TCP with nbd:// and the legacy nbd:HOST:PORT names', async () => {
    const port = await freePort();
    const tcpSock = join(dir, 'tcp-marker');
    // qemu-nbd on TCP has no socket file: wait for the port instead of a path.
    const tcp = await startServer(tools!['qemu-nbd'], ['-f', 'raw', '-t', '-e', '0', '-x', 'exp', '-b', '127.0.0.1', '-p', String(port), img], tcpSock, {
      probe: false,
      ready: () => waitForPort(port),
    });
    try {
      for (const name of [`nbd://127.0.0.1:${port}/exp`, `nbd:127.0.0.1:${port}:exportname=exp`]) {
        const bs = await openRaw(name, true);
        expect(Buffer.from(await readAll(bs)).equals(readFileSync(img))).toBe(true);
        await bs.close();
      }
      const uri = `nbd://127.0.0.1:${port}/exp`;
      expect((await runBlkImg(['map', '--output=json', uri])).stdout).toBe(runQemuImg(['map', '--output=json', uri]).stdout);
      const refused = await errorOf(openRaw(`nbd://127.0.0.1:${await freePort()}/exp`));
      expect(refused.message).toMatch(/^Failed to connect to '127\.0\.0\.1:\d+': Connection refused$/);
    } finally {
      await tcp.stop();
    }
  });

  it('reports a refused connection with the errno', async () => {
    const e = await errorOf(openRaw(unixUri(join(dir, 'none.sock'))));
    expect(e.message).toBe(`Failed to connect to '${join(dir, 'none.sock')}': No such file or directory`);
    expect(e.errno).toBe(2);
  });
});

describe.skipIf(tools === null)('nbd client with x-dirty-bitmap', () => {
  it('reports a dirty bitmap in place of allocation, as qemu-img map shows it', async () => {
    const dir = makeTempDir('nbd-client-bitmap');
    const img = join(dir, 'b.qcow2');
    const sock = join(dir, 'b.sock');
    expect(runQemuImg(['create', '-q', '-f', 'qcow2', img, '4M']).status).toBe(0);
    expect(runQemuIo(['-c', 'write -P 1 0 2M', img]).status).toBe(0);
    expect(runQemuImg(['bitmap', '--add', img, 'b0']).status).toBe(0);
    expect(runQemuIo(['-c', 'write -P 2 1M 64k', '-c', 'write -P 3 3M 64k', img]).status).toBe(0);
    const srv = await startServer(tools!['qemu-nbd'], ['-f', 'qcow2', '-t', '-B', 'b0', '-k', sock, img], sock);
    try {
      const ctx = 'qemu:dirty-bitmap:b0';
      const theirs = JSON.parse(
        runQemuImg(['map', '--output=json', '--image-opts', `driver=nbd,server.type=unix,server.path=${sock},x-dirty-bitmap=${ctx}`]).stdout,
      ) as { start: number; length: number; present: boolean; zero: boolean; data: boolean }[];
      const bs = await BlockDriverState.open(unixUri(sock), { format: 'nbd', readOnly: true, driverOptions: { 'x-dirty-bitmap': ctx } });
      const ours: typeof theirs = [];
      const len = await bs.getLength();
      for (let off = 0; off < len; ) {
        const st = await bs.blockStatus(off, len - off);
        const last = ours[ours.length - 1];
        if (last !== undefined && last.present === st.allocated && last.zero === st.zero && last.data === st.data) last.length += st.pnum;
        else ours.push({ start: off, length: st.pnum, present: st.allocated, zero: st.zero, data: st.data });
        off += st.pnum;
      }
      await bs.close();
      expect(ours).toEqual(theirs.map(({ start, length, present, zero, data }) => ({ start, length, present, zero, data })));
      expect(ours.filter((e) => !e.data).map((e) => e.start)).toEqual([1048576, 3145728]);
    } finally {
      await srv.stop();
      removeTempDir(dir);
    }
  });
});

describe.skipIf(tools === null)('nbd client against nbdkit', () => {
  let dir = '';
  beforeAll(() => {
    dir = makeTempDir('nbd-client-nbdkit');
  });
  afterAll(() => removeTempDir(dir));

  async function nbdkit(name: string, args: string[]): Promise<RunningServer> {
    const sock = join(dir, `${name}.sock`);
    return startServer(tools!.nbdkit, ['-f', '-U', sock, ...args], sock);
  }

  it('speaks to a server without structured replies (simple replies, no block status)', async () => {
    const srv = await nbdkit('nosr', ['--no-sr', 'memory', '1M']);
    try {
      const bs = await openRaw(unixUri(srv.socket));
      const data = new Uint8Array(3000).map((_, i) => (i * 7) & 0xff);
      await bs.pwrite(777, data);
      const back = new Uint8Array(3000);
      await bs.pread(777, back);
      expect(back).toEqual(data);
      // No context: everything is data, and qemu-img says the same.
      const st = await bs.blockStatus(0, 1 * MiB);
      expect([st.pnum, st.data]).toEqual([1 * MiB, true]);
      await bs.close();
      const uri = unixUri(srv.socket);
      expect((await runBlkImg(['map', '--output=json', uri])).stdout).toBe(runQemuImg(['map', '--output=json', uri]).stdout);
    } finally {
      await srv.stop();
    }
  });

  it('obeys the server minimum block size (unaligned requests padded by the block layer)', async () => {
    const srv = await nbdkit('bs', [
      '--filter=blocksize-policy',
      'memory',
      '1M',
      'blocksize-minimum=4096',
      'blocksize-preferred=4096',
      'blocksize-maximum=65536',
      'blocksize-error-policy=error',
    ]);
    try {
      const bs = await openRaw(unixUri(srv.socket));
      expect(bs.file?.requestAlignment).toBe(4096);
      const data = new Uint8Array(200 * KiB).map((_, i) => (i * 13 + 1) & 0xff);
      await bs.pwrite(4097, data);
      const back = new Uint8Array(200 * KiB + 2);
      await bs.pread(4096, back);
      expect(back[0]).toBe(0);
      expect(back.subarray(1, 1 + data.length)).toEqual(data);
      expect(back[back.length - 1]).toBe(0);
      await bs.close();
    } finally {
      await srv.stop();
    }
  });

  it('splits reads at 32 MiB and keeps requests in flight', async () => {
    const log = join(dir, 'split.log');
    const srv = await nbdkit('split', ['--filter=log', 'memory', '64M', `logfile=${log}`]);
    try {
      const bs = await openRaw(unixUri(srv.socket));
      const buf = new Uint8Array(40 * MiB);
      await bs.pread(0, buf);
      await bs.close();
    } finally {
      await srv.stop();
    }
    const reads = readFileSync(log, 'utf8')
      .split('\n')
      .filter((l) => l.includes('Read id=') && !l.includes('count=0x800 '));
    const counts = reads.map((l) => /count=(0x[0-9a-f]+)/.exec(l)?.[1]);
    expect(counts).toContain('0x2000000');
    expect(counts).toContain('0x800000');
  });

  it('maps server errors to BlockErrors with their errno', async () => {
    const srv = await nbdkit('err', ['--filter=error', 'memory', '1M', 'error-pread=EIO', 'error-pwrite=ENOSPC', 'error-rate=100%']);
    try {
      const bs = await BlockDriverState.open(unixUri(srv.socket), { format: 'raw' }).catch((e: unknown) => e);
      // The probe read fails already: open with -f raw still reads nothing, so go through the node.
      if (bs instanceof BlockDriverState) {
        const r = await errorOf(bs.pread(0, new Uint8Array(512)));
        expect([r.code, r.errno]).toEqual(['EIO', 5]);
        const w = await errorOf(bs.pwrite(0, new Uint8Array(512)));
        expect([w.code, w.errno]).toEqual(['ENOSPC', 28]);
        await bs.close();
      } else {
        throw bs;
      }
    } finally {
      await srv.stop();
    }
  });

  it('fails requests with EIO once the server is gone', async () => {
    const srv = await nbdkit('gone', ['memory', '1M']);
    const bs = await openRaw(unixUri(srv.socket));
    await bs.pread(0, new Uint8Array(512));
    await srv.kill();
    const e = await errorOf(bs.pread(0, new Uint8Array(512)));
    expect(e.code).toBe('EIO');
    await bs.close();
  });
});
