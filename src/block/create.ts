import type { BlockDriver, CreateContext, CreateOptions, CreateOptionSpec } from './driver.js';
import { BlockError, toBlockError } from './errors.js';
import { BlockDriverState } from './node.js';
import { combineBackingPath } from './path.js';
import { getDefaultRegistry, type BlockDriverRegistry } from './registry.js';

export interface BdrvCreateParams {
  /** Format driver name ('qed', 'raw', or a protocol such as 'file'). */
  format: string;
  /** The -o options, by camelCase key or QEMU's name (`backing_file`). */
  options?: CreateOptions;
  /** Do not open the backing file (qemu-img create -u): a size must then be given. */
  unsafe?: boolean;
  registry?: BlockDriverRegistry;
}

/** Every driver takes a size, listed or not (QEMU's BLOCK_OPT_SIZE). */
const SIZE_SPEC: CreateOptionSpec = { name: 'size', key: 'size', type: 'size', help: 'Virtual disk size' };

function optionSpecs(drv: BlockDriver): readonly CreateOptionSpec[] {
  const specs = drv.createOptions ?? [];
  return specs.some((s) => s.key === 'size') ? specs : [SIZE_SPEC, ...specs];
}

/**
 * Check the options against the driver's list (unknown names are refused before anything is
 * created) and return them keyed by their camelCase keys.
 */
export function validateCreateOptions(drv: BlockDriver, options: CreateOptions, proto: BlockDriver | null = null): CreateOptions {
  const specs = proto === null || proto === drv ? optionSpecs(drv) : [...optionSpecs(drv), ...(proto.createOptions ?? [])];
  const out: CreateOptions = {};
  for (const [name, value] of Object.entries(options)) {
    if (value === undefined) continue;
    const spec = specs.find((s) => s.key === name || s.name === name);
    if (!spec) throw new BlockError('EINVAL', `Invalid parameter '${name}'`, { op: 'create' });
    let ok: boolean;
    switch (spec.type) {
      case 'size':
      case 'number':
        ok = typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;
        break;
      case 'string':
        ok = typeof value === 'string';
        break;
      case 'bool':
        ok = typeof value === 'boolean';
        break;
    }
    if (!ok) {
      throw new BlockError('EINVAL', `Parameter '${spec.name}' expects ${spec.type === 'bool' ? 'a boolean' : `a ${spec.type}`}`, {
        op: 'create',
      });
    }
    out[spec.key] = value;
  }
  return out;
}

/** The protocol a format's file would be created with; null when none (createFile then fails). */
function protocolFor(registry: BlockDriverRegistry, filename: string): BlockDriver | null {
  try {
    return registry.findProtocol(filename);
  } catch {
    return null;
  }
}

/** CreateContext for drivers: how a format gets its protocol-level file. */
export function makeCreateContext(registry: BlockDriverRegistry): CreateContext {
  return {
    registry,
    async createFile(filename: string, options?: CreateOptions): Promise<BlockDriverState> {
      const proto = registry.findProtocol(filename);
      if (!proto.create) {
        throw new BlockError('ENOTSUP', `Protocol driver '${proto.formatName}' does not support image creation`, {
          op: 'create',
          path: filename,
        });
      }
      await proto.create(filename, { ...options, size: options?.size ?? 0 }, this);
      // The format's create hook writes its image through this node past its (zero) end, as
      // QEMU's create functions do after blk_set_allow_write_beyond_eof.
      return BlockDriverState.open(filename, { format: proto.formatName, registry, child: true });
    },
  };
}

/**
 * Create an image (bdrv_img_create): validate the options, take the size from the backing file
 * when none is given, check that the backing file opens (unless unsafe), then let the format's
 * create hook write the image.
 */
export async function bdrvCreate(filename: string, params: BdrvCreateParams): Promise<void> {
  const registry = params.registry ?? getDefaultRegistry();
  if (typeof filename !== 'string' || filename === '') {
    throw new BlockError('EINVAL', 'An image file name is required', { op: 'create' });
  }
  const drv = registry.find(params.format);
  if (!drv) throw new BlockError('EINVAL', `Unknown file format '${params.format}'`, { op: 'create' });
  if (!drv.create) {
    throw new BlockError('ENOTSUP', `Format driver '${drv.formatName}' does not support image creation`, {
      op: 'create',
      path: filename,
    });
  }
  const raw = params.options ?? {};
  const wantsBacking = [raw.backingFile, raw.backing_file].some((v) => v !== undefined && v !== '');
  if (wantsBacking && !drv.supportsBacking) {
    throw new BlockError('ENOTSUP', `Backing file not supported for file format '${drv.formatName}'`, {
      op: 'create',
      path: filename,
    });
  }
  // As bdrv_img_create appends the protocol's create options to the format's, a format takes
  // those too (preallocation=full for raw) and passes them on to its file.
  const proto = drv.protocolName === undefined ? protocolFor(registry, filename) : null;
  const options = validateCreateOptions(drv, raw, proto);

  const backingFile = typeof options.backingFile === 'string' ? options.backingFile : '';
  // An empty backing_fmt means none, as an absent one.
  const backingFmt = typeof options.backingFmt === 'string' && options.backingFmt !== '' ? options.backingFmt : undefined;
  if (backingFmt !== undefined && !registry.find(backingFmt)) {
    throw new BlockError('EINVAL', `Unknown backing file format '${backingFmt}'`, { op: 'create' });
  }

  if (backingFile !== '' && !params.unsafe) {
    // As QEMU does, the backing file must open before anything is created; its size is the
    // default image size.
    const full = combineBackingPath(filename, backingFile);
    let backing: BlockDriverState;
    try {
      backing = await BlockDriverState.open(full, { format: backingFmt, readOnly: true, noBacking: true, registry });
    } catch (e) {
      const err = toBlockError(e, { op: 'create', path: full });
      throw new BlockError(err.code, `Could not open backing image: ${err.message}`, {
        op: 'create',
        path: full,
        cause: err,
      });
    }
    try {
      if (options.size === undefined) options.size = await backing.getLength();
    } finally {
      await backing.close();
    }
  }
  if (options.size === undefined) {
    throw new BlockError(
      'EINVAL',
      backingFile !== ''
        ? 'The image size must be specified when the backing file is not opened (unsafe)'
        : 'The image size must be specified',
      { op: 'create', path: filename },
    );
  }

  await drv.create(filename, options, makeCreateContext(registry));
}
