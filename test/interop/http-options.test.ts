// The http/https driver opened from options, as QEMU's curl driver (qemu-block-extra's
// block-curl module): --image-opts driver=http,url=..., json: names, a raw format over an http
// file, the curl keys (readahead, timeout, sslverify, cookie, cookie-secret, username,
// password-secret) and their bad values, compared with qemu-img 7.2 against the real nginx.
// Cookies and basic authentication are checked against a server that refuses requests without
// them (a node:http server on 127.0.0.1 that serves byte ranges).
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlockBackend, ObjectTable, parseObjectDefinition } from '../../src/index.js';
import { runOurs, runTheirs, type Outcome } from './img-parity-harness.js';
import { type Nginx, requireNginx, startNginx } from './http-server.js';
import { makeTempDir, removeTempDir, requireQemu } from './qemu.js';

const nginxPath = requireNginx();
const qemu = requireQemu();
const maybe = nginxPath !== null && qemu !== null ? describe : describe.skip;

/** qemu-img's curl driver logs GLib assertions for an open that fails early: not ours to copy. */
function withoutGlib(o: Outcome): Outcome {
  return { ...o, stderr: o.stderr.replace(/^qemu-img: GLib: .*\n/gm, '') };
}

/** A server of `data` that wants `Cookie: c=1` and basic auth u:pw on every request. */
function startGuardedServer(data: Uint8Array): Promise<{ url: string; server: Server }> {
  const auth = `Basic ${Buffer.from('u:pw').toString('base64')}`;
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    if (req.headers.authorization !== auth || req.headers.cookie !== 'c=1') {
      res.writeHead(403).end();
      return;
    }
    const range = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? '');
    if (req.method === 'HEAD' || range === null) {
      res.writeHead(200, { 'Content-Length': data.length, 'Accept-Ranges': 'bytes' }).end();
      return;
    }
    const start = Number(range[1]);
    const end = Math.min(Number(range[2]), data.length - 1);
    res
      .writeHead(206, { 'Content-Range': `bytes ${start}-${end}/${data.length}`, 'Content-Length': end - start + 1, 'Accept-Ranges': 'bytes' })
      .end(data.subarray(start, end + 1));
  });
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => {
      const a = server.address();
      resolve({ url: `http://127.0.0.1:${typeof a === 'object' && a !== null ? a.port : 0}`, server });
    });
  });
}

maybe('http driver options, against qemu-img', () => {
  let srv: Nginx;
  let dir = '';
  const data = new Uint8Array(70_000).map((_, i) => (i * 31) & 0xff);

  beforeAll(async () => {
    dir = makeTempDir('http-opts');
    srv = await startNginx(nginxPath ?? '');
    const { writeFileSync } = await import('node:fs');
    writeFileSync(`${srv.www}/d.raw`, data);
  });

  afterAll(async () => {
    await srv?.stop();
    removeTempDir(dir);
  });

  async function expectSame(args: string[]): Promise<void> {
    const theirs = withoutGlib(runTheirs(args, dir, false));
    const ours = await runOurs(args, dir, false);
    expect({ args, ...ours }).toEqual({ args, ...theirs });
  }

  it('opens driver=http from its url option, shown as qemu-img shows it', async () => {
    const u = `${srv.url}/d.raw`;
    for (const spelling of [
      ['--image-opts', `driver=http,url=${u}`],
      ['--image-opts', `driver=raw,file.driver=http,file.url=${u}`],
      ['--image-opts', `driver=http,url=${u},readahead=64k,timeout=3`],
      ['--image-opts', `driver=http,url=${u},sslverify=off,cookie=a=b`],
      ['--image-opts', `driver=raw,file.driver=http,file.url=${u},file.username=x`],
      [`json:${JSON.stringify({ driver: 'http', url: u })}`],
      [`json:${JSON.stringify({ driver: 'raw', file: { driver: 'http', url: u, readahead: 65536 } })}`],
    ]) {
      await expectSame(['info', ...spelling]);
      await expectSame(['info', '--output=json', ...spelling]);
      await expectSame(['map', '--output=json', ...spelling]);
    }
  });

  it('refuses bad keys and values with qemu-img messages', async () => {
    const u = `${srv.url}/d.raw`;
    for (const opts of [
      'driver=http',
      `driver=http,filename=${u}`,
      `driver=https,url=${u}`,
      `driver=http,url=${u},readahead=1000`,
      `driver=http,url=${u},readahead=abc`,
      `driver=http,url=${u},timeout=abc`,
      `driver=http,url=${u},timeout=-1`,
      `driver=http,url=${u},timeout=10001`,
      `driver=http,url=${u},sslverify=maybe`,
      `driver=http,url=${u},bogus=1`,
      `driver=http,url=${u},password-secret=nope`,
      `driver=http,url=${u},cookie-secret=nope`,
      `driver=http,url=${u},cookie=a,cookie-secret=nope`,
      `driver=http,url=${srv.url}/missing.raw`,
    ]) {
      await expectSame(['info', '--image-opts', opts]);
    }
  });

  it('sends cookie-secret and basic authentication (username, password-secret)', async () => {
    const guarded = await startGuardedServer(data);
    try {
      const u = `${guarded.url}/d.raw`;
      const objects = ['--object', 'secret,id=pw,data=pw', '--object', 'secret,id=ck,data=c=1'];
      for (const opts of [`username=u,password-secret=pw,cookie-secret=ck`, `username=u,password-secret=pw,cookie=c=1`]) {
        const ok = await runOurs(['info', '--output=json', ...objects, '--image-opts', `driver=http,url=${u},${opts}`], dir, false);
        expect(ok.stderr).toBe('');
        expect(ok.stdout).toContain('"virtual-size": 70144');
      }
      // Without the password the server refuses, and so does the open.
      const refused = await runOurs(['info', ...objects, '--image-opts', `driver=http,url=${u},username=u,cookie=c=1`], dir, false);
      expect(refused.status).toBe(1);
      expect(refused.stderr).toContain('CURL: Error opening file: The requested URL returned error: 403');
      // And through the library: the bytes arrive.
      const table = new ObjectTable();
      table.add(parseObjectDefinition('secret,id=pw,data=pw'));
      const blk = await BlockBackend.open(
        { driver: 'raw', file: { driver: 'http', url: u, username: 'u', 'password-secret': 'pw', cookie: 'c=1' } },
        { readOnly: true, objects: table },
      );
      const buf = new Uint8Array(1000);
      await blk.pread(65_000, buf);
      expect(buf).toEqual(data.subarray(65_000, 66_000));
      await blk.close();
    } finally {
      await new Promise<void>((resolve) => guarded.server.close(() => resolve()));
    }
  });

  it('refuses proxy options (no proxy is used) after checking the secret they name', async () => {
    const u = `${srv.url}/d.raw`;
    const theirs = withoutGlib(runTheirs(['info', '--image-opts', `driver=http,url=${u},proxy-password-secret=nope`], dir, false));
    expect(await runOurs(['info', '--image-opts', `driver=http,url=${u},proxy-password-secret=nope`], dir, false)).toEqual(theirs);
    const ours = await runOurs(['info', '--image-opts', `driver=http,url=${u},proxy-username=p`], dir, false);
    expect(ours.status).toBe(1);
    expect(ours.stderr).toContain('proxy-username and proxy-password-secret are not supported');
  });
});
