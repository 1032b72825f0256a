// The nbd client driver opened from options, as QEMU opens it without a filename: --image-opts
// with server.* / legacy keys, json: names, and a remote backing file (-b nbd+unix://...).
// blk-img's stdout, stderr and exit status are compared with qemu-img 7.2's, against qemu-nbd
// and against our blk-nbd, including bad keys and values. Servers listen on Unix sockets in a
// temp dir (and one on 127.0.0.1), bounded in time and stopped by pid.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort, requireTools, runBlkImg, startServer, unixUri, waitForPort, type RunningServer } from './nbd-client-servers.js';
import { makeTempDir, removeTempDir, runQemuImg, runQemuIo } from './qemu.js';
import { main as ioMain } from '../../src/tools/io/main.js';

const tools = requireTools('qemu-nbd', 'qemu-img', 'qemu-io');
const LAUNCHER = join(import.meta.dirname, 'nbd-cli-launcher.ts');

async function expectSame(args: string[]): Promise<void> {
  const theirs = runQemuImg(args);
  const ours = await runBlkImg(args);
  expect({ args, stdout: ours.stdout, stderr: ours.stderr, status: ours.status }).toEqual({
    args,
    stdout: theirs.stdout,
    stderr: theirs.stderr,
    status: theirs.status,
  });
}

/** Every spelling of export `exp` on `sock` that QEMU opens without a filename. */
function spellings(sock: string): string[][] {
  const json = (o: unknown): string => `json:${JSON.stringify(o)}`;
  return [
    ['--image-opts', `driver=nbd,server.type=unix,server.path=${sock},export=exp`],
    ['--image-opts', `driver=nbd,path=${sock},export=exp`],
    ['--image-opts', `driver=raw,file.driver=nbd,file.server.type=unix,file.server.path=${sock},file.export=exp`],
    ['--image-opts', `file.driver=nbd,file.server.type=unix,file.server.path=${sock},file.export=exp`],
    ['--image-opts', `driver=nbd,server.type=unix,server.path=${sock},export=exp,reconnect-delay=2,open-timeout=1`],
    [json({ driver: 'nbd', server: { type: 'unix', path: sock }, export: 'exp' })],
    [json({ driver: 'raw', file: { driver: 'nbd', server: { type: 'unix', path: sock }, export: 'exp' } })],
    [unixUri(sock, 'exp')],
    [`nbd:unix:${sock}:exportname=exp`],
  ];
}

describe.skipIf(tools === null)('nbd nodes opened from options, against qemu-img', () => {
  let dir = '';
  let img = '';
  const servers: RunningServer[] = [];
  let theirs = '';
  let ours = '';
  let port = 0;

  beforeAll(async () => {
    dir = makeTempDir('nbd-opts');
    img = join(dir, 'a.raw');
    expect(runQemuImg(['create', '-q', '-f', 'raw', img, '4M']).status).toBe(0);
    expect(runQemuIo(['-f', 'raw', '-c', 'write -P 0x5a 65536 5', '-c', 'write -P 0x11 2560k 128k', img]).status).toBe(0);
    theirs = join(dir, 'theirs.sock');
    ours = join(dir, 'ours.sock');
    servers.push(await startServer(tools!['qemu-nbd'], ['-f', 'raw', '-r', '-t', '-e', '0', '-x', 'exp', '-k', theirs, img], theirs));
    servers.push(await startServer(process.execPath, ['--import', 'tsx', LAUNCHER, '-f', 'raw', '-r', '-t', '-e', '0', '-x', 'exp', '-k', ours, img], ours));
    port = await freePort();
    servers.push(
      await startServer(
        process.execPath,
        ['--import', 'tsx', LAUNCHER, '-f', 'raw', '-r', '-t', '-e', '0', '-x', 'exp', '-b', '127.0.0.1', '-p', String(port), img],
        join(dir, 'no-socket'),
        { ready: () => waitForPort(port) },
      ),
    );
  }, 60_000);

  afterAll(async () => {
    for (const s of servers) await s.stop();
    removeTempDir(dir);
  });

  it('shows info and map as qemu-img does, whichever way the node is named (qemu-nbd and blk-nbd)', async () => {
    for (const sock of [theirs, ours]) {
      for (const spelling of spellings(sock)) {
        await expectSame(['info', ...spelling]);
        await expectSame(['info', '--output=json', ...spelling]);
        await expectSame(['map', '--output=json', ...spelling]);
      }
    }
  }, 120_000);

  it('takes server.type=inet with host and port, and the legacy host key', async () => {
    const p = String(port);
    await expectSame(['info', '--image-opts', `driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=${p},export=exp`]);
    await expectSame(['info', '--output=json', '--image-opts', `driver=nbd,host=127.0.0.1,port=${p},export=exp`]);
    await expectSame(['info', `json:${JSON.stringify({ driver: 'nbd', server: { type: 'inet', host: '127.0.0.1', port: p, ipv4: 'on' }, export: 'exp' })}`]);
    await expectSame(['info', `nbd://127.0.0.1:${p}/exp`]);
  });

  it('opens an overlay whose backing file is a remote export (-b nbd+unix://...)', async () => {
    for (const sock of [theirs, ours]) {
      const top = join(dir, `top-${sock === ours ? 'ours' : 'theirs'}.qcow2`);
      expect(runQemuImg(['create', '-q', '-f', 'qcow2', '-b', unixUri(sock, 'exp'), '-F', 'raw', top]).status).toBe(0);
      await expectSame(['info', '--backing-chain', top]);
      await expectSame(['map', '--output=json', top]);
      await expectSame(['compare', '-f', 'qcow2', '-F', 'raw', top, img]);
      // And created by blk-img, then read by qemu-img.
      const ourTop = join(dir, `our-top-${sock === ours ? 'ours' : 'theirs'}.qcow2`);
      const made = await runBlkImg(['create', '-q', '-f', 'qcow2', '-b', unixUri(sock, 'exp'), '-F', 'raw', ourTop]);
      expect(made).toEqual({ stdout: '', stderr: '', status: 0 });
      expect(runQemuImg(['compare', '-f', 'qcow2', '-F', 'raw', ourTop, img]).status).toBe(0);
    }
  });

  it('names TLS credentials by id from --object (tls-creds-psk), as qemu-img does', async () => {
    const psk = join(dir, 'psk');
    mkdirSync(psk);
    writeFileSync(join(psk, 'keys.psk'), `qemu:${'5e'.repeat(32)}\n`);
    const sock = join(dir, 'tls.sock');
    const obj = (endpoint: string): string[] => ['--object', `tls-creds-psk,id=tls0,dir=${psk},endpoint=${endpoint}`];
    servers.push(await startServer(tools!['qemu-nbd'], ['-f', 'raw', '-r', '-t', '-x', 'exp', '-k', sock, ...obj('server'), '--tls-creds=tls0', img], sock));
    const opts = `driver=nbd,server.type=unix,server.path=${sock},export=exp,tls-creds=tls0`;
    await expectSame(['info', ...obj('client'), '--image-opts', opts]);
    await expectSame(['map', '--output=json', ...obj('client'), '--image-opts', opts]);
    // Credentials for the wrong end, none, or no such id: qemu-img's messages.
    await expectSame(['info', ...obj('server'), '--image-opts', opts]);
    await expectSame(['info', '--image-opts', opts]);
    await expectSame(['info', '--image-opts', `driver=nbd,server.type=unix,server.path=${sock},export=exp`]);
    // blk-io reads through the same options.
    let out = '';
    let err = '';
    const status = await ioMain(['node', 'qemu-io', ...obj('client'), '--image-opts', '-r', '-c', 'read -P 0x11 2560k 128k', opts], {
      stdout: { write: (t: string) => (out += t) },
      stderr: { write: (t: string) => (err += t) },
    });
    expect({ status, err }).toEqual({ status: 0, err: '' });
    expect(out).toContain('read 131072/131072 bytes at offset 2621440');
  });

  it('blk-nbd --image-opts serves what qemu-nbd --image-opts serves', async () => {
    const opts = `driver=raw,file.driver=file,file.filename=${img}`;
    const a = join(dir, 'io-ours.sock');
    const b = join(dir, 'io-theirs.sock');
    servers.push(await startServer(process.execPath, ['--import', 'tsx', LAUNCHER, '--image-opts', '-r', '-t', '-x', 'e', '-k', a, opts], a));
    servers.push(await startServer(tools!['qemu-nbd'], ['--image-opts', '-r', '-t', '-x', 'e', '-k', b, opts], b));
    const map = (sock: string): string => runQemuImg(['map', '--output=json', unixUri(sock, 'e')]).stdout;
    expect(map(a)).toBe(map(b));
    expect(map(a)).toContain('"start": 2621440, "length": 131072');
  });

  it('refuses bad keys and values with qemu-img messages and status', async () => {
    const missing = join(dir, 'missing.sock');
    const bad = [
      'driver=nbd',
      'driver=nbd,export=exp',
      'driver=nbd,port=5',
      'driver=nbd,server.type=bogus',
      'driver=nbd,server.type=inet',
      'driver=nbd,server.type=inet,server.host=127.0.0.1',
      'driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=abc',
      'driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=-1',
      'driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=1,server.ipv4=maybe',
      'driver=nbd,server.type=unix',
      `driver=nbd,server.type=unix,server.path=${missing}`,
      `driver=nbd,server.type=unix,server.path=${theirs},server.host=x`,
      `driver=nbd,server.type=unix,server.path=${theirs},host=x`,
      `driver=nbd,host=127.0.0.1,path=${theirs}`,
      `driver=nbd,path=${theirs},port=4`,
      `driver=nbd,server.type=unix,server.path=${theirs},export=exp,bogus=1`,
      `driver=nbd,server.type=unix,server.path=${theirs},export=exp,reconnect-delay=abc`,
      `driver=nbd,server.type=unix,server.path=${theirs},export=exp,tls-creds=nope`,
      `driver=nbd,server.type=unix,server.path=${theirs},export=nope`,
      `driver=nbd,filename=${unixUri(theirs, 'exp')}`,
      `driver=qcow2,file.driver=nbd,file.server.type=unix,file.server.path=${theirs},file.export=exp`,
    ];
    for (const opts of bad) await expectSame(['info', '--image-opts', opts]);
    // A filename beside the options (json:): QEMU reads only the options.
    await expectSame(['info', `json:${JSON.stringify({ driver: 'nbd', filename: unixUri(theirs, 'exp') })}`]);
    await expectSame(['info', `json:${JSON.stringify({ driver: 'nbd', filename: unixUri(theirs, 'exp'), server: { type: 'unix', path: theirs } })}`]);
  }, 60_000);
});
