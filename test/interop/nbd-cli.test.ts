// blk-nbd against the real programs: an image it serves read by qemu-img and nbdinfo, its -L
// output equal to qemu-nbd -L's (both ways round), --fork with --pid-file, systemd-style socket
// activation through nbdinfo's [ CMD ] form, -s/-r/-t, and bad command lines answered with
// qemu-nbd's messages and exit status. Servers listen on Unix sockets in temp dirs, are bounded
// in time and stopped by pid.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { main } from '../../src/tools/nbd/nbd.js';
import { freePort, requireTools, runBlkImg, startServer, unixUri, waitForPort, type RunningServer } from './nbd-client-servers.js';
import { makeTempDir, removeTempDir, runQemuImg, runQemuIo } from './qemu.js';
import { makeX509Certs } from './tls-certs.js';

const tools = requireTools('qemu-nbd', 'qemu-img', 'qemu-io', 'nbdinfo', 'openssl');
const LAUNCHER = join(import.meta.dirname, 'nbd-cli-launcher.ts');
const NODE_ARGS = ['--import', 'tsx', LAUNCHER];

/** blk-nbd in process under the name qemu-nbd (for command lines that end before serving). */
async function runOurs(args: string[]): Promise<{ stdout: string; stderr: string; status: number }> {
  let stdout = '';
  let stderr = '';
  const status = await main(
    ['node', 'qemu-nbd', ...args],
    { stdout: { write: (s: string) => (stdout += s) }, stderr: { write: (s: string) => (stderr += s) } },
    {},
  );
  return { stdout, stderr, status };
}

function runTheirs(args: string[], cwd?: string): { stdout: string; stderr: string; status: number | null } {
  const r = spawnSync(tools!['qemu-nbd'], args, { encoding: 'utf8', timeout: 20_000, cwd, argv0: 'qemu-nbd' });
  return { stdout: r.stdout, stderr: r.stderr, status: r.status };
}

/** Our server as a process (program name qemu-nbd), listening on `sock`. */
function startOurs(args: string[], sock: string): Promise<RunningServer> {
  return startServer(process.execPath, [...NODE_ARGS, ...args], sock);
}

describe.skipIf(tools === null)('blk-nbd', () => {
  let dir = '';
  let img = '';

  beforeAll(() => {
    dir = makeTempDir('nbd-cli');
    img = join(dir, 'a.raw');
    expect(runQemuImg(['create', '-q', '-f', 'raw', img, '4M']).status).toBe(0);
    expect(runQemuIo(['-f', 'raw', '-c', 'write -P 0x5a 65536 5', '-c', 'write -P 0x11 2560k 128k', img]).status).toBe(0);
  });
  afterAll(() => removeTempDir(dir));

  it('serves an image that qemu-img maps and copies as it does from qemu-nbd', async () => {
    const ours = join(dir, 'ours.sock');
    const theirs = join(dir, 'theirs.sock');
    const a = await startOurs(['-f', 'raw', '-t', '-x', 'e', '-k', ours, img], ours);
    const b = await startServer(tools!['qemu-nbd'], ['-f', 'raw', '-t', '-x', 'e', '-k', theirs, img], theirs);
    try {
      const mapOurs = runQemuImg(['map', '--output=json', unixUri(ours, 'e')]);
      expect(mapOurs.stderr).toBe('');
      expect(mapOurs.stdout).toBe(runQemuImg(['map', '--output=json', unixUri(theirs, 'e')]).stdout);
      const out = join(dir, 'copy.raw');
      expect(runQemuImg(['convert', '-O', 'raw', unixUri(ours, 'e'), out]).status).toBe(0);
      expect(readFileSync(out).equals(readFileSync(img))).toBe(true);
      const info = (s: string): string =>
        spawnSync(tools!.nbdinfo, ['--json', unixUri(s, 'e')], { encoding: 'utf8' }).stdout.split(s).join('SOCK');
      expect(info(ours)).toBe(info(theirs));
    } finally {
      await a.stop();
      await b.stop();
    }
    // SIGTERM: exit 0 and the socket is gone.
    expect(await a.exited).toBe(0);
    expect(existsSync(ours)).toBe(false);
  });

  it('copies out to blk-img convert, our client against our server, byte for byte', async () => {
    // Read-only (-r): data READs are answered from the file (sendfile) while the client keeps
    // several 1-2 MiB READs in flight under its READ budget; 1 MiB holes between the data
    // runs split convert's chunks, so replies of both sizes and hole chunks interleave.
    const src = join(dir, 'pair.raw');
    expect(runQemuImg(['create', '-q', '-f', 'raw', src, '24M']).status).toBe(0);
    const writes: string[] = [];
    for (let m = 0; m < 24; m++) if (m % 4 !== 3) writes.push('-c', `write -P ${m + 1} ${m}M 1M`);
    expect(runQemuIo(['-f', 'raw', ...writes, src]).status).toBe(0);
    const sock = join(dir, 'pair.sock');
    const srv = await startOurs(['-r', '-t', '-f', 'raw', '-k', sock, src], sock);
    try {
      // Twice on the one server: a second connection starts from a connection-fresh state.
      for (const n of [1, 2]) {
        const out = join(dir, `pair-out${n}.raw`);
        const r = await runBlkImg(['convert', '-O', 'raw', unixUri(sock), out]);
        expect(r).toEqual({ stdout: '', stderr: '', status: 0 });
        expect(readFileSync(out).equals(readFileSync(src))).toBe(true);
      }
    } finally {
      await srv.stop();
    }
  });

  it('listens on TCP (-b/-p) for qemu-img, and says so when the port is taken', async () => {
    const port = await freePort();
    const srv = await startServer(process.execPath, [...NODE_ARGS, '-f', 'raw', '-b', '127.0.0.1', '-p', String(port), img], join(dir, 'no-socket'), {
      ready: () => waitForPort(port),
    });
    try {
      // The port probe above was a client that never negotiated: the server is still there.
      const busy = await runOurs(['-f', 'raw', '-b', '127.0.0.1', '-p', String(port), img]);
      expect(busy).toEqual({ stdout: '', stderr: 'qemu-nbd: Failed to find an available port: Address already in use\n', status: 1 });
      const info = runQemuImg(['info', '--output=json', `nbd://127.0.0.1:${port}`]);
      expect(JSON.parse(info.stdout)).toMatchObject({ 'virtual-size': 4 * 1024 * 1024, format: 'raw' });
      expect(await srv.exited).toBe(0);
    } finally {
      await srv.stop();
    }
  });

  it('lists exports exactly as qemu-nbd -L, ours and theirs either way round', async () => {
    const configs = [['-t'], ['-t', '-r', '-D', 'my desc', '-x', 'exp1'], ['-t', '-A', '-e', '2']];
    for (const cfg of configs) {
      const ours = join(dir, 'l-ours.sock');
      const theirs = join(dir, 'l-theirs.sock');
      const a = await startOurs(['-f', 'raw', '-k', ours, ...cfg, img], ours);
      const b = await startServer(tools!['qemu-nbd'], ['-f', 'raw', '-k', theirs, ...cfg, img], theirs);
      try {
        const reference = runTheirs(['-L', '-k', theirs]);
        expect(reference.status).toBe(0);
        expect(runTheirs(['-L', '-k', ours]).stdout).toBe(reference.stdout);
        expect(await runOurs(['-L', '-k', theirs])).toEqual({ stdout: reference.stdout, stderr: '', status: 0 });
      } finally {
        await a.stop();
        await b.stop();
      }
    }
  });

  it('exits after the last client unless -t, and -s keeps the file as it was', async () => {
    const sock = join(dir, 's.sock');
    const before = readFileSync(img);
    const srv = await startOurs(['-f', 'raw', '-s', '-k', sock, img], sock);
    // Written through the overlay and read back in the same session.
    const io = runQemuIo(['-f', 'raw', '-c', 'write -P 0xee 0 64k', '-c', 'read -P 0xee 0 64k', unixUri(sock)]);
    expect(io.stderr).toBe('');
    expect(io.stdout).toContain('read 65536/65536 bytes at offset 0');
    expect(await srv.exited).toBe(0);
    expect(readFileSync(img).equals(before)).toBe(true);
  });

  it('honours --discard and --detect-zeroes as qemu-nbd: the file ends up with the same holes', async () => {
    const maps: string[] = [];
    for (const who of ['ours', 'theirs']) {
      const file = join(dir, `dz-${who}.raw`);
      expect(runQemuImg(['create', '-q', '-f', 'raw', file, '4M']).status).toBe(0);
      expect(runQemuIo(['-f', 'raw', '-c', 'write -P 0x33 0 4M', file]).status).toBe(0);
      const sock = join(dir, `dz-${who}.sock`);
      const args = ['-f', 'raw', '--discard=unmap', '--detect-zeroes=unmap', '-k', sock, file];
      const srv = who === 'ours' ? await startOurs(args, sock) : await startServer(tools!['qemu-nbd'], args, sock);
      // Zeros written as data, a trim, and data again: the server decides what becomes a hole.
      const io = runQemuIo(['-f', 'raw', '-c', 'write -P 0 1M 1M', '-c', 'discard 3M 512k', '-c', 'write -P 0 0 4k', unixUri(sock)]);
      expect(io.status).toBe(0);
      expect(await srv.exited).toBe(0);
      maps.push(runQemuImg(['map', '--output=json', '-f', 'raw', file]).stdout);
    }
    expect(maps[0]).toBe(maps[1]);
    expect(maps[0]).toContain('"start": 1048576, "length": 1048576, "depth": 0, "present": true, "zero": true, "data": false');
  });

  it('serves -r read-only as qemu-nbd does (qemu-io sees the same answers)', async () => {
    const ours = join(dir, 'r-ours.sock');
    const theirs = join(dir, 'r-theirs.sock');
    const a = await startOurs(['-f', 'raw', '-r', '-t', '-k', ours, img], ours);
    const b = await startServer(tools!['qemu-nbd'], ['-f', 'raw', '-r', '-t', '-k', theirs, img], theirs);
    try {
      const io = (sock: string, args: string[]): { stdout: string; stderr: string; status: number | null } => {
        const r = runQemuIo([...args, unixUri(sock)]);
        // The socket's name and qemu-io's timings differ between the runs.
        const hide = (t: string): string => t.split(sock).join('SOCK').replace(/ ops; .*/g, ' ops; X');
        return { stdout: hide(r.stdout), stderr: hide(r.stderr), status: r.status };
      };
      for (const args of [['-r', '-f', 'raw', '-c', 'read -P 0x5a 65536 5'], ['-f', 'raw', '-c', 'write 0 512']]) {
        expect(io(ours, args)).toEqual(io(theirs, args));
      }
    } finally {
      await a.stop();
      await b.stop();
    }
  });

  it('forks: the parent returns once the child listens, the pid file names the child', async () => {
    const sock = join(dir, 'f.sock');
    const pidFile = join(dir, 'f.pid');
    const r = spawnSync(process.execPath, [...NODE_ARGS, '--fork', `--pid-file=${pidFile}`, '-f', 'raw', '-k', sock, img], {
      encoding: 'utf8',
      timeout: 30_000,
    });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(existsSync(sock)).toBe(true);
    const pid = Number(readFileSync(pidFile, 'utf8').trim());
    expect(readFileSync(pidFile, 'utf8')).toBe(`${pid}\n`);
    expect(pid).not.toBe(r.pid);
    try {
      const size = spawnSync(tools!.nbdinfo, ['--size', unixUri(sock)], { encoding: 'utf8', timeout: 20_000 });
      expect(size.stdout).toBe('4194304\n');
      // The client left: the daemon exits and takes its socket and pid file with it.
      const deadline = Date.now() + 10_000;
      while ((existsSync(sock) || existsSync(pidFile)) && Date.now() < deadline) await new Promise((res) => setTimeout(res, 50));
      expect(existsSync(sock)).toBe(false);
      expect(existsSync(pidFile)).toBe(false);
    } finally {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // Gone already, as it should be.
      }
    }
  });

  it('relays a forked child that fails to start, with exit status 1', () => {
    const r = spawnSync(process.execPath, [...NODE_ARGS, '--fork', '-f', 'raw', '-k', join(dir, 'x.sock'), join(dir, 'none.raw')], {
      encoding: 'utf8',
      timeout: 30_000,
    });
    const theirs = runTheirs(['--fork', '-f', 'raw', '-k', join(dir, 'y.sock'), join(dir, 'none.raw')]);
    expect(r.status).toBe(1);
    expect(r.stderr).toBe(theirs.stderr);
  });

  it('serves a socket handed over by socket activation (nbdinfo [ CMD ])', () => {
    const ours = spawnSync(tools!.nbdinfo, ['--json', '--', '[', process.execPath, ...NODE_ARGS, '-f', 'raw', img, ']'], {
      encoding: 'utf8',
      timeout: 30_000,
    });
    const theirs = spawnSync(tools!.nbdinfo, ['--json', '--', '[', tools!['qemu-nbd'], '-f', 'raw', img, ']'], {
      encoding: 'utf8',
      timeout: 30_000,
    });
    expect(ours.stderr).toBe('');
    expect(ours.status).toBe(0);
    expect(ours.stdout).toBe(theirs.stdout);
    const map = spawnSync(tools!.nbdinfo, ['--map', '--', '[', process.execPath, ...NODE_ARGS, '-f', 'raw', img, ']'], {
      encoding: 'utf8',
      timeout: 30_000,
    });
    expect(map.stdout).toContain('2621440      131072    0  data');
  });

  it('speaks TLS-PSK both ways with qemu-nbd (and refuses a client without TLS as it does)', async () => {
    const pskDir = join(dir, 'psk');
    mkdirSync(pskDir);
    writeFileSync(join(pskDir, 'keys.psk'), `qemu:${'3f'.repeat(32)}\n`);
    const obj = (endpoint: string): string[] => ['--object', `tls-creds-psk,id=tls0,dir=${pskDir},endpoint=${endpoint}`, '--tls-creds=tls0'];
    const ours = join(dir, 't-ours.sock');
    const theirs = join(dir, 't-theirs.sock');
    const a = await startOurs(['-f', 'raw', '-t', '-k', ours, ...obj('server'), img], ours);
    const b = await startServer(tools!['qemu-nbd'], ['-f', 'raw', '-t', '-k', theirs, ...obj('server'), img], theirs);
    try {
      const reference = runTheirs(['-L', '-k', theirs, ...obj('client')]);
      expect(reference.stdout).toContain('exports available: 1');
      expect(runTheirs(['-L', '-k', ours, ...obj('client')]).stdout).toBe(reference.stdout);
      expect(await runOurs(['-L', '-k', theirs, ...obj('client')])).toEqual({ stdout: reference.stdout, stderr: '', status: 0 });
      // Without credentials: the server's refusal, worded as qemu-nbd words it.
      const plain = runTheirs(['-L', '-k', theirs]);
      expect(plain.status).toBe(1);
      expect(await runOurs(['-L', '-k', ours])).toEqual({ stdout: '', stderr: plain.stderr, status: 1 });
    } finally {
      await a.stop();
      await b.stop();
    }
  });

  it('speaks TLS-x509 both ways with qemu-nbd, with authz on the client DN', async () => {
    const certs = join(dir, 'x509');
    mkdirSync(certs);
    makeX509Certs(certs, tools!.openssl);
    const obj = (endpoint: string): string[] => [
      '--object',
      `tls-creds-x509,id=tls0,dir=${certs},endpoint=${endpoint}`,
      '--tls-creds=tls0',
      // A Unix socket names no host: the client checks the certificate against this one.
      ...(endpoint === 'client' ? ['--tls-hostname=localhost'] : []),
    ];
    const authz = (dn: string): string[] => ['--object', `authz-simple,id=a0,identity=${dn.replace(/,/g, ',,')}`, '--tls-authz=a0'];
    const ours = join(dir, 'x-ours.sock');
    const denied = join(dir, 'x-denied.sock');
    const theirs = join(dir, 'x-theirs.sock');
    const a = await startOurs(['-f', 'raw', '-t', '-k', ours, ...obj('server'), ...authz('O=Example,CN=client1'), img], ours);
    const b = await startServer(tools!['qemu-nbd'], ['-f', 'raw', '-t', '-k', theirs, ...obj('server'), img], theirs);
    const c = await startOurs(['-f', 'raw', '-t', '-k', denied, ...obj('server'), ...authz('CN=client1,O=Example'), img], denied);
    try {
      const reference = runTheirs(['-L', '-k', theirs, ...obj('client')]);
      expect(reference.stdout).toContain('exports available: 1');
      expect(runTheirs(['-L', '-k', ours, ...obj('client')]).stdout).toBe(reference.stdout);
      expect(await runOurs(['-L', '-k', theirs, ...obj('client')])).toEqual({ stdout: reference.stdout, stderr: '', status: 0 });
      // The DN in the wrong order is another identity: refused.
      const refused = runTheirs(['-L', '-k', denied, ...obj('client')]);
      expect(refused.status).toBe(1);
      expect(refused.stdout).toBe('');
      // No host name to check the server against: refused by either client in the same words.
      const noHost = obj('client').filter((a) => !a.startsWith('--tls-hostname'));
      const theirsNoHost = runTheirs(['-L', '-k', theirs, ...noHost]);
      expect(theirsNoHost.stderr).toBe('qemu-nbd: No hostname for certificate validation\n');
      expect(await runOurs(['-L', '-k', theirs, ...noHost])).toEqual({ stdout: '', stderr: theirsNoHost.stderr, status: 1 });
    } finally {
      await a.stop();
      await b.stop();
      await c.stop();
    }
  });

  it('answers bad command lines with qemu-nbd messages and exit status', async () => {
    const long = 'a'.repeat(4097);
    const cases: string[][] = [
      [],
      ['a', 'b'],
      ['--bogus'],
      ['-z', 'x'],
      ['-p'],
      ['--port'],
      ['--help=3'],
      ['--d', 'x'],
      ['--tls=a', 'x'],
      ['--read-only=1', 'x'],
      ['-e', '-1', 'x'],
      ['-e', 'abc', 'x'],
      ['-k', 'rel', 'x'],
      ['-o', 'abc', 'x'],
      ['--cache=bad', 'x'],
      ['-n', '--cache=none', 'x'],
      ['--aio=bad', 'x'],
      ['--discard=bad', 'x'],
      ['--detect-zeroes=bad', 'x'],
      ['--detect-zeroes=unmap', 'x'],
      ['-L', 'x'],
      ['-L', '-x', 'a'],
      ['-L', '--fork'],
      ['--tls-authz=a', 'x'],
      ['--tls-hostname=a', 'x'],
      ['--tls-creds=a', 'x'],
      ['--image-opts', '-f', 'raw', 'x'],
      ['-x', long, 'x'],
      ['-L', '-k', join(dir, 'none.sock')],
      ['-L', '-b', '127.0.0.1', '-p', '1'],
      ['-f', 'raw', join(dir, 'none.raw')],
      ['--object', 'bogus,id=a', 'x'],
      ['--object', 'tls-creds-psk,dir=/nonexistent', 'x'],
      ['--object', 'tls-creds-psk,id=t,dir=/nonexistent', 'x'],
      ['--object', 'tls-creds-psk,id=t,dir=/tmp,endpoint=bad', 'x'],
      ['-l', 'snapshot.bogus=1', 'x'],
      ['-l', 'snap', '-f', 'raw', '-k', join(dir, 'l.sock'), img],
    ];
    for (const args of cases) {
      const theirs = runTheirs(args);
      const ours = await runOurs(args);
      expect({ args, stderr: ours.stderr, status: ours.status }).toEqual({ args, stderr: theirs.stderr, status: theirs.status });
    }
  });
});
