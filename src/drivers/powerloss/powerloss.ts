/**
 * The `powerloss` protocol driver ('powerloss:NAME'): a volatile-cache disk for crash tests.
 * Writes since the last completed flush live in the store's volatile log until a flush makes
 * them durable; `PowerLossStore.crash()` keeps a random subset of them (torn per 512-byte
 * sector) and a later open sees only what survived. `failAfter(n)` makes the power go out in the
 * middle of a workload: from then on every request fails with EIO, as a vanished disk would.
 * No node: imports.
 */
import type { BlockDriver, CreateOptions, OpenOptions, WriteFlags, WriteZeroesFlags } from '../../block/driver.js';
import { BlockError, ERRNO_MESSAGES } from '../../block/errors.js';
import type { IOVector } from '../../block/iovec.js';
import type { BlockDriverState } from '../../block/node.js';
import { PowerLossStore, powerlossStoreCreate, powerlossStoreGet, powerlossStripPrefix } from './store.js';

function store(bs: BlockDriverState): PowerLossStore {
  const s = bs.opaque;
  if (!(s instanceof PowerLossStore)) {
    throw new BlockError('EBADF', `'${bs.filename}' is not open`, { op: 'powerloss', path: bs.filename });
  }
  return s;
}

async function powerlossOpen(bs: BlockDriverState, _options: OpenOptions): Promise<void> {
  const name = powerlossStripPrefix(bs.filename);
  const s = name === '' ? undefined : powerlossStoreGet(name);
  if (!s) {
    const path = `powerloss:${name}`;
    throw new BlockError('ENOENT', `Could not open '${path}': ${ERRNO_MESSAGES.ENOENT}`, { op: 'open', path });
  }
  bs.opaque = s;
}

async function powerlossCreate(filename: string, options: CreateOptions): Promise<void> {
  const size = options.size ?? 0;
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) {
    throw new BlockError('EINVAL', `Invalid size ${String(size)}`, { op: 'create', path: filename });
  }
  // A freshly created file is durable as created (the creating process syncs it).
  powerlossStoreCreate(filename, new Uint8Array(size));
}

export const powerlossDriver: BlockDriver = {
  formatName: 'powerloss',
  protocolName: 'powerloss',
  isProtocol: true,
  requestAlignment: 1,
  createOptions: [{ name: 'size', key: 'size', type: 'size', help: 'Virtual disk size' }],

  open: powerlossOpen,
  async close(bs) {
    // The store outlives the node, like a disk outlives the process.
    bs.opaque = null;
  },
  create: powerlossCreate,

  async coPreadv(bs, offset, bytes, qiov: IOVector) {
    store(bs).read(offset, qiov.iov, bytes);
  },
  async coPwritev(bs, offset, bytes, qiov: IOVector, flags: WriteFlags) {
    store(bs).write(offset, qiov.iov, bytes, flags.fua === true);
  },
  async coWriteZeroes(bs, offset, bytes, _flags: WriteZeroesFlags) {
    store(bs).writeZeroes(offset, bytes);
  },
  async coFlush(bs) {
    store(bs).flush();
  },
  async truncate(bs, size) {
    store(bs).truncate(size);
  },
  getLength(bs) {
    return store(bs).length;
  },
};
