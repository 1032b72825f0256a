/**
 * The `opfs` protocol driver ('opfs:NAME'): images in the browser's Origin Private File System,
 * so they survive a reload. Synchronous access handles exist only in dedicated workers, so the
 * I/O runs in one (worker.ts) and this driver, on any thread, talks to it by messages
 * (protocol.ts): the page starts the worker and hands it over with `opfsSetPort`.
 *
 * State: per open node, the file's name and its length as the worker last reported it
 * (`getLength` is synchronous, the worker is not; every reply carries the size). Ordering: the
 * worker serves requests one at a time in arrival order, and a flush is answered only after the
 * handle's flush() returned, so "write, await, flush" is durable as the block layer expects.
 * No node: imports.
 */
import { driverState, type BlockDriver, type CreateOptions, type OpenOptions, type WriteFlags } from '../../block/driver.js';
import { BlockError, ERRNO_MESSAGES, type BlockErrorCode } from '../../block/errors.js';
import type { IOVector } from '../../block/iovec.js';
import { storageGetInfo } from '../../block/info.js';
import type { BlockDriverState } from '../../block/node.js';
import { opfsValidName, type OpfsPort, type OpfsReply, type OpfsRequest } from './protocol.js';

type Body<T> = T extends unknown ? Omit<T, 'id'> : never;

class OpfsClient {
  private nextId = 1;
  private readonly waiting = new Map<number, (r: OpfsReply) => void>();

  constructor(private readonly port: OpfsPort) {
    port.addEventListener('message', (ev) => {
      const done = this.waiting.get(ev.data.id);
      this.waiting.delete(ev.data.id);
      done?.(ev.data);
    });
  }

  async call(req: Body<OpfsRequest>, path: string): Promise<{ size: number; data?: Uint8Array }> {
    const id = this.nextId++;
    const msg = { ...req, id };
    const transfer = msg.op === 'write' ? [msg.data.buffer as ArrayBuffer] : [];
    const reply = await new Promise<OpfsReply>((resolve) => {
      this.waiting.set(id, resolve);
      this.port.postMessage(msg, transfer);
    });
    if (!reply.ok) {
      const code = (reply.code in ERRNO_MESSAGES ? reply.code : 'EIO') as BlockErrorCode;
      throw new BlockError(code, `${path}: ${reply.message}`, { op: `opfs ${req.op}`, path });
    }
    return reply;
  }
}

let client: OpfsClient | null = null;

/** Hand the driver its worker (a Worker running worker.ts, or a port to one). */
export function opfsSetPort(port: OpfsPort | null): void {
  client = port === null ? null : new OpfsClient(port);
}

function opfsClient(path: string, op: string): OpfsClient {
  if (client === null) throw new BlockError('ENOTSUP', `${path}: no OPFS worker (opfsSetPort)`, { op, path });
  return client;
}

export function opfsStripPrefix(filename: string): string {
  return filename.startsWith('opfs:') ? filename.slice('opfs:'.length) : filename;
}

function opfsName(filename: string, op: string): string {
  const name = opfsStripPrefix(filename);
  if (!opfsValidName(name)) {
    throw new BlockError('EINVAL', `Invalid OPFS file name '${name}': one path component`, { op, path: filename });
  }
  return name;
}

interface OpfsState {
  name: string;
  length: number;
}

function state(bs: BlockDriverState): OpfsState {
  return driverState<OpfsState>(bs, 'opfs');
}

async function opfsOpen(bs: BlockDriverState, _options: OpenOptions): Promise<void> {
  const name = opfsName(bs.filename, 'open');
  const r = await opfsClient(bs.filename, 'open').call({ op: 'open', name, create: false, truncate: false }, bs.filename);
  bs.opaque = { name, length: r.size } satisfies OpfsState;
}

async function opfsClose(bs: BlockDriverState): Promise<void> {
  const s = bs.opaque as OpfsState | null;
  bs.opaque = null;
  if (s !== null) await opfsClient(bs.filename, 'close').call({ op: 'close', name: s.name }, bs.filename);
}

/** Create (or empty) the file, then give it the requested size. */
async function opfsCreate(filename: string, options: CreateOptions): Promise<void> {
  const size = options.size ?? 0;
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) {
    throw new BlockError('EINVAL', `Invalid size ${String(size)}`, { op: 'create', path: filename });
  }
  const name = opfsName(filename, 'create');
  const c = opfsClient(filename, 'create');
  await c.call({ op: 'open', name, create: true, truncate: true }, filename);
  try {
    await c.call({ op: 'truncate', name, size }, filename);
  } finally {
    await c.call({ op: 'close', name }, filename);
  }
}

async function opfsCoPreadv(bs: BlockDriverState, offset: number, bytes: number, qiov: IOVector): Promise<void> {
  const s = state(bs);
  const r = await opfsClient(bs.filename, 'read').call({ op: 'read', name: s.name, offset, bytes }, bs.filename);
  s.length = r.size;
  qiov.copyFrom(r.data!.subarray(0, bytes));
}

async function opfsCoPwritev(bs: BlockDriverState, offset: number, bytes: number, qiov: IOVector, _flags: WriteFlags): Promise<void> {
  const s = state(bs);
  // A copy: its buffer is transferred to the worker, the caller's stays usable.
  const data = new Uint8Array(bytes);
  qiov.copyTo(data, 0, bytes);
  const r = await opfsClient(bs.filename, 'write').call({ op: 'write', name: s.name, offset, data }, bs.filename);
  s.length = r.size;
}

async function opfsCoFlush(bs: BlockDriverState): Promise<void> {
  const s = state(bs);
  await opfsClient(bs.filename, 'flush').call({ op: 'flush', name: s.name }, bs.filename);
}

async function opfsTruncate(bs: BlockDriverState, size: number): Promise<void> {
  const s = state(bs);
  const r = await opfsClient(bs.filename, 'truncate').call({ op: 'truncate', name: s.name, size }, bs.filename);
  s.length = r.size;
}

function opfsGetLength(bs: BlockDriverState): number {
  return state(bs).length;
}

/** Delete an image file of the private directory (it must not be open). */
export async function opfsRemove(filename: string): Promise<void> {
  const name = opfsName(filename, 'remove');
  await opfsClient(filename, 'remove').call({ op: 'remove', name }, filename);
}

export const opfsDriver: BlockDriver = {
  formatName: 'opfs',
  protocolName: 'opfs',
  isProtocol: true,
  requestAlignment: 1,
  createOptions: [{ name: 'size', key: 'size', type: 'size', help: 'Virtual disk size' }],
  open: opfsOpen,
  close: opfsClose,
  create: opfsCreate,
  coPreadv: opfsCoPreadv,
  coPwritev: opfsCoPwritev,
  coFlush: opfsCoFlush,
  truncate: opfsTruncate,
  getLength: opfsGetLength,
  getInfo: storageGetInfo,
};
