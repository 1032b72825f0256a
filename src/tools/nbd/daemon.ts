// --fork: qemu-nbd forks and the parent waits until the child listens, relaying what the child
// prints on stderr meanwhile, then exits 0 (1 if the child printed anything or died). Node
// cannot fork, so the parent starts the same command again as a detached child with a pipe
// on fd 3; the child writes one byte there once it listens and from then on prints nothing,
// as qemu-nbd's child sends its stderr to /dev/null.
import { spawn } from 'node:child_process';
import { closeSync, writeSync } from 'node:fs';
import type { Readable } from 'node:stream';
import type { ToolOutput } from '../shared/output.js';

/** Set in the child's environment: the fd of the pipe that says "listening". */
export const READY_FD_ENV = 'BLK_NBD_READY_FD';

/** In the child: tell the parent we listen. */
export function signalReady(env: NodeJS.ProcessEnv): void {
  const fd = Number(env[READY_FD_ENV]);
  if (!Number.isInteger(fd)) return;
  try {
    writeSync(fd, 'R');
    closeSync(fd);
  } catch {
    // The parent is gone already: nobody to tell.
  }
}

/** In the parent: start the daemon and wait until it listens or fails. */
export async function forkDaemon(o: ToolOutput, env: NodeJS.ProcessEnv): Promise<number> {
  const child = spawn(process.execPath, [...process.execArgv, ...process.argv.slice(1)], {
    detached: true,
    stdio: ['ignore', 'ignore', 'pipe', 'pipe'],
    env: { ...env, [READY_FD_ENV]: '3' },
  });
  let errors = '';
  const stderr = child.stderr as Readable;
  stderr.on('data', (b: Buffer) => {
    errors += b.toString();
    o.errRaw(b.toString());
  });
  const ready = child.stdio[3] as Readable;
  const outcome = await new Promise<'ready' | 'failed'>((resolve) => {
    ready.once('data', () => resolve('ready'));
    child.once('exit', () => resolve('failed'));
    child.once('error', (e) => {
      o.error(`Failed to fork: ${e.message}`);
      resolve('failed');
    });
  });
  if (outcome === 'failed') {
    // Whatever the child said before it died is relayed before we leave.
    await new Promise<void>((resolve) => (stderr.readableEnded ? resolve() : stderr.once('close', () => resolve())));
    return 1;
  }
  stderr.destroy();
  ready.destroy();
  child.unref();
  return errors === '' ? 0 : 1;
}
