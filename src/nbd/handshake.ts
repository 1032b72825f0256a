/**
 * The fixed-newstyle handshake, server side: greeting, client flags, then options until GO or
 * EXPORT_NAME. Replies and messages follow qemu-nbd 7.2; where 7.2 breaks the spec (ABORT
 * before TLS) we follow the spec. Option payloads are never trusted: lengths above 32 MiB
 * end the session, payloads we have no use for are skipped as they stream in, and those we
 * parse are read whole only up to OPTION_BUFFER_MAX.
 */
import type * as tls from 'node:tls';
import { isBlockError } from '../block/errors.js';
import type { NbdConnection } from './connection.js';
import type { MetaContext, NbdExport } from './export.js';
import * as p from './protocol.js';

/** Largest option payload we parse (INFO/GO need < 140 KiB; meta queries likewise). */
const OPTION_BUFFER_MAX = 1024 * 1024;

/** TLS for a server: node:tls options for the server side, and an optional identity check. */
export interface NbdTlsOptions {
  /**
   * Server-side node:tls options (key/cert/ca with requestCert for x509, or pskCallback with
   * ciphers: 'PSK'), as for tls.createServer.
   */
  options: tls.TlsOptions;
  /**
   * Authorize a client after the TLS handshake (qemu's --tls-authz): `dn` is the client
   * certificate's subject in certificate order, RDNs joined by commas; false denies.
   */
  authorize?: (peer: { dn: string | null }) => boolean;
}

export interface HandshakeContext {
  /** Export by name, or undefined. */
  findExport(name: string): NbdExport | undefined;
  exports(): Iterable<NbdExport>;
  tls: NbdTlsOptions | null;
  /** True once the server is stopping: the next option is answered ERR_SHUTDOWN. */
  stopping(): boolean;
}

export interface Negotiated {
  export: NbdExport;
  structuredReply: boolean;
  /** Contexts selected by SET_META_CONTEXT for this export, in id order. */
  contexts: MetaContext[];
}

/** A handshake failure; `message` is qemu's text after "option negotiation failed: ". */
export class NegotiationError extends Error {
  override readonly name = 'NegotiationError';
}

/** Contexts chosen by the last SET_META_CONTEXT, and the export they were chosen for. */
interface MetaSelection {
  export: NbdExport | null;
  contexts: MetaContext[];
}

/** Answer of the whole handshake: the export to serve, or null when the client went away. */
export async function negotiate(conn: NbdConnection, ctx: HandshakeContext): Promise<Negotiated | null> {
  await conn.send(p.encodeGreeting(p.NBD_FLAG_FIXED_NEWSTYLE | p.NBD_FLAG_NO_ZEROES));
  let flags = (await conn.reader.read(4)).readUInt32BE(0);
  const fixed = (flags & p.NBD_FLAG_C_FIXED_NEWSTYLE) !== 0;
  const noZeroes = (flags & p.NBD_FLAG_C_NO_ZEROES) !== 0;
  flags &= ~(p.NBD_FLAG_C_FIXED_NEWSTYLE | p.NBD_FLAG_C_NO_ZEROES);
  if (flags !== 0) throw new NegotiationError(`Unknown client flags 0x${flags.toString(16)} received`);

  let structuredReply = false;
  const meta: MetaSelection = { export: null, contexts: [] };
  for (;;) {
    let header: p.OptionHeader;
    try {
      header = p.decodeOptionHeader(await conn.reader.read(p.NBD_OPTION_HEADER_SIZE));
    } catch (e) {
      if (isBlockError(e)) throw new NegotiationError('Bad magic received');
      throw e;
    }
    const { option, length } = header;
    if (length > p.NBD_MAX_BUFFER_SIZE) {
      throw new NegotiationError(`len (${length} ) is larger than max len (${p.NBD_MAX_BUFFER_SIZE})`);
    }
    const reply = (type: number, data?: Uint8Array): Promise<void> => conn.send(p.encodeOptionReply(option, type, data));
    const drop = async (type: number, message: string): Promise<void> => {
      await conn.reader.skip(length);
      await conn.send(p.encodeOptionError(option, type, message));
    };

    if (ctx.stopping()) {
      await drop(p.NBD_REP_ERR_SHUTDOWN, 'Server shutting down');
      return null;
    }

    if (ctx.tls !== null && !conn.isTls) {
      // FORCEDTLS: nothing but STARTTLS (and ABORT, which the spec says must be ACKed)
      // before the channel is encrypted.
      if (!fixed) throw new NegotiationError(`Unsupported option 0x${option.toString(16)}`);
      if (option === p.NBD_OPT_STARTTLS) {
        if (length !== 0) {
          await drop(p.NBD_REP_ERR_INVALID, "option 'starttls' has unexpected length");
          throw new NegotiationError("option 'starttls' has unexpected length");
        }
        await startTls(conn, ctx.tls);
        continue;
      }
      if (option === p.NBD_OPT_EXPORT_NAME) {
        throw new NegotiationError(`Option 0x${option.toString(16)} not permitted before TLS`);
      }
      if (option === p.NBD_OPT_ABORT) {
        await conn.reader.skip(length);
        await reply(p.NBD_REP_ACK);
        return null;
      }
      await drop(p.NBD_REP_ERR_TLS_REQD, `Option 0x${option.toString(16)} not permitted before TLS`);
      continue;
    }

    if (!fixed && option !== p.NBD_OPT_EXPORT_NAME) {
      // Plain newstyle: anything but EXPORT_NAME ends the session without a reply.
      throw new NegotiationError(`Unsupported option ${option} (${p.nbdOptName(option)})`);
    }

    switch (option) {
      case p.NBD_OPT_EXPORT_NAME: {
        if (length > p.NBD_MAX_STRING_SIZE) throw new NegotiationError('Bad length received');
        const name = p.decodeString(await conn.reader.read(length));
        const exp = ctx.findExport(name);
        if (exp === undefined) throw new NegotiationError('export not found');
        // No error reply exists here: a full export can only close the connection.
        if (!exp.hasRoom()) throw new NegotiationError(`export '${sanitize(name)}' has too many clients`);
        const size = await exp.size();
        await conn.send(p.encodeExportNameReply(size, exp.transmissionFlags(structuredReply), noZeroes));
        return { export: exp, structuredReply, contexts: meta.export === exp ? meta.contexts : [] };
      }
      case p.NBD_OPT_ABORT:
        await conn.reader.skip(length);
        await reply(p.NBD_REP_ACK);
        return null;
      case p.NBD_OPT_LIST:
        if (length !== 0) {
          await drop(p.NBD_REP_ERR_INVALID, "option 'list' has unexpected length");
          break;
        }
        for (const exp of ctx.exports()) await reply(p.NBD_REP_SERVER, p.encodeServerReply(exp.name, exp.description));
        await reply(p.NBD_REP_ACK);
        break;
      case p.NBD_OPT_STARTTLS:
        if (length !== 0) await drop(p.NBD_REP_ERR_INVALID, "option 'starttls' has unexpected length");
        else if (ctx.tls !== null) await reply(p.NBD_REP_ERR_INVALID, p.encodeString('TLS already enabled'));
        else await reply(p.NBD_REP_ERR_POLICY, p.encodeString('TLS not configured'));
        break;
      case p.NBD_OPT_STRUCTURED_REPLY:
        if (length !== 0) await drop(p.NBD_REP_ERR_INVALID, "option 'structured reply' has unexpected length");
        else if (structuredReply) await reply(p.NBD_REP_ERR_INVALID, p.encodeString('structured reply already negotiated'));
        else {
          structuredReply = true;
          await reply(p.NBD_REP_ACK);
        }
        break;
      case p.NBD_OPT_INFO:
      case p.NBD_OPT_GO: {
        const data = await readOption(conn, option, length);
        if (data === null) break;
        const done = await handleInfo(conn, ctx, option, data, structuredReply);
        if (done !== null) return { export: done, structuredReply, contexts: meta.export === done ? meta.contexts : [] };
        break;
      }
      case p.NBD_OPT_LIST_META_CONTEXT:
      case p.NBD_OPT_SET_META_CONTEXT: {
        if (option === p.NBD_OPT_SET_META_CONTEXT) {
          // SET replaces the selection even when it fails.
          meta.export = null;
          meta.contexts = [];
        }
        if (option === p.NBD_OPT_SET_META_CONTEXT && !structuredReply) {
          await drop(
            p.NBD_REP_ERR_INVALID,
            `request option '${p.nbdOptName(option)}' when structured reply is not negotiated`,
          );
          break;
        }
        const data = await readOption(conn, option, length);
        if (data === null) break;
        await handleMetaContext(conn, ctx, option, data, meta);
        break;
      }
      default:
        await drop(p.NBD_REP_ERR_UNSUP, `Unsupported option ${option} (${p.nbdOptName(option)})`);
    }
  }
}

/** The payload of an option we parse, or null after answering ERR_TOO_BIG to a huge one. */
async function readOption(conn: NbdConnection, option: number, length: number): Promise<Uint8Array | null> {
  if (length <= OPTION_BUFFER_MAX) return conn.reader.read(length);
  await conn.reader.skip(length);
  await conn.send(p.encodeOptionError(option, p.NBD_REP_ERR_TOO_BIG, `option '${p.nbdOptName(option)}' is too long`));
  return null;
}

/** Export names in messages: at most 80 characters, then "...", as qemu. */
function sanitize(name: string): string {
  return name.length > 80 ? `${name.slice(0, 80)}...` : name;
}

/** Answer INFO or GO; returns the export when a GO succeeded. */
async function handleInfo(
  conn: NbdConnection,
  ctx: HandshakeContext,
  option: number,
  data: Uint8Array,
  structuredReply: boolean,
): Promise<NbdExport | null> {
  let req: p.InfoRequest;
  try {
    req = p.decodeInfoRequest(data, option);
  } catch (e) {
    if (!isBlockError(e)) throw e;
    await conn.send(p.encodeOptionError(option, p.NBD_REP_ERR_INVALID, e.message));
    return null;
  }
  const exp = ctx.findExport(req.name);
  if (exp === undefined) {
    await conn.send(p.encodeOptionError(option, p.NBD_REP_ERR_UNKNOWN, `export '${sanitize(req.name)}' not present`));
    return null;
  }
  if (option === p.NBD_OPT_GO && !exp.hasRoom()) {
    await conn.send(p.encodeOptionError(option, p.NBD_REP_ERR_POLICY, `export '${sanitize(req.name)}' has too many clients`));
    return null;
  }
  const info = (d: Uint8Array): Promise<void> => conn.send(p.encodeOptionReply(option, p.NBD_REP_INFO, d));
  // qemu's order: NAME if asked, DESCRIPTION if set, BLOCK_SIZE always, EXPORT last.
  if (req.infos.includes(p.NBD_INFO_NAME)) await info(p.encodeInfoName(req.name));
  if (exp.description !== '') await info(p.encodeInfoDescription(exp.description));
  const sizes = exp.blockSizes(option === p.NBD_OPT_INFO || req.infos.includes(p.NBD_INFO_BLOCK_SIZE));
  await info(p.encodeInfoBlockSize(sizes.minimum, sizes.preferred, sizes.maximum));
  await info(p.encodeInfoExport(await exp.size(), exp.transmissionFlags(structuredReply)));
  await conn.send(p.encodeOptionReply(option, p.NBD_REP_ACK));
  return option === p.NBD_OPT_GO ? exp : null;
}

/** Contexts a query names on `exp` (LIST: wildcards and the empty query list everything). */
function matchQuery(exp: NbdExport, query: string, list: boolean): MetaContext[] {
  const offered = exp.contexts;
  if (list && (query === 'base:' || query === 'qemu:')) return offered.filter((c) => c.name.startsWith(query));
  if (list && query === p.NBD_META_DIRTY_BITMAP_PREFIX) return offered.filter((c) => c.name.startsWith(query));
  return offered.filter((c) => c.name === query);
}

async function handleMetaContext(
  conn: NbdConnection,
  ctx: HandshakeContext,
  option: number,
  data: Uint8Array,
  meta: MetaSelection,
): Promise<void> {
  let req: p.MetaContextRequest;
  try {
    req = p.decodeMetaContextRequest(data, option);
  } catch (e) {
    if (!isBlockError(e)) throw e;
    await conn.send(p.encodeOptionError(option, p.NBD_REP_ERR_INVALID, e.message));
    return;
  }
  const exp = ctx.findExport(req.exportName);
  if (exp === undefined) {
    await conn.send(p.encodeOptionError(option, p.NBD_REP_ERR_UNKNOWN, `export '${sanitize(req.exportName)}' not present`));
    return;
  }
  const list = option === p.NBD_OPT_LIST_META_CONTEXT;
  const chosen = new Set<number>();
  if (list && req.queries.length === 0) for (const c of exp.contexts) chosen.add(c.id);
  for (const q of req.queries) for (const c of matchQuery(exp, q, list)) chosen.add(c.id);
  // Answered once each, in id order (base, allocation depth, bitmaps), as qemu.
  const contexts = exp.contexts.filter((c) => chosen.has(c.id));
  for (const c of contexts) {
    await conn.send(p.encodeOptionReply(option, p.NBD_REP_META_CONTEXT, p.encodeMetaContextReply(list ? 0 : c.id, c.name)));
  }
  await conn.send(p.encodeOptionReply(option, p.NBD_REP_ACK));
  if (!list) {
    meta.export = exp;
    meta.contexts = contexts;
  }
}

/**
 * ACK, then the TLS handshake on the same socket; throws when it fails or authz denies. The
 * raw socket is handed to a (never listening) tls.Server, so Node's own server-side checks
 * run: client certificate verification, rejectUnauthorized, PSK callbacks.
 */
async function startTls(conn: NbdConnection, config: NbdTlsOptions): Promise<void> {
  // Loaded for a client that asks for TLS only: node:tls (with node:crypto) took ~10 ms of
  // every tool's start. Before the ACK: once the client has it, its ClientHello may arrive,
  // and the reader must be detached by then.
  const { createServer } = await import('node:tls');
  if (conn.reader.pending !== 0) throw new NegotiationError('Unexpected data after STARTTLS');
  await conn.send(p.encodeOptionReply(p.NBD_OPT_STARTTLS, p.NBD_REP_ACK));
  conn.reader.detach();
  const server = createServer({ ...config.options });
  const socket = await new Promise<tls.TLSSocket>((resolve, reject) => {
    server.once('secureConnection', resolve);
    server.once('tlsClientError', (e: Error) => reject(new NegotiationError(e.message)));
    // A rejected certificate destroys the socket without a tlsClientError.
    conn.socket.once('close', () => reject(new NegotiationError('TLS handshake failed: Verify failed')));
    server.emit('connection', conn.socket);
  });
  if (config.authorize) {
    const cert = socket.getPeerX509Certificate();
    const dn = cert === undefined ? null : cert.subject.split('\n').join(',');
    if (!config.authorize({ dn })) {
      socket.destroy();
      throw new NegotiationError(`TLS x509 authz check for ${dn ?? '(none)'} is denied`);
    }
  }
  conn.useTls(socket);
}
