/**
 * Transmission phase of one NBD connection (QEMU's block/nbd.c request/reply machinery).
 *
 * State: the socket, the requests in flight keyed by cookie, and one reply loop. Sending is
 * synchronous (a request's header and payload go into the socket in one turn, so requests never
 * interleave on the wire); at most 16 requests are in flight, as in QEMU, and the 17th waits
 * for a slot. The reply loop reads one reply or chunk at a time and completes the request it
 * names; replies may come in any order. Anything the loop cannot make sense of (a bad magic, an
 * unknown cookie, a malformed chunk) poisons the connection: every request in flight and every
 * later one fails with EIO, as QEMU's client without reconnect does.
 */
import type { Duplex } from 'node:stream';
import { BlockError } from '../../block/errors.js';
import type { IOVector } from '../../block/iovec.js';
import {
  NBD_CHUNK_HEADER_SIZE,
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_DISC,
  NBD_CMD_READ,
  NBD_ESHUTDOWN,
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
  encodeRequest,
  isChunkError,
  nbdCmdName,
  replyKind,
} from '../../nbd/protocol.js';
import type { NbdExportInfo } from './handshake.js';
import type { SocketReader } from '../../nbd/reader.js';

/** Requests in flight per connection (QEMU's MAX_NBD_REQUESTS). */
export const MAX_NBD_REQUESTS = 16;

/**
 * Largest payload of a chunk other than OFFSET_DATA: a block-status chunk of 2^20 descriptors
 * (the spec's bound) is 8 MiB + 4; an error chunk at most 64 KiB + 14.
 */
const MAX_METADATA_CHUNK = 4 + 8 * (1 << 20);

/** A request's outcome: a READ's data is in its vector, a BLOCK_STATUS's extent here. */
export interface NbdReply {
  extent: BlockStatusExtent | null;
}

interface Pending {
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

export interface RequestOptions {
  flags?: number;
  /** WRITE payload. */
  payload?: IOVector;
  /** READ destination, `length` bytes. */
  into?: IOVector;
}

function protocolError(message: string): BlockError {
  return new BlockError('EIO', `Protocol error: ${message}`, { op: 'nbd' });
}

export class NbdSession {
  private readonly pending = new Map<bigint, Pending>();
  private nextCookie = 1n;
  private inFlight = 0;
  private readonly slotWaiters: (() => void)[] = [];
  /** Set once the connection is unusable; every later request fails with it. */
  private dead: BlockError | null = null;
  private readonly loop: Promise<void>;

  constructor(
    private readonly sock: Duplex,
    private readonly reader: SocketReader,
    readonly info: NbdExportInfo,
  ) {
    this.loop = this.receiveLoop();
  }

  get alive(): boolean {
    return this.dead === null;
  }

  /** Send one request and wait for its whole reply. */
  async request(cmd: number, offset: number, length: number, opts: RequestOptions = {}): Promise<Pending> {
    await this.acquireSlot();
    try {
      if (this.dead !== null) throw this.dead;
      const cookie = this.nextCookie++;
      const done = new Promise<Pending>((resolve, reject) => {
        this.pending.set(cookie, {
          cmd,
          offset,
          length,
          into: opts.into,
          covered: 0,
          extent: null,
          error: null,
          resolve,
          reject,
        });
      });
      // Header and payload in one turn: nothing else can write in between.
      this.sock.cork();
      this.sock.write(encodeRequest({ flags: opts.flags ?? 0, type: cmd, cookie, offset, length }));
      if (opts.payload) for (const b of opts.payload.iov) this.sock.write(b);
      this.sock.uncork();
      const p = await done;
      if (p.error !== null) throw p.error;
      return p;
    } finally {
      this.releaseSlot();
    }
  }

  /**
   * NBD_CMD_DISC and close (callers have drained their requests first). The server closes on
   * its side when it has answered what it had; we give it a moment, then drop the socket.
   */
  async disconnect(): Promise<void> {
    if (this.dead === null) {
      this.sock.write(encodeRequest({ type: NBD_CMD_DISC, cookie: 0n, offset: 0, length: 0 }));
      this.kill(new BlockError('EIO', 'NBD connection closed', { op: 'nbd' }));
    }
    this.sock.end();
    const timer = setTimeout(() => this.sock.destroy(), 1000);
    timer.unref();
    await this.loop;
    this.sock.destroy();
    clearTimeout(timer);
  }

  private async acquireSlot(): Promise<void> {
    while (this.inFlight >= MAX_NBD_REQUESTS) {
      await new Promise<void>((resolve) => this.slotWaiters.push(resolve));
    }
    this.inFlight++;
  }

  private releaseSlot(): void {
    this.inFlight--;
    this.slotWaiters.shift()?.();
  }

  /** Fail everything in flight and everything after (the connection is gone or out of step). */
  private kill(reason: BlockError): void {
    if (this.dead === null) this.dead = reason;
    for (const p of this.pending.values()) p.reject(this.dead);
    this.pending.clear();
  }

  private async receiveLoop(): Promise<void> {
    try {
      for (;;) {
        const head = await this.reader.read(NBD_SIMPLE_REPLY_SIZE);
        if (replyKind(head) === 'simple') await this.simpleReply(head);
        else await this.chunk(Buffer.concat([head, await this.reader.read(NBD_CHUNK_HEADER_SIZE - NBD_SIMPLE_REPLY_SIZE)]));
      }
    } catch (e) {
      const msg = e instanceof Error ? e.message : String(e);
      const text = msg.startsWith('Protocol error') ? msg : `NBD connection lost: ${msg}`;
      this.kill(new BlockError('EIO', text, { op: 'nbd', cause: e }));
      this.sock.destroy();
    }
  }

  private take(cookie: bigint): Pending {
    const p = this.pending.get(cookie);
    if (p === undefined) throw protocolError(`unexpected cookie 0x${cookie.toString(16)}`);
    return p;
  }

  private finish(cookie: bigint, p: Pending): void {
    this.pending.delete(cookie);
    if (p.error === null && p.cmd === NBD_CMD_READ && p.covered !== p.length) {
      p.error = new BlockError('EIO', `Protocol error: server sent ${p.covered} of ${p.length} bytes`, { op: 'read' });
    }
    if (p.error === null && p.cmd === NBD_CMD_BLOCK_STATUS && p.extent === null) {
      p.error = new BlockError('EIO', 'Protocol error: server sent no block status for the selected context', { op: 'block_status' });
    }
    p.resolve(p);
    // ESHUTDOWN: the server is going away; the spec wants the client to disconnect.
    if (p.error?.errno === NBD_ESHUTDOWN) this.kill(p.error);
  }

  private async simpleReply(head: Buffer): Promise<void> {
    const { error, cookie } = decodeSimpleReply(head);
    const p = this.take(cookie);
    if (error !== 0) {
      p.error = blockErrorFromNbdErrno(error, undefined, nbdCmdName(p.cmd));
    } else if (p.cmd === NBD_CMD_READ) {
      if (this.info.structuredReply) throw protocolError('simple reply to a read with structured replies negotiated');
      // The data follows the header; only the request says how long it is.
      await this.readInto(p, 0, p.length);
      p.covered = p.length;
    } else if (p.cmd === NBD_CMD_BLOCK_STATUS) {
      throw protocolError('simple reply to block status');
    }
    this.finish(cookie, p);
  }

  private async chunk(head: Buffer): Promise<void> {
    const h = decodeChunkHeader(head);
    const p = this.take(h.cookie);
    const done = (h.flags & NBD_REPLY_FLAG_DONE) !== 0;
    // Never buffer what the server merely claims: data chunks are bounded by the request (see
    // place), everything else by the largest payload its type can have.
    if (h.type !== NBD_REPLY_TYPE_OFFSET_DATA && h.length > MAX_METADATA_CHUNK) {
      throw protocolError(`chunk of type ${h.type} with length ${h.length}`);
    }
    switch (h.type) {
      case NBD_REPLY_TYPE_NONE:
        if (h.length !== 0 || !done) throw protocolError('invalid NBD_REPLY_TYPE_NONE chunk');
        break;
      case NBD_REPLY_TYPE_OFFSET_DATA:
        await this.offsetData(p, h.length);
        break;
      case NBD_REPLY_TYPE_OFFSET_HOLE:
        this.offsetHole(p, await this.reader.read(h.length));
        break;
      case NBD_REPLY_TYPE_BLOCK_STATUS:
        this.blockStatus(p, await this.reader.read(h.length));
        break;
      default: {
        if (!isChunkError(h.type)) throw protocolError(`unknown chunk type ${h.type}`);
        const payload = await this.reader.read(h.length);
        let err: BlockError;
        try {
          const e = decodeErrorChunk(h.type, payload);
          err = blockErrorFromNbdErrno(e.errno, e.message, nbdCmdName(p.cmd));
        } catch {
          // An error type we do not know (bit 15 set): still an error for this request.
          err = blockErrorFromNbdErrno(22, undefined, nbdCmdName(p.cmd));
        }
        p.error ??= err;
      }
    }
    if (done) this.finish(h.cookie, p);
  }

  /** The chunk's range, checked against the request: [offset - request offset, + size). */
  private place(p: Pending, offset: bigint, size: number, what: string): number {
    if (p.cmd !== NBD_CMD_READ) throw protocolError(`${what} chunk for a ${nbdCmdName(p.cmd)} request`);
    const rel = offset - BigInt(p.offset);
    if (rel < 0n || rel + BigInt(size) > BigInt(p.length)) throw protocolError(`${what} chunk outside the request`);
    p.covered += size;
    return Number(rel);
  }

  private async offsetData(p: Pending, length: number): Promise<void> {
    if (length < 9) throw protocolError('invalid payload for NBD_REPLY_TYPE_OFFSET_DATA');
    const offset = (await this.reader.read(8)).readBigUInt64BE(0);
    const at = this.place(p, offset, length - 8, 'data');
    await this.readInto(p, at, length - 8);
  }

  /**
   * `n` payload bytes into the request's vector at `at`, segment by segment, copied from the
   * socket's buffer straight into the caller's (never gathered into a payload buffer first).
   */
  private async readInto(p: Pending, at: number, n: number): Promise<void> {
    if (p.into === undefined) return this.reader.skip(n);
    for (const seg of p.into.slice(at, n).iov) await this.reader.readInto(seg);
  }

  private offsetHole(p: Pending, payload: Buffer): void {
    const { offset, size } = decodeOffsetHole(payload);
    const at = this.place(p, offset, size, 'hole');
    p.into?.memset(at, 0, size);
  }

  private blockStatus(p: Pending, payload: Buffer): void {
    if (p.cmd !== NBD_CMD_BLOCK_STATUS) throw protocolError(`block status chunk for a ${nbdCmdName(p.cmd)} request`);
    const { contextId, extents } = decodeBlockStatus(payload);
    if (contextId !== this.info.contextId) throw protocolError(`block status for unexpected context ${contextId}`);
    if (p.extent !== null) throw protocolError('more than one block status chunk for the context');
    const first = extents[0];
    if (first.length === 0) throw protocolError('block status extent of length 0');
    p.extent = first;
  }
}
