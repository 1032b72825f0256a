/**
 * Byte helpers for the NBD codecs: big-endian views, UTF-8 strings, concatenation, and the
 * EINVAL error every decoder throws.
 */
import { BlockError } from '../block/errors.js';

const utf8Encoder = new TextEncoder();
const utf8Decoder = new TextDecoder();

export function view(buf: Uint8Array): DataView {
  return new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
}

export function invalid(message: string): BlockError {
  return new BlockError('EINVAL', message, { op: 'nbd' });
}

export function needLength(buf: Uint8Array, n: number, what: string): void {
  if (buf.length !== n) throw invalid(`${what}: expected ${n} bytes, got ${buf.length}`);
}

export function encodeString(s: string): Uint8Array {
  return utf8Encoder.encode(s);
}

export function decodeString(buf: Uint8Array): string {
  return utf8Decoder.decode(buf);
}

export function concat(parts: Uint8Array[]): Uint8Array {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let pos = 0;
  for (const p of parts) {
    out.set(p, pos);
    pos += p.length;
  }
  return out;
}

export function u32(n: number): Uint8Array {
  const b = new Uint8Array(4);
  view(b).setUint32(0, n >>> 0);
  return b;
}
