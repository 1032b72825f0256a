/**
 * A test protocol ('sched:NAME') over the mem driver's named stores whose every request waits
 * for fast-check's scheduler before it touches the store: the scheduler decides in which order
 * in-flight I/O completes, so a property explores interleavings of concurrent guest requests
 * (and of the QED driver's own metadata I/O) that the event loop alone would never produce.
 */
import type fc from 'fast-check';
import { BlockDriverRegistry, BlockError, defaultRegistry, type BlockDriver } from '../../src/index.js';
import { toBlockError } from '../../src/block/errors.js';
import { MemStore, memStoreCreate, memStoreGet, memStripPrefix } from '../../src/drivers/mem/index.js';
import type { BlockDriverState } from '../../src/index.js';
import { countSubmit } from './submit-stats.js';

let scheduler: fc.Scheduler | null = null;
/** Requests gated so far (for reports). */
export let gatedRequests = 0;

/** Route every sched: request through `s` (null: run requests at once). */
export function setIoScheduler(s: fc.Scheduler | null): void {
  scheduler = s;
}

async function gate(label: string): Promise<void> {
  const s = scheduler;
  if (!s) return;
  gatedRequests++;
  await s.schedule(Promise.resolve(label), label);
}

function strip(filename: string): string {
  return memStripPrefix(filename.startsWith('sched:') ? filename.slice('sched:'.length) : filename);
}

function store(bs: BlockDriverState): MemStore {
  const s = bs.opaque;
  if (!(s instanceof MemStore)) throw new BlockError('EBADF', `'${bs.filename}' is not open`);
  return s;
}

export const schedDriver: BlockDriver = {
  formatName: 'sched',
  protocolName: 'sched',
  isProtocol: true,
  requestAlignment: 1,
  createOptions: [{ name: 'size', key: 'size', type: 'size', help: 'Virtual disk size' }],
  async open(bs) {
    const s = memStoreGet(strip(bs.filename));
    if (!s) throw new BlockError('ENOENT', `Could not open '${bs.filename}': No such file or directory`, { op: 'open' });
    bs.opaque = s;
  },
  async close(bs) {
    bs.opaque = null;
  },
  async create(filename, options) {
    memStoreCreate(strip(filename), typeof options.size === 'number' ? options.size : 0);
  },
  async coPreadv(bs, offset, bytes, qiov) {
    await gate(`read ${offset}+${bytes}`);
    store(bs).read(offset, qiov.iov, bytes);
  },
  async coPwritev(bs, offset, bytes, qiov) {
    await gate(`write ${offset}+${bytes}`);
    store(bs).write(offset, qiov.iov, bytes);
  },
  // Started with a callback (the format drivers' fast paths): the write lands, and `done`
  // runs, only when the scheduler lets it through, so callback writes complete in whatever
  // order it picks, among themselves and among the promise-based requests.
  pwritevSubmit(bs, offset, bytes, qiov, flags, done) {
    if (!(bs.opaque instanceof MemStore) || flags.fua === true || bytes === 0) return false;
    const s = bs.opaque;
    countSubmit(bs);
    gate(`write ${offset}+${bytes} (callback)`)
      .then(() => s.write(offset, qiov.iov, bytes))
      .then(
        () => done(null),
        (e: unknown) => done(toBlockError(e, { op: 'write', offset })),
      );
    return true;
  },
  // The zeroing and the data of an allocation as one callback request (qcow2's zeroSubmit):
  // both land, in that order, when the scheduler lets the request through.
  zeroThenPwritevSubmit(bs, zeroOffset, zeroBytes, offset, bytes, qiov, done) {
    if (!(bs.opaque instanceof MemStore) || bytes === 0) return false;
    const s = bs.opaque;
    countSubmit(bs);
    gate(`zero ${zeroOffset}+${zeroBytes}, write ${offset}+${bytes} (callback)`)
      .then(() => {
        s.writeZeroes(zeroOffset, zeroBytes, false);
        s.write(offset, qiov.iov, bytes);
      })
      .then(
        () => done(null),
        (e: unknown) => done(toBlockError(e, { op: 'write', offset })),
      );
    return true;
  },
  async coWriteZeroes(bs, offset, bytes) {
    await gate(`zero ${offset}+${bytes}`);
    store(bs).writeZeroes(offset, bytes, false);
  },
  async coFlush() {
    await gate('flush');
  },
  async truncate(bs, size) {
    await gate(`truncate ${size}`);
    store(bs).truncate(size);
  },
  getLength(bs) {
    return store(bs).length;
  },
};

/** The default registry plus the sched protocol. */
export function schedRegistry(): BlockDriverRegistry {
  const r = new BlockDriverRegistry();
  for (const d of defaultRegistry.list()) r.register(d);
  r.register(schedDriver);
  return r;
}
