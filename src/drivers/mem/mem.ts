/**
 * The `mem` protocol driver: images kept in a named, sparse in-memory store ('mem:NAME').
 * Used by tests (power-loss copies, fuzzing) and where no file system exists (browsers).
 * No node: imports.
 */
import { scheduleBottomHalf } from '../../block/coroutine.js';
import {
  type BlockDriver,
  type BlockDriverHook,
  type BlockStatus,
  type CreateOptions,
  type OpenOptions,
  type WriteFlags,
  type WriteZeroesFlags,
  driverState,
} from '../../block/driver.js';
import { BlockError, ERRNO_MESSAGES } from '../../block/errors.js';
import type { IOVector } from '../../block/iovec.js';
import { storageGetInfo } from '../../block/info.js';
import type { BlockDriverState } from '../../block/node.js';
import { MemStore, memStoreCreate, memStoreGet, memStripPrefix } from './store.js';

interface MemState {
  store: MemStore;
  name: string;
}

function state(bs: BlockDriverState): MemState {
  return driverState<MemState>(bs, 'mem');
}

function checkSize(size: unknown, path: string, op: string): number {
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) {
    throw new BlockError('EINVAL', `Invalid size ${String(size)} for '${path}'`, { op, path });
  }
  return size;
}

async function memOpen(bs: BlockDriverState, _options: OpenOptions): Promise<void> {
  const name = memStripPrefix(bs.filename);
  const store = name === '' ? undefined : memStoreGet(name);
  if (store === undefined) {
    const path = `mem:${name}`;
    throw new BlockError('ENOENT', `Could not open '${path}': ${ERRNO_MESSAGES.ENOENT}`, { op: 'open', path });
  }
  bs.opaque = { store, name } satisfies MemState;
}

async function memClose(bs: BlockDriverState): Promise<void> {
  // The store outlives the node: another open of the same name sees the data.
  bs.opaque = null;
}

async function memCreate(filename: string, options: CreateOptions): Promise<void> {
  const name = memStripPrefix(filename);
  memStoreCreate(name, checkSize(options.size ?? 0, `mem:${name}`, 'create'));
}

async function memCoPreadv(bs: BlockDriverState, offset: number, bytes: number, qiov: IOVector): Promise<void> {
  state(bs).store.read(offset, qiov.iov, bytes);
}

async function memCoPwritev(
  bs: BlockDriverState,
  offset: number,
  bytes: number,
  qiov: IOVector,
  _flags: WriteFlags,
): Promise<void> {
  // Memory is as durable as it gets here: FUA needs nothing more.
  state(bs).store.write(offset, qiov.iov, bytes);
}

/**
 * The pwritevSubmit hook, as the file driver's: the bytes are stored now (as coPwritev stores
 * them before its promise settles) and `done` runs from a later microtask, never inside this
 * call, so the callback paths of the format drivers run over mem stores too.
 */
const memPwritevSubmit: BlockDriverHook<'pwritevSubmit'> = (bs, offset, bytes, qiov, flags, done) => {
  const s = bs.opaque as MemState | null;
  if (s === null || flags.fua === true || bytes === 0) return false;
  s.store.write(offset, qiov.iov, bytes);
  scheduleBottomHalf(() => done(null));
  return true;
};

async function memCoWriteZeroes(
  bs: BlockDriverState,
  offset: number,
  bytes: number,
  flags: WriteZeroesFlags,
): Promise<void> {
  state(bs).store.writeZeroes(offset, bytes, flags.mayUnmap === true);
}

async function memCoDiscard(bs: BlockDriverState, offset: number, bytes: number): Promise<void> {
  state(bs).store.discard(offset, bytes);
}

async function memCoFlush(bs: BlockDriverState): Promise<void> {
  // Nothing is cached between the node and the store.
  state(bs);
}

/** Written chunks are data; never-written ones read as zeros and hold nothing. */
async function memCoBlockStatus(bs: BlockDriverState, offset: number, bytes: number): Promise<BlockStatus> {
  const { data, pnum } = state(bs).store.status(offset, bytes);
  return { pnum, allocated: true, data, zero: !data, offset, file: bs };
}

async function memTruncate(bs: BlockDriverState, size: number): Promise<void> {
  const s = state(bs);
  s.store.truncate(checkSize(size, `mem:${s.name}`, 'truncate'));
}

function memGetLength(bs: BlockDriverState): number {
  return state(bs).store.length;
}

async function memGetAllocatedFileSize(bs: BlockDriverState): Promise<number> {
  return state(bs).store.allocatedBytes;
}

export const memDriver: BlockDriver = {
  formatName: 'mem',
  protocolName: 'mem',
  isProtocol: true,
  requestAlignment: 1,
  createOptions: [{ name: 'size', key: 'size', type: 'size', help: 'Virtual disk size' }],
  open: memOpen,
  close: memClose,
  create: memCreate,
  coPreadv: memCoPreadv,
  coPwritev: memCoPwritev,
  pwritevSubmit: memPwritevSubmit,
  coWriteZeroes: memCoWriteZeroes,
  coDiscard: memCoDiscard,
  coFlush: memCoFlush,
  coBlockStatus: memCoBlockStatus,
  truncate: memTruncate,
  getLength: memGetLength,
  getAllocatedFileSize: memGetAllocatedFileSize,
  getInfo: storageGetInfo,
};
