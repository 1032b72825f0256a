/**
 * Block status for NBD: the export's allocation as `base:allocation` and
 * `qemu:allocation-depth` descriptors, a dirty bitmap's bits as `qemu:dirty-bitmap:NAME`, and structured READ replies that send zero extents as
 * OFFSET_HOLE chunks. Both walk the block layer's status planner through the backing chain
 * (blockStatusAbove), as qemu-nbd does. The sector tail past the backend's length (the export
 * size is rounded up to 512) reads as zeros and reports as a hole.
 */
import type { NbdConnection } from './connection.js';
import type { BlockBackend } from '../block/backend.js';
import { isBlockError } from '../block/errors.js';
import type { BdrvDirtyBitmap } from '../block/dirty-bitmap.js';
import type { BlockStatus } from '../block/driver.js';
import { CONTEXT_ID_ALLOCATION_DEPTH, type MetaContext } from './export.js';
import * as p from './protocol.js';

export interface Extent {
  length: number;
  /** base:allocation flags, or the allocation depth. */
  value: number;
  zero: boolean;
}

/** What the backend does not hold (past its length, or a zero pnum) reads as zeros. */
function holeExtent(contextId: number, length: number): Extent {
  return { length, value: contextId === CONTEXT_ID_ALLOCATION_DEPTH ? 0 : p.NBD_STATE_HOLE | p.NBD_STATE_ZERO, zero: true };
}

/** The extent a status answer for `ask` bytes describes. */
function extentOf(st: BlockStatus & { depth: number }, contextId: number, ask: number): Extent {
  // A zero pnum would stall the walk: what the node cannot describe reads as zeros.
  if (st.pnum <= 0) return holeExtent(contextId, ask);
  const length = Math.min(st.pnum, ask);
  if (contextId === CONTEXT_ID_ALLOCATION_DEPTH) {
    // 0 = unallocated in the whole chain, 1 = the top image, 2 = its backing file, ...
    return { length, value: st.allocated ? st.depth + 1 : 0, zero: st.zero };
  }
  return { length, value: (st.data ? 0 : p.NBD_STATE_HOLE) | (st.zero ? p.NBD_STATE_ZERO : 0), zero: st.zero };
}

/** The status of the range starting at `offset`, at most `bytes` long (> 0 bytes). */
async function statusAt(backend: BlockBackend, contextId: number, offset: number, bytes: number, backendLength: number): Promise<Extent> {
  if (offset >= backendLength) return holeExtent(contextId, bytes);
  const ask = Math.min(bytes, backendLength - offset);
  return extentOf(await backend.blockStatusAbove(offset, ask), contextId, ask);
}

/**
 * statusAt's answer now, when the backend has it without waiting (a raw file's lseek); null
 * when it has not, and statusAt must ask (and report any error).
 */
export function statusNow(backend: BlockBackend, contextId: number, offset: number, bytes: number, backendLength: number): Extent | null {
  if (offset >= backendLength) return holeExtent(contextId, bytes);
  const ask = Math.min(bytes, backendLength - offset);
  const st = backend.blockStatusAboveNow(offset, ask);
  return st === null ? null : extentOf(st, contextId, ask);
}

/** A run of equal bits of a `qemu:dirty-bitmap:` context from `offset` (bitmap_to_extents). */
function bitmapAt(bm: BdrvDirtyBitmap, offset: number, bytes: number): Extent {
  const g = bm.granularity;
  const dirty = bm.isDirty(offset);
  let end = (Math.floor(offset / g) + 1) * g;
  while (end < offset + bytes && bm.isDirty(end) === dirty) end += g;
  return { length: Math.min(end, offset + bytes) - offset, value: dirty ? p.NBD_STATE_DIRTY : 0, zero: false };
}

/**
 * Descriptors for one context over [offset, offset + bytes): equal neighbours merged, never
 * past the request, at most NBD_MAX_BLOCK_STATUS_EXTENTS (or one with REQ_ONE); a shorter
 * answer than asked is allowed by the protocol.
 */
export async function collectExtents(
  backend: BlockBackend,
  context: MetaContext,
  offset: number,
  bytes: number,
  backendLength: number,
  reqOne: boolean,
): Promise<p.BlockStatusExtent[]> {
  const max = reqOne ? 1 : p.NBD_MAX_BLOCK_STATUS_EXTENTS;
  const out: p.BlockStatusExtent[] = [];
  let pos = offset;
  const end = offset + bytes;
  while (pos < end) {
    const e = context.bitmap
      ? bitmapAt(context.bitmap, pos, end - pos)
      : (statusNow(backend, context.id, pos, end - pos, backendLength) ?? (await statusAt(backend, context.id, pos, end - pos, backendLength)));
    const prev = out[out.length - 1];
    if (prev !== undefined && prev.flags === e.value && prev.length + e.length <= 0xffffffff) {
      prev.length += e.length;
    } else if (out.length < max) {
      out.push({ length: e.length, flags: e.value });
    } else {
      break;
    }
    pos += e.length;
  }
  return out;
}

/**
 * A structured READ without DF: one chunk per status extent, OFFSET_HOLE where the range
 * reads as zeros, OFFSET_DATA elsewhere; DONE on the last. A failure after chunks went out
 * is an ERROR chunk (with DONE), so the connection stays usable.
 */
export async function sparseRead(
  conn: NbdConnection,
  backend: BlockBackend,
  cookie: bigint,
  offset: number,
  bytes: number,
  backendLength: number,
  errno: (e: unknown) => number,
): Promise<void> {
  let progress = 0;
  while (progress < bytes) {
    const at = offset + progress;
    let e: Extent;
    try {
      e = statusNow(backend, 0, at, bytes - progress, backendLength) ?? (await statusAt(backend, 0, at, bytes - progress, backendLength));
    } catch (err) {
      const why = isBlockError(err) ? `: ${err.errnoMessage}` : '';
      const c = p.encodeErrorChunk(cookie, errno(err), `unable to check for holes${why}`);
      return conn.send(c.header, ...c.payload);
    }
    const final = progress + e.length === bytes;
    if (e.zero) {
      const c = p.encodeOffsetHoleChunk(cookie, at, e.length, final);
      await conn.send(c.header, ...c.payload);
    } else {
      // Header and data in one frame: the data is read in place behind the header.
      const frame = conn.frames.get(e.length);
      const head = p.encodeReadReplyHeaderInto(frame, cookie, true, at, e.length, final);
      try {
        await backend.pread(at, frame.subarray(head, head + e.length));
      } catch (err) {
        conn.frames.put(frame);
        const ec = p.encodeErrorChunk(cookie, errno(err), 'reading from file failed');
        return conn.send(ec.header, ...ec.payload);
      }
      await conn.sendFrame(frame, head + e.length);
    }
    progress += e.length;
  }
}
