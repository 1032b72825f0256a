// Real HTTP servers for the http driver's tests: nginx from Debian, configured in a temporary
// directory, listening on 127.0.0.1 on free ports, stopped by its pid; and a TCP server that
// accepts and never answers (the timeout case). Missing nginx skips locally, fails under CI.
import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { makeTempDir, removeTempDir } from './qemu.js';

export interface Nginx {
  /** Serves `www` with byte ranges. */
  url: string;
  /** Serves `www` but ignores Range (max_ranges 0): no Accept-Ranges, whole files only. */
  noRangeUrl: string;
  /** https with a certificate from a throwaway CA, or null when openssl is missing. */
  httpsUrl: string | null;
  /** The throwaway CA's certificate (PEM), when https is up. */
  caPem: string | null;
  www: string;
  stop(): Promise<void>;
}

function findNginx(): string | null {
  for (const p of ['/usr/sbin/nginx', '/usr/bin/nginx', '/usr/local/sbin/nginx']) if (existsSync(p)) return p;
  return null;
}

/** nginx's path, or null locally when missing; under CI a missing nginx is an error. */
export function requireNginx(): string | null {
  const nginx = findNginx();
  if (nginx === null && process.env.CI === 'true') throw new Error('the http tests need nginx (apt-get install -y nginx)');
  return nginx;
}

/** A port nobody listens on now (the kernel picks it; a race with other programs is unlikely). */
export async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const addr = srv.address();
  await new Promise<void>((resolve) => srv.close(() => resolve()));
  if (addr === null || typeof addr === 'string') throw new Error('no port');
  return addr.port;
}

function makeCert(dir: string): { cert: string; key: string; ca: string } | null {
  const ssl = (args: string[]): boolean => spawnSync('openssl', args, { cwd: dir, encoding: 'utf8', timeout: 30_000 }).status === 0;
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  writeFileSync(join(dir, 'san.ext'), 'subjectAltName=IP:127.0.0.1\n');
  const ok =
    ssl(['req', '-x509', ...ec, '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=blocklayer test CA']) &&
    ssl(['req', ...ec, '-keyout', 'srv.key', '-out', 'srv.csr', '-subj', '/CN=127.0.0.1']) &&
    ssl(['x509', '-req', '-in', 'srv.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'srv.pem', '-days', '2', '-extfile', 'san.ext']);
  return ok ? { cert: join(dir, 'srv.pem'), key: join(dir, 'srv.key'), ca: readFileSync(join(dir, 'ca.pem'), 'utf8') } : null;
}

async function waitFor(what: string, ms: number, ready: () => boolean): Promise<void> {
  const until = Date.now() + ms;
  while (!ready()) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/**
 * Start nginx in a temporary directory of its own, serving its `www`; stop() ends it by the pid
 * in its pid file and removes the directory.
 */
export async function startNginx(nginx: string): Promise<Nginx> {
  const dir = makeTempDir('blocklayer-nginx');
  const www = join(dir, 'www');
  mkdirSync(www, { recursive: true });
  mkdirSync(join(dir, 'tmp'), { recursive: true });
  // nginx's workers run as an unprivileged user when started as root: they must read www
  // (the directory sits right under the world-searchable temporary directory).
  chmodSync(dir, 0o755);
  chmodSync(www, 0o755);
  const [port, noRangePort, httpsPort] = [await freePort(), await freePort(), await freePort()];
  const tls = spawnSync('openssl', ['version']).status === 0 ? makeCert(dir) : null;
  const pidFile = join(dir, 'nginx.pid');
  const temp = ['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map((t) => `${t}_temp_path ${join(dir, 'tmp')};`).join(' ');
  writeFileSync(
    join(dir, 'nginx.conf'),
    `worker_processes 1;
daemon on;
pid ${pidFile};
error_log ${join(dir, 'error.log')};
events { worker_connections 64; }
http {
  access_log off;
  ${temp}
  default_type application/octet-stream;
  types { text/html html; text/css css; text/javascript js; application/json map; }
  server { listen 127.0.0.1:${port}; root ${www}; }
  server { listen 127.0.0.1:${noRangePort}; root ${www}; max_ranges 0; }
  ${tls === null ? '' : `server { listen 127.0.0.1:${httpsPort} ssl; ssl_certificate ${tls.cert}; ssl_certificate_key ${tls.key}; root ${www}; }`}
}
`,
  );
  const r = spawnSync(nginx, ['-c', join(dir, 'nginx.conf'), '-p', dir, '-e', join(dir, 'error.log')], { encoding: 'utf8', timeout: 30_000 });
  if (r.status !== 0) throw new Error(`nginx did not start: ${r.stderr}`);
  await waitFor('nginx pid file', 10_000, () => existsSync(pidFile) && readFileSync(pidFile, 'utf8').trim() !== '');
  const pid = Number(readFileSync(pidFile, 'utf8').trim());
  return {
    url: `http://127.0.0.1:${port}`,
    noRangeUrl: `http://127.0.0.1:${noRangePort}`,
    httpsUrl: tls === null ? null : `https://127.0.0.1:${httpsPort}`,
    caPem: tls?.ca ?? null,
    www,
    async stop() {
      if (alive(pid)) {
        process.kill(pid, 'SIGTERM');
        await waitFor('nginx to stop', 10_000, () => !alive(pid));
      }
      removeTempDir(dir);
    },
  };
}

/** A TCP server on 127.0.0.1 that accepts connections and never says a word. */
export async function startSilentServer(): Promise<{ url: string; stop(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const srv: Server = createServer((s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => undefined);
  });
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const addr = srv.address();
  if (addr === null || typeof addr === 'string') throw new Error('no port');
  return {
    url: `http://127.0.0.1:${addr.port}`,
    async stop() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => srv.close(() => resolve()));
    },
  };
}
