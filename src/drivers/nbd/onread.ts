/**
 * Where a client socket's read(2)s put their bytes (net.Socket's `onread` option, without
 * TLS): Node would read into a fresh 64 KiB Buffer each time. Node asks `buffer()` again after
 * every read, so the target may change from one read to the next: during the handshake every
 * read goes to one reused staging buffer, whose bytes the SocketReader copies what it keeps
 * of; in transmission the reply parser chooses, a READ's own memory while its data is coming,
 * else the staging buffer (see replies.ts).
 */
import type { SocketReader } from '../../nbd/reader.js';

/** Bytes per read(2) into the staging buffer. */
const STAGING_SIZE = 256 * 1024;

export interface ReadSink {
  /** `n` bytes were read into `buf`, the buffer `nextBuffer` returned last; valid during the call only. */
  received(buf: Buffer, n: number): void;
  /** Where the next read(2) goes. */
  nextBuffer(staging: Uint8Array): Uint8Array;
}

export class OnreadRoute {
  private readonly staging = Buffer.allocUnsafeSlow(STAGING_SIZE);
  private sink: ReadSink | null = null;
  /** The `onread` option of net.connect. */
  readonly onread = {
    buffer: (): Uint8Array => this.sink?.nextBuffer(this.staging) ?? this.staging,
    // Pausing is the reader's business (socket.pause() stops an onread socket too).
    callback: (n: number, buf: Buffer): boolean => {
      this.sink?.received(buf, n);
      return true;
    },
  };

  /** From now on, reads go where `sink` says (the buffer of the read under way is staging). */
  to(sink: ReadSink): void {
    this.sink = sink;
  }

  /** The handshake: bytes go to `reader`, which copies what it keeps past the call. */
  toReader(reader: SocketReader): void {
    this.to({
      received: (buf, n) => reader.pushTransient(buf.subarray(0, n)),
      nextBuffer: (staging) => staging,
    });
  }
}
