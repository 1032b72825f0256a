/**
 * Transmission phase of one NBD connection (QEMU's block/nbd.c request/reply machinery).
 *
 * State: the socket, the requests in flight keyed by cookie, and the reply parser (replies.ts)
 * that the socket's bytes go to as they are read. Sending is synchronous (a request's header
 * and payload go into the socket in one turn, so requests never interleave on the wire); at
 * most 16 requests are in flight, as in QEMU, and the 17th waits for a slot. Replies may come
 * in any order. A READ also waits while READ_BYTES_IN_FLIGHT of data is still to come (QEMU's
 * client has no such bound). Anything the parser cannot make sense of (a bad magic, an unknown
 * cookie, a malformed chunk) poisons the connection: every request in flight and every later
 * one fails with EIO, as QEMU's client without reconnect does.
 */
import type { Duplex } from 'node:stream';
import { BlockError } from '../../block/errors.js';
import type { IOVector } from '../../block/iovec.js';
import { NBD_CMD_BLOCK_STATUS, NBD_CMD_DISC, NBD_CMD_READ, NBD_ESHUTDOWN, type BlockStatusExtent, encodeRequest } from '../../nbd/protocol.js';
import type { NbdExportInfo } from './handshake.js';
import { ConnectionClosed, type SocketReader } from '../../nbd/reader.js';
import type { OnreadRoute, ReadSink } from './onread.js';
import { DIRECT_READ_MIN, protocolError, ReplyParser, type Pending, type ReplyHandler } from './replies.js';

/** Requests in flight per connection (QEMU's MAX_NBD_REQUESTS). */
export const MAX_NBD_REQUESTS = 16;

/**
 * READ data asked for and not yet received, at most (one READ larger than this goes alone).
 * The replies come one after the other on the one socket, so READs queued behind the reply
 * being sent do not come sooner: they only make the server hold a buffer for each meanwhile.
 * qemu-nbd allocates every READ's buffer as the request arrives, and beyond the one or two its
 * heap keeps, glibc maps each anew and the server faults in every page of it: eight 2 MiB READs
 * at once (convert's chunks) cost it 40000 page faults and 0.2 s of CPU per 384 MiB copied,
 * two at a time 500 faults and 0.13 s, with no slower a copy (bench/RESULTS.md, "NBD").
 */
export const READ_BYTES_IN_FLIGHT = 4 * 1024 * 1024;

/** A request's outcome: a READ's data is in its vector, a BLOCK_STATUS's extent here. */
export interface NbdReply {
  extent: BlockStatusExtent | null;
}

export interface RequestOptions {
  flags?: number;
  /** WRITE payload. */
  payload?: IOVector;
  /** READ destination, `length` bytes. */
  into?: IOVector;
}

/** What ended the connection, in the words the requests it fails carry. */
function lostError(e: unknown): BlockError {
  const msg = e instanceof Error ? e.message : String(e);
  const text = msg.startsWith('Protocol error') ? msg : `NBD connection lost: ${msg}`;
  return new BlockError('EIO', text, { op: 'nbd', cause: e });
}

export class NbdSession implements ReplyHandler, ReadSink {
  private readonly pending = new Map<bigint, Pending>();
  private nextCookie = 1n;
  private inFlight = 0;
  /** Requests in flight other than READs whose data is read in place. */
  private smallInFlight = 0;
  private readonly slotWaiters: (() => void)[] = [];
  /** READ bytes in flight, and the READs waiting for room (in the order they came). */
  private readBytes = 0;
  private readonly readWaiters: { len: number; go: () => void }[] = [];
  /** Set once the connection is unusable; every later request fails with it. */
  private dead: BlockError | null = null;
  private readonly parser: ReplyParser;
  /** Resolves once the socket has ended or closed. */
  private readonly closed: Promise<void>;

  /**
   * Take the socket over from the handshake's `reader`; with `route` (an `onread` socket) the
   * parser chooses where each read(2) goes, else it parses the socket's 'data' events.
   */
  constructor(
    private readonly sock: Duplex,
    reader: SocketReader,
    readonly info: NbdExportInfo,
    route?: OnreadRoute,
  ) {
    this.parser = new ReplyParser(this, info.structuredReply, info.contextId);
    this.closed = new Promise<void>((resolve) => {
      const gone = (e: unknown): void => {
        this.lost(e);
        resolve();
      };
      sock.once('end', () => gone(new ConnectionClosed()));
      sock.once('close', () => gone(new ConnectionClosed()));
      // Ended before we took over (the server closed right after the handshake).
      if (sock.readableEnded || sock.destroyed) gone(new ConnectionClosed());
    });
    // An 'error' is followed by 'close'; the error's text is the one requests get.
    sock.on('error', (e: Error) => this.lost(new ConnectionClosed(e.message)));
    // Bytes the reader received past the handshake's last reply are the first replies'.
    for (const b of reader.handOver()) this.received(b, b.length);
    if (route === undefined) sock.on('data', (b: Buffer) => this.received(b, b.length));
    else route.to(this);
    sock.resume();
  }

  get alive(): boolean {
    return this.dead === null;
  }

  /** Send one request and wait for its whole reply. */
  async request(cmd: number, offset: number, length: number, opts: RequestOptions = {}): Promise<Pending> {
    const readLen = cmd === NBD_CMD_READ ? length : 0;
    if (readLen > 0 && !this.admitRead(readLen)) await new Promise<void>((go) => this.readWaiters.push({ len: readLen, go }));
    await this.acquireSlot();
    const small = readLen < DIRECT_READ_MIN;
    if (small) this.smallInFlight++;
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
      if (small) this.smallInFlight--;
      this.releaseSlot();
      if (readLen > 0) this.releaseRead(readLen);
    }
  }

  private readFits(len: number): boolean {
    return this.readBytes === 0 || this.readBytes + len <= READ_BYTES_IN_FLIGHT;
  }

  /** Room for a READ of `len` bytes, taken now if there is some and no READ waits before it. */
  private admitRead(len: number): boolean {
    if (this.readWaiters.length > 0 || !this.readFits(len)) return false;
    this.readBytes += len;
    return true;
  }

  /** A READ is done (or failed): the waiting READs that now fit go, in order. */
  private releaseRead(len: number): void {
    this.readBytes -= len;
    for (let w = this.readWaiters[0]; w !== undefined && this.readFits(w.len); w = this.readWaiters[0]) {
      this.readWaiters.shift();
      this.readBytes += w.len;
      w.go();
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
    await this.closed;
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
    // A request's memory handed out for the next read(2) must be out of the socket's hands
    // before the request fails and its owner reuses it.
    if (this.parser.abandon()) this.sock.destroy();
    for (const p of this.pending.values()) p.reject(this.dead);
    this.pending.clear();
  }

  /** The connection ended, failed or went out of step: nothing more is read from it. */
  private lost(e: unknown): void {
    this.kill(lostError(e));
    this.sock.destroy();
  }

  received(buf: Buffer, n: number): void {
    try {
      this.parser.received(buf, n);
    } catch (e) {
      this.lost(e);
    }
  }

  nextBuffer(staging: Uint8Array): Uint8Array {
    return this.parser.nextBuffer(staging);
  }

  largeReadsOnly(): boolean {
    // None in flight counts too: the read is asked for before the reply's continuation sends
    // the next request, which is most often the next READ.
    return this.smallInFlight === 0;
  }

  take(cookie: bigint): Pending {
    const p = this.pending.get(cookie);
    if (p === undefined) throw protocolError(`unexpected cookie 0x${cookie.toString(16)}`);
    return p;
  }

  finish(cookie: bigint, p: Pending): void {
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
}
