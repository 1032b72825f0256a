// Waiting for a server that a build step, a benchmark or a test started on a unix socket.
import type { ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createConnection } from 'node:net';

/** How long a server may take to listen. */
const LISTEN_TIMEOUT_MS = 10_000;

function connects(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const c = createConnection(path);
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
}

/**
 * Wait until the server `child` accepts a connection on `path`: its socket file exists from
 * bind(), before listen(). The probe is a connection closed before the handshake, which
 * neither qemu-nbd nor blk-nbd counts as a client (-t or not). Throws if the server exits or
 * does not listen in time.
 */
export async function waitForListen(path: string, child: ChildProcess): Promise<void> {
  const deadline = Date.now() + LISTEN_TIMEOUT_MS;
  while (!(existsSync(path) && (await connects(path)))) {
    if (child.exitCode !== null || Date.now() > deadline) throw new Error(`server did not listen on ${path}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}
