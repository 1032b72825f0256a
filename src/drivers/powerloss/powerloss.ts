/**
 * The `powerloss` protocol driver ('powerloss:NAME'): a volatile-cache disk for crash tests.
 * Writes since the last completed flush live in the store's volatile log until a flush makes
 * them durable; `PowerLossStore.crash()` keeps a random subset of them (torn per 512-byte
 * sector) and a later open sees only what survived. `failAfter(n)` makes the power go out in the
 * middle of a workload: from then on every request fails with EIO, as a vanished disk would.
 * No node: imports.
 */
import type { BlockDriver, BlockDriverHook, CreateOptions, OpenOptions, WriteFlags, WriteZeroesFlags } from '../../block/driver.js';
import { BlockError, ERRNO_MESSAGES, toBlockError } from '../../block/errors.js';
import type { IOVector } from '../../block/iovec.js';
import type { BlockDriverState } from '../../block/node.js';
import { POWERLOSS_SECTOR, PowerLossStore, powerlossStoreCreate, powerlossStoreGet, powerlossStripPrefix } from './store.js';

/**
 * Requests land after a few turns of the microtask queue, writes after 1..3 depending on where
 * they go and flushes after one: a flush issued before an earlier write has *completed* may
 * overtake it and leave it volatile, as on a real disk. A driver that awaits its writes before
 * flushing (what the ordering rules require) sees no difference.
 */
async function latency(hops: number): Promise<void> {
  for (let i = 0; i < hops; i++) await Promise.resolve();
}

/** The store's own choice (a test drawing latencies), else 1..3 turns by sector. */
function writeHops(s: PowerLossStore, offset: number): number {
  return s.writeHops?.(offset) ?? 1 + (Math.floor(offset / POWERLOSS_SECTOR) % 3);
}

/**
 * A write reaches the volatile cache after its turns: a write's data is copied only then (the
 * caller owns its buffer until the write completes), and a power cut counts it only then.
 */
async function landWrite(s: PowerLossStore, offset: number, iov: readonly Uint8Array[], bytes: number, fua: boolean): Promise<void> {
  await latency(writeHops(s, offset));
  s.write(offset, iov, bytes, fua);
}

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

/**
 * The pwritevSubmit hook, as the file driver's: the write is started here and `done` runs from
 * its completion, never inside this call. It lands in the volatile cache after the same turns
 * as coPwritev's, so a flush issued before it completes may overtake it, and a crash keeps,
 * tears or drops it like any other unflushed write: the callback paths of the format drivers
 * (rewrites, allocating and COW writes whose L2 entry is set from the completion) run under
 * the same power-loss model as their ordinary paths. FUA goes the ordinary way, as there.
 */
const powerlossPwritevSubmit: BlockDriverHook<'pwritevSubmit'> = (bs, offset, bytes, qiov, flags, done) => {
  const s = bs.opaque;
  if (!(s instanceof PowerLossStore) || flags.fua === true || bytes === 0) return false;
  landWrite(s, offset, qiov.iov, bytes, false).then(
    () => done(null),
    (e: unknown) => done(toBlockError(e, { op: 'write', offset, path: bs.filename })),
  );
  return true;
};

/**
 * The zeroThenPwritevSubmit hook, as the file driver's: the zeroing lands, then the data, each
 * after its turns and each a volatile operation of its own (a crash may keep either, both or
 * neither), and `done` runs once both landed: the callback path of a qcow2 allocation whose
 * COW areas read as zeros runs under the same power-loss model as its ordinary path.
 */
const powerlossZeroThenPwritevSubmit: BlockDriverHook<'zeroThenPwritevSubmit'> = (bs, zeroOffset, zeroBytes, offset, bytes, qiov, done) => {
  const s = bs.opaque;
  if (!(s instanceof PowerLossStore) || bytes === 0) return false;
  const land = async (): Promise<void> => {
    await latency(writeHops(s, zeroOffset));
    s.writeZeroes(zeroOffset, zeroBytes);
    await landWrite(s, offset, qiov.iov, bytes, false);
  };
  land().then(
    () => done(null),
    (e: unknown) => done(toBlockError(e, { op: 'write', offset, path: bs.filename })),
  );
  return true;
};

export const powerlossDriver: BlockDriver = {
  formatName: 'powerloss',
  protocolName: 'powerloss',
  isProtocol: true,
  // Its store records FUA writes as durable on completion: no emulated flush needed.
  supportsFua: true,
  requestAlignment: 1,
  createOptions: [{ name: 'size', key: 'size', type: 'size', help: 'Virtual disk size' }],

  open: powerlossOpen,
  async close(bs) {
    // The store outlives the node, like a disk outlives the process.
    bs.opaque = null;
  },
  create: powerlossCreate,

  async coPreadv(bs, offset, bytes, qiov: IOVector) {
    await latency(1);
    store(bs).read(offset, qiov.iov, bytes);
  },
  async coPwritev(bs, offset, bytes, qiov: IOVector, flags: WriteFlags) {
    await landWrite(store(bs), offset, qiov.iov, bytes, flags.fua === true);
  },
  pwritevSubmit: powerlossPwritevSubmit,
  zeroThenPwritevSubmit: powerlossZeroThenPwritevSubmit,
  async coWriteZeroes(bs, offset, bytes, _flags: WriteZeroesFlags) {
    const s = store(bs);
    await latency(writeHops(s, offset));
    s.writeZeroes(offset, bytes);
  },
  async coFlush(bs) {
    await latency(1);
    store(bs).flush();
  },
  async truncate(bs, size) {
    await latency(1);
    store(bs).truncate(size);
  },
  getLength(bs) {
    return store(bs).length;
  },
};
