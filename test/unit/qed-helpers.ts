/**
 * Helpers for the QED unit tests: fresh mem: images, a byte-array model of the guest disk, a
 * recording protocol driver (logs every write and flush a format issues to its file), and raw
 * access to the QED metadata.
 */
import {
  BlockDriverRegistry,
  BlockDriverState,
  BlockError,
  bdrvCreate,
  memDriver,
  memStoreCreate,
  memStoreRead,
  rawDriver,
  type BlockDriver,
  type CreateOptions,
  type OpenOptions,
} from '../../src/index.js';
import { qedDriver } from '../../src/drivers/qed/index.js';
import type { BDRVQEDState } from '../../src/drivers/qed/state.js';

let seq = 0;
export function memName(prefix = 'qed'): string {
  seq++;
  return `mem:${prefix}-${process.pid}-${seq}-${Math.random().toString(36).slice(2, 8)}`;
}

export async function createQed(name: string, options: CreateOptions, registry?: BlockDriverRegistry): Promise<void> {
  await bdrvCreate(name, { format: 'qed', options, unsafe: true, registry });
}

export async function openQed(name: string, opts: OpenOptions = {}): Promise<BlockDriverState> {
  return BlockDriverState.open(name, { format: 'qed', ...opts });
}

/** A fresh mem: QED image, opened read-write. */
export async function newMemQed(options: CreateOptions, opts: OpenOptions = {}): Promise<{ name: string; bs: BlockDriverState }> {
  const name = memName();
  await createQed(name, options, opts.registry);
  const bs = await openQed(name, opts);
  return { name, bs };
}

export function qedS(bs: BlockDriverState): BDRVQEDState {
  return bs.opaque as BDRVQEDState;
}

/** A mem: raw file with the given contents. */
export function memRaw(bytes: Uint8Array): string {
  const name = memName('raw');
  const store = memStoreCreate(name, 0);
  store.write(0, [bytes], bytes.length);
  store.length = bytes.length;
  return name;
}

/** Deterministic PRNG (mulberry32). */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function pattern(len: number, seed: number): Uint8Array {
  const out = new Uint8Array(len);
  for (let i = 0; i < len; i++) out[i] = (seed * 31 + i * 7 + (i >> 9)) & 0xff || 1;
  return out;
}

export async function readAll(bs: BlockDriverState, len?: number): Promise<Uint8Array> {
  const size = len ?? (await bs.getLength());
  const out = new Uint8Array(size);
  await bs.pread(0, out);
  return out;
}

export function u64(bytes: Uint8Array, off: number): number {
  const v = new DataView(bytes.buffer, bytes.byteOffset);
  return v.getUint32(off, true) + v.getUint32(off + 4, true) * 2 ** 32;
}

export function setU64(bytes: Uint8Array, off: number, value: number | bigint): void {
  new DataView(bytes.buffer, bytes.byteOffset).setBigUint64(off, BigInt(value), true);
}

/** Features word of the header of a stored image. */
export function storedFeatures(name: string): bigint {
  const b = memStoreRead(name);
  return new DataView(b.buffer, b.byteOffset).getBigUint64(16, true);
}

export function firstDiff(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : n;
}

// ---------------------------------------------------------------------------------------------
// A recording protocol: 'rec:NAME' stores bytes like mem: and logs writes and flushes.

export type RecOp = { op: 'write'; offset: number; len: number } | { op: 'flush' } | { op: 'read'; offset: number; len: number };

export interface RecState {
  data: Uint8Array;
  length: number;
  log: RecOp[];
  /** Fail every write (and flush) with EIO while set. */
  failWrites: boolean;
  /** Fail a write when this returns true (sees the write's offset and length). */
  failWhen?: (offset: number, len: number) => boolean;
  /** Delay every operation by a random number of event-loop turns (drawn from this PRNG). */
  jitter?: () => number;
}

async function recJitter(st: RecState): Promise<void> {
  if (!st.jitter) return;
  const n = Math.floor(st.jitter() * 4);
  for (let i = 0; i < n; i++) await new Promise<void>((r) => setTimeout(r, 0));
}

const recStores = new Map<string, RecState>();

export function recStore(name: string): RecState {
  const key = name.replace(/^rec:/, '');
  let st = recStores.get(key);
  if (!st) {
    st = { data: new Uint8Array(1 << 16), length: 0, log: [], failWrites: false };
    recStores.set(key, st);
  }
  return st;
}

function grow(st: { data: Uint8Array }, need: number): void {
  if (need <= st.data.length) return;
  let n = st.data.length;
  while (n < need) n *= 2;
  const d = new Uint8Array(n);
  d.set(st.data);
  st.data = d;
}

export const recDriver: BlockDriver = {
  formatName: 'rec',
  protocolName: 'rec',
  isProtocol: true,
  async open(bs) {
    bs.opaque = recStore(bs.filename);
  },
  async create(filename) {
    const st = recStore(filename);
    st.length = 0;
    st.data.fill(0);
  },
  async coPreadv(bs, offset, bytes, qiov) {
    const st = bs.opaque as RecState;
    await recJitter(st);
    st.log.push({ op: 'read', offset, len: bytes });
    const out = new Uint8Array(bytes);
    out.set(st.data.subarray(offset, Math.min(offset + bytes, st.length)));
    qiov.copyFrom(out);
  },
  async coPwritev(bs, offset, bytes, qiov) {
    const st = bs.opaque as RecState;
    await recJitter(st);
    if (st.failWrites || st.failWhen?.(offset, bytes)) throw new BlockError('EIO', 'rec: injected write error');
    st.log.push({ op: 'write', offset, len: bytes });
    grow(st, offset + bytes);
    st.data.set(qiov.toBuffer(), offset);
    st.length = Math.max(st.length, offset + bytes);
  },
  async coFlush(bs) {
    await recJitter(bs.opaque as RecState);
    (bs.opaque as RecState).log.push({ op: 'flush' });
  },
  getLength(bs) {
    return (bs.opaque as RecState).length;
  },
  async truncate(bs, size) {
    const st = bs.opaque as RecState;
    if (size < 0) throw new BlockError('EINVAL');
    grow(st, size);
    if (size < st.length) st.data.fill(0, size);
    st.length = size;
  },
};

export function recRegistry(): BlockDriverRegistry {
  const r = new BlockDriverRegistry();
  for (const d of [memDriver, recDriver, rawDriver, qedDriver]) r.register(d);
  return r;
}

/** Writes/flushes of a log in a compact form: 'W@offset+len', 'F'. */
export function compact(log: RecOp[]): string[] {
  return log.filter((o) => o.op !== 'read').map((o) => (o.op === 'flush' ? 'F' : `W@${o.offset}+${o.len}`));
}
