// img_open: the image of a subcommand, opened as qemu-img does (blk_new_open: a BlockBackend over
// the image's graph) with its messages.
import { BlockBackend, isBlockError, type OpenOptions } from '../../index.js';
import { printOpenWarning, rootOf } from '../shared/open.js';
import { ToolExit, errorMessage } from '../shared/output.js';
import type { ImgEnv } from './env.js';

export interface ImgOpenOptions {
  format?: string;
  readOnly?: boolean;
  noBacking?: boolean;
  check?: boolean;
  forceShare?: boolean;
  /** cache=unsafe: flushes never reach the host file (the format still writes its metadata). */
  noFlush?: boolean;
}

/** Open or print "Could not open 'NAME': reason" and exit 1 (or `failStatus`). */
export async function imgOpen(env: ImgEnv, filename: string, opts: ImgOpenOptions, failStatus = 1): Promise<BlockBackend> {
  let blk: BlockBackend;
  try {
    if (filename === '') throw new Error("The 'file' block driver requires a file name");
    const options: OpenOptions = { ...opts, registry: env.registry, readOnly: opts.readOnly ?? false };
    blk = await BlockBackend.open(filename, options);
  } catch (e) {
    env.o.error(`Could not open '${filename}': ${openErrorMessage(e, filename)}`);
    throw new ToolExit(failStatus);
  }
  printOpenWarning(env.o, rootOf(blk));
  return blk;
}

/** QEMU's wording for open failures our layers word differently. */
function openErrorMessage(e: unknown, filename: string): string {
  // file-posix refuses anything that is not a regular file (or block device) with this text.
  if (isBlockError(e, 'EISDIR')) return `'file' driver requires '${e.path ?? filename}' to be a regular file`;
  return errorMessage(e);
}
