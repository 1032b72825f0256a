/**
 * Exact-length reads from a stream socket with back-pressure: the socket is paused whenever
 * no read is waiting and more than `highWater` bytes are buffered, so a client that sends
 * faster than we serve holds at most one pending read plus one socket chunk in our memory.
 * `skip` discards bytes as they stream in (option payloads we will not use are never
 * buffered whole). The source can be swapped (STARTTLS hands the reader the TLS socket), or
 * handed over with what is buffered (the NBD client's reply parser takes the socket once the
 * handshake is done).
 */
import type { Duplex } from 'node:stream';

export class ConnectionClosed extends Error {
  constructor(message = 'Unexpected end-of-file before all data were read') {
    super(message);
    this.name = 'ConnectionClosed';
  }
}

interface Waiter {
  need: number;
  resolve: () => void;
  reject: (e: Error) => void;
}

export class SocketReader {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private waiter: Waiter | null = null;
  private ended: Error | null = null;
  private source: Duplex | null = null;
  private readonly onData = (b: Buffer): void => this.push(b);
  private readonly onEnd = (): void => this.finish(new ConnectionClosed());
  private readonly onError = (e: Error): void => this.finish(new ConnectionClosed(e.message));

  constructor(
    source: Duplex,
    private readonly highWater = 256 * 1024,
  ) {
    this.attach(source);
  }

  /** Read from `source` from now on; the old source is left paused and unwatched. */
  attach(source: Duplex): void {
    this.detach();
    this.source = source;
    source.on('data', this.onData);
    source.on('end', this.onEnd);
    source.on('close', this.onEnd);
    source.on('error', this.onError);
    this.flow();
  }

  /** Stop reading (STARTTLS: the TLS layer takes the raw socket over). */
  detach(): void {
    const s = this.source;
    if (s === null) return;
    s.off('data', this.onData);
    s.off('end', this.onEnd);
    s.off('close', this.onEnd);
    s.off('error', this.onError);
    s.pause();
    this.source = null;
  }

  /** Stop reading and give up what was received and not read (the caller takes the socket over). */
  handOver(): Buffer[] {
    this.detach();
    const rest = this.chunks;
    this.chunks = [];
    this.buffered = 0;
    return rest;
  }

  /** Bytes received and not yet read. */
  get pending(): number {
    return this.buffered;
  }

  /** Exactly `n` bytes, waiting for them; rejects with ConnectionClosed at end of stream. */
  async read(n: number): Promise<Buffer> {
    await this.want(n);
    return this.take(n);
  }

  /** Bytes of a buffer the socket reads into again (`onread`), valid only during this call: they are copied. */
  pushTransient(b: Buffer): void {
    this.push(b, true);
  }

  /** Discard `n` bytes as they arrive, without holding more than one chunk. */
  async skip(n: number): Promise<void> {
    let left = n;
    while (left > 0) {
      await this.want(1);
      const k = Math.min(left, this.buffered);
      this.take(k);
      left -= k;
    }
  }

  /** Fail the current and every later read (the connection is being torn down). */
  close(reason: Error = new ConnectionClosed()): void {
    this.finish(reason);
    this.detach();
    this.chunks = [];
    this.buffered = 0;
  }

  private want(n: number): Promise<void> {
    if (this.buffered >= n) return Promise.resolve();
    if (this.ended) return Promise.reject(this.ended);
    if (this.waiter) return Promise.reject(new Error('SocketReader: concurrent reads'));
    return new Promise<void>((resolve, reject) => {
      this.waiter = { need: n, resolve, reject };
      this.flow();
    });
  }

  private take(n: number): Buffer {
    let out: Buffer;
    const first = this.chunks[0];
    if (first !== undefined && first.length >= n) {
      out = first.subarray(0, n);
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
    } else {
      out = Buffer.allocUnsafe(n);
      let pos = 0;
      while (pos < n) {
        const c = this.chunks[0];
        const k = Math.min(c.length, n - pos);
        c.copy(out, pos, 0, k);
        pos += k;
        if (k === c.length) this.chunks.shift();
        else this.chunks[0] = c.subarray(k);
      }
    }
    this.buffered -= n;
    this.flow();
    return out;
  }

  private push(b: Buffer, transient = false): void {
    this.chunks.push(transient ? Buffer.from(b) : b);
    this.buffered += b.length;
    const w = this.waiter;
    if (w && this.buffered >= w.need) {
      this.waiter = null;
      w.resolve();
    }
    this.flow();
  }

  /** Pause when nobody waits and enough is buffered; resume when a read needs more. */
  private flow(): void {
    const s = this.source;
    if (s === null) return;
    const needMore = this.waiter !== null && this.buffered < this.waiter.need;
    if (needMore || this.buffered < this.highWater) s.resume();
    else s.pause();
  }

  private finish(e: Error): void {
    this.ended ??= e;
    const w = this.waiter;
    if (w) {
      this.waiter = null;
      w.reject(this.ended);
    }
  }
}
