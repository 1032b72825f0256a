// NBD servers for the benchmarks: the same image exported read-only by qemu-nbd or by blk-nbd
// on a unix socket in a temporary directory, up for one client run and stopped by its pid.
// Shared by `npm run bench` (workloads 13.x) and `npm run bench:nbd` (bench/nbd.ts).
import { spawn } from 'node:child_process';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { waitForListen } from '../scripts/listen.js';
import { REPO, run } from './lib.js';

export const BLK_NBD = join(REPO, 'bin', 'blk-nbd.js');

export type NbdServerName = 'qemu-nbd' | 'blk-nbd';

/** The command line serving `img` (raw) read-only and persistently (-t) on `sock`. */
export function nbdServerCommand(server: NbdServerName, img: string, sock: string): string[] {
  const args = ['-r', '-t', '-f', 'raw', '-k', sock, img];
  return server === 'qemu-nbd' ? ['qemu-nbd', ...args] : [process.execPath, BLK_NBD, ...args];
}

export function nbdUri(sock: string): string {
  return `nbd+unix:///?socket=${sock}`;
}

/**
 * A raw image of `sizeMiB` MiB, three quarters data in 1 MiB runs of distinct bytes, one
 * quarter holes: both kinds of chunk go over the wire.
 */
export function makeNbdSource(path: string, sizeMiB: number): void {
  run(['qemu-img', 'create', '-q', '-f', 'raw', path, `${sizeMiB}M`]);
  const cmds: string[] = [];
  for (let m = 0; m < sizeMiB; m++) if (m % 4 !== 3) cmds.push('-c', `write -P ${(m % 250) + 1} ${m}M 1M`);
  run(['qemu-io', '-f', 'raw', ...cmds, path]);
}

/**
 * Run `fn` while the server `cmd` listens on `sock`; the server is then stopped by its pid
 * (SIGTERM, SIGKILL if it is still there after 5 s) and waited for.
 */
export async function withNbdServer<T>(cmd: string[], sock: string, fn: () => T): Promise<T> {
  rmSync(sock, { force: true });
  const child = spawn(cmd[0], cmd.slice(1), { stdio: 'ignore' });
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  try {
    await waitForListen(sock, child);
    return fn();
  } finally {
    if (child.pid !== undefined && child.exitCode === null && child.signalCode === null) {
      process.kill(child.pid, 'SIGTERM');
      const t = setTimeout(() => {
        if (child.pid !== undefined && child.exitCode === null && child.signalCode === null) process.kill(child.pid, 'SIGKILL');
      }, 5000);
      await exited;
      clearTimeout(t);
    }
    rmSync(sock, { force: true });
  }
}
