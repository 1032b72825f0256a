// img_open: the image of a subcommand, opened as qemu-img does (blk_new_open: a BlockBackend over
// the image's graph) with its messages.
import { BlockBackend, isBlockError, type OpenOptions } from '../../index.js';
import { openImageOpts } from '../shared/image-opts.js';
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
  /** No guest I/O will be done (BDRV_O_NO_IO: info): what only guest I/O needs is not opened. */
  noIO?: boolean;
  /** --image-opts: `filename` is an option string (img_open_opts). */
  imageOpts?: boolean;
}

/** Open or print "Could not open 'NAME': reason" and exit 1 (or `failStatus`). */
export async function imgOpen(env: ImgEnv, filename: string, opts: ImgOpenOptions, failStatus = 1): Promise<BlockBackend> {
  const { imageOpts, ...flags } = opts;
  // Deprecation warnings met while opening print as qemu-img's warn_report.
  const options: OpenOptions = {
    ...flags,
    registry: env.registry,
    objects: env.objects,
    readOnly: opts.readOnly ?? false,
    onWarning: (m) => env.o.warn(m),
    onErrorPrintf: (m) => env.o.errRaw(m),
    onReport: (line) => env.o.errRaw(`${line}\n`),
  };
  let blk: BlockBackend;
  if (imageOpts === true) {
    blk = await openImageOpts(env.o, filename, {
      base: { ...options, format: undefined, forceShare: undefined },
      format: opts.format,
      forceShare: opts.forceShare === true,
      failStatus,
      message: openErrorMessage,
    });
    printOpenWarning(env.o, rootOf(blk));
    return blk;
  }
  try {
    if (filename === '') throw new Error("The 'file' block driver requires a file name");
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
