/**
 * The client's half of the option haggling (QEMU's nbd/client.c): send one option, read its
 * replies. The protocol lets a client send the next option only after the final reply to the
 * previous one, so one channel does one option at a time and needs no locking.
 */
import type { Duplex } from 'node:stream';
import { BlockError } from '../../block/errors.js';
import {
  NBD_MAX_BUFFER_SIZE,
  NBD_OPTION_REPLY_HEADER_SIZE,
  NBD_OPT_ABORT,
  NBD_REP_ERR_BLOCK_SIZE_REQD,
  NBD_REP_ERR_INVALID,
  NBD_REP_ERR_PLATFORM,
  NBD_REP_ERR_POLICY,
  NBD_REP_ERR_SHUTDOWN,
  NBD_REP_ERR_TLS_REQD,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
  decodeOptionReplyHeader,
  decodeString,
  encodeOption,
  isReplyError,
  nbdOptName,
} from '../../nbd/protocol.js';
import type { SocketReader } from '../../nbd/reader.js';

/** A handshake failure; the text is QEMU's, with its hint lines after a newline. */
export function negotiationError(message: string): BlockError {
  return new BlockError('EIO', message, { op: 'nbd-negotiate' });
}

export interface OptionReply {
  type: number;
  data: Uint8Array;
}

/** "7 (go)", as QEMU names an option in its messages. */
export function optionLabel(opt: number): string {
  return `${opt} (${nbdOptName(opt)})`;
}

export class OptionChannel {
  constructor(
    public sock: Duplex,
    public reader: SocketReader,
  ) {}

  send(opt: number, data?: Uint8Array): void {
    this.sock.write(encodeOption(opt, data));
  }

  /** A courtesy ABORT: we do not wait for its ACK (older servers just close). */
  abort(): void {
    this.send(NBD_OPT_ABORT);
  }

  /**
   * The next reply to `opt`, payload included (bounded by the 32 MiB QEMU accepts). A reply to
   * another option or a bad magic breaks the stream: the session is abandoned.
   */
  async reply(opt: number): Promise<OptionReply> {
    let hdr;
    try {
      hdr = decodeOptionReplyHeader(await this.reader.read(NBD_OPTION_REPLY_HEADER_SIZE));
    } catch (e) {
      if (e instanceof BlockError) this.abort();
      throw negotiationError(`failed to read option reply: ${e instanceof Error ? e.message : String(e)}`);
    }
    if (hdr.option !== opt) {
      this.abort();
      throw negotiationError(`Unexpected option type ${optionLabel(hdr.option)}, expected ${optionLabel(opt)}`);
    }
    if (hdr.length > NBD_MAX_BUFFER_SIZE) {
      this.abort();
      throw negotiationError(`server reply ${hdr.type} for option ${optionLabel(opt)} is too long`);
    }
    return { type: hdr.type, data: await this.reader.read(hdr.length) };
  }
}

/** True if the reply is an error (bit 31). */
export function isErrorReply(r: OptionReply): boolean {
  return isReplyError(r.type);
}

/**
 * The BlockError for an error reply (nbd_handle_reply_err), the server's message as a
 * "server reported:" hint line.
 */
export function replyError(opt: number, r: OptionReply): BlockError {
  const o = optionLabel(opt);
  let msg: string;
  switch (r.type) {
    case NBD_REP_ERR_UNSUP:
      msg = `Unsupported option ${o}`;
      break;
    case NBD_REP_ERR_POLICY:
      msg = `Denied by server for option ${o}`;
      break;
    case NBD_REP_ERR_INVALID:
      msg = `Invalid parameters for option ${o}`;
      break;
    case NBD_REP_ERR_PLATFORM:
      msg = `Server lacks support for option ${o}`;
      break;
    case NBD_REP_ERR_TLS_REQD:
      msg = `TLS negotiation required before option ${o}\nDid you forget a valid tls-creds?`;
      break;
    case NBD_REP_ERR_UNKNOWN:
      msg = 'Requested export not available';
      break;
    case NBD_REP_ERR_SHUTDOWN:
      msg = `Server shutting down before option ${o}`;
      break;
    case NBD_REP_ERR_BLOCK_SIZE_REQD:
      msg = `Server requires INFO_BLOCK_SIZE for option ${o}`;
      break;
    default:
      msg = `Unknown error code when asking for option ${o}`;
  }
  if (r.data.length > 0) msg += `\nserver reported: ${decodeString(r.data)}`;
  return negotiationError(msg);
}
