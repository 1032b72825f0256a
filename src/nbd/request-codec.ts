/**
 * Codecs of the transmission phase: requests (C→S), simple replies and structured reply
 * chunks (S→C) with their payload decoders.
 */
import { concat, decodeString, encodeString, invalid, needLength, view } from './bytes.js';
import {
  NBD_CHUNK_HEADER_SIZE,
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE_BLOCK_STATUS,
  NBD_REPLY_TYPE_ERROR,
  NBD_REPLY_TYPE_ERROR_OFFSET,
  NBD_REPLY_TYPE_NONE,
  NBD_REPLY_TYPE_OFFSET_DATA,
  NBD_REPLY_TYPE_OFFSET_HOLE,
  NBD_REQUEST_MAGIC,
  NBD_REQUEST_SIZE,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_SIMPLE_REPLY_SIZE,
  NBD_STRUCTURED_REPLY_MAGIC,
} from './constants.js';

export interface NbdRequest {
  flags: number;
  type: number;
  cookie: bigint;
  offset: bigint;
  length: number;
}

export function encodeRequest(req: { flags?: number; type: number; cookie: bigint; offset: number | bigint; length: number }): Uint8Array {
  const buf = new Uint8Array(NBD_REQUEST_SIZE);
  const v = view(buf);
  v.setUint32(0, NBD_REQUEST_MAGIC);
  v.setUint16(4, req.flags ?? 0);
  v.setUint16(6, req.type);
  v.setBigUint64(8, req.cookie);
  v.setBigUint64(16, BigInt(req.offset));
  v.setUint32(24, req.length >>> 0);
  return buf;
}

/**
 * A request header. A bad magic still yields the fields (QEMU answers with the cookie read
 * from the bad header before it closes): `magicOk` says whether the stream can be trusted.
 */
export function decodeRequest(buf: Uint8Array): NbdRequest & { magic: number; magicOk: boolean } {
  needLength(buf, NBD_REQUEST_SIZE, 'request');
  const v = view(buf);
  const magic = v.getUint32(0);
  return {
    magic,
    magicOk: magic === NBD_REQUEST_MAGIC,
    flags: v.getUint16(4),
    type: v.getUint16(6),
    cookie: v.getBigUint64(8),
    offset: v.getBigUint64(16),
    length: v.getUint32(24),
  };
}

// ---------------------------------------------------------------------------------------------
// Transmission: replies (S→C)

export function encodeSimpleReply(cookie: bigint, error = 0): Uint8Array {
  const buf = new Uint8Array(NBD_SIMPLE_REPLY_SIZE);
  const v = view(buf);
  v.setUint32(0, NBD_SIMPLE_REPLY_MAGIC);
  v.setUint32(4, error >>> 0);
  v.setBigUint64(8, cookie);
  return buf;
}

export interface ChunkHeader {
  flags: number;
  type: number;
  cookie: bigint;
  length: number;
}

export function encodeChunkHeader(h: ChunkHeader): Uint8Array {
  const buf = new Uint8Array(NBD_CHUNK_HEADER_SIZE);
  const v = view(buf);
  v.setUint32(0, NBD_STRUCTURED_REPLY_MAGIC);
  v.setUint16(4, h.flags);
  v.setUint16(6, h.type);
  v.setBigUint64(8, h.cookie);
  v.setUint32(16, h.length >>> 0);
  return buf;
}

/**
 * The start of any reply: the magic says which kind. A simple reply needs 16 bytes, a chunk
 * header 20; pass at least 4 and read the rest once `kind` is known.
 */
export function replyKind(buf: Uint8Array): 'simple' | 'structured' {
  if (buf.length < 4) throw invalid('reply too short');
  const magic = view(buf).getUint32(0);
  if (magic === NBD_SIMPLE_REPLY_MAGIC) return 'simple';
  if (magic === NBD_STRUCTURED_REPLY_MAGIC) return 'structured';
  throw invalid(`invalid magic (got 0x${magic.toString(16)})`);
}

export function decodeSimpleReply(buf: Uint8Array): { error: number; cookie: bigint } {
  needLength(buf, NBD_SIMPLE_REPLY_SIZE, 'simple reply');
  const v = view(buf);
  if (v.getUint32(0) !== NBD_SIMPLE_REPLY_MAGIC) throw invalid('invalid simple reply magic');
  return { error: v.getUint32(4), cookie: v.getBigUint64(8) };
}

export function decodeChunkHeader(buf: Uint8Array): ChunkHeader {
  needLength(buf, NBD_CHUNK_HEADER_SIZE, 'structured reply header');
  const v = view(buf);
  if (v.getUint32(0) !== NBD_STRUCTURED_REPLY_MAGIC) throw invalid('invalid structured reply magic');
  return { flags: v.getUint16(4), type: v.getUint16(6), cookie: v.getBigUint64(8), length: v.getUint32(16) };
}

/**
 * The header of a successful READ reply, written at the start of `frame` where the data
 * follows it: a simple reply, or under structured replies an OFFSET_DATA chunk header with
 * its offset (NONE for a zero-length read). Returns the header's length.
 */
export function encodeReadReplyHeaderInto(
  frame: Uint8Array,
  cookie: bigint,
  structured: boolean,
  offset: number | bigint,
  length: number,
  done: boolean,
): number {
  const v = view(frame);
  if (!structured) {
    v.setUint32(0, NBD_SIMPLE_REPLY_MAGIC);
    v.setUint32(4, 0);
    v.setBigUint64(8, cookie);
    return NBD_SIMPLE_REPLY_SIZE;
  }
  v.setUint32(0, NBD_STRUCTURED_REPLY_MAGIC);
  v.setUint16(4, done ? NBD_REPLY_FLAG_DONE : 0);
  v.setUint16(6, length === 0 ? NBD_REPLY_TYPE_NONE : NBD_REPLY_TYPE_OFFSET_DATA);
  v.setBigUint64(8, cookie);
  if (length === 0) {
    v.setUint32(16, 0);
    return NBD_CHUNK_HEADER_SIZE;
  }
  v.setUint32(16, (length + 8) >>> 0);
  v.setBigUint64(NBD_CHUNK_HEADER_SIZE, BigInt(offset));
  return NBD_CHUNK_HEADER_SIZE + 8;
}

/** A chunk as header + payload, kept apart so READ data is sent without a copy. */
export interface EncodedChunk {
  header: Uint8Array;
  payload: Uint8Array[];
}

function chunk(cookie: bigint, type: number, done: boolean, payload: Uint8Array[]): EncodedChunk {
  let length = 0;
  for (const p of payload) length += p.length;
  return { header: encodeChunkHeader({ flags: done ? NBD_REPLY_FLAG_DONE : 0, type, cookie, length }), payload };
}

export function encodeNoneChunk(cookie: bigint): EncodedChunk {
  return chunk(cookie, NBD_REPLY_TYPE_NONE, true, []);
}

export function encodeOffsetDataChunk(cookie: bigint, offset: number | bigint, data: Uint8Array, done: boolean): EncodedChunk {
  const head = new Uint8Array(8);
  view(head).setBigUint64(0, BigInt(offset));
  return chunk(cookie, NBD_REPLY_TYPE_OFFSET_DATA, done, [head, data]);
}

export function encodeOffsetHoleChunk(cookie: bigint, offset: number | bigint, size: number, done: boolean): EncodedChunk {
  const p = new Uint8Array(12);
  const v = view(p);
  v.setBigUint64(0, BigInt(offset));
  v.setUint32(8, size >>> 0);
  return chunk(cookie, NBD_REPLY_TYPE_OFFSET_HOLE, done, [p]);
}

export interface BlockStatusExtent {
  length: number;
  flags: number;
}

export function encodeBlockStatusChunk(cookie: bigint, contextId: number, extents: readonly BlockStatusExtent[], done: boolean): EncodedChunk {
  const p = new Uint8Array(4 + 8 * extents.length);
  const v = view(p);
  v.setUint32(0, contextId >>> 0);
  extents.forEach((e, i) => {
    v.setUint32(4 + 8 * i, e.length >>> 0);
    v.setUint32(8 + 8 * i, e.flags >>> 0);
  });
  return chunk(cookie, NBD_REPLY_TYPE_BLOCK_STATUS, done, [p]);
}

export function encodeErrorChunk(cookie: bigint, errno: number, message: string, done = true, offset?: number | bigint): EncodedChunk {
  const msg = encodeString(message).subarray(0, 0xffff);
  const p = new Uint8Array(6 + msg.length + (offset === undefined ? 0 : 8));
  const v = view(p);
  v.setUint32(0, errno >>> 0);
  v.setUint16(4, msg.length);
  p.set(msg, 6);
  if (offset !== undefined) v.setBigUint64(6 + msg.length, BigInt(offset));
  return chunk(cookie, offset === undefined ? NBD_REPLY_TYPE_ERROR : NBD_REPLY_TYPE_ERROR_OFFSET, done, [p]);
}

/** All bytes of a chunk in one buffer (tests, small replies). */
export function chunkBytes(c: EncodedChunk): Uint8Array {
  return concat([c.header, ...c.payload]);
}

// Chunk payload decoders (client side). Each checks the lengths the spec demands.

export function decodeOffsetData(payload: Uint8Array): { offset: bigint; data: Uint8Array } {
  if (payload.length < 9) throw invalid('Protocol error: invalid payload for NBD_REPLY_TYPE_OFFSET_DATA');
  return { offset: view(payload).getBigUint64(0), data: payload.subarray(8) };
}

export function decodeOffsetHole(payload: Uint8Array): { offset: bigint; size: number } {
  if (payload.length !== 12) throw invalid('Protocol error: invalid payload for NBD_REPLY_TYPE_OFFSET_HOLE');
  const v = view(payload);
  const size = v.getUint32(8);
  if (size === 0) throw invalid('Protocol error: NBD_REPLY_TYPE_OFFSET_HOLE with zero length');
  return { offset: v.getBigUint64(0), size };
}

export function decodeBlockStatus(payload: Uint8Array): { contextId: number; extents: BlockStatusExtent[] } {
  if (payload.length < 12 || (payload.length - 4) % 8 !== 0) {
    throw invalid('Protocol error: invalid payload for NBD_REPLY_TYPE_BLOCK_STATUS');
  }
  const v = view(payload);
  const extents: BlockStatusExtent[] = [];
  for (let pos = 4; pos < payload.length; pos += 8) {
    extents.push({ length: v.getUint32(pos), flags: v.getUint32(pos + 4) });
  }
  return { contextId: v.getUint32(0), extents };
}

export function decodeErrorChunk(type: number, payload: Uint8Array): { errno: number; message: string; offset?: bigint } {
  if (payload.length < 6) throw invalid('Protocol error: invalid payload for structured error');
  const v = view(payload);
  const errno = v.getUint32(0);
  const len = v.getUint16(4);
  const extra = type === NBD_REPLY_TYPE_ERROR_OFFSET ? 8 : 0;
  if (errno === 0 || len + 6 + extra > payload.length) {
    throw invalid('Protocol error: invalid payload for structured error');
  }
  const message = decodeString(payload.subarray(6, 6 + len));
  if (extra === 0) return { errno, message };
  return { errno, message, offset: v.getBigUint64(6 + len) };
}

