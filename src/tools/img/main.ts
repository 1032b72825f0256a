// blk-img on Node: imgMain (cli.ts) over the process's stdout and stderr, with real host files.
// Real files, cwd and clock for the command-line tool (a page keeps the portable host).
import '../shared/host-node.js';
import { processToolIO } from '../shared/fd-output.js';
import type { ToolIO } from '../shared/output.js';
import { imgMain } from './cli.js';

export { BLK_IMG_VERSION, helpText, imgMain } from './cli.js';
export { exitWhenDone } from '../shared/fd-output.js';

/**
 * blk-img's entry point. argv is process.argv-shaped: argv[0] = node, argv[1] = the script (its
 * basename is the program name in messages), then the arguments. Output goes to `io`, by
 * default the process's descriptors 1 and 2. Returns the exit status.
 */
export async function main(argv: string[], io?: ToolIO): Promise<number> {
  return imgMain(argv, io ?? (await processToolIO()));
}
