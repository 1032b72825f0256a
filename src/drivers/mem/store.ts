/**
 * A sparse in-memory byte store made of fixed-size chunks, and the process-wide namespace the
 * `mem` protocol opens stores from. A chunk exists only once something was written into it, so a
 * 1 TiB image with one byte written costs one chunk.
 *
 * Invariant: every byte of a chunk at or past `length` is zero. Truncate keeps it, so reads never
 * check the length and a later growth reads zeros there.
 */
import { BlockError } from '../../block/errors.js';

export const MEM_CHUNK_SIZE = 64 * 1024;

/** A point-in-time copy of a store (chunks copied, not shared). */
export interface MemStoreSnapshot {
  length: number;
  chunks: Map<number, Uint8Array>;
}

export class MemStore {
  readonly chunks = new Map<number, Uint8Array>();
  length = 0;

  /** Fill `bytes` bytes of `iov` from `offset`; holes read as zeros. */
  read(offset: number, iov: readonly Uint8Array[], bytes: number): void {
    this.forEachPiece(offset, iov, bytes, (idx, inChunk, piece) => {
      const chunk = this.chunks.get(idx);
      if (chunk === undefined) piece.fill(0);
      else piece.set(chunk.subarray(inChunk, inChunk + piece.length));
    });
  }

  /** Store `bytes` bytes of `iov` at `offset`, growing the store past its end. */
  write(offset: number, iov: readonly Uint8Array[], bytes: number): void {
    this.forEachPiece(offset, iov, bytes, (idx, inChunk, piece) => {
      let chunk = this.chunks.get(idx);
      if (chunk === undefined) {
        chunk = new Uint8Array(MEM_CHUNK_SIZE);
        this.chunks.set(idx, chunk);
      }
      chunk.set(piece, inChunk);
    });
    if (offset + bytes > this.length) this.length = offset + bytes;
  }

  /**
   * Walk `bytes` bytes of `iov` against the store from `offset`, one piece per (segment, chunk)
   * overlap: `piece` is the part of a segment that falls in chunk `idx` at `inChunk`.
   */
  private forEachPiece(
    offset: number,
    iov: readonly Uint8Array[],
    bytes: number,
    fn: (idx: number, inChunk: number, piece: Uint8Array) => void,
  ): void {
    let pos = offset;
    let left = bytes;
    for (const seg of iov) {
      if (left === 0) break;
      const segLen = Math.min(seg.length, left);
      for (let segOff = 0; segOff < segLen; ) {
        const idx = Math.floor(pos / MEM_CHUNK_SIZE);
        const inChunk = pos - idx * MEM_CHUNK_SIZE;
        const n = Math.min(MEM_CHUNK_SIZE - inChunk, segLen - segOff);
        fn(idx, inChunk, seg.subarray(segOff, segOff + n));
        segOff += n;
        pos += n;
      }
      left -= segLen;
    }
  }

  /**
   * Make [offset, offset+bytes) read as zeros, growing the store past its end. With `unmap`,
   * chunks wholly inside the range are dropped; partial chunks are always zero-filled in place.
   * Walks the existing chunks, not the range, so zeroing a terabyte is cheap.
   */
  writeZeroes(offset: number, bytes: number, unmap: boolean): void {
    const end = offset + bytes;
    for (const [idx, chunk] of this.chunks) {
      const cStart = idx * MEM_CHUNK_SIZE;
      const cEnd = cStart + MEM_CHUNK_SIZE;
      if (cEnd <= offset || cStart >= end) continue;
      if (unmap && cStart >= offset && cEnd <= end) this.chunks.delete(idx);
      else chunk.fill(0, Math.max(offset, cStart) - cStart, Math.min(end, cEnd) - cStart);
    }
    if (end > this.length) this.length = end;
  }

  /** Drop chunks wholly inside the range (discard is advisory: partial chunks keep their data). */
  discard(offset: number, bytes: number): void {
    const end = offset + bytes;
    for (const idx of this.chunks.keys()) {
      const cStart = idx * MEM_CHUNK_SIZE;
      if (cStart >= offset && cStart + MEM_CHUNK_SIZE <= end) this.chunks.delete(idx);
    }
  }

  /** Set the length; shrinking drops chunks past the end and zeroes the tail of the last one. */
  truncate(size: number): void {
    if (size < this.length) {
      const lastIdx = Math.floor(size / MEM_CHUNK_SIZE);
      for (const [idx, chunk] of this.chunks) {
        if (idx > lastIdx || (idx === lastIdx && size === idx * MEM_CHUNK_SIZE)) this.chunks.delete(idx);
        else if (idx === lastIdx) chunk.fill(0, size - idx * MEM_CHUNK_SIZE);
      }
    }
    this.length = size;
  }

  /**
   * From `offset`, the run of up to `bytes` bytes that is uniformly written (data) or never
   * written (hole): { data, pnum }.
   */
  status(offset: number, bytes: number): { data: boolean; pnum: number } {
    const end = offset + bytes;
    let idx = Math.floor(offset / MEM_CHUNK_SIZE);
    if (offset < this.length && this.chunks.has(idx)) {
      idx++;
      while (idx * MEM_CHUNK_SIZE < end && this.chunks.has(idx)) idx++;
      return { data: true, pnum: Math.min(end, idx * MEM_CHUNK_SIZE) - offset };
    }
    // A hole lasts until the next written chunk: scan the (few) keys rather than the range.
    let next = Infinity;
    for (const k of this.chunks.keys()) if (k > idx && k < next) next = k;
    return { data: false, pnum: Math.min(end, next * MEM_CHUNK_SIZE) - offset };
  }

  /** Empty the store in place (handles that have it open see the change, as with O_TRUNC). */
  clear(): void {
    this.chunks.clear();
    this.length = 0;
  }

  /** Bytes of memory held for data. */
  get allocatedBytes(): number {
    return this.chunks.size * MEM_CHUNK_SIZE;
  }

  snapshot(): MemStoreSnapshot {
    const chunks = new Map<number, Uint8Array>();
    for (const [idx, chunk] of this.chunks) chunks.set(idx, chunk.slice());
    return { length: this.length, chunks };
  }

  restore(snap: MemStoreSnapshot): void {
    this.chunks.clear();
    for (const [idx, chunk] of snap.chunks) {
      if (chunk.length !== MEM_CHUNK_SIZE || idx < 0 || !Number.isSafeInteger(idx)) {
        throw new BlockError('EINVAL', `bad chunk ${idx} in mem store snapshot`, { op: 'restore' });
      }
      // Keep the invariant even for a hand-made snapshot: nothing past the length.
      if (idx * MEM_CHUNK_SIZE >= snap.length) continue;
      const copy = chunk.slice();
      const tail = snap.length - idx * MEM_CHUNK_SIZE;
      if (tail < MEM_CHUNK_SIZE) copy.fill(0, tail);
      this.chunks.set(idx, copy);
    }
    this.length = snap.length;
  }
}

/**
 * A process-wide map of named stores (mem's, powerloss's), kept on a global symbol so that two
 * copies of a module (src and dist, or test runners that reload modules) still share it.
 */
export function processNamespace<T>(key: string): Map<string, T> {
  const sym = Symbol.for(key);
  const g = globalThis as unknown as Record<symbol, Map<string, T> | undefined>;
  let ns = g[sym];
  if (ns === undefined) {
    ns = new Map();
    g[sym] = ns;
  }
  return ns;
}

function namespace(): Map<string, MemStore> {
  return processNamespace<MemStore>('blocklayer.memStores');
}

/** 'mem:disk0' and 'disk0' name the same store. */
export function memStripPrefix(filename: string): string {
  return filename.startsWith('mem:') ? filename.slice('mem:'.length) : filename;
}

function checkName(name: string): string {
  const n = memStripPrefix(name);
  if (n === '') throw new BlockError('EINVAL', 'mem store name must not be empty', { op: 'mem', path: name });
  return n;
}

/** The store NAME, or undefined. */
export function memStoreGet(name: string): MemStore | undefined {
  return namespace().get(memStripPrefix(name));
}

/** Make the store NAME (or empty it in place), with `size` bytes of zeros. */
export function memStoreCreate(name: string, size = 0): MemStore {
  const n = checkName(name);
  if (!Number.isSafeInteger(size) || size < 0) {
    throw new BlockError('EINVAL', `Invalid size ${size} for 'mem:${n}'`, { op: 'create', path: `mem:${n}` });
  }
  const ns = namespace();
  let store = ns.get(n);
  if (store === undefined) {
    store = new MemStore();
    ns.set(n, store);
  } else {
    store.clear();
  }
  store.length = size;
  return store;
}

export function memStoreExists(name: string): boolean {
  return namespace().has(memStripPrefix(name));
}

/** Forget the store NAME; true when it existed. Nodes that have it open keep their reference. */
export function memStoreDelete(name: string): boolean {
  return namespace().delete(memStripPrefix(name));
}

/** Names of every store. */
export function memStoreNames(): string[] {
  return [...namespace().keys()];
}

function mustGet(name: string): MemStore {
  const store = memStoreGet(name);
  if (store === undefined) {
    throw new BlockError('ENOENT', `mem store '${memStripPrefix(name)}' does not exist`, { path: name });
  }
  return store;
}

/** A sparse copy of the store NAME (for power-loss and fuzz tests). */
export function memStoreSnapshot(name: string): MemStoreSnapshot {
  return mustGet(name).snapshot();
}

/** Replace the contents of NAME (created if missing) with a snapshot. */
export function memStoreRestore(name: string, snap: MemStoreSnapshot): void {
  const n = checkName(name);
  const ns = namespace();
  let store = ns.get(n);
  if (store === undefined) {
    store = new MemStore();
    ns.set(n, store);
  }
  store.restore(snap);
}

/** The whole store NAME as one flat buffer (length bytes). */
export function memStoreRead(name: string): Uint8Array {
  const store = mustGet(name);
  const out = new Uint8Array(store.length);
  store.read(0, [out], out.length);
  return out;
}

/**
 * Replace the contents of NAME (created if missing) with `bytes`; all-zero chunks stay
 * unallocated, so a copied sparse image stays sparse.
 */
export function memStoreWrite(name: string, bytes: Uint8Array): void {
  const store = memStoreCreate(name, 0);
  for (let pos = 0; pos < bytes.length; pos += MEM_CHUNK_SIZE) {
    const part = bytes.subarray(pos, Math.min(bytes.length, pos + MEM_CHUNK_SIZE));
    if (part.some((b) => b !== 0)) store.write(pos, [part], part.length);
  }
  store.length = bytes.length;
}
