/**
 * Small in-test drivers for the generic block layer's unit tests, so they do not depend on
 * QED: a strict pass-through format that refuses unaligned requests, and a tiny format with a
 * backing file and a per-sector allocation bitmap.
 */
import {
  BlockDriverRegistry,
  BlockError,
  IOVector,
  memDriver,
  memStoreCreate,
  rawDriver,
  type BlockDriver,
  type BlockDriverState,
  type BlockStatus,
  type CreateContext,
  type CreateOptions,
} from '../../src/index.js';

/**
 * Submit an AIO write of `buf` at byte `offset` and wait for its callback; also reports whether
 * the callback ran inside the call.
 */
export function aioWriteAt(bs: BlockDriverState, offset: number, buf: Uint8Array): Promise<{ err: BlockError | null; sync: boolean }> {
  return new Promise((resolve) => {
    let returned = false;
    bs.aioWritev(offset / 512, IOVector.from(buf), buf.length / 512, (err) => resolve({ err, sync: !returned }));
    returned = true;
  });
}

/**
 * Record every zeroThenPwritev of `file`, and every zeroThenPwritevSubmit it takes, as
 * [zeroOffset, zeroBytes, offset, bytes], calling through: how a format's allocating-write
 * tests see the zero-and-write requests it makes.
 */
export function spyZeroThenPwritev(file: BlockDriverState): number[][] {
  const calls: number[][] = [];
  const real = file.zeroThenPwritev.bind(file);
  file.zeroThenPwritev = (zo: number, zb: number, o: number, q: IOVector) => {
    calls.push([zo, zb, o, q.size]);
    return real(zo, zb, o, q);
  };
  const realSubmit = file.zeroThenPwritevSubmit.bind(file);
  file.zeroThenPwritevSubmit = (zo, zb, o, q, done) => {
    const started = realSubmit(zo, zb, o, q, done);
    if (started) calls.push([zo, zb, o, q.size]);
    return started;
  };
  return calls;
}

let seq = 0;
/** A fresh mem: name for each test. */
export function memName(prefix = 't'): string {
  seq++;
  return `mem:blk-${prefix}-${process.pid}-${seq}-${Math.random().toString(36).slice(2, 8)}`;
}

/** A mem store of `size` bytes, filled with a byte pattern when asked. */
export function makeMem(size: number, prefix?: string): string {
  const name = memName(prefix);
  memStoreCreate(name, size);
  return name;
}

/** Yield to the event loop a random small number of times (to interleave requests). */
export async function jitter(max = 3): Promise<void> {
  const n = Math.floor(Math.random() * (max + 1));
  for (let i = 0; i < n; i++) {
    if (Math.random() < 0.5) await Promise.resolve();
    else await new Promise<void>((r) => setTimeout(r, 0));
  }
}

export interface StrictLog {
  reads: [number, number][];
  writes: [number, number][];
}

/**
 * A format that passes requests to its file child and throws when one is not aligned to 512
 * (except a request that ends exactly at the end of the image). Random delays make concurrent
 * requests interleave, so a lost update in read-modify-write would show.
 */
export function makeStrictDriver(opts: { name?: string; delay?: boolean; log?: StrictLog } = {}): BlockDriver {
  const align = 512;
  const check = async (bs: BlockDriverState, op: string, offset: number, bytes: number): Promise<void> => {
    const len = await bs.file!.getLength();
    if (offset % align !== 0 || (bytes % align !== 0 && offset + bytes !== len)) {
      throw new Error(`strict: unaligned ${op} ${offset}+${bytes}`);
    }
    if (opts.delay) await jitter();
  };
  return {
    formatName: opts.name ?? 'strict',
    requestAlignment: align,
    async coPreadv(bs, offset, bytes, qiov) {
      await check(bs, 'read', offset, bytes);
      opts.log?.reads.push([offset, bytes]);
      await bs.file!.preadv(offset, qiov);
    },
    async coPwritev(bs, offset, bytes, qiov, flags) {
      await check(bs, 'write', offset, bytes);
      opts.log?.writes.push([offset, bytes]);
      await bs.file!.pwritev(offset, qiov, flags);
    },
    getLength(bs) {
      return bs.file!.getLength();
    },
  };
}

// --- 'tchain': a tiny format with a backing file ------------------------------------------

const MAGIC = [0x54, 0x43, 0x48, 0x4e]; // 'TCHN'
const HEADER = 4096;
const BITMAP_OFF = 1024;
const SECTOR = 512;

interface ChainState {
  size: number;
  bitmap: Uint8Array;
}

function chainState(bs: BlockDriverState): ChainState {
  return bs.opaque as ChainState;
}

function isSet(bitmap: Uint8Array, sector: number): boolean {
  return (bitmap[sector >> 3] & (1 << (sector & 7))) !== 0;
}

function encodeHeader(size: number, backing: string, fmt: string, bitmap?: Uint8Array): Uint8Array {
  const h = new Uint8Array(HEADER);
  h.set(MAGIC, 0);
  const dv = new DataView(h.buffer);
  dv.setUint32(4, size / SECTOR, true);
  const b = new TextEncoder().encode(backing);
  const f = new TextEncoder().encode(fmt);
  if (b.length > 512 || f.length > 32) throw new BlockError('EINVAL', 'tchain: name too long');
  dv.setUint16(8, b.length, true);
  dv.setUint16(10, f.length, true);
  h.set(b, 16);
  h.set(f, 528);
  if (bitmap) h.set(bitmap, BITMAP_OFF);
  return h;
}

async function chainReadBacking(bs: BlockDriverState, offset: number, qiov: IOVector): Promise<void> {
  if (!bs.backing) {
    qiov.memset(0, 0);
    return;
  }
  const blen = await bs.backing.getLength();
  const n = Math.max(0, Math.min(qiov.size, blen - offset));
  if (n > 0) await bs.backing.preadv(offset, qiov.slice(0, n));
  if (n < qiov.size) qiov.memset(n, 0);
}

/** Runs of equal allocation over [offset, offset+bytes), sector granular. */
function runs(st: ChainState, offset: number, bytes: number): { start: number; len: number; alloc: boolean }[] {
  const out: { start: number; len: number; alloc: boolean }[] = [];
  let pos = offset;
  while (pos < offset + bytes) {
    const alloc = isSet(st.bitmap, Math.floor(pos / SECTOR));
    let end = Math.min(offset + bytes, (Math.floor(pos / SECTOR) + 1) * SECTOR);
    while (end < offset + bytes && isSet(st.bitmap, end / SECTOR) === alloc) {
      end = Math.min(offset + bytes, end + SECTOR);
    }
    out.push({ start: pos, len: end - pos, alloc });
    pos = end;
  }
  return out;
}

export const chainDriver: BlockDriver = {
  formatName: 'tchain',
  supportsBacking: true,
  createOptions: [
    { name: 'size', key: 'size', type: 'size', help: 'Virtual disk size' },
    { name: 'backing_file', key: 'backingFile', type: 'string', help: 'Backing file' },
    { name: 'backing_fmt', key: 'backingFmt', type: 'string', help: 'Backing format' },
  ],
  probe(buf) {
    return buf.length >= 4 && MAGIC.every((m, i) => buf[i] === m) ? 100 : 0;
  },
  async open(bs) {
    const h = new Uint8Array(HEADER);
    await bs.file!.pread(0, h);
    if (!MAGIC.every((m, i) => h[i] === m)) throw new BlockError('EINVAL', 'tchain: bad magic');
    const dv = new DataView(h.buffer);
    const size = dv.getUint32(4, true) * SECTOR;
    const bl = dv.getUint16(8, true);
    const fl = dv.getUint16(10, true);
    bs.backingFile = new TextDecoder().decode(h.subarray(16, 16 + bl));
    bs.backingFormat = new TextDecoder().decode(h.subarray(528, 528 + fl));
    bs.opaque = { size, bitmap: h.slice(BITMAP_OFF) } satisfies ChainState;
  },
  async create(filename: string, options: CreateOptions, ctx: CreateContext) {
    const size = options.size ?? 0;
    if (size % SECTOR !== 0 || size / SECTOR > (HEADER - BITMAP_OFF) * 8) {
      throw new BlockError('EINVAL', 'tchain: bad size');
    }
    const f = await ctx.createFile(filename);
    try {
      await f.pwrite(0, encodeHeader(size, String(options.backingFile ?? ''), String(options.backingFmt ?? '')));
      await f.truncate(HEADER + size);
    } finally {
      await f.close();
    }
  },
  async coPreadv(bs, offset, bytes, qiov) {
    const st = chainState(bs);
    for (const r of runs(st, offset, bytes)) {
      const part = qiov.slice(r.start - offset, r.len);
      if (r.alloc) await bs.file!.preadv(HEADER + r.start, part);
      else await chainReadBacking(bs, r.start, part);
    }
  },
  async coPwritev(bs, offset, bytes, qiov, flags) {
    const st = chainState(bs);
    await bs.file!.pwritev(HEADER + offset, qiov, flags);
    for (let s = offset / SECTOR; s < (offset + bytes) / SECTOR; s++) st.bitmap[s >> 3] |= 1 << (s & 7);
    const from = Math.floor(offset / SECTOR / 8);
    const to = Math.ceil((offset + bytes) / SECTOR / 8);
    await bs.file!.pwrite(BITMAP_OFF + from, st.bitmap.subarray(from, to));
  },
  async coBlockStatus(bs, offset, bytes): Promise<BlockStatus> {
    const r = runs(chainState(bs), offset, bytes)[0];
    return { pnum: r.len, allocated: r.alloc, data: r.alloc, zero: false };
  },
  getLength(bs) {
    return chainState(bs).size;
  },
  async changeBackingFile(bs, name, fmt) {
    const st = chainState(bs);
    await bs.file!.pwrite(0, encodeHeader(st.size, name ?? '', fmt ?? '', st.bitmap).subarray(0, BITMAP_OFF));
  },
};

/** A registry with the mem protocol, raw and the in-test formats. */
export function testRegistry(...extra: BlockDriver[]): BlockDriverRegistry {
  const r = new BlockDriverRegistry();
  r.register(memDriver);
  r.register(rawDriver);
  r.register(chainDriver);
  for (const d of extra) r.register(d);
  return r;
}

export { IOVector };
