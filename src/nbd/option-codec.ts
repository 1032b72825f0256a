/**
 * Codecs of the handshake: greeting, client flags, option requests (C→S) and option replies
 * (S→C), with the INFO/GO and metadata-context payloads.
 */
import type { BlockError } from '../block/errors.js';
import { concat, decodeString, encodeString, invalid, needLength, u32, view } from './bytes.js';
import {
  NBD_EXPORT_NAME_REPLY_SIZE,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_NO_ZEROES,
  NBD_GREETING_SIZE,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_DESCRIPTION,
  NBD_INFO_EXPORT,
  NBD_INFO_NAME,
  NBD_INIT_MAGIC,
  NBD_MAX_STRING_SIZE,
  NBD_OPTION_HEADER_SIZE,
  NBD_OPTION_REPLY_HEADER_SIZE,
  NBD_OPTS_MAGIC,
  NBD_REP_MAGIC,
  nbdOptName,
} from './constants.js';

/** S→C greeting: NBDMAGIC, IHAVEOPT, handshake flags. */
export function encodeGreeting(flags = NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES): Uint8Array {
  const buf = new Uint8Array(NBD_GREETING_SIZE);
  const v = view(buf);
  v.setBigUint64(0, NBD_INIT_MAGIC);
  v.setBigUint64(8, NBD_OPTS_MAGIC);
  v.setUint16(16, flags);
  return buf;
}

/** The handshake flags of a greeting; anything but a newstyle greeting is refused. */
export function decodeGreeting(buf: Uint8Array): { flags: number } {
  needLength(buf, NBD_GREETING_SIZE, 'greeting');
  const v = view(buf);
  if (v.getBigUint64(0) !== NBD_INIT_MAGIC) throw invalid('Bad initial magic received');
  const magic = v.getBigUint64(8);
  if (magic !== NBD_OPTS_MAGIC) {
    throw invalid(magic === 0x00420281861253n ? 'Server using oldstyle negotiation' : 'Bad server magic received');
  }
  return { flags: v.getUint16(16) };
}

export function encodeClientFlags(flags: number): Uint8Array {
  const buf = new Uint8Array(4);
  view(buf).setUint32(0, flags >>> 0);
  return buf;
}

export function decodeClientFlags(buf: Uint8Array): number {
  needLength(buf, 4, 'client flags');
  return view(buf).getUint32(0);
}

// ---------------------------------------------------------------------------------------------
// Option requests (C→S)

export interface OptionHeader {
  option: number;
  length: number;
}

export function encodeOptionHeader(option: number, length: number): Uint8Array {
  const buf = new Uint8Array(NBD_OPTION_HEADER_SIZE);
  const v = view(buf);
  v.setBigUint64(0, NBD_OPTS_MAGIC);
  v.setUint32(8, option >>> 0);
  v.setUint32(12, length >>> 0);
  return buf;
}

/** A whole option request: header plus its data. */
export function encodeOption(option: number, data: Uint8Array = new Uint8Array(0)): Uint8Array {
  return concat([encodeOptionHeader(option, data.length), data]);
}

export function decodeOptionHeader(buf: Uint8Array): OptionHeader {
  needLength(buf, NBD_OPTION_HEADER_SIZE, 'option header');
  const v = view(buf);
  const magic = v.getBigUint64(0);
  if (magic !== NBD_OPTS_MAGIC) throw invalid(`Bad magic received (got 0x${magic.toString(16)})`);
  return { option: v.getUint32(8), length: v.getUint32(12) };
}

/** Data of INFO and GO: the export name and the information types asked for. */
export interface InfoRequest {
  name: string;
  infos: number[];
}

export function encodeInfoRequest(req: InfoRequest): Uint8Array {
  const name = encodeString(req.name);
  const buf = new Uint8Array(4 + name.length + 2 + 2 * req.infos.length);
  const v = view(buf);
  v.setUint32(0, name.length);
  buf.set(name, 4);
  v.setUint16(4 + name.length, req.infos.length);
  req.infos.forEach((t, i) => v.setUint16(6 + name.length + 2 * i, t));
  return buf;
}

/** `option` names the option in the messages ("Inconsistent lengths in option go"). */
export function decodeInfoRequest(data: Uint8Array, option: number): InfoRequest {
  const what = nbdOptName(option);
  const v = view(data);
  if (data.length < 4 + 2) throw invalid(`Inconsistent lengths in option ${what}`);
  const nameLen = v.getUint32(0);
  if (nameLen > NBD_MAX_STRING_SIZE) throw invalid(`Invalid name length: ${nameLen}`);
  if (nameLen > data.length - 6) throw invalid(`Inconsistent lengths in option ${what}`);
  const name = decodeString(data.subarray(4, 4 + nameLen));
  const count = v.getUint16(4 + nameLen);
  if (data.length !== 6 + nameLen + 2 * count) throw invalid(`Inconsistent lengths in option ${what}`);
  const infos: number[] = [];
  for (let i = 0; i < count; i++) infos.push(v.getUint16(6 + nameLen + 2 * i));
  return { name, infos };
}

/** Data of LIST_META_CONTEXT and SET_META_CONTEXT. */
export interface MetaContextRequest {
  exportName: string;
  queries: string[];
}

export function encodeMetaContextRequest(req: MetaContextRequest): Uint8Array {
  const name = encodeString(req.exportName);
  const parts: Uint8Array[] = [u32(name.length), name, u32(req.queries.length)];
  for (const q of req.queries) {
    const b = encodeString(q);
    parts.push(u32(b.length), b);
  }
  return concat(parts);
}

export function decodeMetaContextRequest(data: Uint8Array, option: number): MetaContextRequest {
  const bad = (): BlockError => invalid(`Inconsistent lengths in option ${nbdOptName(option)}`);
  const v = view(data);
  let pos = 0;
  const take = (n: number): Uint8Array => {
    if (n > data.length - pos) throw bad();
    const b = data.subarray(pos, pos + n);
    pos += n;
    return b;
  };
  const takeU32 = (): number => {
    if (4 > data.length - pos) throw bad();
    const n = v.getUint32(pos);
    pos += 4;
    return n;
  };
  const nameLen = takeU32();
  if (nameLen > NBD_MAX_STRING_SIZE) throw invalid(`Invalid name length: ${nameLen}`);
  const exportName = decodeString(take(nameLen));
  const count = takeU32();
  const queries: string[] = [];
  for (let i = 0; i < count; i++) {
    // Over-long queries are kept: they match no context, and QEMU ignores them likewise.
    queries.push(decodeString(take(takeU32())));
  }
  if (pos !== data.length) throw bad();
  return { exportName, queries };
}


// ---------------------------------------------------------------------------------------------
// Option replies (S→C)

export interface OptionReplyHeader {
  option: number;
  type: number;
  length: number;
}

export function encodeOptionReply(option: number, type: number, data: Uint8Array = new Uint8Array(0)): Uint8Array {
  const buf = new Uint8Array(NBD_OPTION_REPLY_HEADER_SIZE + data.length);
  const v = view(buf);
  v.setBigUint64(0, NBD_REP_MAGIC);
  v.setUint32(8, option >>> 0);
  v.setUint32(12, type >>> 0);
  v.setUint32(16, data.length);
  buf.set(data, NBD_OPTION_REPLY_HEADER_SIZE);
  return buf;
}

/** An error reply whose data is a message for a human. */
export function encodeOptionError(option: number, type: number, message: string): Uint8Array {
  return encodeOptionReply(option, type, encodeString(message));
}

export function decodeOptionReplyHeader(buf: Uint8Array): OptionReplyHeader {
  needLength(buf, NBD_OPTION_REPLY_HEADER_SIZE, 'option reply header');
  const v = view(buf);
  const magic = v.getBigUint64(0);
  if (magic !== NBD_REP_MAGIC) throw invalid(`Unexpected option reply magic 0x${magic.toString(16)}`);
  return { option: v.getUint32(8), type: v.getUint32(12), length: v.getUint32(16) };
}

/** NBD_REP_SERVER data: one export of a LIST answer. */
export function encodeServerReply(name: string, description = ''): Uint8Array {
  const n = encodeString(name);
  return concat([u32(n.length), n, encodeString(description)]);
}

export function decodeServerReply(data: Uint8Array): { name: string; description: string } {
  if (data.length < 4) throw invalid('incorrect option length 0');
  const len = view(data).getUint32(0);
  if (len > data.length - 4) throw invalid('incorrect option name length');
  return { name: decodeString(data.subarray(4, 4 + len)), description: decodeString(data.subarray(4 + len)) };
}

/** NBD_REP_META_CONTEXT data. */
export function encodeMetaContextReply(id: number, name: string): Uint8Array {
  return concat([u32(id), encodeString(name)]);
}

export function decodeMetaContextReply(data: Uint8Array): { id: number; name: string } {
  if (data.length < 4) throw invalid(`Invalid meta context reply length ${data.length}`);
  return { id: view(data).getUint32(0), name: decodeString(data.subarray(4)) };
}

export type InfoReply =
  | { type: typeof NBD_INFO_EXPORT; size: bigint; flags: number }
  | { type: typeof NBD_INFO_NAME; name: string }
  | { type: typeof NBD_INFO_DESCRIPTION; description: string }
  | { type: typeof NBD_INFO_BLOCK_SIZE; minimum: number; preferred: number; maximum: number }
  | { type: number; raw: Uint8Array };

export function encodeInfoExport(size: number | bigint, flags: number): Uint8Array {
  const buf = new Uint8Array(12);
  const v = view(buf);
  v.setUint16(0, NBD_INFO_EXPORT);
  v.setBigUint64(2, BigInt(size));
  v.setUint16(10, flags);
  return buf;
}

/** An information item whose payload is a string (NAME, DESCRIPTION). */
function encodeInfoString(type: number, text: string): Uint8Array {
  const s = encodeString(text);
  const buf = new Uint8Array(2 + s.length);
  view(buf).setUint16(0, type);
  buf.set(s, 2);
  return buf;
}

export function encodeInfoName(name: string): Uint8Array {
  return encodeInfoString(NBD_INFO_NAME, name);
}

export function encodeInfoDescription(description: string): Uint8Array {
  return encodeInfoString(NBD_INFO_DESCRIPTION, description);
}

export function encodeInfoBlockSize(minimum: number, preferred: number, maximum: number): Uint8Array {
  const buf = new Uint8Array(14);
  const v = view(buf);
  v.setUint16(0, NBD_INFO_BLOCK_SIZE);
  v.setUint32(2, minimum >>> 0);
  v.setUint32(6, preferred >>> 0);
  v.setUint32(10, maximum >>> 0);
  return buf;
}

/** NBD_REP_INFO data; unknown information types come back raw (clients ignore them). */
export function decodeInfoReply(data: Uint8Array): InfoReply {
  if (data.length < 2) throw invalid(`Invalid length ${data.length} of info reply`);
  const v = view(data);
  const type = v.getUint16(0);
  switch (type) {
    case NBD_INFO_EXPORT:
      needLength(data, 12, 'info export');
      return { type, size: v.getBigUint64(2), flags: v.getUint16(10) };
    case NBD_INFO_NAME:
      return { type, name: decodeString(data.subarray(2)) };
    case NBD_INFO_DESCRIPTION:
      return { type, description: decodeString(data.subarray(2)) };
    case NBD_INFO_BLOCK_SIZE:
      needLength(data, 14, 'info block size');
      return { type, minimum: v.getUint32(2), preferred: v.getUint32(6), maximum: v.getUint32(10) };
    default:
      return { type, raw: data.subarray(2) };
  }
}

/** The end of an EXPORT_NAME handshake: size, flags and (unless NO_ZEROES) 124 zero bytes. */
export function encodeExportNameReply(size: number | bigint, flags: number, noZeroes: boolean): Uint8Array {
  const buf = new Uint8Array(noZeroes ? 10 : NBD_EXPORT_NAME_REPLY_SIZE);
  const v = view(buf);
  v.setBigUint64(0, BigInt(size));
  v.setUint16(8, flags);
  return buf;
}

/** Size and flags from the first 10 bytes of an EXPORT_NAME answer. */
export function decodeExportNameReply(buf: Uint8Array): { size: bigint; flags: number } {
  if (buf.length < 10) throw invalid('export name reply too short');
  const v = view(buf);
  return { size: v.getBigUint64(0), flags: v.getUint16(8) };
}

