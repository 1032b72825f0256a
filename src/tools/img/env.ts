// What every blk-img subcommand runs with: the output, the driver registry, the objects.
import { ObjectTable, defaultRegistry, type BlockDriverRegistry } from '../../index.js';
import type { ToolOutput } from '../shared/output.js';

export interface ImgEnv {
  o: ToolOutput;
  registry: BlockDriverRegistry;
  /** The --object definitions of this run. */
  objects: ObjectTable;
}

export function makeEnv(o: ToolOutput, registry: BlockDriverRegistry = defaultRegistry): ImgEnv {
  return { o, registry, objects: new ObjectTable() };
}

/** Thrown by a subcommand's -h: the dispatcher prints the help text and exits 0. */
export class HelpRequest extends Error {
  override readonly name = 'HelpRequest';
}

/** A subcommand: argv[0] is its name (as qemu-img hands it), returns the exit status. */
export type ImgCommand = (env: ImgEnv, argv: string[]) => Promise<number>;
