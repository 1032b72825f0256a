/**
 * Listing a server's exports (QEMU's nbd_receive_export_list, behind `qemu-nbd -L`):
 * [STARTTLS], STRUCTURED_REPLY, LIST, then per export INFO asking for block sizes and, with
 * structured replies, LIST_META_CONTEXT (all contexts; then `qemu:` again if no qemu: context
 * came back, for servers that forgot those); ABORT at the end as a courtesy.
 */
import {
  NBD_OPT_INFO,
  NBD_OPT_LIST,
  NBD_OPT_LIST_META_CONTEXT,
  NBD_REP_ACK,
  NBD_REP_ERR_UNSUP,
  NBD_REP_META_CONTEXT,
  NBD_REP_SERVER,
  decodeMetaContextReply,
  decodeServerReply,
  encodeMetaContextRequest,
} from '../../nbd/protocol.js';
import { SocketReader } from '../../nbd/reader.js';
import type { NbdServerAddress } from './config.js';
import { connectSocket } from './connect.js';
import { emptyExportInfo, nbdStartNegotiate, optInfoOrGo, type HandshakeRequest, type NbdExportInfo } from './handshake.js';
import { isErrorReply, negotiationError, OptionChannel, optionLabel, replyError } from './options.js';
import { nbdClientTls } from './tls.js';
import type { TlsCredsObject } from './tls-objects.js';

export interface NbdListedExport extends NbdExportInfo {
  /** Metadata contexts the server lists for the export. */
  contexts: string[];
}

/** LIST: names and descriptions; none when the server does not know LIST. */
async function receiveList(ch: OptionChannel): Promise<NbdListedExport[]> {
  ch.send(NBD_OPT_LIST);
  const out: NbdListedExport[] = [];
  for (;;) {
    const r = await ch.reply(NBD_OPT_LIST);
    if (isErrorReply(r)) {
      if (r.type === NBD_REP_ERR_UNSUP) return out;
      throw replyError(NBD_OPT_LIST, r);
    }
    if (r.type === NBD_REP_ACK) {
      if (r.data.length !== 0) throw negotiationError('length too long for option end');
      return out;
    }
    if (r.type !== NBD_REP_SERVER) {
      ch.abort();
      throw negotiationError(`Unexpected reply type ${r.type} expected ${NBD_REP_SERVER}`);
    }
    const { name, description } = decodeServerReply(r.data);
    out.push({ ...emptyExportInfo(name), description, contexts: [] });
  }
}

/** One LIST_META_CONTEXT round: the names, or null when the server does not know the option. */
async function listMetaContexts(ch: OptionChannel, exportName: string, queries: string[]): Promise<string[] | null> {
  ch.send(NBD_OPT_LIST_META_CONTEXT, encodeMetaContextRequest({ exportName, queries }));
  const names: string[] = [];
  for (;;) {
    const r = await ch.reply(NBD_OPT_LIST_META_CONTEXT);
    if (isErrorReply(r)) {
      if (r.type === NBD_REP_ERR_UNSUP) return names.length === 0 ? null : names;
      throw replyError(NBD_OPT_LIST_META_CONTEXT, r);
    }
    if (r.type === NBD_REP_ACK) return names;
    if (r.type !== NBD_REP_META_CONTEXT) {
      ch.abort();
      throw negotiationError(`Unexpected reply type ${r.type} for option ${optionLabel(NBD_OPT_LIST_META_CONTEXT)}`);
    }
    names.push(decodeMetaContextReply(r.data).name);
  }
}

/** Every export with its details, as `qemu-nbd -L` prints them. */
export async function nbdReceiveExportList(
  ch: OptionChannel,
  tls?: HandshakeRequest['startTls'],
): Promise<NbdListedExport[]> {
  const { mode } = await nbdStartNegotiate(ch, true, tls);
  // Without fixed newstyle a server takes only EXPORT_NAME: we cannot even say ABORT.
  if (mode === 'newstyle') throw negotiationError('Server does not support export lists');
  const list = await receiveList(ch);
  for (const e of list) {
    e.structuredReply = mode === 'structured';
    // If INFO is not known, meta contexts will not be either: stop asking.
    if (!(await optInfoOrGo(ch, NBD_OPT_INFO, e))) break;
    if (mode !== 'structured') continue;
    const first = await listMetaContexts(ch, e.name, []);
    if (first === null) continue;
    e.contexts.push(...first);
    if (first.length > 0 && !first.some((c) => c.startsWith('qemu:'))) {
      e.contexts.push(...((await listMetaContexts(ch, e.name, ['qemu:'])) ?? []));
    }
  }
  ch.abort();
  return list;
}

/**
 * Connect to `server`, list its exports and hang up (qemu-nbd -L's client). `tlsCreds` are
 * client credentials (findTlsCreds); the certificate is checked against `tlsHostname`.
 */
export async function nbdListExports(
  server: NbdServerAddress,
  tlsCreds?: TlsCredsObject,
  tlsHostname?: string,
): Promise<NbdListedExport[]> {
  const tls = tlsCreds === undefined ? undefined : nbdClientTls(tlsCreds, tlsHostname);
  const sock = await connectSocket(server);
  const ch = new OptionChannel(sock, new SocketReader(sock));
  try {
    return await nbdReceiveExportList(ch, tls);
  } finally {
    // The courtesy ABORT goes out before the socket closes.
    await new Promise<void>((resolve) => ch.sock.end(resolve));
    ch.sock.destroy();
    sock.destroy();
  }
}
