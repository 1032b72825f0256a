// Shared helper for interop tests: locate and run the real qemu-img / qemu-io
// (the reference implementation). Never mocked. Missing binaries skip locally
// but fail under CI, so a broken CI image cannot silently pass.
import { spawnSync, type SpawnSyncOptions } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';

export interface RunResult {
  stdout: string;
  stderr: string;
  /** Exit status; null when the process was killed by a signal or failed to spawn. */
  status: number | null;
}

export interface RunOptions {
  /** Working directory for the child. */
  cwd?: string;
  /** Extra environment variables (merged over process.env). */
  env?: Record<string, string>;
  /** Data written to the child's stdin. */
  input?: string | Buffer;
  /** Kill the child after this many ms (default 60 s). */
  timeoutMs?: number;
}

export function findOnPath(name: string): string | null {
  const override = process.env[`${name.toUpperCase().replace('-', '_')}_PATH`];
  if (override !== undefined && override !== '' && existsSync(override)) return override;
  const dirs = (process.env.PATH ?? '').split(delimiter).filter((d) => d !== '');
  for (const extra of ['/usr/bin', '/usr/local/bin']) if (!dirs.includes(extra)) dirs.push(extra);
  for (const dir of dirs) {
    const candidate = join(dir, name);
    if (existsSync(candidate)) return candidate;
  }
  return null;
}

/** Absolute path of qemu-img, or null when it is not installed. */
export function qemuImgPath(): string | null {
  return findOnPath('qemu-img');
}

/** Absolute path of qemu-io, or null when it is not installed. */
export function qemuIoPath(): string | null {
  return findOnPath('qemu-io');
}

/**
 * Both reference tools, or null when they are missing (the caller skips).
 * Under CI (process.env.CI === 'true') a missing tool is an error: interop
 * coverage must not disappear silently there.
 */
export function requireQemu(): { qemuImg: string; qemuIo: string } | null {
  const qemuImg = qemuImgPath();
  const qemuIo = qemuIoPath();
  if (qemuImg !== null && qemuIo !== null) return { qemuImg, qemuIo };
  if (process.env.CI === 'true') {
    throw new Error(
      `interop tests need qemu-img and qemu-io (install qemu-utils); missing: ${[
        qemuImg === null ? 'qemu-img' : '',
        qemuIo === null ? 'qemu-io' : '',
      ]
        .filter((s) => s !== '')
        .join(', ')}`,
    );
  }
  return null;
}

function run(tool: string | null, name: string, args: string[], opts: RunOptions = {}): RunResult {
  if (tool === null) throw new Error(`${name} is not installed`);
  const spawnOpts: SpawnSyncOptions = {
    cwd: opts.cwd,
    env: { ...process.env, ...(opts.env ?? {}) },
    input: opts.input,
    timeout: opts.timeoutMs ?? 60_000,
    encoding: 'utf8',
    maxBuffer: 64 * 1024 * 1024,
  };
  const r = spawnSync(tool, args, spawnOpts);
  if (r.error !== undefined) {
    return { stdout: '', stderr: `${name}: ${r.error.message}`, status: null };
  }
  return { stdout: String(r.stdout ?? ''), stderr: String(r.stderr ?? ''), status: r.status };
}

/** Run qemu-img synchronously: runQemuImg(['info', '--output=json', path]). */
export function runQemuImg(args: string[], opts?: RunOptions): RunResult {
  return run(qemuImgPath(), 'qemu-img', args, opts);
}

/** Run qemu-io synchronously: runQemuIo(['-f', 'raw', '-c', 'write -P 0xab 0 512', path]). */
export function runQemuIo(args: string[], opts?: RunOptions): RunResult {
  return run(qemuIoPath(), 'qemu-io', args, opts);
}

/** A fresh, empty directory under os.tmpdir(); the test removes it (see removeTempDir). */
export function makeTempDir(prefix: string): string {
  return mkdtempSync(join(tmpdir(), `${prefix.replace(/[^A-Za-z0-9_.-]/g, '_')}-`));
}

/** Recursively remove a directory made by makeTempDir (no error when already gone). */
export function removeTempDir(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
}
