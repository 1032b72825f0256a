/**
 * The NBD wire protocol (fixed newstyle handshake, simple and structured replies): constants
 * and pure codecs for both directions, shared by the server (src/nbd) and the client driver.
 * Nothing here touches a socket. All integers on the wire are big-endian; 64-bit fields
 * (cookies, offsets) are bigint so that a hostile 2^64-1 is seen as what it is. Decoders take
 * exactly the bytes of one header or payload and throw a BlockError('EINVAL') with QEMU's
 * wording when the bytes do not add up.
 */
import { BlockError, type BlockErrorCode } from '../block/errors.js';

// ---------------------------------------------------------------------------------------------
// Magics and fixed sizes

export const NBD_INIT_MAGIC = 0x4e42444d41474943n; // "NBDMAGIC"
export const NBD_OPTS_MAGIC = 0x49484156454f5054n; // "IHAVEOPT"
export const NBD_REP_MAGIC = 0x0003e889045565a9n;
export const NBD_REQUEST_MAGIC = 0x25609513;
export const NBD_SIMPLE_REPLY_MAGIC = 0x67446698;
export const NBD_STRUCTURED_REPLY_MAGIC = 0x668e33ef;

export const NBD_GREETING_SIZE = 18;
export const NBD_OPTION_HEADER_SIZE = 16;
export const NBD_OPTION_REPLY_HEADER_SIZE = 20;
export const NBD_REQUEST_SIZE = 28;
export const NBD_SIMPLE_REPLY_SIZE = 16;
export const NBD_CHUNK_HEADER_SIZE = 20;
/** Size, flags and the 124 zero bytes that end an EXPORT_NAME handshake. */
export const NBD_EXPORT_NAME_REPLY_SIZE = 134;

/** Largest READ/WRITE payload (and option payload) accepted: 32 MiB, as QEMU. */
export const NBD_MAX_BUFFER_SIZE = 32 * 1024 * 1024;
/** Longest export name, context name or description. */
export const NBD_MAX_STRING_SIZE = 4096;
/** Block-status descriptors per chunk at most (QEMU's limit). */
export const NBD_MAX_BLOCK_STATUS_EXTENTS = 131072;
export const NBD_DEFAULT_PORT = 10809;

// ---------------------------------------------------------------------------------------------
// Handshake flags

export const NBD_FLAG_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_NO_ZEROES = 1 << 1;
export const NBD_FLAG_C_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_C_NO_ZEROES = 1 << 1;

// ---------------------------------------------------------------------------------------------
// Options and option replies

export const NBD_OPT_EXPORT_NAME = 1;
export const NBD_OPT_ABORT = 2;
export const NBD_OPT_LIST = 3;
export const NBD_OPT_STARTTLS = 5;
export const NBD_OPT_INFO = 6;
export const NBD_OPT_GO = 7;
export const NBD_OPT_STRUCTURED_REPLY = 8;
export const NBD_OPT_LIST_META_CONTEXT = 9;
export const NBD_OPT_SET_META_CONTEXT = 10;
export const NBD_OPT_EXTENDED_HEADERS = 11;

export const NBD_REP_ACK = 1;
export const NBD_REP_SERVER = 2;
export const NBD_REP_INFO = 3;
export const NBD_REP_META_CONTEXT = 4;
export const NBD_REP_FLAG_ERROR = 0x80000000;
export const NBD_REP_ERR_UNSUP = (NBD_REP_FLAG_ERROR | 1) >>> 0;
export const NBD_REP_ERR_POLICY = (NBD_REP_FLAG_ERROR | 2) >>> 0;
export const NBD_REP_ERR_INVALID = (NBD_REP_FLAG_ERROR | 3) >>> 0;
export const NBD_REP_ERR_PLATFORM = (NBD_REP_FLAG_ERROR | 4) >>> 0;
export const NBD_REP_ERR_TLS_REQD = (NBD_REP_FLAG_ERROR | 5) >>> 0;
export const NBD_REP_ERR_UNKNOWN = (NBD_REP_FLAG_ERROR | 6) >>> 0;
export const NBD_REP_ERR_SHUTDOWN = (NBD_REP_FLAG_ERROR | 7) >>> 0;
export const NBD_REP_ERR_BLOCK_SIZE_REQD = (NBD_REP_FLAG_ERROR | 8) >>> 0;
export const NBD_REP_ERR_TOO_BIG = (NBD_REP_FLAG_ERROR | 9) >>> 0;

export function isReplyError(type: number): boolean {
  return (type & NBD_REP_FLAG_ERROR) !== 0;
}

export const NBD_INFO_EXPORT = 0;
export const NBD_INFO_NAME = 1;
export const NBD_INFO_DESCRIPTION = 2;
export const NBD_INFO_BLOCK_SIZE = 3;

// ---------------------------------------------------------------------------------------------
// Transmission flags (u16, sent with the export size)

export const NBD_FLAG_HAS_FLAGS = 1 << 0;
export const NBD_FLAG_READ_ONLY = 1 << 1;
export const NBD_FLAG_SEND_FLUSH = 1 << 2;
export const NBD_FLAG_SEND_FUA = 1 << 3;
export const NBD_FLAG_ROTATIONAL = 1 << 4;
export const NBD_FLAG_SEND_TRIM = 1 << 5;
export const NBD_FLAG_SEND_WRITE_ZEROES = 1 << 6;
export const NBD_FLAG_SEND_DF = 1 << 7;
export const NBD_FLAG_CAN_MULTI_CONN = 1 << 8;
export const NBD_FLAG_SEND_RESIZE = 1 << 9;
export const NBD_FLAG_SEND_CACHE = 1 << 10;
export const NBD_FLAG_SEND_FAST_ZERO = 1 << 11;

/** Names of the transmission flags in bit order, as `qemu-nbd -L` prints them. */
export const NBD_FLAG_NAMES: readonly (readonly [number, string])[] = [
  [NBD_FLAG_READ_ONLY, 'readonly'],
  [NBD_FLAG_SEND_FLUSH, 'flush'],
  [NBD_FLAG_SEND_FUA, 'fua'],
  [NBD_FLAG_ROTATIONAL, 'rotational'],
  [NBD_FLAG_SEND_TRIM, 'trim'],
  [NBD_FLAG_SEND_WRITE_ZEROES, 'zeroes'],
  [NBD_FLAG_SEND_DF, 'df'],
  [NBD_FLAG_CAN_MULTI_CONN, 'multi'],
  [NBD_FLAG_SEND_RESIZE, 'resize'],
  [NBD_FLAG_SEND_CACHE, 'cache'],
  [NBD_FLAG_SEND_FAST_ZERO, 'fast-zero'],
];

// ---------------------------------------------------------------------------------------------
// Commands, command flags, structured reply chunks

export const NBD_CMD_READ = 0;
export const NBD_CMD_WRITE = 1;
export const NBD_CMD_DISC = 2;
export const NBD_CMD_FLUSH = 3;
export const NBD_CMD_TRIM = 4;
export const NBD_CMD_CACHE = 5;
export const NBD_CMD_WRITE_ZEROES = 6;
export const NBD_CMD_BLOCK_STATUS = 7;

export const NBD_CMD_FLAG_FUA = 1 << 0;
export const NBD_CMD_FLAG_NO_HOLE = 1 << 1;
export const NBD_CMD_FLAG_DF = 1 << 2;
export const NBD_CMD_FLAG_REQ_ONE = 1 << 3;
export const NBD_CMD_FLAG_FAST_ZERO = 1 << 4;

export const NBD_REPLY_FLAG_DONE = 1 << 0;

export const NBD_REPLY_TYPE_NONE = 0;
export const NBD_REPLY_TYPE_OFFSET_DATA = 1;
export const NBD_REPLY_TYPE_OFFSET_HOLE = 2;
export const NBD_REPLY_TYPE_BLOCK_STATUS = 5;
export const NBD_REPLY_TYPE_ERROR = (1 << 15) + 1;
export const NBD_REPLY_TYPE_ERROR_OFFSET = (1 << 15) + 2;

export function isChunkError(type: number): boolean {
  return (type & (1 << 15)) !== 0;
}

/** `base:allocation` descriptor flags. */
export const NBD_STATE_HOLE = 1 << 0;
export const NBD_STATE_ZERO = 1 << 1;

export const NBD_META_BASE_ALLOCATION = 'base:allocation';
export const NBD_META_ALLOCATION_DEPTH = 'qemu:allocation-depth';
export const NBD_META_DIRTY_BITMAP_PREFIX = 'qemu:dirty-bitmap:';

// ---------------------------------------------------------------------------------------------
// Errno values on the wire

export const NBD_SUCCESS = 0;
export const NBD_EPERM = 1;
export const NBD_EIO = 5;
export const NBD_ENOMEM = 12;
export const NBD_EINVAL = 22;
export const NBD_ENOSPC = 28;
export const NBD_EOVERFLOW = 75;
export const NBD_ENOTSUP = 95;
export const NBD_ESHUTDOWN = 108;

/**
 * A block-layer error as the NBD errno a server sends. The raw errno number decides (blkdebug
 * can inject any); QEMU folds EROFS into EPERM, EDQUOT and EFBIG into ENOSPC, and everything it
 * has no wire value for into EINVAL. `stopping` turns ECANCELED into ESHUTDOWN.
 */
export function nbdErrnoFromError(e: unknown, stopping = false): number {
  if (!(e instanceof BlockError)) return NBD_EIO;
  switch (e.errno) {
    case 1: // EPERM
    case 30: // EROFS
      return NBD_EPERM;
    case 5:
      return NBD_EIO;
    case 12:
      return NBD_ENOMEM;
    case 27: // EFBIG
    case 28: // ENOSPC
    case 122: // EDQUOT
      return NBD_ENOSPC;
    case 75:
      return NBD_EOVERFLOW;
    case 95:
      return NBD_ENOTSUP;
    case 108:
      return NBD_ESHUTDOWN;
    case 125: // ECANCELED
      return stopping ? NBD_ESHUTDOWN : NBD_EINVAL;
    default:
      return NBD_EINVAL;
  }
}

const WIRE_ERRNO: Record<number, { code: BlockErrorCode; text: string }> = {
  [NBD_EPERM]: { code: 'EPERM', text: 'Operation not permitted' },
  [NBD_EIO]: { code: 'EIO', text: 'Input/output error' },
  // No BlockErrorCode of their own: a generic code carrying the raw errno and its text.
  [NBD_ENOMEM]: { code: 'EIO', text: 'Cannot allocate memory' },
  [NBD_EINVAL]: { code: 'EINVAL', text: 'Invalid argument' },
  [NBD_ENOSPC]: { code: 'ENOSPC', text: 'No space left on device' },
  [NBD_EOVERFLOW]: { code: 'EINVAL', text: 'Value too large for defined data type' },
  [NBD_ENOTSUP]: { code: 'ENOTSUP', text: 'Operation not supported' },
  [NBD_ESHUTDOWN]: { code: 'EIO', text: 'Cannot send after transport endpoint shutdown' },
};

/**
 * An NBD errno a client received, as a BlockError: the eight wire values keep their number
 * (`errno`), anything else is EINVAL as QEMU's client does.
 */
export function blockErrorFromNbdErrno(errno: number, message?: string, op?: string): BlockError {
  const known = WIRE_ERRNO[errno] ?? WIRE_ERRNO[NBD_EINVAL];
  const number = WIRE_ERRNO[errno] === undefined ? NBD_EINVAL : errno;
  return new BlockError(known.code, message !== undefined && message !== '' ? message : known.text, {
    op,
    errno: number,
    errnoText: known.text,
  });
}

// ---------------------------------------------------------------------------------------------
// Names, as QEMU's nbd_*_lookup (used in log and error texts)

const OPT_NAMES: Record<number, string> = {
  [NBD_OPT_EXPORT_NAME]: 'export name',
  [NBD_OPT_ABORT]: 'abort',
  [NBD_OPT_LIST]: 'list',
  [NBD_OPT_STARTTLS]: 'starttls',
  [NBD_OPT_INFO]: 'info',
  [NBD_OPT_GO]: 'go',
  [NBD_OPT_STRUCTURED_REPLY]: 'structured reply',
  [NBD_OPT_LIST_META_CONTEXT]: 'list meta context',
  [NBD_OPT_SET_META_CONTEXT]: 'set meta context',
};

const CMD_NAMES: Record<number, string> = {
  [NBD_CMD_READ]: 'read',
  [NBD_CMD_WRITE]: 'write',
  [NBD_CMD_DISC]: 'disconnect',
  [NBD_CMD_FLUSH]: 'flush',
  [NBD_CMD_TRIM]: 'trim',
  [NBD_CMD_CACHE]: 'cache',
  [NBD_CMD_WRITE_ZEROES]: 'write zeroes',
  [NBD_CMD_BLOCK_STATUS]: 'block status',
};

const REP_NAMES: Record<number, string> = {
  [NBD_REP_ACK]: 'ack',
  [NBD_REP_SERVER]: 'server',
  [NBD_REP_INFO]: 'info',
  [NBD_REP_META_CONTEXT]: 'meta context',
  [NBD_REP_ERR_UNSUP]: 'unsupported',
  [NBD_REP_ERR_POLICY]: 'denied by policy',
  [NBD_REP_ERR_INVALID]: 'invalid',
  [NBD_REP_ERR_PLATFORM]: 'platform lacks support',
  [NBD_REP_ERR_TLS_REQD]: 'TLS required',
  [NBD_REP_ERR_UNKNOWN]: 'export unknown',
  [NBD_REP_ERR_SHUTDOWN]: 'server shutting down',
  [NBD_REP_ERR_BLOCK_SIZE_REQD]: 'block size required',
};

export function nbdOptName(opt: number): string {
  return OPT_NAMES[opt] ?? '<unknown>';
}

export function nbdCmdName(cmd: number): string {
  return CMD_NAMES[cmd] ?? '<unknown>';
}

export function nbdRepName(rep: number): string {
  return REP_NAMES[rep] ?? '<unknown>';
}

/** Transmission flags as `qemu-nbd -L` lists them: "flush fua trim" (HAS_FLAGS unnamed). */
export function nbdFlagNames(flags: number): string {
  return NBD_FLAG_NAMES.filter(([bit]) => (flags & bit) !== 0)
    .map(([, name]) => name)
    .join(' ');
}

// ---------------------------------------------------------------------------------------------
// Byte helpers

const utf8Encoder = new TextEncoder();
const utf8Decoder = new TextDecoder();

function view(buf: Uint8Array): DataView {
  return new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
}

function invalid(message: string): BlockError {
  return new BlockError('EINVAL', message, { op: 'nbd' });
}

function needLength(buf: Uint8Array, n: number, what: string): void {
  if (buf.length !== n) throw invalid(`${what}: expected ${n} bytes, got ${buf.length}`);
}

export function encodeString(s: string): Uint8Array {
  return utf8Encoder.encode(s);
}

export function decodeString(buf: Uint8Array): string {
  return utf8Decoder.decode(buf);
}

function concat(parts: Uint8Array[]): Uint8Array {
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

// ---------------------------------------------------------------------------------------------
// Handshake

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

function u32(n: number): Uint8Array {
  const b = new Uint8Array(4);
  view(b).setUint32(0, n >>> 0);
  return b;
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

export function encodeInfoName(name: string): Uint8Array {
  const s = encodeString(name);
  const buf = new Uint8Array(2 + s.length);
  view(buf).setUint16(0, NBD_INFO_NAME);
  buf.set(s, 2);
  return buf;
}

export function encodeInfoDescription(description: string): Uint8Array {
  const s = encodeString(description);
  const buf = new Uint8Array(2 + s.length);
  view(buf).setUint16(0, NBD_INFO_DESCRIPTION);
  buf.set(s, 2);
  return buf;
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

// ---------------------------------------------------------------------------------------------
// Transmission: requests (C→S)

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
