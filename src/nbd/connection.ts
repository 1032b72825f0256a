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
  /** Waits for queued replies to be written: all released when the socket closes. */
  private readonly unwritten = new Set<() => void>();
  /** The wait for the last reply queued on the socket, until it is written. */
  private lastQueued: Promise<void> | null = null;
  /**
   * A READ reply of this connection went out through directFd (sendfile): the next ones are
   * worth waiting for an empty queue rather than copied behind it.
   */
  direct = false;
  private readonly closedWaiters: (() => void)[] = [];

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
    tls.on('error', () => undefined);
    tls.on('close', () => this.markClosed());
    this.reader.attach(tls);
  }

  /**
   * Write the buffers in order; resolves once the socket has handed them all to the kernel
   * (back-pressure for large READ replies). Writes after close are dropped.
   */
  send(...bufs: Uint8Array[]): Promise<void> {
    return this.sendNow(...bufs) ?? Promise.resolve();
  }

  /**
   * `send` without a promise when it is not needed: null when the kernel took every byte at
   * once, else a promise that resolves once it has (or the connection failed).
   */
  sendNow(...bufs: Uint8Array[]): Promise<void> | null {
    if (this.closed || this.out.destroyed) return null;
    if (bufs.length > 1 && totalLength(bufs) <= SMALL_REPLY) {
      // One write for a small chunk (block status, hole, error): the client, woken by the
      // header alone, would read it and sleep again until the payload came.
      return this.write(concat(bufs), null);
    }
    let last: Uint8Array | null = null;
    for (const b of bufs) {
      if (b.length === 0) continue;
      if (last !== null) this.out.write(last);
      last = b;
    }
    return last === null ? null : this.write(last, null);
  }

  /**
   * Send `frame[0, length)` (a READ reply, header and data: see frames.ts) as `send` does; the
   * frame goes back to the pool once the socket has written it, not before: until then the
   * bytes are still the socket's. A failed write drops the frame to the garbage collector.
   */
  sendFrame(frame: Buffer, length: number): Promise<void> {
    return this.sendFrameNow(frame, length) ?? Promise.resolve();
  }

  /** `sendFrame` without a promise when the kernel took the frame at once (see sendNow). */
  sendFrameNow(frame: Buffer, length: number): Promise<void> | null {
    if (this.closed || this.out.destroyed) {
      this.frames.put(frame);
      return null;
    }
    return this.write(frame.subarray(0, length), frame);
  }

  /**
   * The socket's descriptor while a reply may be written into it directly (sendfile): a plain
   * socket, not TLS, with nothing queued, so that the reply's bytes follow the earlier ones;
   * else -1.
   */
  directFd(): number {
    if (this.closed || this.out !== this.socket || this.socket.writableLength !== 0) return -1;
    // Node keeps the descriptor on its internal handle (a pipe or TCP wrap).
    const fd = (this.socket as unknown as { _handle?: { fd?: unknown } | null })._handle?.fd;
    return typeof fd === 'number' && fd >= 0 ? fd : -1;
  }

  /**
   * Write `buf`, the last piece of a reply. A reply is waited for until its own last byte is
   * written, not until the socket's whole queue drains: with replies queued behind it, a
   * 'drain' wait would hold every slot until the client had read them all, and the next
   * requests would be read and served only then, while the client waits idle.
   */
  private write(buf: Uint8Array, frame: Buffer | null): Promise<void> | null {
    let written: (() => void) | null = null;
    this.out.write(buf, (err) => {
      if (err == null && frame !== null) this.frames.put(frame);
      if (written !== null) {
        this.unwritten.delete(written);
        written();
      }
    });
    // Node counts bytes the kernel took at once out of writableLength before write returns;
    // the callback itself comes a tick later.
    if (this.out.writableLength === 0) return null;
    const queued = new Promise<void>((resolve) => {
      written = resolve;
      this.unwritten.add(resolve);
    });
    this.lastQueued = queued;
    void queued.then(() => {
      if (this.lastQueued === queued) this.lastQueued = null;
    });
    return queued;
  }

  /** Null when nothing is queued on the socket, else a wait until all of it is written. */
  whenWritten(): Promise<void> | null {
    return this.out.writableLength === 0 ? null : this.lastQueued;
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
    for (const w of this.unwritten) w();
    this.unwritten.clear();
    for (const w of this.closedWaiters.splice(0)) w();
  }
}
