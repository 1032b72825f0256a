/**
 * Replies of the transmission phase, parsed as the bytes arrive (QEMU's nbd_receive_replies
 * and nbd_co_receive_one_chunk), with no promise per header or payload: `feed` takes whatever
 * one read(2) brought, however it cuts the stream, and completes each request whose last
 * chunk it saw. A READ's data goes into the request's own memory: copied there from the
 * staging buffer, or read there by the kernel when `nextBuffer` hands that memory to the
 * socket (see onread.ts), as QEMU's recvmsg into the request's vector.
 *
 * Anything that does not make sense (a bad magic, an unknown cookie, a malformed chunk) throws
 * a protocol error; the session then poisons the connection.
 */
import { BlockError } from '../../block/errors.js';
import type { IOVector } from '../../block/iovec.js';
import {
  NBD_CHUNK_HEADER_SIZE,
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_READ,
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE_BLOCK_STATUS,
  NBD_REPLY_TYPE_NONE,
  NBD_REPLY_TYPE_OFFSET_DATA,
  NBD_REPLY_TYPE_OFFSET_HOLE,
  NBD_SIMPLE_REPLY_SIZE,
  type BlockStatusExtent,
  blockErrorFromNbdErrno,
  decodeBlockStatus,
  decodeChunkHeader,
  decodeErrorChunk,
  decodeOffsetHole,
  decodeSimpleReply,
  isChunkError,
  nbdCmdName,
  replyKind,
} from '../../nbd/protocol.js';

/**
 * Largest payload of a chunk other than OFFSET_DATA: a block-status chunk of 2^20 descriptors
 * (the spec's bound) is 8 MiB + 4; an error chunk at most 64 KiB + 14.
 */
const MAX_METADATA_CHUNK = 4 + 8 * (1 << 20);

/**
 * Data still to come for one request, at least this much in one piece of its memory, is read
 * there directly; less goes through the staging buffer, where one read(2) may bring several
 * small replies at once.
 */
export const DIRECT_READ_MIN = 64 * 1024;

/**
 * What a reply to a READ has before its data: a structured OFFSET_DATA chunk's header and
 * offset, or a simple reply's header.
 */
const DATA_HEAD_STRUCTURED = NBD_CHUNK_HEADER_SIZE + 8;

/** A request in flight, as its replies fill it in. */
export interface Pending {
  cmd: number;
  offset: number;
  length: number;
  /** READ: where the data goes. */
  into: IOVector | undefined;
  /** READ: bytes the chunks have covered so far. */
  covered: number;
  /** BLOCK_STATUS: the first extent of our context. */
  extent: BlockStatusExtent | null;
  /** The first error chunk; later ones are dropped, as QEMU keeps the first. */
  error: BlockError | null;
  resolve: (p: Pending) => void;
  reject: (e: BlockError) => void;
}

/** The requests in flight, as the parser sees them. */
export interface ReplyHandler {
  /** The request `cookie` names; throws a protocol error when none is in flight. */
  take(cookie: bigint): Pending;
  /** The request's last reply or chunk has been received. */
  finish(cookie: bigint, p: Pending): void;
  /** Every request in flight, if any, is a READ whose data will be read in place. */
  largeReadsOnly(): boolean;
}

export function protocolError(message: string): BlockError {
  return new BlockError('EIO', `Protocol error: ${message}`, { op: 'nbd' });
}

/** What the bytes being received are. */
const HEADER = 0;
const DATA_OFFSET = 1;
const DATA = 2;
const PAYLOAD = 3;
const DEAD = 4;

export class ReplyParser {
  private state = HEADER;
  /** Header (and OFFSET_DATA's offset) bytes gathered so far. */
  private readonly head = Buffer.alloc(NBD_CHUNK_HEADER_SIZE);
  private have = 0;
  private need = NBD_SIMPLE_REPLY_SIZE;
  /** The reply being received: its request, and whether it is the request's last. */
  private cookie = 0n;
  private p: Pending | null = null;
  private last = false;
  /** Structured chunk: type and payload length. */
  private type = 0;
  private length = 0;
  /** DATA: the request's memory still to fill (none: discarded), and how much is left. */
  private segs: Uint8Array[] = [];
  private seg = 0;
  private segPos = 0;
  private left = 0;
  /** The piece of a request's memory handed out for the next read(2), if any. */
  private direct: Uint8Array | null = null;
  /** PAYLOAD: a metadata chunk's payload, gathered whole (bounded by MAX_METADATA_CHUNK). */
  private payload: Buffer = Buffer.alloc(0);
  /** The start of the staging buffer that a READ reply's header is read into alone. */
  private headRead: Uint8Array | null = null;

  constructor(
    private readonly handler: ReplyHandler,
    private readonly structured: boolean,
    private readonly contextId: number | null,
  ) {}

  /**
   * Where the next read(2) should put its bytes: the current READ's memory while enough of its
   * data is still to come, else `staging`.
   */
  nextBuffer(staging: Uint8Array): Uint8Array {
    this.direct = null;
    if (this.state !== DATA && this.state !== HEADER) return staging;
    // When only large READs are coming, no read goes past the reply it is in: the header
    // alone between replies, then the data in place up to its last byte, so that none of it
    // is copied out of staging (up to a socket buffer's worth a reply before the header, a
    // tail of up to 64 KiB after its last direct read: 46 MB in a 512 MiB copy).
    const large = this.handler.largeReadsOnly();
    if (this.state === HEADER) return this.have === 0 && large ? this.headerOnly(staging) : staging;
    const min = large ? 1 : DIRECT_READ_MIN;
    if (this.left < min || this.seg >= this.segs.length) return staging;
    const s = this.segs[this.seg];
    const n = Math.min(s.length - this.segPos, this.left);
    if (n < min) return staging;
    this.direct = s.subarray(this.segPos, this.segPos + n);
    return this.direct;
  }

  private headerOnly(staging: Uint8Array): Uint8Array {
    const n = this.structured ? DATA_HEAD_STRUCTURED : NBD_SIMPLE_REPLY_SIZE;
    if (this.headRead?.buffer !== staging.buffer || this.headRead.byteOffset !== staging.byteOffset) this.headRead = staging.subarray(0, n);
    return this.headRead;
  }

  /**
   * Stop parsing (the connection is being torn down). True when a request's memory had been
   * handed out for the next read(2): the caller must close the socket before that request
   * is failed, or a late read could still write into memory its owner has taken back.
   */
  abandon(): boolean {
    this.state = DEAD;
    const handedOut = this.direct !== null;
    this.direct = null;
    return handedOut;
  }

  /** `n` bytes read into `buf`: in place when `buf` is the memory nextBuffer handed out. */
  received(buf: Uint8Array, n: number): void {
    if (buf === this.direct && this.state === DATA) {
      this.direct = null;
      this.advance(n);
      return;
    }
    this.feed(buf.subarray(0, n));
  }

  /** Parse `buf`, which is only valid during this call (what is kept is copied). */
  feed(buf: Uint8Array): void {
    let pos = 0;
    while (pos < buf.length) {
      switch (this.state) {
        case HEADER:
        case DATA_OFFSET: {
          const k = Math.min(this.need - this.have, buf.length - pos);
          this.head.set(buf.subarray(pos, pos + k), this.have);
          this.have += k;
          pos += k;
          if (this.have === this.need) this.headComplete();
          break;
        }
        case DATA:
          pos += this.copyData(buf, pos);
          break;
        case PAYLOAD: {
          const k = Math.min(this.payload.length - this.have, buf.length - pos);
          this.payload.set(buf.subarray(pos, pos + k), this.have);
          this.have += k;
          pos += k;
          if (this.have === this.payload.length) this.metadataChunk(this.payload);
          break;
        }
        default:
          return;
      }
    }
  }

  private headComplete(): void {
    if (this.state === DATA_OFFSET) {
      this.dataOffset();
      return;
    }
    if (this.need === NBD_SIMPLE_REPLY_SIZE) {
      // Enough for a simple reply; a chunk header has 4 bytes more.
      if (replyKind(this.head) === 'simple') this.simpleReply();
      else this.need = NBD_CHUNK_HEADER_SIZE;
      return;
    }
    this.chunkHeader();
  }

  /** Back to reading a header. */
  private nextReply(): void {
    this.state = HEADER;
    this.have = 0;
    this.need = NBD_SIMPLE_REPLY_SIZE;
    this.p = null;
  }

  /** The current reply is whole: its request completes if this was its last. */
  private replyDone(): void {
    const p = this.p;
    const cookie = this.cookie;
    const last = this.last;
    this.nextReply();
    if (last && p !== null) this.handler.finish(cookie, p);
  }

  private simpleReply(): void {
    const { error, cookie } = decodeSimpleReply(this.head.subarray(0, NBD_SIMPLE_REPLY_SIZE));
    const p = this.handler.take(cookie);
    this.cookie = cookie;
    this.p = p;
    this.last = true;
    if (error !== 0) {
      p.error = blockErrorFromNbdErrno(error, undefined, nbdCmdName(p.cmd));
    } else if (p.cmd === NBD_CMD_READ) {
      if (this.structured) throw protocolError('simple reply to a read with structured replies negotiated');
      // The data follows the header; only the request says how long it is.
      p.covered = p.length;
      this.startData(p, 0, p.length);
      return;
    } else if (p.cmd === NBD_CMD_BLOCK_STATUS) {
      throw protocolError('simple reply to block status');
    }
    this.replyDone();
  }

  private chunkHeader(): void {
    const h = decodeChunkHeader(this.head);
    const p = this.handler.take(h.cookie);
    this.cookie = h.cookie;
    this.p = p;
    this.last = (h.flags & NBD_REPLY_FLAG_DONE) !== 0;
    this.type = h.type;
    this.length = h.length;
    // Never buffer what the server merely claims: data chunks are bounded by the request (see
    // place), everything else by the largest payload its type can have.
    if (h.type !== NBD_REPLY_TYPE_OFFSET_DATA && h.length > MAX_METADATA_CHUNK) {
      throw protocolError(`chunk of type ${h.type} with length ${h.length}`);
    }
    switch (h.type) {
      case NBD_REPLY_TYPE_NONE:
        if (h.length !== 0 || !this.last) throw protocolError('invalid NBD_REPLY_TYPE_NONE chunk');
        this.replyDone();
        return;
      case NBD_REPLY_TYPE_OFFSET_DATA:
        if (h.length < 9) throw protocolError('invalid payload for NBD_REPLY_TYPE_OFFSET_DATA');
        this.state = DATA_OFFSET;
        this.have = 0;
        this.need = 8;
        return;
      case NBD_REPLY_TYPE_OFFSET_HOLE:
      case NBD_REPLY_TYPE_BLOCK_STATUS:
        break;
      default:
        if (!isChunkError(h.type)) throw protocolError(`unknown chunk type ${h.type}`);
    }
    this.payload = Buffer.alloc(h.length);
    this.have = 0;
    this.state = PAYLOAD;
    if (h.length === 0) this.metadataChunk(this.payload);
  }

  private dataOffset(): void {
    const p = this.p as Pending;
    const size = this.length - 8;
    const at = place(p, this.head.readBigUInt64BE(0), size, 'data');
    this.startData(p, at, size);
  }

  /** `n` bytes of data for `p` at `at` in its memory. */
  private startData(p: Pending, at: number, n: number): void {
    this.segs = p.into === undefined ? [] : p.into.slice(at, n).iov;
    this.seg = 0;
    this.segPos = 0;
    this.left = n;
    this.state = DATA;
    if (n === 0) this.replyDone();
  }

  /** Copy what `buf` holds of the data from `pos`; returns the bytes taken. */
  private copyData(buf: Uint8Array, pos: number): number {
    const taken = Math.min(this.left, buf.length - pos);
    let k = taken;
    while (k > 0 && this.seg < this.segs.length) {
      const s = this.segs[this.seg];
      const m = Math.min(k, s.length - this.segPos);
      s.set(pos === 0 && m === buf.length ? buf : buf.subarray(pos, pos + m), this.segPos);
      pos += m;
      k -= m;
      this.advanceSeg(m);
    }
    this.left -= taken;
    if (this.left === 0) this.replyDone();
    return taken;
  }

  /** `n` bytes landed in place (a read(2) into the memory nextBuffer handed out). */
  private advance(n: number): void {
    this.advanceSeg(n);
    this.left -= n;
    if (this.left === 0) this.replyDone();
  }

  private advanceSeg(n: number): void {
    this.segPos += n;
    while (this.seg < this.segs.length && this.segPos === this.segs[this.seg].length) {
      this.seg++;
      this.segPos = 0;
    }
  }

  private metadataChunk(payload: Buffer): void {
    const p = this.p as Pending;
    switch (this.type) {
      case NBD_REPLY_TYPE_OFFSET_HOLE: {
        const { offset, size } = decodeOffsetHole(payload);
        const at = place(p, offset, size, 'hole');
        p.into?.memset(at, 0, size);
        break;
      }
      case NBD_REPLY_TYPE_BLOCK_STATUS:
        this.blockStatus(p, payload);
        break;
      default: {
        let err: BlockError;
        try {
          const e = decodeErrorChunk(this.type, payload);
          err = blockErrorFromNbdErrno(e.errno, e.message, nbdCmdName(p.cmd));
        } catch {
          // An error type we do not know (bit 15 set): still an error for this request.
          err = blockErrorFromNbdErrno(22, undefined, nbdCmdName(p.cmd));
        }
        p.error ??= err;
      }
    }
    this.payload = EMPTY;
    this.replyDone();
  }

  private blockStatus(p: Pending, payload: Buffer): void {
    if (p.cmd !== NBD_CMD_BLOCK_STATUS) throw protocolError(`block status chunk for a ${nbdCmdName(p.cmd)} request`);
    const { contextId, extents } = decodeBlockStatus(payload);
    if (contextId !== this.contextId) throw protocolError(`block status for unexpected context ${contextId}`);
    if (p.extent !== null) throw protocolError('more than one block status chunk for the context');
    const first = extents[0];
    if (first.length === 0) throw protocolError('block status extent of length 0');
    p.extent = first;
  }
}

const EMPTY = Buffer.alloc(0);

/** The chunk's range, checked against the request: [offset - request offset, + size). */
function place(p: Pending, offset: bigint, size: number, what: string): number {
  if (p.cmd !== NBD_CMD_READ) throw protocolError(`${what} chunk for a ${nbdCmdName(p.cmd)} request`);
  const rel = offset - BigInt(p.offset);
  if (rel < 0n || rel + BigInt(size) > BigInt(p.length)) throw protocolError(`${what} chunk outside the request`);
  p.covered += size;
  return Number(rel);
}
