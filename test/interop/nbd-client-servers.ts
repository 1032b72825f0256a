// NBD servers for the interop tests: the real qemu-nbd and nbdkit (never mocked), started on a
// Unix socket in a temp dir, killed by pid when the test is done and in any case after a time
// limit. Missing programs skip locally and fail under CI=true, as qemu.ts does for qemu-img.
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { main as imgMain } from '../../src/tools/img/main.js';
import { findOnPath } from './qemu.js';

/** Absolute paths of `names`, or null (skip) when one is missing; under CI a missing one throws. */
export function requireTools(...names: string[]): Record<string, string> | null {
  const found: Record<string, string> = {};
  const missing: string[] = [];
  for (const n of names) {
    const p = findOnPath(n);
    if (p === null) missing.push(n);
    else found[n] = p;
  }
  if (missing.length === 0) return found;
  if (process.env.CI === 'true') {
    throw new Error(`NBD interop tests need ${missing.join(', ')} (install qemu-utils libnbd-bin nbdkit)`);
  }
  return null;
}

export interface RunningServer {
  pid: number;
  socket: string;
  /** stderr so far. */
  stderr(): string;
  /** SIGTERM by pid; resolves when the process is gone. */
  stop(): Promise<void>;
  /** SIGKILL by pid (a server that vanishes); resolves when the process is gone. */
  kill(): Promise<void>;
  exited: Promise<number | null>;
}

function canConnect(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ path });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

/**
 * Spawn `cmd args` and wait until `socket` accepts connections. The process is killed after
 * `limitMs` whatever happens. Probing connects to a qemu-nbd: pass `probe: false` for servers
 * where a probing client would count as the one client (then only the socket file is awaited).
 */
export async function startServer(
  cmd: string,
  args: string[],
  socket: string,
  opts: { limitMs?: number; probe?: boolean; env?: Record<string, string>; ready?: () => Promise<void> } = {},
): Promise<RunningServer> {
  const child: ChildProcess = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, ...opts.env } });
  let err = '';
  child.stderr?.on('data', (b: Buffer) => (err += b.toString()));
  const pid = child.pid;
  if (pid === undefined) throw new Error(`could not start ${cmd}`);
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const limit = setTimeout(() => process.kill(pid, 'SIGKILL'), opts.limitMs ?? 60_000);
  limit.unref();
  let gone = false;
  void exited.then(() => {
    gone = true;
    clearTimeout(limit);
  });
  const stop = async (): Promise<void> => {
    if (!gone) process.kill(pid, 'SIGTERM');
    await exited;
  };
  const kill = async (): Promise<void> => {
    if (!gone) process.kill(pid, 'SIGKILL');
    await exited;
  };
  if (opts.ready !== undefined) {
    try {
      await opts.ready();
    } catch (e) {
      await stop();
      throw e;
    }
    return { pid, socket, stderr: () => err, stop, kill, exited };
  }
  // Generous: under tsx a server transpiles its sources first, which on a loaded CI machine
  // has taken over ten seconds; the process is still bounded by limitMs.
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (gone) throw new Error(`${cmd} exited early: ${err}`);
    if (existsSync(socket) && (opts.probe === false || (await canConnect(socket)))) break;
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`${cmd} did not listen on ${socket}: ${err}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  return { pid, socket, stderr: () => err, stop, kill, exited };
}

export interface ToolRun {
  stdout: string;
  stderr: string;
  status: number;
}

/** blk-img's main() in process, under the name qemu-img (messages then compare as they are). */
export async function runBlkImg(args: string[]): Promise<ToolRun> {
  let stdout = '';
  let stderr = '';
  const status = await imgMain(['node', '/usr/bin/qemu-img', ...args], {
    stdout: { write: (s: string) => (stdout += s) },
    stderr: { write: (s: string) => (stderr += s) },
  });
  return { stdout, stderr, status };
}

/** nbd+unix URI of the default export (or `name`) on `socket`. */
export function unixUri(socket: string, name = ''): string {
  return `nbd+unix:///${name}?socket=${socket}`;
}

/** A TCP port on 127.0.0.1 that was free a moment ago (the kernel's pick). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const a = srv.address();
      const port = typeof a === 'object' && a !== null ? a.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

/** Wait until 127.0.0.1:`port` accepts connections (a TCP server just started). */
export async function waitForPort(port: number, limitMs = 10_000): Promise<void> {
  const deadline = Date.now() + limitMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = connect({ host: '127.0.0.1', port });
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`nothing listens on 127.0.0.1:${port}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
