/**
 * Client handshake, in QEMU's order (nbd_receive_negotiate): greeting and client flags 0x3,
 * [STARTTLS], STRUCTURED_REPLY, SET_META_CONTEXT for one context, GO asking for BLOCK_SIZE;
 * a server that does not know GO gets LIST (to find out whether the export exists, since
 * EXPORT_NAME cannot say so) and then EXPORT_NAME.
 */
import { BlockError } from '../../block/errors.js';
import {
  NBD_EXPORT_NAME_REPLY_SIZE,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_NO_ZEROES,
  NBD_GREETING_SIZE,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_EXPORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_LIST,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STARTTLS,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_ACK,
  NBD_REP_ERR_UNSUP,
  NBD_REP_INFO,
  NBD_REP_META_CONTEXT,
  NBD_REP_SERVER,
  decodeExportNameReply,
  decodeGreeting,
  decodeInfoReply,
  decodeMetaContextReply,
  decodeServerReply,
  encodeClientFlags,
  encodeInfoRequest,
  encodeMetaContextRequest,
  encodeString,
} from '../../nbd/protocol.js';
import { isErrorReply, negotiationError, type OptionChannel, optionLabel, replyError } from './options.js';

/** What the handshake learnt about the export (QEMU's NBDExportInfo). */
export interface NbdExportInfo {
  name: string;
  description: string;
  size: number;
  /** Transmission flags. */
  flags: number;
  /** INFO_BLOCK_SIZE, or all 0 when the server sent none. */
  minBlock: number;
  optBlock: number;
  maxBlock: number;
  structuredReply: boolean;
  /** Id of the selected metadata context, null when none was selected. */
  contextId: number | null;
}

export interface HandshakeRequest {
  exportName: string;
  structuredReply: boolean;
  /** The context block status reports (base:allocation, or x-dirty-bitmap's). */
  metaContext: string | null;
  /** Upgrade the channel's socket after STARTTLS's ACK; absent: no TLS. */
  startTls?: (ch: OptionChannel) => Promise<void>;
}

export function emptyExportInfo(name: string): NbdExportInfo {
  return { name, description: '', size: 0, flags: 0, minBlock: 0, optBlock: 0, maxBlock: 0, structuredReply: false, contextId: null };
}

function isPowerOfTwo(n: number): boolean {
  return n > 0 && (n & (n - 1)) === 0;
}

function exportSize(size: bigint): number {
  if (size > BigInt(Number.MAX_SAFE_INTEGER)) throw negotiationError(`export size ${size} is too large`);
  return Number(size);
}

/** Fold one INFO reply into `info` (unknown items are ignored, as the spec asks). */
export function parseInfoReply(data: Uint8Array, info: NbdExportInfo): number {
  let item;
  try {
    item = decodeInfoReply(data);
  } catch (e) {
    throw negotiationError(e instanceof BlockError ? e.message : String(e));
  }
  if ('size' in item) {
    info.size = exportSize(item.size);
    info.flags = item.flags;
  } else if ('minimum' in item) {
    const { minimum: min, preferred: pref, maximum: max } = item;
    if (!isPowerOfTwo(min)) throw negotiationError(`server minimum block size ${min} is not a power of two`);
    if (!isPowerOfTwo(pref)) throw negotiationError(`server preferred block size ${pref} is not a power of two`);
    if (pref < min) throw negotiationError(`server preferred block size ${pref} is smaller than minimum block size ${min}`);
    if (max < min || (max !== 0xffffffff && max % min !== 0)) {
      throw negotiationError(`server maximum block size ${max} is not a multiple of minimum block size ${min}`);
    }
    info.minBlock = min;
    info.optBlock = pref;
    info.maxBlock = max;
  } else if ('name' in item) {
    info.name = item.name;
  } else if ('description' in item) {
    info.description = item.description;
  }
  return item.type;
}

/**
 * INFO or GO for `info.name` asking for block sizes (nbd_opt_info_or_go). True when the server
 * answered; false when it does not know the option (ERR_UNSUP: the caller falls back).
 */
export async function optInfoOrGo(ch: OptionChannel, opt: number, info: NbdExportInfo): Promise<boolean> {
  ch.send(opt, encodeInfoRequest({ name: info.name, infos: [NBD_INFO_BLOCK_SIZE] }));
  let sawExport = false;
  for (;;) {
    const r = await ch.reply(opt);
    if (isErrorReply(r)) {
      if (r.type === NBD_REP_ERR_UNSUP) return false;
      throw replyError(opt, r);
    }
    if (r.type === NBD_REP_ACK) {
      if (!sawExport) throw negotiationError('broken server omitted NBD_INFO_EXPORT');
      return true;
    }
    if (r.type !== NBD_REP_INFO) {
      ch.abort();
      throw negotiationError(`unexpected reply type ${r.type}, expected ${NBD_REP_INFO} for option ${optionLabel(opt)}`);
    }
    if (parseInfoReply(r.data, info) === NBD_INFO_EXPORT) sawExport = true;
  }
}

/**
 * An option without data whose only good answer is ACK; false on ERR_UNSUP, and when not
 * `strict` on any error (QEMU 7.2 asks for structured replies so: a server that wants TLS
 * first then fails the next option instead, with the message users know).
 */
export async function requestSimpleOption(ch: OptionChannel, opt: number, strict: boolean): Promise<boolean> {
  ch.send(opt);
  const r = await ch.reply(opt);
  if (isErrorReply(r)) {
    if (r.type === NBD_REP_ERR_UNSUP || !strict) return false;
    throw replyError(opt, r);
  }
  if (r.type !== NBD_REP_ACK || r.data.length !== 0) {
    ch.abort();
    throw negotiationError(`Server answered option ${optionLabel(opt)} with unexpected reply type ${r.type}`);
  }
  return true;
}

/** SET_META_CONTEXT for one context: its id, or null when the server does not offer it. */
async function setMetaContext(ch: OptionChannel, exportName: string, context: string): Promise<number | null> {
  ch.send(NBD_OPT_SET_META_CONTEXT, encodeMetaContextRequest({ exportName, queries: [context] }));
  let id: number | null = null;
  for (;;) {
    const r = await ch.reply(NBD_OPT_SET_META_CONTEXT);
    if (isErrorReply(r)) {
      if (r.type === NBD_REP_ERR_UNSUP) return null;
      throw replyError(NBD_OPT_SET_META_CONTEXT, r);
    }
    if (r.type === NBD_REP_ACK) return id;
    if (r.type !== NBD_REP_META_CONTEXT || r.data.length < 4) {
      ch.abort();
      throw negotiationError(`Unexpected reply type ${r.type} for option ${optionLabel(NBD_OPT_SET_META_CONTEXT)}`);
    }
    if (id !== null) {
      ch.abort();
      throw negotiationError('Server replied with more than one context');
    }
    const ctx = decodeMetaContextReply(r.data);
    if (ctx.name !== context) {
      ch.abort();
      throw negotiationError(`Server replied with unexpected meta context '${ctx.name}'`);
    }
    id = ctx.id;
  }
}

/** LIST, to learn whether `want` exists before EXPORT_NAME (nbd_receive_query_exports). */
async function queryExports(ch: OptionChannel, want: string): Promise<void> {
  ch.send(NBD_OPT_LIST);
  let found = false;
  for (;;) {
    const r = await ch.reply(NBD_OPT_LIST);
    if (isErrorReply(r)) {
      // A server without LIST is trusted to have the export.
      if (r.type === NBD_REP_ERR_UNSUP) return;
      throw replyError(NBD_OPT_LIST, r);
    }
    if (r.type === NBD_REP_ACK) break;
    if (r.type !== NBD_REP_SERVER) {
      ch.abort();
      throw negotiationError(`Unexpected reply type ${r.type} expected ${NBD_REP_SERVER}`);
    }
    if (decodeServerReply(r.data).name === want) found = true;
  }
  if (!found) {
    ch.abort();
    throw negotiationError(`No export with name '${want}' available`);
  }
}

/** Greeting and client flags; whether the server speaks fixed newstyle and NO_ZEROES. */
export async function receiveGreeting(ch: OptionChannel): Promise<{ fixed: boolean; noZeroes: boolean }> {
  let flags: number;
  try {
    flags = decodeGreeting(await ch.reader.read(NBD_GREETING_SIZE)).flags;
  } catch (e) {
    throw negotiationError(e instanceof Error ? e.message : String(e));
  }
  const fixed = (flags & NBD_FLAG_FIXED_NEWSTYLE) !== 0;
  const noZeroes = (flags & NBD_FLAG_NO_ZEROES) !== 0;
  ch.sock.write(encodeClientFlags((fixed ? NBD_FLAG_C_FIXED_NEWSTYLE : 0) | (noZeroes ? NBD_FLAG_C_NO_ZEROES : 0)));
  return { fixed, noZeroes };
}

/** STARTTLS, then the upgrade of the channel's socket. */
export async function startTls(ch: OptionChannel, fixed: boolean, upgrade: (ch: OptionChannel) => Promise<void>): Promise<void> {
  if (!fixed) throw negotiationError('Server does not support STARTTLS');
  ch.send(NBD_OPT_STARTTLS);
  const r = await ch.reply(NBD_OPT_STARTTLS);
  if (isErrorReply(r)) throw replyError(NBD_OPT_STARTTLS, r);
  if (r.type !== NBD_REP_ACK || r.data.length !== 0) {
    ch.abort();
    throw negotiationError(`Server rejected request to start TLS ${r.type}`);
  }
  await upgrade(ch);
}

/** How far nbd_start_negotiate got: 'newstyle' (EXPORT_NAME only), 'fixed', 'structured'. */
export type NegotiateMode = 'newstyle' | 'fixed' | 'structured';

/** Greeting, [STARTTLS], [STRUCTURED_REPLY] (nbd_start_negotiate). */
export async function nbdStartNegotiate(
  ch: OptionChannel,
  structuredReply: boolean,
  tls?: HandshakeRequest['startTls'],
): Promise<{ mode: NegotiateMode; noZeroes: boolean }> {
  const { fixed, noZeroes } = await receiveGreeting(ch);
  if (tls) await startTls(ch, fixed, tls);
  if (!fixed) return { mode: 'newstyle', noZeroes };
  const sr = structuredReply && (await requestSimpleOption(ch, NBD_OPT_STRUCTURED_REPLY, false));
  return { mode: sr ? 'structured' : 'fixed', noZeroes };
}

/** The whole handshake of a client that goes on to transmission. */
export async function nbdReceiveNegotiate(ch: OptionChannel, req: HandshakeRequest): Promise<NbdExportInfo> {
  const { mode, noZeroes } = await nbdStartNegotiate(ch, req.structuredReply, req.startTls);
  const info = emptyExportInfo(req.exportName);
  if (mode !== 'newstyle') {
    info.structuredReply = mode === 'structured';
    if (info.structuredReply && req.metaContext !== null) {
      info.contextId = await setMetaContext(ch, req.exportName, req.metaContext);
    }
    if (await optInfoOrGo(ch, NBD_OPT_GO, info)) return info;
    await queryExports(ch, req.exportName);
  }
  // EXPORT_NAME has no reply header: size, flags and (unless NO_ZEROES) 124 zero bytes.
  ch.send(NBD_OPT_EXPORT_NAME, encodeString(req.exportName));
  const tail = decodeExportNameReply(await ch.reader.read(noZeroes ? 10 : NBD_EXPORT_NAME_REPLY_SIZE));
  info.size = exportSize(tail.size);
  info.flags = tail.flags;
  return info;
}
