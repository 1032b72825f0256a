// Shared helpers for the NBD server interop tests: real NBD clients (qemu-img, qemu-io,
// nbdinfo, nbdcopy, nbdsh) run *asynchronously* against an NbdServer living in the test
// process (a spawnSync would block the event loop the server needs), each bounded in time
// and killed by pid; qemu-nbd serves the same images for parity checks.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { BlockBackend } from '../../src/index.js';
import { NbdServer, type NbdExportOptions, type NbdServerOptions } from '../../src/nbd/index.js';

export interface ToolResult {
  stdout: string;
  stderr: string;
  status: number | null;
}

const TOOLS = ['qemu-img', 'qemu-io', 'qemu-nbd', 'nbdinfo', 'nbdcopy', 'nbdsh'] as const;
type Tool = (typeof TOOLS)[number];

function toolPath(name: string): string | null {
  for (const dir of ['/usr/bin', '/usr/local/bin', '/bin']) {
    const candidate = join(dir, name);
    if (existsSync(candidate)) return candidate;
  }
  return null;
}

/**
 * True when every NBD tool is installed. Missing ones skip locally; under CI=true they fail
 * the run, so the interop coverage cannot vanish silently.
 */
export function haveNbdTools(): boolean {
  const missing: string[] = TOOLS.filter((t) => toolPath(t) === null);
  // nbdsh runs the system Python's libnbd bindings.
  if (spawnSync('/usr/bin/python3', ['-c', 'import nbd'], { timeout: 10_000 }).status !== 0) missing.push('python3-libnbd');
  if (missing.length === 0) return true;
  if (process.env.CI === 'true') {
    throw new Error(`NBD interop tests need ${missing.join(', ')} (apt-get install qemu-utils libnbd-bin python3-libnbd nbdkit)`);
  }
  return false;
}

const children = new Set<ChildProcess>();

/** Run a tool without blocking the event loop; killed by pid after `timeoutMs`. */
export function runTool(tool: Tool, args: string[], opts: { timeoutMs?: number; input?: string } = {}): Promise<ToolResult> {
  const path = toolPath(tool);
  if (path === null) throw new Error(`${tool} is not installed`);
  // nbdsh runs `python3 -m nbd`: the system Python has the libnbd bindings.
  const env = { ...process.env, PATH: `/usr/bin:${process.env.PATH ?? ''}`, LIBNBD_DEBUG: '0' };
  return new Promise((resolve) => {
    const child = spawn(path, args, { env, stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] });
    children.add(child);
    let stdout = '';
    let stderr = '';
    child.stdout?.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr?.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = setTimeout(() => {
      stderr += `\n[killed after ${opts.timeoutMs ?? 30_000} ms]`;
      if (child.pid !== undefined) process.kill(child.pid, 'SIGKILL');
    }, opts.timeoutMs ?? 30_000);
    child.on('error', (e) => {
      stderr += e.message;
    });
    child.on('close', (status) => {
      clearTimeout(timer);
      children.delete(child);
      resolve({ stdout, stderr, status });
    });
    if (child.stdin !== null) {
      child.stdin.on('error', () => undefined);
      child.stdin.end(opts.input);
    }
  });
}

/** Kill every tool still running (afterAll). */
export function killTools(): void {
  for (const c of children) if (c.pid !== undefined && c.exitCode === null) process.kill(c.pid, 'SIGKILL');
  children.clear();
}

export interface Served {
  server: NbdServer;
  bs: BlockBackend;
  /** nbd://127.0.0.1:PORT/NAME */
  tcp: string;
  /** nbd+unix:///NAME?socket=PATH */
  unix: string;
  errors: string[];
  close(): Promise<void>;
}

/**
 * Open `file` with our block layer and export it as `name` on 127.0.0.1 (ephemeral port) and
 * on a Unix socket in `dir`.
 */
export async function serveImage(
  file: string,
  dir: string,
  exportOpts: Partial<NbdExportOptions> & { format?: string } = {},
  serverOpts: Partial<NbdServerOptions> = {},
): Promise<Served> {
  const { format, ...rest } = exportOpts;
  const bs = await BlockBackend.open(file, { format, readOnly: rest.readOnly ?? false });
  const name = rest.name ?? '';
  const server = new NbdServer({ exports: [{ ...rest, name, backend: bs }], ...serverOpts });
  const errors: string[] = [];
  server.on('error', (e) => errors.push(e.message));
  const tcp = await server.listen({ host: '127.0.0.1', port: 0 });
  const sock = join(dir, `ours-${Math.random().toString(36).slice(2, 8)}.sock`);
  await server.listen({ path: sock });
  if (!('port' in tcp)) throw new Error('expected a TCP address');
  let closed = false;
  return {
    server,
    bs,
    errors,
    tcp: `nbd://127.0.0.1:${tcp.port}/${name}`,
    unix: `nbd+unix:///${name}?socket=${sock}`,
    close: async () => {
      if (closed) return;
      closed = true;
      await server.close();
      await bs.close();
    },
  };
}

export interface QemuNbd {
  unix: string;
  stop(): Promise<void>;
}

/** qemu-nbd serving `file` on a Unix socket in `dir` (persistent, so many clients can come). */
export async function startQemuNbd(file: string, dir: string, args: string[]): Promise<QemuNbd> {
  const path = toolPath('qemu-nbd');
  if (path === null) throw new Error('qemu-nbd is not installed');
  const sock = join(dir, `qemu-${Math.random().toString(36).slice(2, 8)}.sock`);
  const child = spawn(path, ['-t', '-k', sock, ...args, file], { stdio: ['ignore', 'ignore', 'pipe'] });
  children.add(child);
  const deadline = Date.now() + 10_000;
  while (!existsSync(sock)) {
    if (Date.now() > deadline || child.exitCode !== null) throw new Error(`qemu-nbd did not start on ${sock}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    unix: `nbd+unix:///?socket=${sock}`,
    stop: async () => {
      if (child.exitCode !== null || child.pid === undefined) return;
      const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
      process.kill(child.pid, 'SIGTERM');
      await exited;
      children.delete(child);
    },
  };
}
