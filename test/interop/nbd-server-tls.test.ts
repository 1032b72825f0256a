// STARTTLS on our NbdServer: x509 (client certificates required, optional authz on the
// subject) and PSK, with nbdinfo and qemu-img/qemu-io as clients; plain clients refused.
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { NbdTlsOptions } from '../../src/nbd/index.js';
import * as p from '../../src/nbd/protocol.js';
import { WireClient } from '../unit/nbd-wire.js';
import { makeTempDir, removeTempDir } from './qemu.js';
import { haveNbdTools, killTools, runTool, serveImage, type Served } from './nbd-server-tools.js';
import { makeX509Certs } from './tls-certs.js';

function haveOpenssl(): boolean {
  const found = spawnSync('openssl', ['version'], { timeout: 10_000 }).status === 0;
  if (!found && process.env.CI === 'true') throw new Error('the NBD TLS tests need openssl');
  return found;
}

const enabled = haveNbdTools() && haveOpenssl();

describe.skipIf(!enabled)('NbdServer with TLS', () => {
  let dir = '';
  let img = '';
  let x509: NbdTlsOptions['options'] = {};
  const cleanups: (() => Promise<void>)[] = [];
  const PSK = '0123456789abcdef0123456789abcdef';

  beforeAll(async () => {
    dir = makeTempDir('nbd-server-tls');
    makeX509Certs(dir);
    writeFileSync(join(dir, 'keys.psk'), `alice:${PSK}\n`);
    const read = (f: string): Buffer => readFileSync(join(dir, f));
    x509 = { key: read('server-key.pem'), cert: read('server-cert.pem'), ca: read('ca-cert.pem'), requestCert: true, rejectUnauthorized: true };
    img = join(dir, 'disk.qed');
    const r = await runTool('qemu-img', ['create', '-f', 'qed', img, '4M']);
    expect(r.status).toBe(0);
  });

  afterAll(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
    killTools();
    removeTempDir(dir);
  });

  async function serve(tls: NbdTlsOptions, readOnly = false): Promise<{ s: Served; port: number }> {
    const s = await serveImage(img, dir, { format: 'qed', readOnly }, { tls });
    cleanups.push(() => s.close());
    return { s, port: Number(new URL(s.tcp).port) };
  }

  it('x509: nbdinfo and qemu-io/qemu-img talk to us over TLS with client certificates', async () => {
    const { port } = await serve({ options: x509 });
    const info = await runTool('nbdinfo', [`nbds://localhost:${port}/?tls-certificates=${dir}`]);
    expect(info.stderr).toBe('');
    expect(info.stdout).toContain('newstyle-fixed with TLS');
    const obj = `tls-creds-x509,id=tls0,dir=${dir},endpoint=client`;
    const opts = `driver=nbd,server.type=inet,server.host=localhost,server.port=${port},tls-creds=tls0`;
    const io = await runTool('qemu-io', ['--object', obj, '--image-opts', '-c', 'write -P 0x5a 0 64k', '-c', 'read -P 0x5a 0 64k', opts]);
    expect(io.stderr).toBe('');
    expect(io.stdout).not.toContain('Pattern verification failed');
    const img2 = await runTool('qemu-img', ['info', '--object', obj, '--image-opts', opts]);
    expect(img2.stdout).toContain('virtual size: 4 MiB');
    const list = await runTool('qemu-nbd', ['-L', '--object', obj, '--tls-creds', 'tls0', '-b', 'localhost', '-p', String(port)]);
    expect(list.stdout).toContain("exports available: 1\n export: ''\n  size:  4194304\n  flags: 0xded");
    // verify-peer: a client without a certificate does not get in.
    const bare = join(dir, 'ca-only');
    mkdirSync(bare);
    copyFileSync(join(dir, 'ca-cert.pem'), join(bare, 'ca-cert.pem'));
    expect((await runTool('nbdinfo', [`nbds://localhost:${port}/?tls-certificates=${bare}`])).status).not.toBe(0);
  });

  it('a plain client is refused: ERR_TLS_REQD before STARTTLS, ABORT acknowledged, EXPORT_NAME closed', async () => {
    const { s, port } = await serve({ options: x509 });
    expect((await runTool('nbdinfo', [`nbd://127.0.0.1:${port}/`])).status).not.toBe(0);
    const c = await WireClient.connect({ host: '127.0.0.1', port });
    cleanups.push(() => Promise.resolve(c.close()));
    await c.start();
    c.option(p.NBD_OPT_LIST);
    const r = await c.optionReply();
    expect([r.type, r.data.toString()]).toEqual([p.NBD_REP_ERR_TLS_REQD, 'Option 0x3 not permitted before TLS']);
    c.option(p.NBD_OPT_ABORT);
    expect((await c.optionReply()).type).toBe(p.NBD_REP_ACK);
    const d = await WireClient.connect({ host: '127.0.0.1', port });
    cleanups.push(() => Promise.resolve(d.close()));
    await d.start();
    d.option(p.NBD_OPT_EXPORT_NAME);
    expect(await d.closedByServer()).toBe(true);
    expect(s.errors).toContain('option negotiation failed: Option 0x1 not permitted before TLS');
  });

  it('authz compares the client subject in certificate order', async () => {
    const allow = await serve({ options: x509, authorize: ({ dn }) => dn === 'O=Example,CN=client1' }, true);
    const yes = await runTool('nbdinfo', ['--size', `nbds://localhost:${allow.port}/?tls-certificates=${dir}`]);
    expect(yes.stdout.trim()).toBe('4194304');
    const deny = await serve({ options: x509, authorize: ({ dn }) => dn === 'CN=client1,O=Example' }, true);
    const no = await runTool('nbdinfo', ['--size', `nbds://localhost:${deny.port}/?tls-certificates=${dir}`]);
    expect(no.status).not.toBe(0);
    expect(deny.s.errors).toContain('option negotiation failed: TLS x509 authz check for O=Example,CN=client1 is denied');
  });

  it('PSK: nbdinfo with a keys file, a wrong identity refused', async () => {
    const key = Buffer.from(PSK, 'hex');
    const psk: NbdTlsOptions = {
      options: { pskCallback: (_s, identity) => (identity === 'alice' ? key : null), ciphers: 'PSK', minVersion: 'TLSv1.2' },
    };
    const { port } = await serve(psk, true);
    const ok = await runTool('nbdinfo', ['--size', `nbds://alice@localhost:${port}/?tls-psk-file=${join(dir, 'keys.psk')}`]);
    expect(ok.stderr).toBe('');
    expect(ok.stdout.trim()).toBe('4194304');
    writeFileSync(join(dir, 'bob.psk'), `bob:${PSK}\n`);
    const bad = await runTool('nbdinfo', ['--size', `nbds://bob@localhost:${port}/?tls-psk-file=${join(dir, 'bob.psk')}`]);
    expect(bad.status).not.toBe(0);
  });
});
