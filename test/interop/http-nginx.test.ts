// The http/https driver against a real nginx: reads equal the served file; blk-img info, map
// and convert print what qemu-img prints for the same URL; a local overlay over a remote base;
// and each failure (no byte ranges, 404, a silent server, a file replaced by one of another
// size, a read-write open) is a clear BlockError or QEMU's message and status, with nothing
// written anywhere.
import { createHash } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlockBackend, BlockError, BlockDriverRegistry, rawDriver, qedDriver } from '../../src/index.js';
import { fetchTransport, makeHttpDrivers, nodeHttpTransport, setHttpTransport } from '../../src/index.js';
import { main as ioMain } from '../../src/tools/io/main.js';
import { runOurs, runTheirs } from './img-parity-harness.js';
import { type Nginx, requireNginx, startNginx, startSilentServer } from './http-server.js';
import { makeTempDir, removeTempDir, requireQemu, runQemuImg, runQemuIo } from './qemu.js';

const nginxPath = requireNginx();
const qemu = requireQemu();
const maybe = nginxPath !== null && qemu !== null ? describe : describe.skip;

/** 300001 bytes: not a multiple of 512, so the sector tail shows. */
const DATA_SIZE = 300_001;

/** What `p` rejects with; fails the test when it resolves or rejects with no BlockError. */
async function rejection(p: Promise<unknown>): Promise<BlockError> {
  const e: unknown = await p.then(
    () => null,
    (x: unknown) => x,
  );
  expect(e).toBeInstanceOf(BlockError);
  return e as BlockError;
}

function sha(buf: Uint8Array): string {
  return createHash('sha256').update(buf).digest('hex');
}

maybe('http driver against nginx', () => {
  let dir = '';
  let srv: Nginx;
  let data: Uint8Array;
  /** Content of every served file before the tests: nothing may change them. */
  const before = new Map<string, string>();

  beforeAll(async () => {
    dir = makeTempDir('blocklayer-http');
    srv = await startNginx(nginxPath ?? '');
    data = new Uint8Array(DATA_SIZE);
    for (let i = 0; i < data.length; i++) data[i] = (i * 2654435761) >>> 24;
    writeFileSync(join(srv.www, 'data.raw'), data);
    const q = (args: string[]): void => {
      const r = runQemuImg(args, { cwd: srv.www });
      if (r.status !== 0) throw new Error(r.stderr);
    };
    q(['create', '-q', '-f', 'qed', 'base.qed', '1M']);
    const w = runQemuIo(['-f', 'qed', '-c', 'write -P 0xab 0 64k', '-c', 'write -P 0xcd 256k 100k', 'base.qed'], { cwd: srv.www });
    if (w.status !== 0) throw new Error(w.stderr);
    // A remote overlay naming its remote base relatively.
    q(['create', '-q', '-f', 'qed', '-b', 'base.qed', '-F', 'qed', 'mid.qed']);
    q(['create', '-q', '-f', 'qcow2', 'base.qcow2', '1M']);
    const w2 = runQemuIo(['-f', 'qcow2', '-c', 'write -P 0xab 0 64k', '-c', 'write -P 0xcd 256k 100k', 'base.qcow2'], { cwd: srv.www });
    if (w2.status !== 0) throw new Error(w2.stderr);
    for (const f of readdirSync(srv.www)) before.set(f, sha(readFileSync(join(srv.www, f))));
  });

  afterAll(async () => {
    setHttpTransport(nodeHttpTransport());
    try {
      // Nothing the tests did wrote to the served files.
      for (const [f, h] of before) if (f !== 'changing.raw') expect(sha(readFileSync(join(srv.www, f))), f).toBe(h);
    } finally {
      await srv?.stop();
      removeTempDir(dir);
    }
  });

  /** A fresh working directory for one comparison (qemu-img's and ours). */
  let n = 0;
  function dirs(): { dq: string; db: string } {
    const base = join(dir, `cmp${n++}`);
    mkdirSync(join(base, 'q'), { recursive: true });
    mkdirSync(join(base, 'b'));
    return { dq: join(base, 'q'), db: join(base, 'b') };
  }

  async function readAll(blk: BlockBackend, len: number, step: number): Promise<Uint8Array> {
    const out = new Uint8Array(len);
    for (let off = 0; off < len; off += step) await blk.pread(off, out.subarray(off, Math.min(len, off + step)));
    return out;
  }

  it('reads equal the file, through node:http and through fetch', async () => {
    const url = `${srv.url}/data.raw`;
    const expected = new Uint8Array(Math.ceil(DATA_SIZE / 512) * 512);
    expected.set(data);
    const blk = await BlockBackend.open(url, { format: 'raw', readOnly: true });
    expect(await blk.getLength()).toBe(expected.length);
    // Odd steps cross readahead buffers; readahead=0 makes every read its own request.
    expect(sha(await readAll(blk, expected.length, 7777))).toBe(sha(expected));
    await blk.close();

    const { http } = makeHttpDrivers(fetchTransport);
    const registry = new BlockDriverRegistry().register(rawDriver).register(http);
    const viaFetch = await BlockBackend.open(url, { format: 'raw', readOnly: true, registry, driverOptions: { readahead: '0' } });
    expect(sha(await readAll(viaFetch, expected.length, 65536))).toBe(sha(expected));
    await viaFetch.close();
  });

  it('checks its options before any request', async () => {
    const url = `${srv.url}/data.raw`;
    const open = (driverOptions: Record<string, string>): Promise<BlockBackend> =>
      BlockBackend.open(url, { format: 'raw', readOnly: true, driverOptions });
    await expect(open({ readahead: '1000' })).rejects.toThrow('HTTP_READAHEAD_SIZE 1000 is not a multiple of 512');
    await expect(open({ timeout: '10001' })).rejects.toThrow('timeout parameter is too large or negative');
    await expect(open({ sslverify: 'maybe' })).rejects.toThrow("Parameter 'sslverify' expects 'on' or 'off'");
    await expect(open({ url: 'ftp://x/y' })).rejects.toThrow(
      "http curl driver cannot handle the URL 'ftp://x/y' (does not start with 'http://')",
    );
    const ok = await open({ readahead: '1k', timeout: '2', sslverify: 'on', cookie: 'a=b' });
    await ok.close();
  });

  it('blk-img info, map and convert print what qemu-img prints', async () => {
    const { dq, db } = dirs();
    for (const args of [
      ['info', `${srv.url}/base.qed`],
      ['info', '--output=json', `${srv.url}/base.qed`],
      ['map', `${srv.url}/base.qed`],
      ['map', '--output=json', `${srv.url}/base.qed`],
      ['info', `${srv.url}/data.raw`],
      ['map', '--output=json', `${srv.url}/data.raw`],
      ['info', `${srv.url}/base.qcow2`],
      ['map', '--output=json', `${srv.url}/base.qcow2`],
      ['info', '--backing-chain', `${srv.url}/mid.qed`],
      ['map', '--output=json', `${srv.url}/mid.qed`],
    ]) {
      const theirs = runTheirs(args, dq, false);
      const ours = await runOurs(args, db, false);
      expect(ours, args.join(' ')).toEqual(theirs);
    }
    // qemu-img 7.2 converting from curl now and then hangs (its curl driver, several requests at
    // once): it converts the same files from the disk, we from the URL.
    for (const [fmt, name, out] of [
      ['qed', 'base.qed', 'out.qed'],
      ['raw', 'data.raw', 'out.raw'],
    ]) {
      const theirs = runTheirs(['convert', '-O', fmt, join(srv.www, name), out], dq, false);
      const ours = await runOurs(['convert', '-O', fmt, `${srv.url}/${name}`, out], db, false);
      expect(ours, `convert ${name}`).toEqual(theirs);
    }
    expect(sha(readFileSync(join(db, 'out.raw')))).toBe(sha(readFileSync(join(dq, 'out.raw'))));
    const cmp = runQemuImg(['compare', join(dq, 'out.qed'), join(db, 'out.qed')]);
    expect(cmp.stdout).toBe('Images are identical.\n');
  });

  it('a local overlay over an http base', async () => {
    const { dq, db } = dirs();
    const base = `${srv.url}/base.qed`;
    for (const args of [
      ['create', '-f', 'qed', '-b', base, '-F', 'qed', 'ov.qed'],
      ['info', '--backing-chain', 'ov.qed'],
      ['map', '--output=json', 'ov.qed'],
      ['create', '-f', 'qcow2', '-b', `${srv.url}/base.qcow2`, '-F', 'qcow2', 'ov.qcow2'],
      ['info', '--backing-chain', 'ov.qcow2'],
      ['map', '--output=json', 'ov.qcow2'],
    ]) {
      expect(await runOurs(args, db, false), args.join(' ')).toEqual(runTheirs(args, dq, false));
    }
    let out = '';
    let err = '';
    const status = await ioMain(
      ['node', 'blk-io', '-c', 'write -P 0x11 0 4k', '-c', 'read -P 0x11 0 4k', '-c', 'read -P 0xab 4k 60k', '-c', 'read -P 0xcd 256k 100k', join(db, 'ov.qed')],
      { stdout: { write: (s: string) => (out += s) }, stderr: { write: (s: string) => (err += s) } },
    );
    expect(err).toBe('');
    expect(status).toBe(0);
    expect(out).not.toContain('Pattern verification failed');
    // The real qemu-io reads our overlay over the same remote base.
    const r = runQemuIo(['-r', '-c', 'read -P 0x11 0 4k', '-c', 'read -P 0xcd 256k 100k', join(db, 'ov.qed')]);
    expect(r.stderr).toBe('');
    expect(r.stdout).not.toContain('Pattern verification failed');
  });

  it('failures print what qemu-img prints and write nothing', async () => {
    const { dq, db } = dirs();
    for (const args of [
      ['info', `${srv.noRangeUrl}/base.qed`],
      ['info', `${srv.url}/missing.qed`],
      ['convert', '-O', 'raw', `${srv.url}/missing.qed`, 'out.raw'],
      ['create', '-f', 'qed', '-b', `${srv.url}/missing.qed`, '-F', 'qed', 'ov.qed'],
    ]) {
      const theirs = runTheirs(args, dq, false);
      const ours = await runOurs(args, db, false);
      expect(ours, args.join(' ')).toEqual(theirs);
      expect(theirs.status).not.toBe(0);
    }
    expect(readdirSync(db)).toEqual(readdirSync(dq));
    expect(readdirSync(db)).toEqual([]);
  });

  it('each failure is a BlockError with a code', async () => {
    const open = (url: string, readOnly = true): Promise<BlockBackend> => BlockBackend.open(url, { format: 'raw', readOnly });
    const noRange = await rejection(open(`${srv.noRangeUrl}/data.raw`));
    expect(noRange.code).toBe('ENOTSUP');
    expect(noRange.message).toBe("CURL: Error opening file: Server does not support 'range' (byte ranges).");
    const missing = await rejection(open(`${srv.url}/missing.raw`));
    expect(missing.code).toBe('ENOENT');
    expect(missing.message).toBe('CURL: Error opening file: The requested URL returned error: 404');
    const rw = await rejection(open(`${srv.url}/data.raw`, false));
    expect(rw.code).toBe('EACCES');
    expect(rw.message).toBe('curl driver does not support writes');
  });

  it('blk-io refuses a read-write open as qemu-io does', async () => {
    const url = `${srv.url}/data.raw`;
    const theirs = runQemuIo(['-c', 'read 0 512', url]);
    let err = '';
    const status = await ioMain(['node', 'qemu-io', '-c', 'read 0 512', url], {
      stdout: { write: () => undefined },
      stderr: { write: (s: string) => (err += s) },
    });
    expect(err).toBe(theirs.stderr);
    expect(status).toBe(theirs.status);
  });

  it('a server that never answers times out', async () => {
    const silent = await startSilentServer();
    try {
      const url = `${silent.url}/x.raw`;
      const started = Date.now();
      const e = await rejection(BlockBackend.open(url, { format: 'raw', readOnly: true, driverOptions: { timeout: '1' } }));
      expect(Date.now() - started).toBeLessThan(4000);
      expect(e.code).toBe('EIO');
      expect(e.message).toMatch(/^CURL: Error opening file: Operation timed out after \d+ milliseconds with 0 bytes received$/);

      // The default 5 s, through the tools: same message as qemu-img (the milliseconds aside).
      const { dq, db } = dirs();
      const ms = (s: string): string => s.replace(/after \d+ milliseconds/, 'after N milliseconds');
      const theirs = runTheirs(['info', url], dq, false);
      const ours = await runOurs(['info', url], db, false);
      expect({ ...ours, stderr: ms(ours.stderr) }).toEqual({ ...theirs, stderr: ms(theirs.stderr) });
      expect(theirs.stderr).toContain('Operation timed out');
    } finally {
      await silent.stop();
    }
  });

  it('a file that changes size between open and read fails the read', async () => {
    const path = join(srv.www, 'changing.raw');
    writeFileSync(path, data.subarray(0, 200_000));
    const blk = await BlockBackend.open(`${srv.url}/changing.raw`, { format: 'raw', readOnly: true });
    const buf = new Uint8Array(512);
    await blk.pread(0, buf);
    writeFileSync(path, data);
    // Past the readahead of the first read: a new request sees the new size.
    await rejection(blk.pread(150_000 + 512 * 1024, buf));
    await blk.close();
    const again = await BlockBackend.open(`${srv.url}/changing.raw`, { format: 'raw', readOnly: true });
    writeFileSync(path, data.subarray(0, 100_000));
    const shrunk = await rejection(again.pread(0, buf));
    expect(shrunk.code).toBe('EIO');
    expect(shrunk.message).toBe("Server's file size changed from 300001 to 100000 bytes since it was opened");
    await again.close();
  });

  it('https with a throwaway CA', async (ctx) => {
    if (srv.httpsUrl === null || srv.caPem === null) {
      if (process.env.CI === 'true') throw new Error('https needs openssl');
      ctx.skip();
      return;
    }
    const url = `${srv.httpsUrl}/data.raw`;
    const untrusted = await rejection(BlockBackend.open(url, { format: 'raw', readOnly: true }));
    expect(untrusted.message).toMatch(/^CURL: Error opening file: .*certificate/);

    // sslverify=off skips the check; a transport trusting the CA checks and passes.
    const unchecked = await BlockBackend.open(url, { format: 'raw', readOnly: true, driverOptions: { sslverify: 'off' } });
    await unchecked.close();
    setHttpTransport(nodeHttpTransport({ ca: srv.caPem }));
    try {
      const blk = await BlockBackend.open(url, { format: 'raw', readOnly: true });
      const got = await readAll(blk, DATA_SIZE, 100_000);
      expect(sha(got)).toBe(sha(data));
      await blk.close();
      const { https } = makeHttpDrivers(fetchTransport);
      const registry = new BlockDriverRegistry().register(rawDriver).register(qedDriver).register(https);
      // fetch cannot switch certificate checks off.
      await expect(BlockBackend.open(url, { format: 'raw', readOnly: true, registry, driverOptions: { sslverify: 'off' } })).rejects.toThrow(
        'sslverify=off is not possible with fetch',
      );
    } finally {
      setHttpTransport(nodeHttpTransport());
    }
  });
});
