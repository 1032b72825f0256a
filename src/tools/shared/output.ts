// The tools' output: the program name, C stdio's buffering (so that stdout and stderr
// interleave as QEMU's do on a shared pipe), error_report/warn_report, and leaving with a status.
import { isBlockError } from '../../index.js';


/** Basename of the script path (process.argv[1]): a link named otherwise gives that name. */
export function progName(argv: readonly string[], fallback = 'blk-img'): string {
  const p = argv[1];
  if (p === undefined || p === '') return fallback;
  const parts = p.split('/').filter((s) => s !== '');
  const base = parts.length === 0 ? p : parts[parts.length - 1];
  // A launcher named blk-img.js is still "blk-img" to the user.
  return base.endsWith('.js') || base.endsWith('.ts') ? base.slice(0, -3) : base;
}

/** Anything with a write(string) method: process.stdout, a test collector... */
export interface TextSink {
  write(s: string): unknown;
}

/**
 * A stdout that also takes bytes, with the host's own UTF-8 encoder (Node's Buffer encodes a
 * short string faster than TextEncoder.encodeInto).
 */
export interface ByteSink {
  /** A buffer of `size` bytes for `encode`. */
  alloc(size: number): Uint8Array;
  /** Encode `s` into `buf` (made by alloc, with room for 3 bytes a character) at `at`; bytes written. */
  encode(s: string, buf: Uint8Array, at: number): number;
  /** Write the bytes; `bytes` is the sink's from then on. */
  write(bytes: Uint8Array): unknown;
}

export interface ToolIO {
  stdout: TextSink;
  stderr: TextSink;
  /** stdout is a terminal: line buffered instead of fully buffered (stdio's rule). */
  stdoutIsTTY?: boolean;
  /**
   * The same stdout taking bytes: a fully buffered stdout then holds its text encoded, one
   * short copy per printf, instead of a string joined from tens of thousands of pieces (map
   * of a fragmented image) and encoded again when written.
   */
  stdoutBytes?: ByteSink;
}

/** glibc's buffer size for a pipe or regular file (st_blksize). */
export const STDIO_BUFSIZ = 4096;

/**
 * Full blocks of stdout that may wait in memory before they are written: the byte stream is
 * the same either way, and map of a fragmented image prints megabytes, a write per 4 KiB.
 */
const STDOUT_HOLD = 1 << 20;

/**
 * printf text gathered before it is encoded into the held bytes: an encode call per printf
 * (map of a fragmented image: tens of thousands of short lines) cost more than the encoding.
 * Short enough that the joined string dies young.
 */
const TEXT_BATCH = 16 * 1024;

/**
 * stdout/stderr with C stdio semantics: stderr is unbuffered; stdout is fully buffered (4 KiB
 * chunks) unless it is a terminal (line buffered), and flushed explicitly or at exit. When both
 * streams share one pipe, this reproduces QEMU's ordering (errors first unless flushed).
 *
 * The full 4 KiB blocks stdio would have written are held back up to STDOUT_HOLD and written
 * together, always before anything goes to stderr: whoever reads both streams from one pipe
 * sees the bytes in stdio's order, with fewer writes.
 */
export class ToolOutput {
  private pending = '';
  /** With a byte sink: the held bytes are bytes[0, held), then the text not yet encoded. */
  private bytes: Uint8Array | null = null;
  private held = 0;
  private text = '';
  constructor(
    readonly io: ToolIO,
    readonly prog: string,
  ) {}

  /** printf to stdout. */
  out(s: string): void {
    const sink = this.io.stdoutBytes;
    if (sink !== undefined && this.io.stdoutIsTTY !== true) {
      this.outBytes(sink, s);
      return;
    }
    this.pending += s;
    if (this.io.stdoutIsTTY === true) {
      const nl = this.pending.lastIndexOf('\n');
      if (nl >= 0) {
        this.io.stdout.write(this.pending.slice(0, nl + 1));
        this.pending = this.pending.slice(nl + 1);
      }
      return;
    }
    if (this.pending.length >= STDOUT_HOLD) this.writeFullBlocks();
  }

  private outBytes(sink: ByteSink, s: string): void {
    this.text += s;
    if (this.text.length >= TEXT_BATCH) this.encodeText(sink);
  }

  /**
   * printf of ASCII text given as bytes (map's JSON lines, formatted without a string each):
   * copied into the held bytes, after any text printed before it.
   */
  outAscii(ascii: Uint8Array): void {
    const sink = this.io.stdoutBytes;
    if (sink === undefined || this.io.stdoutIsTTY === true) {
      this.out(new TextDecoder('latin1').decode(ascii));
      return;
    }
    if (this.text !== '') this.encodeText(sink);
    this.room(sink, this.held + ascii.length).set(ascii, this.held);
    this.held += ascii.length;
    if (this.held >= STDOUT_HOLD) this.writeFullBlocks();
  }

  /** Encode the gathered text into the held bytes; write what stdio would have by then. */
  private encodeText(sink: ByteSink): void {
    const s = this.text;
    this.text = '';
    // Room for 3 bytes a character at most.
    this.held += sink.encode(s, this.room(sink, this.held + 3 * s.length), this.held);
    if (this.held >= STDOUT_HOLD) this.writeFullBlocks();
  }

  /** The held bytes, with room for `need` in all. */
  private room(sink: ByteSink, need: number): Uint8Array {
    if (this.bytes === null || need > this.bytes.length) {
      // Room for a hold that is not yet full and a batch.
      const bigger = sink.alloc(Math.max(STDOUT_HOLD + 4 * TEXT_BATCH, need));
      if (this.bytes !== null) bigger.set(this.bytes.subarray(0, this.held));
      this.bytes = bigger;
    }
    return this.bytes;
  }

  /** Write what stdio would have written by now: the buffered text's whole 4 KiB blocks. */
  private writeFullBlocks(): void {
    const sink = this.io.stdoutBytes;
    if (sink !== undefined && this.text !== '') this.encodeText(sink);
    if (sink !== undefined && this.bytes !== null && this.held >= STDIO_BUFSIZ) {
      const n = this.held - (this.held % STDIO_BUFSIZ);
      // The sink keeps what it is given (a pipe writes later). A full hold goes as it is and
      // its tail starts a new buffer; a few blocks before a message on stderr go as a copy.
      if (n >= STDOUT_HOLD) {
        const rest = sink.alloc(this.bytes.length);
        rest.set(this.bytes.subarray(n, this.held));
        sink.write(this.bytes.subarray(0, n));
        this.bytes = rest;
      } else {
        sink.write(new Uint8Array(this.bytes.subarray(0, n)));
        this.bytes.copyWithin(0, n, this.held);
      }
      this.held -= n;
    }
    if (this.io.stdoutIsTTY === true || this.pending.length < STDIO_BUFSIZ) return;
    const n = this.pending.length - (this.pending.length % STDIO_BUFSIZ);
    this.io.stdout.write(this.pending.slice(0, n));
    this.pending = this.pending.slice(n);
  }

  /** fflush(stdout). */
  flush(): void {
    const sink = this.io.stdoutBytes;
    if (sink !== undefined && this.text !== '') this.encodeText(sink);
    if (sink !== undefined && this.bytes !== null && this.held > 0) {
      sink.write(this.bytes.subarray(0, this.held));
      this.bytes = null;
      this.held = 0;
    }
    if (this.pending !== '') {
      this.io.stdout.write(this.pending);
      this.pending = '';
    }
  }

  /** fprintf(stderr, ...) without the program-name prefix (error_printf). */
  errRaw(s: string): void {
    this.writeFullBlocks();
    this.io.stderr.write(s);
  }

  /** error_report: "prog: message\n" on stderr. */
  error(msg: string): void {
    this.errRaw(`${this.prog}: ${msg}\n`);
  }

  /** warn_report: "prog: warning: message\n". */
  warn(msg: string): void {
    this.errRaw(`${this.prog}: warning: ${msg}\n`);
  }
}

/** Thrown to leave a tool with an exit status after the messages were printed. */
export class ToolExit extends Error {
  override readonly name = 'ToolExit';
  constructor(readonly status: number) {
    super(`exit ${status}`);
  }
}

/**
 * Run a tool's body to its exit status: a ToolExit carries its own status, any other error is
 * printed as one line with status 1; buffered stdout is flushed last, after any error line.
 */
export async function runTool(o: ToolOutput, body: () => Promise<number>): Promise<number> {
  try {
    return await body();
  } catch (e) {
    if (e instanceof ToolExit) return e.status;
    o.error(errorMessage(e));
    return 1;
  } finally {
    o.flush();
  }
}

/** error_exit(): message, the "Try ... --help" hint, exit 1. */
export function errorExit(o: ToolOutput, msg: string): never {
  o.error(msg);
  o.errRaw(`Try '${o.prog} --help' for more information\n`);
  throw new ToolExit(1);
}

/** Message of an error thrown by the block layer, as QEMU's error_get_pretty would give it. */
export function errorMessage(e: unknown): string {
  if (isBlockError(e)) return e.message;
  if (e instanceof Error) return e.message;
  return String(e);
}

/** An I/O failure as QEMU prints it after strerror(): the errno text of a BlockError. */
export function errnoMessage(e: unknown): string {
  return isBlockError(e) ? e.errnoMessage : errorMessage(e);
}
