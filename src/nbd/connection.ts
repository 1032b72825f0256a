/**
 * One client connection: its socket (plain, or TLS after STARTTLS), the exact-length reader
 * on it, and writes with back-pressure. Every reply is handed to `send` as one or more
 * buffers written back to back in the same tick, so chunks of concurrent replies never
 * interleave inside a chunk.
 */
import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { FramePool } from './frames.js';
import { concat } from './bytes.js';
import { SocketReader } from './reader.js';

/** Replies up to this size are gathered into one buffer before they are written. */
const SMALL_REPLY = 4096;

function totalLength(bufs: Uint8Array[]): number {
  let n = 0;
  for (const b of bufs) n += b.length;
  return n;
}

export class NbdConnection {
  /** The socket replies go to: the raw socket, or the TLS socket over it. */
  private out: Socket | TLSSocket;
  readonly reader: SocketReader;
  /** READ reply frames of this client, reused from one reply to the next. */
  readonly frames = new FramePool();
  private closed = false;
  private readonly closedWaiters: (() => void)[] = [];
  /** The pending wait for the socket to drain, shared by the replies that filled it. */
  private drained: Promise<void> | null = null;

  constructor(
    readonly id: number,
    readonly socket: Socket,
  ) {
    this.out = socket;
    this.reader = new SocketReader(socket);
    socket.setNoDelay(true);
    // Errors surface as 'close' on the reader; an unhandled 'error' must not crash us.
    socket.on('error', () => undefined);
    socket.on('close', () => this.markClosed());
  }

  /** "127.0.0.1:40000" or "unix" for events. */
  get peer(): string {
    const s = this.socket;
    return s.remoteAddress === undefined ? 'unix' : `${s.remoteAddress}:${s.remotePort ?? 0}`;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  get isTls(): boolean {
    return this.out !== this.socket;
  }

  /** Switch to the TLS socket once its handshake is done (STARTTLS). */
  useTls(tls: TLSSocket): void {
    this.out = tls;
    this.drained = null;
    tls.on('error', () => undefined);
    tls.on('close', () => this.markClosed());
    this.reader.attach(tls);
  }

  /**
   * Write the buffers in order; resolves once the socket accepted them without exceeding its
   * buffer (back-pressure for large READ replies). Writes after close are dropped.
   */
  send(...bufs: Uint8Array[]): Promise<void> {
    return this.sendNow(...bufs) ? Promise.resolve() : this.whenDrained();
  }

  /** `send` without the promise: false when the socket's buffer is full (see whenDrained). */
  sendNow(...bufs: Uint8Array[]): boolean {
    if (this.closed || this.out.destroyed) return true;
    let ok = true;
    if (bufs.length > 1 && totalLength(bufs) <= SMALL_REPLY) {
      // One write for a small chunk (block status, hole, error): the client, woken by the
      // header alone, would read it and sleep again until the payload came.
      ok = this.out.write(concat(bufs));
    } else {
      for (const b of bufs) if (b.length > 0) ok = this.out.write(b);
    }
    return ok;
  }

  /**
   * Send `frame[0, length)` (a READ reply, header and data: see frames.ts) as `send` does; the
   * frame goes back to the pool once the socket has written it, not before: until then the
   * bytes are still the socket's. A failed write drops the frame to the garbage collector.
   */
  sendFrame(frame: Buffer, length: number): Promise<void> {
    return this.sendFrameNow(frame, length) ? Promise.resolve() : this.whenDrained();
  }

  /** `sendFrame` without the promise: false when the socket's buffer is full. */
  sendFrameNow(frame: Buffer, length: number): boolean {
    if (this.closed || this.out.destroyed) {
      this.frames.put(frame);
      return true;
    }
    return this.out.write(frame.subarray(0, length), (err) => {
      if (err == null) this.frames.put(frame);
    });
  }

  /**
   * One wait for 'drain' (or 'close') shared by every reply that found the socket full: a
   * client with dozens of reads in flight must not add two listeners per reply.
   */
  whenDrained(): Promise<void> {
    if (this.drained !== null) return this.drained;
    const out = this.out;
    const p = new Promise<void>((resolve) => {
      const done = (): void => {
        out.off('drain', done);
        out.off('close', done);
        if (this.drained === p) this.drained = null;
        resolve();
      };
      out.on('drain', done);
      out.on('close', done);
    });
    this.drained = p;
    return p;
  }

  /** Flush what was written, then close (graceful end of a session). */
  end(): void {
    if (this.closed) return;
    this.out.end();
    // A client that never reads its replies must not keep the socket forever.
    setTimeout(() => this.destroy(), 2000).unref();
  }

  /** Drop the connection now. */
  destroy(): void {
    this.reader.close();
    this.out.destroy();
    this.socket.destroy();
    this.markClosed();
  }

  /** Resolves when the socket is closed, however it happened. */
  whenClosed(): Promise<void> {
    if (this.closed) return Promise.resolve();
    return new Promise<void>((resolve) => this.closedWaiters.push(resolve));
  }

  private markClosed(): void {
    if (this.closed) return;
    this.closed = true;
    this.reader.close();
    for (const w of this.closedWaiters.splice(0)) w();
  }
}
