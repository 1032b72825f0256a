/**
 * NBD wire constants: magics, sizes, handshake and transmission flags, options, reply and
 * information types, commands, chunk types, metadata context names, and the names QEMU
 * uses for them in messages (nbd_*_lookup).
 */

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

/** `qemu:dirty-bitmap:` descriptor flag: the range is dirty. */
export const NBD_STATE_DIRTY = 1 << 0;
export const NBD_META_BASE_ALLOCATION = 'base:allocation';
export const NBD_META_ALLOCATION_DEPTH = 'qemu:allocation-depth';
export const NBD_META_DIRTY_BITMAP_PREFIX = 'qemu:dirty-bitmap:';


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

