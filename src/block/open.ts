/**
 * Opening an image (QEMU's bdrv_open): the protocol (or filter) node for the filename, the
 * format node over it (given or probed), then its backing chain read-only.
 *
 * Order: the protocol opens first (probing reads from it), the format second; the backing
 * chain last, after the format told us its backing file. Any failure closes what was opened,
 * so nothing half-open survives.
 */
import { BLOCK_PROBE_BUF_SIZE, getDefaultRegistry } from './registry.js';
import { type BlockDriver, type OpenOptions } from './driver.js';
import { BlockError, toBlockError } from './errors.js';
import { closeChildren } from './lifecycle.js';
import { BlockDriverState } from './node.js';
import { bdrvOpenOptions } from './open-options.js';
import { JSON_PREFIX, canonicalProtocolFilename } from './options.js';
import { canonicalImageName, combineBackingPath } from './path.js';

/** Longest backing chain we open below a top image (crosvm-style hard limit). */
export const MAX_BACKING_DEPTH = 16;

/** Errors from opening a backing file, already prefixed, so outer levels do not prefix again. */
const backingErrors = new WeakSet<BlockError>();

/** Open `filename` with `chain` the canonical names of the images above it (cycle check). */
export async function bdrvOpenChain(filename: string, options: OpenOptions, chain: string[]): Promise<BlockDriverState> {
  if (typeof filename !== 'string' || filename === '') {
    throw new BlockError('EINVAL', 'An image file name is required', { op: 'open' });
  }
  // A json: name (the user's, or a backing file recorded so) opens through the options; a
  // format asked for beside it wins over the one inside, as given options win in QEMU.
  if (filename.startsWith(JSON_PREFIX)) {
    return bdrvOpenOptions(options.format === undefined ? {} : { driver: options.format }, options, filename);
  }
  const registry = options.registry ?? getDefaultRegistry();
  const opts: OpenOptions = { ...options, registry, depth: options.depth ?? 0 };
  const requested = opts.format === undefined ? undefined : registry.require(opts.format);

  // Asking for a protocol or filter as the format opens that node alone (-f file, -f mem).
  if (requested && (requested.isProtocol || requested.isFilter)) {
    return openNode(requested, canonicalProtocolFilename(registry, filename, requested), opts);
  }

  const protoDrv = registry.findProtocol(filename);
  // The name as the protocol reads it (`file:a:b.qed` is ./a:b.qed), for every node.
  filename = canonicalProtocolFilename(registry, filename, protoDrv);
  // The protocol (or filter) node gets only what concerns storage: format-level options
  // (copy-on-read, check, backing) belong to the format node above it.
  const protoOpts: OpenOptions = {
    // The format node writes through it: a child, which may grow.
    child: true,
    readOnly: opts.readOnly,
    noFlush: opts.noFlush,
    forceShare: opts.forceShare,
    inactive: opts.inactive,
    clock: opts.clock,
    registry,
    depth: opts.depth,
    driverOptions: opts.driverOptions,
    objects: opts.objects,
  };
  const proto = await openNode(protoDrv, filename, protoOpts);
  let bs: BlockDriverState | null = null;
  try {
    const fmtDrv = requested ?? (await probeFormat(proto, filename));
    bs = new BlockDriverState(fmtDrv, filename, opts);
    bs.file = proto;
    await bs.driverOpen();
    // Resolved even with noBacking: `info` shows where the backing file would be.
    if (bs.backingFile !== '') bs.fullBackingFilename = combineBackingPath(storageFilename(bs), bs.backingFile);
    if (!opts.noBacking && bs.backingFile !== '') {
      await openBacking(bs, [...chain, canonicalImageName(filename)]);
    }
    return bs;
  } catch (e) {
    // Nothing half-open survives a failed open.
    if (bs?.isOpen === true) await bs.close().catch(() => undefined);
    else await proto.close().catch(() => undefined);
    throw e;
  }
}

/** find_image_format: the format whose probe scores the file's first bytes highest. */
export async function probeFormat(file: BlockDriverState, filename: string): Promise<BlockDriver> {
  // QEMU probes a full 2 KiB buffer; a shorter file reads as zeros past its end, so a
  // 40-byte file starting with a magic still probes as that format.
  const buf = new Uint8Array(BLOCK_PROBE_BUF_SIZE);
  const n = Math.min(BLOCK_PROBE_BUF_SIZE, await file.getLength());
  if (n > 0) await file.pread(0, buf.subarray(0, n));
  return file.registry.probe(buf, filename);
}

async function openNode(drv: BlockDriver, filename: string, opts: OpenOptions): Promise<BlockDriverState> {
  const bs = new BlockDriverState(drv, filename, opts);
  await bs.driverOpen();
  return bs;
}

/**
 * Run the driver's open hook. Whatever sits in `file` before or after the hook (a node built
 * by hand, a filter's image) becomes a child that may grow. Returns once the node is open.
 */
export async function driverOpen(bs: BlockDriverState): Promise<void> {
  if (bs.file) bs.file.setParent('node');
  try {
    await bs.driver.open?.(bs, bs.openOptions);
    if (bs.file) bs.file.setParent('node');
  } catch (e) {
    // The driver's open failed: the children it got from us are ours to close.
    await closeChildren(bs).catch(() => undefined);
    throw toBlockError(e, { op: 'open', path: bs.filename });
  }
}

/** The filename the image really lives under: the innermost child's (through filters). */
export function storageFilename(bs: BlockDriverState): string {
  let name = bs.filename;
  for (let n = bs.file; n; n = n.file) name = n.filename;
  return name;
}

/**
 * Open the backing file `bs` records (fullBackingFilename) read-only and hang it on
 * `backing`, refusing cycles and chains deeper than MAX_BACKING_DEPTH. `chain` holds the
 * canonical names of the images above (by default just `bs`'s own).
 */
export async function openBacking(bs: BlockDriverState, chain: string[] = [canonicalImageName(storageFilename(bs))]): Promise<void> {
  const full = bs.fullBackingFilename;
  const depth = bs.depth + 1;
  const canon = canonicalImageName(full);
  if (chain.includes(canon)) {
    throw new BlockError('ELOOP', `Backing file chain has a cycle: ${[...chain, canon].join(' -> ')}`, { op: 'open', path: full });
  }
  if (depth > MAX_BACKING_DEPTH) {
    throw new BlockError(
      'ELOOP',
      `Backing file chain is too deep (more than ${MAX_BACKING_DEPTH} levels): ${[...chain, canon].join(' -> ')}`,
      { op: 'open', path: full },
    );
  }
  const format = bs.openOptions.backingFormat ?? (bs.backingFormat === '' ? undefined : bs.backingFormat);
  try {
    bs.backing = await bdrvOpenChain(
      full,
      {
        format,
        readOnly: true,
        child: true,
        registry: bs.registry,
        objects: bs.openOptions.objects,
        clock: bs.clock,
        depth,
        noFlush: bs.openOptions.noFlush,
        forceShare: bs.openOptions.forceShare,
        inactive: bs.openOptions.inactive,
      },
      chain,
    );
  } catch (e) {
    const err = toBlockError(e, { op: 'open', path: full });
    if (backingErrors.has(err)) throw err;
    let inner = err.message;
    if (err.code === 'ENOENT' && !inner.startsWith('Could not open')) {
      inner = `Could not open '${full}': ${err.errnoMessage}`;
    }
    const wrapped = new BlockError(err.code, `Could not open backing file: ${inner}`, { op: 'open', path: full, cause: err });
    backingErrors.add(wrapped);
    throw wrapped;
  }
}
