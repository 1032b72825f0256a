// blk-img on Node: imgMain (cli.ts) over the process's stdout and stderr, with real host files.
// Real files, cwd and clock for the command-line tool (a page keeps the portable host).
import '../shared/host-node.js';
import { processToolIO } from '../shared/fd-output.js';
import type { ToolIO } from '../shared/output.js';
import { imgMain } from './cli.js';

export { BLK_IMG_VERSION, helpText, imgMain } from './cli.js';

/**
 * blk-img's entry point. argv is process.argv-shaped: argv[0] = node, argv[1] = the script (its
 * basename is the program name in messages), then the arguments. Output goes to `io`, by
 * default the process's descriptors 1 and 2. Returns the exit status.
 */
export async function main(argv: string[], io?: ToolIO): Promise<number> {
  if (io === undefined) await tuneCompiler(argv);
  return imgMain(argv, io ?? (await processToolIO()));
}

/**
 * V8 flags for this process's own run of a subcommand (not for a caller's process, which passes
 * its own io). map of a fragmented image runs its walk and its output tens of thousands of
 * times in a fresh process, and TurboFan spent more on compiling them, callees inlined into
 * each caller, than they ran: with less inlining map's CPU fell by about 30 ms of 170 (both
 * formats; bench/RESULTS.md, "Map's walk in batches").
 */
async function tuneCompiler(argv: string[]): Promise<void> {
  // The subcommand is the first argument that is not an option, as the launcher reads it.
  if (argv.slice(2).find((a) => !a.startsWith('-')) !== 'map') return;
  // Loaded for map alone: node:v8 loads Node's stream modules, which the others do without.
  const { setFlagsFromString } = await import('node:v8');
  setFlagsFromString('--max-inlined-bytecode-size-cumulative=200');
}
