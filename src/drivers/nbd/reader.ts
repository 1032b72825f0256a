/**
 * Exact-length reads from a stream socket: the NBD client reads a header, learns a length from
 * it, then reads that many bytes. Data arriving from the socket is queued here; one read waits at
 * a time (the reply loop), which is all the protocol needs. When the socket ends or fails, the
 * waiting read and every later one reject with the reason.
 */
import type { Duplex } from 'node:stream';

export class SocketReader {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private waiter: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | null = null;
  private failure: Error | null = null;
  private readonly onData = (b: Buffer): void => {
    this.chunks.push(b);
    this.buffered += b.length;
    this.wake();
  };
  private readonly onEnd = (): void => this.fail(new Error('Unexpected end-of-file before all data were read'));
  private readonly onError = (e: Error): void => this.fail(e);

  constructor(private readonly sock: Duplex) {
    sock.on('data', this.onData);
    sock.on('end', this.onEnd);
    sock.on('close', this.onEnd);
    sock.on('error', this.onError);
  }

  /** Stop listening (before the socket is handed to TLS); returns what was read ahead. */
  detach(): Buffer {
    this.sock.off('data', this.onData);
    this.sock.off('end', this.onEnd);
    this.sock.off('close', this.onEnd);
    this.sock.off('error', this.onError);
    const rest = Buffer.concat(this.chunks);
    this.chunks = [];
    this.buffered = 0;
    return rest;
  }

  /** The next `n` bytes. */
  read(n: number): Promise<Buffer> {
    if (this.waiter !== null) return Promise.reject(new Error('SocketReader: concurrent reads'));
    if (this.buffered >= n) return Promise.resolve(this.take(n));
    if (this.failure !== null) return Promise.reject(this.failure);
    return new Promise<Buffer>((resolve, reject) => {
      this.waiter = { n, resolve, reject };
    });
  }

  /** Read and throw away `n` bytes (an unwanted payload), without buffering it whole. */
  async skip(n: number): Promise<void> {
    while (n > 0) {
      const step = Math.min(n, 1 << 20);
      await this.read(step);
      n -= step;
    }
  }

  private take(n: number): Buffer {
    let out: Buffer;
    const first = this.chunks[0];
    if (n === 0) return Buffer.alloc(0);
    if (first.length >= n) {
      out = first.subarray(0, n);
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
    } else {
      out = Buffer.allocUnsafe(n);
      let done = 0;
      while (done < n) {
        const c = this.chunks[0];
        const k = Math.min(c.length, n - done);
        c.copy(out, done, 0, k);
        done += k;
        if (k === c.length) this.chunks.shift();
        else this.chunks[0] = c.subarray(k);
      }
    }
    this.buffered -= n;
    return out;
  }

  private wake(): void {
    const w = this.waiter;
    if (w !== null && this.buffered >= w.n) {
      this.waiter = null;
      w.resolve(this.take(w.n));
    }
  }

  private fail(e: Error): void {
    if (this.failure !== null) return;
    this.failure = e;
    const w = this.waiter;
    if (w !== null && this.buffered < w.n) {
      this.waiter = null;
      w.reject(e);
    }
  }
}
