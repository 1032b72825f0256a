// blk-img on Node: imgMain (cli.ts) over the process's streams, with real host files.
// Real files, cwd and clock for the command-line tool (a page keeps the portable host).
import '../shared/host-node.js';
import type { ToolIO } from '../shared/output.js';
import { imgMain } from './cli.js';

export { BLK_IMG_VERSION, helpText, imgMain } from './cli.js';

/** Where the output of main() goes by default: the process's streams. */
function processIO(): ToolIO {
  // A reader that went away (`blk-img map | head -1`) would kill qemu-img with SIGPIPE; Node
  // ignores SIGPIPE and reports EPIPE instead: leave quietly with the status a shell would show.
  for (const stream of [process.stdout, process.stderr]) {
    if (stream.listenerCount('error') === 0) {
      stream.on('error', (e: NodeJS.ErrnoException) => {
        if (e.code === 'EPIPE') process.exit(128 + 13);
        throw e;
      });
    }
  }
  return {
    stdout: { write: (s: string) => process.stdout.write(s) },
    stderr: { write: (s: string) => process.stderr.write(s) },
    stdoutIsTTY: process.stdout.isTTY,
    stdoutBytes: {
      alloc: (size) => Buffer.allocUnsafe(size),
      encode: (s, buf, at) => (buf as Buffer).write(s, at, 'utf8'),
      write: (bytes) => process.stdout.write(bytes),
    },
  };
}

/**
 * blk-img's entry point. argv is process.argv-shaped: argv[0] = node, argv[1] = the script (its
 * basename is the program name in messages), then the arguments. Returns the exit status.
 */
export async function main(argv: string[], io: ToolIO = processIO()): Promise<number> {
  return imgMain(argv, io);
}
