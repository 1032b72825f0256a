// blk-img create: qemu-img create's options, checks in bdrv_img_create's order, and the
// "Formatting ..." line printed (and flushed) just before the format driver runs.
import { BlockDriverState, BlockError, bdrvCreate, combineBackingPath, isBlockError, type BlockDriver, type CreateOptions } from '../../index.js';
import { closeQuietly } from '../shared/open.js';
import { ToolExit, errorExit, errorMessage } from '../shared/output.js';
import { cvtnum } from '../shared/size.js';
import { accumulateOptions, createOptionSpecs, hasHelpOption, parseCreateOptions, printOptionHelp } from './create-options.js';
import type { ImgEnv } from './env.js';
import { FORMAT, HELP, OBJECT, QUIET, parseImgOptions, type ImgOption } from './options.js';

/**
 * The driver that creates `fmt` images (bdrv_find_format, then its create check), or
 * qemu-img's message saying why there is none. dd words an unknown format without its name.
 * Like bdrv_find_format, any driver's name counts, protocols and filters included: `-f file`
 * creates a plain file through the file driver, a filter without a create hook (blkdebug) is
 * refused as a format that "does not support image creation".
 */
export function findCreateDriver(env: ImgEnv, fmt: string, unknownMessage = `Unknown file format '${fmt}'`): BlockDriver | string {
  const drv = env.registry.find(fmt);
  if (!drv) return unknownMessage;
  if (!drv.create) return `Format driver '${fmt}' does not support image creation`;
  return drv;
}

/** The protocol driver `filename` would be created with, or null when there is none. */
export function protocolOf(env: ImgEnv, filename: string): BlockDriver | null {
  try {
    return env.registry.findProtocol(filename);
  } catch {
    return null;
  }
}

/** print_block_option_help. */
export function printBlockOptionHelp(env: ImgEnv, filename: string | null, fmt: string): number {
  const drv = findCreateDriver(env, fmt);
  if (typeof drv === 'string') {
    env.o.error(drv);
    return 1;
  }
  let proto: BlockDriver | null = null;
  if (filename !== null) proto = env.registry.findProtocol(filename);
  env.o.out(filename !== null ? 'Supported options:\n' : `Supported ${fmt} options:\n`);
  printOptionHelp(env.o, drv, proto);
  if (filename === null) {
    env.o.out('\nThe protocol level may support further options.\nSpecify the target filename to include those options.\n');
  }
  return 0;
}

/**
 * bdrv_create through the block layer, the options already checked. An empty name fails the
 * way the file protocol fails to create it.
 */
export async function createImageFile(env: ImgEnv, filename: string, format: string, options: CreateOptions): Promise<void> {
  if (filename === '') throw new BlockError('ENOENT', "Could not create '': No such file or directory", { op: 'create' });
  await bdrvCreate(filename, { format, options, unsafe: true, registry: env.registry });
}

/** Turn a protocol-level "path: errno text" into QEMU's "Could not create 'path': errno text". */
export function createErrorMessage(e: unknown): string {
  if (isBlockError(e) && e.path !== undefined && e.message === `${e.path}: ${e.errnoMessage}`) {
    return `Could not create '${e.path}': ${e.errnoMessage}`;
  }
  return errorMessage(e);
}

export interface ImgCreateParams {
  filename: string;
  fmt: string;
  baseFilename: string | null;
  baseFmt: string | null;
  options: string;
  imgSize: number | null;
  unsafe: boolean;
  quiet: boolean;
}

/**
 * bdrv_img_create. Errors are thrown as plain messages (the caller prefixes the filename);
 * the Formatting line is printed unless quiet.
 */
export async function imgCreateImage(env: ImgEnv, p: ImgCreateParams): Promise<void> {
  const drv = findCreateDriver(env, p.fmt);
  if (typeof drv === 'string') throw new Error(drv);
  // bdrv_find_protocol before anything else: `json:{...}` or `x:y` is "Unknown protocol".
  env.registry.findProtocol(p.filename);
  // The protocol's options (file: preallocation, nocow, extent_size_hint) are taken too.
  const specs = createOptionSpecs(drv, protocolOf(env, p.filename));
  const opts = parseCreateOptions(drv, p.options, protocolOf(env, p.filename));
  const names = new Set(specs.map((s) => s.name));
  if (p.baseFilename !== null) {
    if (!names.has('backing_file')) throw new Error(`Backing file not supported for file format '${p.fmt}'`);
    opts.set('backing_file', p.baseFilename);
  }
  if (p.baseFmt !== null) {
    if (!names.has('backing_fmt')) throw new Error(`Backing file format not supported for file format '${p.fmt}'`);
    opts.set('backing_fmt', p.baseFmt);
  }
  if (p.imgSize !== null) {
    if (opts.has('size')) throw new Error('The image size must be specified only once');
    opts.set('size', p.imgSize);
  }
  const backingFile = opts.get('backing_file') as string | undefined;
  const backingFmt = opts.get('backing_fmt') as string | undefined;
  if (backingFile !== undefined) {
    if (backingFile === p.filename) throw new Error('Error: Trying to create an image with the same filename as the backing file');
    if (backingFile === '') throw new Error('Expected backing file name, got empty string');
  }
  if (backingFile !== undefined && !p.unsafe) {
    const full = combineBackingPath(p.filename, backingFile);
    let bs: BlockDriverState;
    try {
      bs = await BlockDriverState.open(full, { format: backingFmt, readOnly: true, forceShare: true, registry: env.registry, objects: env.objects });
    } catch (e) {
      throw new Error(`${errorMessage(e)}\nCould not open backing image.`, { cause: e });
    }
    try {
      if (backingFmt === undefined) {
        // QEMU's hint has no trailing newline.
        throw new Error(`Backing file specified without backing format\nDetected format of ${bs.driver.formatName}.`, {
          cause: 'nonl',
        });
      }
      if (!opts.has('size')) opts.set('size', await bs.getLength());
    } finally {
      await closeQuietly(bs);
    }
  } else if (backingFile !== undefined && backingFmt === undefined) {
    throw new Error('Backing file specified without backing format');
  }
  if (!opts.has('size')) throw new Error('Image creation needs a size parameter');

  if (!p.quiet) {
    const parts: string[] = [];
    for (const spec of specs) {
      const v = opts.get(spec.name) ?? spec.default;
      if (v === undefined) continue;
      // qemu_opts_print doubles the commas of string values (json: backing names have them).
      const text = typeof v === 'boolean' ? (v ? 'on' : 'off') : spec.type === 'string' ? String(v).replaceAll(',', ',,') : String(v);
      parts.push(`${spec.name}=${text}`);
    }
    env.o.out(`Formatting '${p.filename}', fmt=${p.fmt} ${parts.join(' ')}\n`);
    env.o.flush();
  }
  if (backingFmt !== undefined && !env.registry.find(backingFmt)) {
    throw new Error(`Parameter 'backing-fmt' does not accept value '${backingFmt}'`);
  }
  const createOpts: CreateOptions = {};
  for (const [name, v] of opts) {
    const key = specs.find((s) => s.name === name)?.key ?? name;
    createOpts[key] = v;
  }
  for (const w of drv.createWarnings?.(createOpts) ?? []) env.o.warn(w);
  try {
    await createImageFile(env, p.filename, p.fmt, createOpts);
  } catch (e) {
    throw new Error(createErrorMessage(e), { cause: e });
  }
}

/** Print an error thrown by imgCreateImage as error_reportf_err(err, "%s: ", filename). */
export function reportWithPrefix(env: ImgEnv, prefix: string, e: unknown): void {
  const msg = errorMessage(e);
  const noNewline = e instanceof Error && e.cause === 'nonl';
  const nl = msg.indexOf('\n');
  if (nl < 0) {
    env.o.error(`${prefix}${msg}`);
    return;
  }
  env.o.error(`${prefix}${msg.slice(0, nl)}`);
  env.o.errRaw(msg.slice(nl + 1) + (noNewline ? '' : '\n'));
}

interface CreateArgs {
  fmt: string;
  baseFmt: string | null;
  baseFilename: string | null;
  options: string | null;
  quiet: boolean;
  unsafe: boolean;
}

const CREATE_OPTIONS: readonly ImgOption<CreateArgs>[] = [
  { short: 'F', arg: 1, set: (s, arg) => void (s.baseFmt = arg) },
  { short: 'b', arg: 1, set: (s, arg) => void (s.baseFilename = arg) },
  FORMAT,
  HELP,
  { short: 'o', arg: 1, set: (s, arg, env) => void (s.options = accumulateOptions(env.o, s.options, arg)) },
  QUIET,
  { short: 'u', set: (s) => void (s.unsafe = true) },
  OBJECT,
];

export async function imgCreate(env: ImgEnv, argv: string[]): Promise<number> {
  const args: CreateArgs = { fmt: 'raw', baseFmt: null, baseFilename: null, options: null, quiet: false, unsafe: false };
  const rest = parseImgOptions(env, argv, CREATE_OPTIONS, args);
  const { fmt, baseFmt, baseFilename, options, quiet, unsafe } = args;
  const filename = rest.length > 0 ? rest[0] : null;
  if (options !== null && hasHelpOption(options)) return printBlockOptionHelp(env, filename, fmt);
  if (filename === null) errorExit(env.o, 'Expecting image file name');
  let imgSize: number | null = null;
  if (rest.length > 1) imgSize = cvtnum(env.o, 'image size', rest[1]);
  if (rest.length > 2) errorExit(env.o, `Unexpected argument: ${rest[2]}`);
  try {
    await imgCreateImage(env, {
      filename,
      fmt,
      baseFilename,
      baseFmt,
      options: options ?? '',
      imgSize,
      unsafe,
      quiet,
    });
  } catch (e) {
    if (e instanceof ToolExit) throw e;
    reportWithPrefix(env, `${filename}: `, e);
    return 1;
  }
  return 0;
}
