/**
 * Opening from options (QEMU's bdrv_open_inherit with bdrv_fill_options): a QDict such as
 * `driver=qed,file.driver=qed,file.file.filename=x` or a `json:{...}` filename becomes a stack of
 * nodes, each taking its own keys and handing `file.*` / `backing.*` to its children.
 *
 * The steps for one node, in QEMU's order, since the order decides which error a bad QDict
 * gets:
 *   1. fill: merge a `json:` filename; `driver` names the driver (else the filename's protocol
 *      prefix, for a protocol node); a filename given for a protocol node becomes its
 *      `filename` option, through the driver's parseFilename (`file:a:b` -> `./a:b`);
 *   2. `backing=null` (or the deprecated `""`): no backing file;
 *   3. the generic options (read-only, cache.*, force-share...), checked;
 *   4. a format node opens its `file` child first (from `file.*` or the filename), then probes
 *      if no driver was named, then opens itself, then its backing file unless told not to;
 *   5. a key nobody took is an error naming it (QEMU's hash order picks which one).
 */
import type { BlockDriver, OpenOptions } from './driver.js';
import { BlockError, toBlockError } from './errors.js';
import { BlockDriverState } from './node.js';
import { openBacking, probeFormat } from './open.js';
import {
  JSON_PREFIX,
  checkNoLeftovers,
  parseJsonFilename,
  referenceError,
  takeCommonOptions,
  takeDriverOptions,
} from './options.js';
import { combineBackingPath } from './path.js';
import { qdictCrumple, qdictExtract, qdictFlatten, qdictGetStr, qdictOrder, type FlatQDict, type QDictInput } from './qdict.js';
import { formatQemuJson } from './qjson.js';
import { getDefaultRegistry } from './registry.js';

function isProtocolDriver(drv: BlockDriver): boolean {
  return drv.isProtocol === true || drv.isFilter === true;
}

/** Where a node's options came from, for the display name of what it opens. */
interface Opened {
  bs: BlockDriverState;
  /** The node's options as QEMU would print them in a json: filename (driver included). */
  display: FlatQDict;
  /** The node's name is a plain filename, not a json: one. */
  plain: boolean;
}

/**
 * The name QEMU shows for a format node (bdrv_refresh_filename): its file's name when the
 * stack is a format over a plain protocol node with nothing else said, else a json: filename
 * of every option, keys in QEMU's order.
 */
function refreshFilename(drv: BlockDriver, file: Opened, own: FlatQDict): { name: string; plain: boolean; display: FlatQDict } {
  const display: FlatQDict = new Map([['driver', drv.formatName]]);
  for (const [k, v] of own) display.set(k, v);
  for (const [k, v] of file.display) display.set(`file.${k}`, v);
  if (own.size === 0 && file.plain && isProtocolDriver(file.bs.driver)) return { name: file.bs.filename, plain: true, display };
  return { name: JSON_PREFIX + formatQemuJson(qdictCrumple(display), qdictOrder), plain: false, display };
}

/** The flags a child inherits from its parent (bdrv_inherited_options, in short). */
function childBase(base: OpenOptions): OpenOptions {
  return {
    readOnly: base.readOnly,
    noFlush: base.noFlush,
    forceShare: base.forceShare,
    inactive: base.inactive,
    clock: base.clock,
    registry: base.registry,
    objects: base.objects,
    depth: base.depth,
    onWarning: base.onWarning,
    onReport: base.onReport,
    child: true,
  };
}

async function closeQuietly(bs: BlockDriverState): Promise<void> {
  await bs.close().catch(() => undefined);
}

/**
 * Open one node and its children from `options` (consumed as they are taken), `filename`
 * being the name the parent or the user gave, or null. `protocol`: the parent wants a
 * protocol node here (a format's `file`), unless `driver` names a format.
 */
async function openInherit(filename: string | null, options: FlatQDict, base: OpenOptions, protocol: boolean): Promise<Opened> {
  const registry = base.registry ?? getDefaultRegistry();
  let name = filename;
  // 1. bdrv_fill_options.
  if (name !== null && name.startsWith(JSON_PREFIX)) {
    // Options given beside the json: filename win over it.
    for (const [k, v] of parseJsonFilename(name)) if (!options.has(k)) options.set(k, v);
    name = null;
  }
  const drvName = qdictGetStr(options, 'driver');
  let drv: BlockDriver | undefined;
  let isProto = protocol;
  if (drvName !== undefined) {
    drv = registry.require(drvName);
    isProto = isProtocolDriver(drv);
  }
  let parseName = false;
  if (isProto && name !== null) {
    if (options.has('filename')) {
      throw new BlockError('EINVAL', "Can't specify 'file' and 'filename' options at the same time", { op: 'open' });
    }
    options.set('filename', name);
    parseName = true;
  }
  const optFilename = qdictGetStr(options, 'filename');
  if (drv === undefined && isProto) {
    if (optFilename === undefined) throw new BlockError('EINVAL', 'Must specify either driver or file', { op: 'open' });
    drv = registry.findProtocol(optFilename);
  }
  if (drv !== undefined && parseName && optFilename !== undefined && drv.parseFilename) {
    drv.parseFilename(optFilename, options);
    // The name said all it had to say in the driver's own options.
    if (drv.needsFilename === false) options.delete('filename');
  }

  // 2. backing=null: no backing file.
  let noBacking = base.noBacking === true;
  const backing = options.get('backing');
  if (backing === null || backing === '') {
    if (backing === '') base.onWarning?.('Use of "backing": "" is deprecated; use "backing": null instead');
    noBacking = true;
    options.delete('backing');
  }

  // 3. The generic options.
  const common = takeCommonOptions(options);
  const nodeBase: OpenOptions = {
    ...base,
    registry,
    readOnly: common.readOnly ?? base.readOnly,
    noFlush: common.noFlush ?? base.noFlush,
    forceShare: common.forceShare ?? base.forceShare,
  };
  if (nodeBase.forceShare === true && nodeBase.readOnly !== true) {
    throw new BlockError('EINVAL', 'force-share=on can only be used with read-only images', { op: 'open' });
  }
  if (isProto) return openProtocol(drv as BlockDriver, options, nodeBase);
  return openFormat(drv, name, options, nodeBase, noBacking);
}

async function openProtocol(drv: BlockDriver, options: FlatQDict, base: OpenOptions): Promise<Opened> {
  const filename = qdictGetStr(options, 'filename');
  options.delete('filename');
  options.delete('driver');
  // A driver that needs no filename ignores one given as an option (QEMU's nbd and curl do).
  const nameless = drv.needsFilename === false || filename === undefined || filename === '';
  if (nameless && drv.needsFilename !== false) {
    throw new BlockError('EINVAL', `The '${drv.formatName}' block driver requires a file name`, { op: 'open' });
  }
  const own = takeDriverOptions(options, drv);
  const driverOptions = { ...base.driverOptions, ...own };
  const nodeOptions: OpenOptions = { ...base, noBacking: undefined, format: drv.formatName, driverOptions };
  if (!nameless) {
    const bs = await BlockDriverState.open(filename, nodeOptions);
    await checkOwnLeftovers(bs, options, drv);
    return { bs, display: new Map([['driver', drv.formatName], ['filename', filename]]), plain: true };
  }
  // Everything is in the options (nbd's server.*). The node is shown as the driver names it
  // (bdrv_refresh_filename's exact_filename), else by its strong options, flat, driver last.
  const display: FlatQDict = new Map();
  const weak = new Set((drv.runtimeOptions ?? []).filter((o) => o.weak === true).map((o) => o.name));
  // `own` holds the keys in QEMU's hash order already, the order they are copied in.
  for (const [k, v] of Object.entries(own)) if (!weak.has(k)) display.set(k, v);
  display.set('driver', drv.formatName);
  const bs = new BlockDriverState(drv, '', nodeOptions);
  await bs.driverOpen();
  bs.filename = bs.exactFilename ?? JSON_PREFIX + formatQemuJson(Object.fromEntries(display), qdictOrder);
  await checkOwnLeftovers(bs, options, drv);
  return { bs, display, plain: bs.exactFilename !== null };
}

/** The leftover check of an open protocol node: it is closed again if a key was not taken. */
async function checkOwnLeftovers(bs: BlockDriverState, options: FlatQDict, drv: BlockDriver): Promise<void> {
  try {
    checkNoLeftovers(options, drv);
  } catch (e) {
    await closeQuietly(bs);
    throw e;
  }
}

async function openFormat(
  given: BlockDriver | undefined,
  filename: string | null,
  options: FlatQDict,
  base: OpenOptions,
  noBacking: boolean,
): Promise<Opened> {
  // 4. The file child: from file.* options, or the filename; a reference names no node here.
  const fileOpts = qdictExtract(options, 'file.');
  const fileRef = options.get('file');
  if (typeof fileRef === 'string') throw referenceError(fileRef);
  options.delete('file');
  if (fileOpts.size === 0 && filename === null) {
    // Neither a file nor a driver to say what one would be.
    if (given === undefined) throw new BlockError('EINVAL', 'Must specify either driver or file', { op: 'open' });
    throw new BlockError('EINVAL', 'A block device must be specified for "file"', { op: 'open' });
  }
  const file = await openInherit(filename, fileOpts, childBase(base), true);
  let bs: BlockDriverState | null = null;
  try {
    // A writable format writes through its file: a child the options made read-only refuses.
    if (base.readOnly !== true && file.bs.readOnly) throw new BlockError('EPERM', 'Block node is read-only', { op: 'open' });
    const drv = given ?? (await probeFormat(file.bs, file.bs.filename));
    options.delete('driver');
    const childOptions = takeChildOptions(options, drv);
    const driverOptions = { ...base.driverOptions, ...takeDriverOptions(options, drv) };
    const own: FlatQDict = new Map(Object.entries(driverOptions).filter(([k]) => !(k in (base.driverOptions ?? {}))));
    const shown = refreshFilename(drv, file, own);
    // `format` tells the driver it was named, not probed (raw guards a probed image's head).
    bs = new BlockDriverState(drv, shown.name, { ...base, format: given?.formatName, noBacking, driverOptions, childOptions });
    bs.file = file.bs;
    await bs.driverOpen();
    if (bs.backingFile !== '') bs.fullBackingFilename = combineBackingPath(file.bs.filename, bs.backingFile);
    if (!noBacking) await openBackingFromOptions(bs, options, base);
    checkNoLeftovers(options, drv);
    return { bs, display: shown.display, plain: shown.plain };
  } catch (e) {
    // Nothing half-open survives a failed open.
    if (bs?.isOpen === true) await closeQuietly(bs);
    else await closeQuietly(file.bs);
    throw e;
  }
}

/** The `NAME.*` options of the children a format opens itself (drv.childNames). */
function takeChildOptions(options: FlatQDict, drv: BlockDriver): Record<string, FlatQDict> | undefined {
  if (!drv.childNames) return undefined;
  const out: Record<string, FlatQDict> = {};
  for (const name of drv.childNames) {
    const ref = options.get(name);
    if (typeof ref === 'string') throw referenceError(ref);
    options.delete(name);
    const opts = qdictExtract(options, `${name}.`);
    if (opts.size > 0) out[name] = opts;
  }
  return out;
}

/**
 * Open a child a format driver asks for (QEMU's bdrv_open_child, for qcow2's data file): from
 * the `NAME.*` options the parent was opened with when there are any, else from `filename`
 * (the name the image records; null: none). The child is a protocol node unless its options
 * name a format, and takes the parent's read-only and cache flags. Returns null when neither
 * options nor a filename say what to open.
 */
export async function bdrvOpenChild(parent: BlockDriverState, name: string, filename: string | null): Promise<BlockDriverState | null> {
  const given = parent.openOptions.childOptions?.[name];
  if (given === undefined && filename === null) return null;
  const opts: FlatQDict = new Map(given ?? []);
  const bs = (await openInherit(given === undefined ? filename : null, opts, childBase({ ...parent.openOptions, readOnly: parent.readOnly }), true)).bs;
  bs.setParent('node');
  return bs;
}

/**
 * bdrv_open_backing_file: `backing.*` options open the backing node their way (its filename
 * defaults to the one the image records); without them the plain chain opener runs, with its
 * cycle and depth checks.
 */
async function openBackingFromOptions(bs: BlockDriverState, options: FlatQDict, base: OpenOptions): Promise<void> {
  const ref = options.get('backing');
  const opts = qdictExtract(options, 'backing.');
  try {
    if (typeof ref === 'string') throw referenceError(ref);
    if (opts.size === 0) {
      if (bs.backingFile !== '') await openBacking(bs);
      return;
    }
    options.delete('backing');
    const name = opts.has('file.filename') || opts.has('filename') || bs.fullBackingFilename === '' ? null : bs.fullBackingFilename;
    const backingBase: OpenOptions = { ...childBase(base), readOnly: true, depth: (base.depth ?? 0) + 1 };
    if (!opts.has('driver') && bs.backingFormat !== '') opts.set('driver', bs.backingFormat);
    bs.backing = (await openInherit(name, opts, backingBase, false)).bs;
  } catch (e) {
    const err = toBlockError(e, { op: 'open' });
    if (err.message.startsWith('Could not open backing file: ')) throw err;
    throw new BlockError(err.code, `Could not open backing file: ${err.message}`, { op: 'open', cause: err });
  }
}

/**
 * Open an image from options (bdrv_open with a QDict): nested objects or dotted keys, a
 * `json:` filename, `backing: null`. `base` carries the caller's flags (read-only, no backing,
 * the registry...), which the options may override per node.
 */
export async function bdrvOpenOptions(
  options: QDictInput | FlatQDict,
  base: OpenOptions = {},
  filename: string | null = null,
): Promise<BlockDriverState> {
  const flat = qdictFlatten(options);
  return (await openInherit(filename, flat, base, false)).bs;
}
