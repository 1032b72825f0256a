// blk-nbd: the qemu-nbd 7.2 look-alike. main() parses the command line (options.ts), then
// lists another server's exports (-L, list.ts) or serves an image (serve.ts), in the
// foreground or as a daemon (--fork, daemon.ts). Returns the exit status.
// The package entry also registers every driver (the image may be any format, or nbd://).
import { findTlsCreds } from '../../index.js';
import { errorMessage, progName, runTool, ToolExit, ToolOutput, type ToolIO } from '../shared/output.js';
import { forkDaemon, READY_FD_ENV, signalReady } from './daemon.js';
import { listExports } from './list.js';
import { parseNbdOptions } from './options.js';
import { serve } from './serve.js';

function processIO(): ToolIO {
  return {
    stdout: { write: (s: string) => process.stdout.write(s) },
    stderr: { write: (s: string) => process.stderr.write(s) },
    stdoutIsTTY: process.stdout.isTTY,
  };
}

/**
 * blk-nbd's entry point. argv is process.argv-shaped (argv[1]'s basename is the program name
 * in messages).
 */
export async function main(argv: string[], io: ToolIO = processIO(), env: NodeJS.ProcessEnv = process.env): Promise<number> {
  const daemonChild = env[READY_FD_ENV] !== undefined;
  // A daemon prints nothing once it listens (its parent stopped reading).
  let quiet = false;
  const o = new ToolOutput(
    { ...io, stderr: { write: (s: string) => (quiet ? true : io.stderr.write(s)) } },
    progName(argv, 'blk-nbd'),
  );
  const fail = (msg: string): never => {
    o.error(msg);
    throw new ToolExit(1);
  };
  return runTool(o, async () => {
    const opts = parseNbdOptions(o, [o.prog, ...argv.slice(2)], env, process.pid);
    if (opts.tlsCreds !== undefined) {
      try {
        findTlsCreds(opts.objects, opts.tlsCreds, opts.list ? 'client' : 'server');
      } catch (e) {
        fail(`Failed to get TLS creds: ${errorMessage(e)}`);
      }
    }
    if (opts.list) return await listExports(o, opts);
    if (opts.disconnect || opts.device !== undefined) fail('Kernel /dev/nbdN support not available');
    if (opts.fork && !daemonChild) return await forkDaemon(o, env);
    return await serve(o, opts, () => {
      if (!daemonChild) return;
      signalReady(env);
      quiet = true;
    });
  });
}
