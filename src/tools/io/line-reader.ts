// The command input of blk-io without -c: lines as qemu-io's fgets() reads them.

/** fgets() over the command input, at most 1023 bytes a line, the newline dropped. */
export class LineReader {
  private buf = '';
  private eof = false;
  private readonly it: AsyncIterator<string | Uint8Array> | null;
  private readonly decoder = new TextDecoder();

  constructor(src: string | AsyncIterable<string | Uint8Array> | null | undefined) {
    if (typeof src === 'string') {
      this.buf = src;
      this.eof = true;
      this.it = null;
    } else if (src) {
      this.it = src[Symbol.asyncIterator]();
    } else {
      this.eof = true;
      this.it = null;
    }
  }

  /** Stop reading: an async-iterated stream is destroyed, so the process can exit. */
  async close(): Promise<void> {
    await this.it?.return?.();
  }

  async next(): Promise<string | null> {
    for (;;) {
      const nl = this.buf.indexOf('\n');
      if (nl >= 0 && nl < 1023) {
        const line = this.buf.slice(0, nl);
        this.buf = this.buf.slice(nl + 1);
        return line;
      }
      if (this.buf.length >= 1023) {
        const line = this.buf.slice(0, 1023);
        this.buf = this.buf.slice(1023);
        return line;
      }
      if (this.eof || this.it === null) {
        if (this.buf === '') return null;
        const line = this.buf;
        this.buf = '';
        return line;
      }
      const r = await this.it.next();
      if (r.done === true) this.eof = true;
      else this.buf += typeof r.value === 'string' ? r.value : this.decoder.decode(r.value, { stream: true });
    }
  }
}
